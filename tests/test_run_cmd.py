"""The commands end to end: ``bat demo`` against the sample truth, ``bat report``, and clear refusals."""

from __future__ import annotations

import csv
import json
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bat_analysis.cli import app

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


def test_help_explains_each_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "demo", "report", "export-gates"):
        assert command in result.output
    for command in ("run", "demo", "report", "export-gates"):
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Example:" in sub.output, command


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


def test_a_failing_report_renderer_keeps_the_tables(tmp_path, monkeypatch):
    import bat_analysis.report as report
    from bat_analysis.simulate import simulate_experiment
    from bat_analysis.store import ResultStore

    exp = simulate_experiment(tmp_path / "data", n_patients=1, n_events=4000, seed=3, n_concentrations=4)

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
    from bat_analysis.textsafe import safe_filename

    exp = simulate_experiment(tmp_path / "data", n_patients=1, n_events=4000, seed=3, n_concentrations=4)
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
