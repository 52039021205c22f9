"""The commands end to end: ``bat demo`` against the sample truth, ``bat report``, and clear refusals."""

from __future__ import annotations

import csv
import json
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from guards import no_hang, process_group_alive

from bat_analysis.cli import app
from bat_analysis.errors import BatError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_fcs"
TUBE_COLUMNS = ["file", "patient", "condition", "allergen", "concentration", "pretreatment", "n_events",
                "n_basophils", "cd63_threshold", "pct_cd63", "net_pct_cd63", "si_cd63", "cd203c_mfi", "si_cd203c",
                "qc_status", "qc_flags"]
PATIENT_COLUMNS = ["patient", "allergen", "ec50_none", "ec50_omalizumab", "cd_sens_none", "cd_sens_omalizumab",
                   "cd_max_none", "cd_max_omalizumab", "auc_none", "auc_omalizumab", "auc_inhibition_pct",
                   "ec50_shift_log10", "class", "class_reason", "qc_status"]

runner = CliRunner()


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not (SAMPLE / "layout.csv").is_file():
        pytest.skip("sample_fcs/ is not in this checkout")
    out = tmp_path_factory.mktemp("demo") / "results"
    result = runner.invoke(app, ["demo", "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def truth():
    return json.loads((SAMPLE / "truth.json").read_text())


@pytest.mark.slow
def test_demo_tables_match_the_sample_truth(demo, truth):
    out, output = demo
    assert "Analysed 48 tubes" in output and "review/index.html" in output
    assert "or run 'bat review " in output  # the browser workbench is where a reviewer corrects gates
    tubes = pd.read_csv(out / "tubes.csv")
    patients = pd.read_csv(out / "patients.csv")
    assert list(tubes.columns[:len(TUBE_COLUMNS)]) == TUBE_COLUMNS
    assert list(patients.columns[:len(PATIENT_COLUMNS)]) == PATIENT_COLUMNS
    with open(SAMPLE / "layout.csv", newline="") as fh:
        layout_files = [row["file"] for row in csv.DictReader(fh)]
    assert sorted(tubes["file"]) == sorted(layout_files) == sorted(truth["tubes"])
    rows = tubes.set_index("file")
    close = 0
    for file, t in truth["tubes"].items():
        row = rows.loc[file]
        assert abs(row["n_basophils"] - t["n_basophils"]) <= 0.10 * t["n_basophils"], file
        close += abs(row["pct_cd63"] - t["pct_cd63_ref_threshold"]) <= 2.5
    assert close >= 0.9 * len(truth["tubes"])
    for patient, p in truth["patients"].items():
        row = patients[patients["patient"] == patient].iloc[0]
        assert row["class"] == p["expected_class"], (patient, row["class_reason"])
        assert abs(row["auc_inhibition_pct"] - p["auc_inhibition_pct"]) <= 8.0, patient
        assert str(row["class_reason"]).strip()


@pytest.mark.slow
def test_demo_writes_every_output(demo, truth):
    out, _ = demo
    sheets = pd.read_excel(out / "results.xlsx", sheet_name=None)
    assert list(sheets) == ["tubes", "patients", "about"]
    about = dict(zip(sheets["about"]["item"], sheets["about"]["value"]))
    assert about["template"] == "bat_ccr3_cd63" and len(about["template sha256"]) == 64 and about["version"]
    assert all(len(about[f"sha256 {f}"]) == 64 for f in truth["tubes"])
    for patient in truth["patients"]:
        html = (out / "reports" / f"{patient}.html").read_text(encoding="utf-8")
        parser = _Images()
        parser.feed(html)
        n_tubes = sum(1 for t in truth["tubes"].values() if t["patient"] == patient)
        assert len(parser.images) >= n_tubes and all(src.startswith("data:image/") for src in parser.images)
        pdf = (out / "reports" / f"{patient}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages") >= 1
    gallery = _Images()
    gallery.feed((out / "review" / "index.html").read_text(encoding="utf-8"))
    for patient in truth["patients"]:
        assert any(f"{patient}.html" in link for link in gallery.links), patient
    from bat_analysis.store import ResultStore

    with ResultStore.in_folder(out, create=False) as store:
        run = store.last_run()
        assert run["status"] == "completed" and run["n_tubes"] == 48 and run["n_failed"] == 0


@pytest.mark.slow
def test_demo_rerun_reuses_and_report_rerenders(demo):
    out, _ = demo
    before = {n: (out / n).read_bytes() for n in ("tubes.csv", "patients.csv")}
    again = runner.invoke(app, ["demo", "--out", str(out), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert "0 gated now, 48 reused" in again.output and "0 patient(s) scored now" in again.output
    assert "reports and review gallery kept: nothing changed" in again.output
    assert {n: (out / n).read_bytes() for n in before} == before
    report = out / "reports" / "P01.html"
    report.unlink()
    result = runner.invoke(app, ["report", str(out), "--patient", "P01"])
    assert result.exit_code == 0, result.output
    assert report.is_file() and not (out / "reports" / "P01.html").samefile(out / "reports" / "P02.html")
    bad = runner.invoke(app, ["report", str(out), "--patient", "P99"])
    assert bad.exit_code == 2 and "unknown patient(s): P99" in bad.output


ALL_COMMANDS = (["run"], ["demo"], ["report"], ["export-gates"], ["inspect"], ["simulate"], ["cohort"], ["review"],
                ["templates", "list"], ["templates", "show"], ["templates", "validate"])


def test_help_explains_each_command_with_an_example():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ALL_COMMANDS:
        assert command[0] in result.output
    for command in ALL_COMMANDS:
        sub = runner.invoke(app, [*command, "--help"], terminal_width=100)
        assert sub.exit_code == 0, command
        assert re.search(r"Examples?:\n +bat " + re.escape(command[0]), sub.output), (command, sub.output)
        assert "<bool>" not in sub.output, command  # a flag takes no value: no type shown for it


def test_version():
    from bat_analysis import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"bat {__version__}"


def test_layout_defaults_to_the_sheet_in_the_data_folder(tmp_path):
    from bat_analysis._commands.run_cmd import default_layout

    assert runner.invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "o")]).exit_code == 2
    gone = runner.invoke(app, ["run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert gone.exit_code == 2 and "data folder not found" in gone.output
    bad = runner.invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "no layout sheet given, and the data folder has no layout.csv or layout.xlsx" in bad.output
    (tmp_path / "layout.xlsx").write_bytes(b"")
    assert default_layout(tmp_path) == tmp_path / "layout.xlsx"
    (tmp_path / "layout.csv").write_text("file\n")
    with pytest.raises(BatError, match="both layout.csv and layout.xlsx"):
        default_layout(tmp_path)


def test_bad_invocations_exit_non_zero_with_what_to_do(tmp_path):
    missing = runner.invoke(app, ["run", str(tmp_path / "nope"), "--layout", str(tmp_path / "l.csv"),
                                  "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "data folder not found" in missing.output
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.fcs").write_bytes(b"garbage")
    layout = data / "layout.csv"
    layout.write_text("file,patient,condition,allergen,concentration,unit,pretreatment\n"
                      "a.fcs,P1,negative_control,,,,none\nb.fcs,P1,alergen,birch,x,ng/mL,none\n")
    bad_layout = runner.invoke(app, ["run", str(data), "--layout", str(layout), "--out", str(tmp_path / "o")])
    assert bad_layout.exit_code == 2
    assert "b.fcs" in bad_layout.output and "alergen" in bad_layout.output
    no_store = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert no_store.exit_code == 2 and "no results store" in no_store.output
    fmt = runner.invoke(app, ["export-gates", str(tmp_path), "--format", "pdf"])
    assert fmt.exit_code == 2 and "gatingml or flowjo" in fmt.output


def test_no_analysable_tube_exits_1(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("neg.fcs", "fmlp.fcs"):
        (data / name).write_bytes(b"FCS3.1    not really" + bytes(200))
    (data / "layout.csv").write_text("file,patient,condition,allergen,concentration,unit,pretreatment\n"
                                     "neg.fcs,P1,negative_control,,,,none\nfmlp.fcs,P1,fmlp,,,,none\n")
    result = runner.invoke(app, ["run", str(data), "--layout", str(data / "layout.csv"),
                                 "--out", str(tmp_path / "o"), "--workers", "1", "--quiet"])
    assert result.exit_code == 1
    assert "no tube could be analysed (2 of 2 failed)" in result.output and "neg.fcs" in result.output


@pytest.mark.parametrize("status, listed", [("written", True), ("kept", True), ("not_written", False),
                                            ("failed", False)])
def test_the_summary_lists_the_reports_by_their_status_not_by_the_note_text(status, listed, tmp_path, capsys):
    """What the summary says was written follows ``RunSummary.reports``, whatever its note says."""
    from bat_analysis._commands.run_cmd import _summarise
    from bat_analysis.pipeline import RunSummary

    summary = RunSummary(out=tmp_path, run_id=1, n_tubes=2, n_gated=2, n_reused=0, n_failed=0, failed=[],
                         outputs=[], elapsed_s=0.1, reports=status, report_note="reports: see above",
                         report_error="disk full" if status == "failed" else None)
    _summarise(summary, quiet=False)
    printed = capsys.readouterr().out
    assert ("reports/, review/" in printed) is listed and ("review/index.html to see every gate" in printed) is listed


def test_a_failing_report_renderer_keeps_the_tables(tmp_path, monkeypatch):
    import bat_analysis.report as report
    from bat_analysis.simulate import simulate_experiment
    from bat_analysis.store import ResultStore

    exp = simulate_experiment(tmp_path / "data", n_patients=1, n_events=4000, seed=3, n_concentrations=4,
                              basophil_pct=(2.5, 3.0))  # ~100 basophils a tube: enough to form a population

    def broken(*args, **kwargs):
        raise TypeError("'bool' object is not callable")

    monkeypatch.setattr(report, "render_reports", broken)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(exp.out_dir), "--layout", str(exp.layout_path), "--out", str(out),
                                 "--workers", "1"])
    assert result.exit_code == 3, result.output
    assert "the reports could not be written (TypeError" in result.output and f"bat report {out}" in result.output
    assert len(pd.read_csv(out / "tubes.csv")) == len(exp.tubes) and (out / "patients.csv").is_file()
    with ResultStore.in_folder(out) as store:
        assert store.last_run()["status"] == "completed without reports"


def test_hostile_layout_and_keyword_text_still_give_every_output(tmp_path):
    """Trust items 2, 5, 6 and 8 end to end: a layout whose patient ID is 300 characters of HTML and
    mathtext, whose allergen holds '$...$', whose extra column holds formulas and a control character,
    and a tube whose $PnS (quoted by its failure message) holds escape sequences: exit 0 with tables,
    workbook, reports and gallery; nothing raw reaches the terminal or becomes a formula."""
    import numpy as np
    import openpyxl

    from bat_analysis.io.fcs_write import write_fcs
    from bat_analysis.simulate import simulate_experiment
    from bat_analysis._textsafe import safe_filename

    exp = simulate_experiment(tmp_path / "data", n_patients=1, n_events=4000, seed=3, n_concentrations=4,
                              basophil_pct=(2.5, 3.0))
    patient = "<script>alert(1)</script>$x^2$ " + "P" * 300
    allergen = "$\\notacommand{a}$ birch"
    note = "=HYPERLINK(\"http://evil.example\",\"x\")\x07"
    with open(exp.layout_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["patient"] = patient
        row["allergen"] = allergen if row["allergen"] else ""
        row["note"] = note
    pns = "\x1b[31mCD63[/bold]\x07"
    rng = np.random.default_rng(0)
    write_fcs(exp.out_dir / "odd.fcs", rng.uniform(0, 1000, (500, 4)).astype(np.float32),
              ["FSC-A", "SSC-A", "FITC-A", "Time"], [None, None, pns, None])
    rows.append({**rows[0], "file": "odd.fcs", "condition": "anti_ige", "allergen": "", "concentration": ""})
    with open(exp.layout_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["run", str(exp.out_dir), "--layout", str(exp.layout_path), "--out",
                                     str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "missing from font" in str(w.message)]  # controls drawn as escapes
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "odd.fcs" in result.output and "\\x1b[31mCD63[/bold]\\x07" in result.output  # the failure, visible

    book = openpyxl.load_workbook(out / "results.xlsx")
    header = [c.value for c in book["tubes"][1]]
    notes = [r[header.index("note")] for r in book["tubes"].iter_rows(min_row=2)]
    assert {(c.value, c.data_type) for c in notes} == {(note.replace("\x07", "\\x07"), "s")}
    failed = [r for r in book["tubes"].iter_rows(min_row=2, values_only=True) if r[0] == "odd.fcs"]
    assert failed and any(isinstance(v, str) and "\\x1b[31mCD63[/bold]\\x07" in v for v in failed[0])
    with open(out / "tubes.csv", newline="", encoding="utf-8") as fh:
        assert {r["note"] for r in csv.DictReader(fh)} == {note}  # the CSV keeps the exact value

    stem = safe_filename(patient)
    assert (out / "reports" / f"{stem}.html").is_file() and (out / "reports" / f"{stem}.pdf").is_file()
    html = (out / "reports" / f"{stem}.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and allergen in html
    assert (out / "review" / "index.html").is_file()


def test_bad_input_message_quoting_a_control_sequence_is_printed_escaped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.fcs").write_bytes(b"garbage")
    (data / "layout.csv").write_text("file,patient,condition,allergen,concentration,unit,pretreatment\n"
                                     "a.fcs,P\x1b]0;owned\x07\x1b[2J1,allergen,birch,1,ng/mL,none\n",
                                     encoding="utf-8")
    result = runner.invoke(app, ["run", str(data), "--layout", str(data / "layout.csv"), "--out",
                                 str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "patient P\\x1b]0;owned\\x07\\x1b[2J1" in result.output  # quoted by the message, shown escaped


# ---------------------------------------------------------------- which files a run reads (trust issue items 4, 18)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    return simulate_experiment(tmp_path_factory.mktemp("plate") / "plate1", n_patients=1, n_events=4000, seed=5,
                               n_concentrations=3, basophil_pct=(2.5, 3.0))


def _copy(plate, tmp_path: Path) -> Path:
    import shutil

    data = tmp_path / "plate1"
    shutil.copytree(plate.out_dir, data)
    return data


def _run(data: Path, out: Path, *flags: str, layout: Path | None = None):
    with no_hang(60, "the run"):
        return runner.invoke(app, ["run", str(data), "--layout", str(layout or data / "layout.csv"), "--out", str(out),
                                   "--workers", "1", "--no-reports", *flags])


def test_files_without_a_layout_row_are_left_out_with_a_warning(plate, tmp_path):
    from bat_analysis.store import ResultStore

    data = _copy(plate, tmp_path)
    for name in ("comp_FITC.fcs", "comp_PE.fcs", "unstained.fcs"):
        (data / name).write_bytes((data / plate.tubes[0].file).read_bytes())
    out = tmp_path / "out"
    result = _run(data, out)
    assert result.exit_code == 0, result.output
    assert (f"warning: 3 files in {data}/ have no row in the layout and were left out: comp_FITC.fcs, comp_PE.fcs, "
            "unstained.fcs") in result.output
    assert sorted(pd.read_csv(out / "tubes.csv")["file"]) == sorted(t.file for t in plate.tubes)
    with ResultStore.in_folder(out, create=False) as store:
        info = json.loads(store.last_run()["info_json"])
    assert info["unlisted_files"] == ["comp_FITC.fcs", "comp_PE.fcs", "unstained.fcs"] and not info["strict"]
    strict = _run(data, tmp_path / "strict", "--strict")
    assert strict.exit_code == 2 and "the layout has 3 problem(s)" in strict.output, strict.output
    for name in ("comp_FITC.fcs", "comp_PE.fcs", "unstained.fcs"):
        assert f"file '{name}' is in {data} but on no row" in strict.output


def test_missing_files_refuse_the_run_unless_skip_missing(plate, tmp_path):
    from bat_analysis.store import ResultStore

    data = _copy(plate, tmp_path)
    gone = [next(t.file for t in plate.tubes if t.condition == "allergen" and t.pretreatment == arm)
            for arm in ("none", "omalizumab")]  # one point of each arm's series: two are left
    for name in gone:
        (data / name).unlink()
    refused = _run(data, tmp_path / "refused")
    assert refused.exit_code == 2 and "the layout has 2 problem(s)" in refused.output, refused.output
    for name in gone:
        assert f"column 'file': '{name}' not found in {data}" in refused.output
    assert "--skip-missing" in refused.output and not (tmp_path / "refused" / "tubes.csv").exists()

    out = tmp_path / "out"
    result = _run(data, out, "--skip-missing")
    assert result.exit_code == 0, result.output
    assert "2 tube(s) could not be gated" in result.output
    rows = pd.read_csv(out / "tubes.csv").set_index("file")
    assert sorted(rows.index) == sorted(t.file for t in plate.tubes)
    for name in gone:
        assert f"  - {name}: file not found: {data / name}" in result.output
        assert rows.loc[name, "qc_status"] == "fail" and rows.loc[name, "error"] == f"file not found: {data / name}"
        assert "FILE_NOT_FOUND" in rows.loc[name, "qc_flags"].split(";")
    others = rows.drop(index=gone)
    assert (others["n_basophils"] > 0).all() and not others["qc_flags"].str.contains("FILE_NOT_FOUND").any()
    with ResultStore.in_folder(out, create=False) as store:
        assert all(store.get_tube(name, "auto").error == f"file not found: {data / name}" for name in gone)
        assert store.last_run()["n_failed"] == 2
    # the file is back: its tube is gated on the next run, not taken from the failed record
    for name in gone:
        (data / name).write_bytes((plate.out_dir / name).read_bytes())
    again = _run(data, out, "--skip-missing")
    assert again.exit_code == 0 and "could not be gated" not in again.output, again.output
    assert "2 gated now, 10 reused" in again.output


def test_files_outside_the_data_folder_need_the_flag_and_only_regular_files_are_read(plate, tmp_path):
    import hashlib

    data = _copy(plate, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = plate.tubes[-1].file
    (data / moved).rename(elsewhere / moved)
    layout = (data / "layout.csv").read_text().replace(f"\n{moved},", f"\n../elsewhere/{moved},")
    (data / "layout.csv").write_text(layout)
    refused = _run(data, tmp_path / "refused")
    assert refused.exit_code == 2, refused.output
    assert f"'../elsewhere/{moved}' climbs out of the data folder {data} with '..'" in refused.output
    assert "--allow-outside-data-dir" in refused.output

    out = tmp_path / "out"
    allowed = _run(data, out, "--allow-outside-data-dir")
    assert allowed.exit_code == 0, allowed.output
    about = pd.read_excel(out / "results.xlsx", sheet_name="about").set_index("item")["value"]
    assert about[f"sha256 ../elsewhere/{moved}"] == hashlib.sha256((elsewhere / moved).read_bytes()).hexdigest()

    if Path("/proc/self/pagemap").exists():
        (data / "layout.csv").write_text(layout.replace(f"\n../elsewhere/{moved},", "\n/proc/self/pagemap,"))
        proc = _run(data, tmp_path / "proc", "--allow-outside-data-dir")
        assert proc.exit_code == 2, proc.output
        assert "'/proc/self/pagemap' is a file of the kernel (/proc, /sys), not a regular file" in proc.output


def test_a_run_writes_tube_markers_beside_tubes_for_every_activation_marker(plate, tmp_path):
    """The template's activation: list alone decides what is scored; the first marker fills the cd63_* columns."""
    from bat_analysis.gating.templates import load_template

    data = _copy(plate, tmp_path)
    default = tmp_path / "default"
    assert _run(data, default).exit_code == 0
    tubes = pd.read_csv(default / "tubes.csv")
    markers = pd.read_csv(default / "tube_markers.csv")
    assert set(markers.marker) == {"CD63"} and "activation_marker" not in tubes.columns
    assert list(markers.file) == list(tubes.file)
    assert markers.threshold.tolist() == tubes.cd63_threshold.tolist()

    text = load_template("bat_ccr3_cd63").source_text.replace("activation: [CD63]", "activation: [CD203c, CD63]")
    (tmp_path / "two.yaml").write_text(text.replace("name: bat_ccr3_cd63", "name: two_markers"), encoding="utf-8")
    two = tmp_path / "two"
    result = _run(data, two, "--template", str(tmp_path / "two.yaml"))
    assert result.exit_code == 0, result.output
    tubes2 = pd.read_csv(two / "tubes.csv").set_index("file")
    markers2 = pd.read_csv(two / "tube_markers.csv")
    by_marker = {m: rows.set_index("file") for m, rows in markers2.groupby("marker")}
    assert set(by_marker) == {"CD203c", "CD63"} and set(tubes2.activation_marker) == {"CD203c"}
    assert (by_marker["CD203c"].threshold.loc[tubes2.index] == tubes2.cd63_threshold).all()
    assert (by_marker["CD63"].threshold.values == markers.set_index("file").threshold.loc[
        by_marker["CD63"].index].values).all()  # CD63 keeps its own threshold, now beside CD203c's
    assert not (by_marker["CD203c"].threshold == by_marker["CD63"].threshold.loc[by_marker["CD203c"].index]).any()


# ---------------------------------------------------------------- Ctrl-C (issue 14, "Progress")
def _stored_tubes(out: Path) -> int:
    import sqlite3

    if not (out / "results.sqlite").is_file():
        return 0
    con = sqlite3.connect(out / "results.sqlite", timeout=5)
    try:
        return con.execute("SELECT COUNT(*) FROM tubes").fetchone()[0]
    except sqlite3.OperationalError:  # the store's tables are not created yet
        return 0
    finally:
        con.close()



def test_ctrl_c_stops_promptly_says_what_was_saved_and_the_same_command_resumes(plate, tmp_path):
    """SIGINT to a `bat run` whose worker hangs on one tube (no time limit): the run stops at once (exit 130),
    its worker processes are ended, it says how many tubes are saved in the store and how to resume, leaves
    no lock file; the same command then gates only the missing tube."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from guards import inject_hang

    from bat_analysis.pipeline import RunOptions, run

    data, out, hang = _copy(plate, tmp_path), tmp_path / "out", tmp_path / "hang"
    hang.mkdir()
    n = len(plate.tubes)
    inject_hang(hang, plate.tubes[1].file)  # the worker that takes this tube sleeps for an hour
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hang), str(ROOT)])}
    cmd = [sys.executable, "-m", "bat_analysis", "run", str(data), "--out", str(out), "--workers", "2",
           "--tube-timeout", "0", "--no-reports"]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _stored_tubes(out) < n - 1 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
        assert _stored_tubes(out) == n - 1, "the other tubes were not gated"
        time.sleep(0.5)  # the run is now waiting on the hanging tube
        stopped_at = time.monotonic()
        child.send_signal(signal.SIGINT)  # to the run alone (a terminal's Ctrl-C also reaches the workers)
        try:
            stdout, stderr = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("bat run was still running 20 s after Ctrl-C")
        took = time.monotonic() - stopped_at
        deadline = time.monotonic() + 5
        while process_group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process_group_alive(child.pid), "worker processes outlived the stopped run"
    finally:
        if process_group_alive(child.pid):
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == 130, stderr
    assert took < 10, f"{took:.1f} s to stop"
    assert "Traceback" not in stderr, stderr
    text = " ".join(stderr.split())
    assert (f"Stopped (Ctrl-C) while gating. {n - 1} of {n} tubes are gated and saved in the results store "
            f"{out / 'results.sqlite'}") in text, stderr
    assert "1 still to gate" in text and "No table or report was written by this run." in text, stderr
    assert "To resume, run the same command again: bat run " in text, stderr
    assert not (out / ".bat-run.lock").exists() and not (out / "tubes.csv").exists()

    resumed = run(RunOptions(data_dir=data, layout=data / "layout.csv", out=out, workers=1, quiet=True,
                             reports=False))
    assert (resumed.n_gated, resumed.n_reused, resumed.n_failed) == (1, n - 1, 0)
