"""``--out`` belongs to one experiment: a run of another experiment into it is refused (naming the other
experiment) unless ``--replace`` sets the old results aside; a re-run of the same experiment, even with an
edited layout or a moved data folder, is not refused; reports of patients no longer in the run are removed."""

from __future__ import annotations

import csv
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bat_analysis.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    root = tmp_path_factory.mktemp("plates")
    one = simulate_experiment(root / "plate1", n_patients=2, n_events=3000, seed=11, n_concentrations=3)
    two = simulate_experiment(root / "plate2", n_patients=1, n_events=3000, seed=12, n_concentrations=3)
    return one, two


def _bat_run(exp_dir: Path, layout: Path, out: Path, *extra: str):
    return runner.invoke(app, ["run", str(exp_dir), "--layout", str(layout), "--out", str(out), "--workers", "1",
                               "--no-reports", "--quiet", *extra])


def _files_in_store(out: Path) -> set[str]:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        return {r[0] for r in con.execute("SELECT DISTINCT file FROM tubes")}
    finally:
        con.close()


def _fake_reports(out: Path, *patients: str) -> None:
    (out / "reports").mkdir(exist_ok=True)
    for p in patients:
        for ext in ("html", "pdf"):
            (out / "reports" / f"{p}.{ext}").write_text(f"report of {p}")


def test_another_experiment_is_refused_then_replaced_with_replace(plates, tmp_path):
    one, two = plates
    out = tmp_path / "out"
    first = _bat_run(one.out_dir, one.layout_path, out)
    assert first.exit_code == 0, first.output
    plate1_files = _files_in_store(out)
    before = (out / "results.sqlite").read_bytes()

    refused = _bat_run(two.out_dir, two.layout_path, out)
    assert refused.exit_code == 2
    assert "results of another experiment" in refused.output
    assert str(one.out_dir.resolve()) in refused.output and str(one.layout_path.resolve()) in refused.output
    assert "--replace" in refused.output and "Traceback" not in refused.output
    assert _files_in_store(out) == plate1_files  # nothing of plate 2 was written

    _fake_reports(out, "P01", "P02")
    (out / "review").mkdir()
    (out / "review" / "index.html").write_text("plate 1 gallery")
    replaced = _bat_run(two.out_dir, two.layout_path, out, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert "moved to" in replaced.output
    assert _files_in_store(out) == {t.file for t in two.tubes}
    (aside,) = (out / "replaced").iterdir()  # plate 1's store, reports and gallery: set aside, not deleted
    assert (aside / "results.sqlite").read_bytes()[:16] == before[:16]
    con = sqlite3.connect(aside / "results.sqlite")
    assert {r[0] for r in con.execute("SELECT DISTINCT file FROM tubes")} == plate1_files
    con.close()
    assert sorted(p.name for p in (aside / "reports").iterdir()) == ["P01.html", "P01.pdf", "P02.html", "P02.pdf"]
    assert (aside / "review" / "index.html").read_text() == "plate 1 gallery"
    assert not (out / "reports").exists() and not (out / "review").exists()


def test_the_same_experiment_with_an_edited_layout_or_a_moved_folder_is_not_refused(plates, tmp_path):
    one, _ = plates
    data = tmp_path / "plate1"
    shutil.copytree(one.out_dir, data)
    out = tmp_path / "out"
    assert _bat_run(data, data / one.layout_path.name, out).exit_code == 0
    # the layout is corrected: the tubes entered as patient P02 were patient P03's
    with open(data / one.layout_path.name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    edited = tmp_path / "layout_fixed.csv"
    with open(edited, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "patient": "P03" if r["patient"] == "P02" else r["patient"]} for r in rows)
    _fake_reports(out, "P01", "P02")
    again = _bat_run(data, edited, out)
    assert again.exit_code == 0, again.output
    # P02 left the run: its reports are gone (with --no-reports the remaining ones, no longer current, are
    # moved to outdated-*/ as well)
    left = sorted(p.name for p in (out / "reports").iterdir()) if (out / "reports").exists() else []
    assert "P02.html" not in left and "P02.pdf" not in left
    # the data folder is moved (same files): still the same experiment
    moved = tmp_path / "archive" / "plate1"
    shutil.move(str(data), moved)
    third = _bat_run(moved, moved / one.layout_path.name, out)
    assert third.exit_code == 0, third.output
    assert not (out / "replaced").exists()
