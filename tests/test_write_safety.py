"""Writing the output folder: links planted in OUT, a full disk, permissions (``bat run`` end to end)."""

from __future__ import annotations

import errno
import os
import sqlite3
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bat_analysis.cli import app
from bat_analysis.errors import BatError, WriteError
from bat_analysis.pipeline import LOCK_NAME, RunLock
from bat_analysis.store import ResultStore

runner = CliRunner()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    return simulate_experiment(tmp_path_factory.mktemp("data"), n_patients=1, n_events=4000, seed=3,
                               n_concentrations=4)


def _run(exp, out: Path, *extra: str):
    return runner.invoke(app, ["run", str(exp.out_dir), "--layout", str(exp.layout_path), "--out", str(out),
                               "--workers", "1", "--quiet", *extra])


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "precious.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("do not touch\n")
    return victim


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name)


# ------------------------------------------------------------------------------------------ the lock
def test_a_link_at_the_lock_file_is_refused(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(BatError, match=r"\.bat-run\.lock in the output folder is a symbolic link .*remove "):
        RunLock(out).acquire()
    assert victim.read_text() == "do not touch\n"


def test_the_lock_file_is_removed_when_released(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):  # and can be taken again
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_replaced_while_waiting_is_not_trusted(tmp_path, monkeypatch):
    """A run that opened the lock file just before the previous holder removed it must lock the new one."""
    import fcntl

    import bat_analysis.pipeline as pipeline

    calls = []
    real = fcntl.flock

    def flock(fd, op):
        if op & fcntl.LOCK_EX and not calls:  # the holder removes its file between our open and our lock
            calls.append(fd)
            os.unlink(tmp_path / LOCK_NAME)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    lock = pipeline.RunLock(tmp_path).acquire()
    try:
        assert os.path.samestat(os.fstat(lock._fd), os.stat(tmp_path / LOCK_NAME))
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------ the store
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_a_link_at_the_results_store_is_refused(tmp_path, suffix):
    victim = _victim(tmp_path)
    (tmp_path / f"results.sqlite{suffix}").symlink_to(victim)
    with pytest.raises(WriteError, match=rf"results\.sqlite{suffix}: this file is a symbolic link"):
        ResultStore.in_folder(tmp_path)
    assert victim.read_text() == "do not touch\n"


def test_a_full_store_is_a_write_error_and_rolls_back(tmp_path):
    with ResultStore.in_folder(tmp_path) as store:
        store.set_meta("kept", "yes")
        store.conn.execute("PRAGMA max_page_count = 1")  # SQLite's own "database or disk is full"
        with pytest.raises(WriteError, match=r"cannot write .*results\.sqlite: the disk is full") as info:
            store.set_meta("big", "x" * 100_000)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert store.get_meta("kept") == "yes" and store.get_meta("big") is None
        assert not store.conn.in_transaction


# ------------------------------------------------------------------------------------------ bat run
def test_links_planted_in_out_are_never_written_through(experiment, tmp_path):
    victim = _victim(tmp_path)
    elsewhere = tmp_path / "outside" / "folder"
    elsewhere.mkdir()
    (elsewhere / "keep.html").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("tubes.csv", "patients.csv", "results.xlsx", ".tubes.csv.tmp"):
        (out / name).symlink_to(victim)
    (out / "reports").symlink_to(elsewhere, target_is_directory=True)
    (out / "review").symlink_to(elsewhere, target_is_directory=True)
    # temporaries a killed run left behind (a file, a staging folder, a link) are cleared, links not followed
    (out / ".patients.csv.0123456789ab.tmp").write_text("half")
    (out / ".reports-staging.0123456789ab.tmp" / "reports").mkdir(parents=True)
    (out / ".results.xlsx.abcdefabcdef.tmp").symlink_to(elsewhere, target_is_directory=True)
    result = _run(experiment, out)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "do not touch\n"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.html"]
    assert (elsewhere / "keep.html").read_text() == "mine"
    for name in ("tubes.csv", "patients.csv", "results.xlsx", "reports", "review"):
        assert not (out / name).is_symlink(), name
    assert len(pd.read_csv(out / "tubes.csv")) == len(experiment.tubes)
    assert (out / "review" / "index.html").is_file() and any((out / "reports").glob("*.pdf"))
    assert not (out / LOCK_NAME).exists()
    assert _leftovers(out) == [".tubes.csv.tmp"]  # the planted link is left alone, not written


def test_a_link_at_the_lock_stops_the_run_with_a_clear_message(experiment, tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    result = _run(experiment, out)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert ".bat-run.lock in the output folder is a symbolic link" in result.output
    assert "Traceback" not in result.output and victim.read_text() == "do not touch\n"


def test_outputs_get_ordinary_permissions(experiment, tmp_path):
    old = os.umask(0o002)
    try:
        result = _run(experiment, tmp_path / "out", "--no-reports")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for name in ("tubes.csv", "patients.csv", "results.xlsx"):
        assert oct((tmp_path / "out" / name).stat().st_mode & 0o777) == oct(0o664), name


def test_a_full_disk_while_writing_the_tables_fails_the_run_cleanly(experiment, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _run(experiment, out).exit_code == 0
    before = {p.name for p in out.iterdir()}
    assert {"tubes.csv", "patients.csv", "results.xlsx", "reports", "review"} <= before

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)  # the workbook's zip entries hit a full disk
    result = _run(experiment, out)
    assert result.exit_code == 4, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"error: cannot write {out / 'results.xlsx'}: the disk is full. What to do: free some space" in result.output
    with ResultStore.in_folder(out, create=False) as store:
        assert store.last_run()["status"] == "failed"
        assert store.runs()[0]["status"] == "completed"
    # last run's tables, workbook, PDFs and gallery are not left beside the store as if they were current
    for name in ("tubes.csv", "tube_markers.csv", "patients.csv", "results.xlsx", "reports", "review"):
        assert not (out / name).exists(), name
    (outdated,) = out.glob("outdated-*")
    assert {p.name for p in outdated.iterdir()} == {"tubes.csv", "tube_markers.csv", "patients.csv", "results.xlsx",
                                                    "reports", "review"}
    assert ("The earlier tubes.csv, patients.csv, results.xlsx, tube_markers.csv, reports, review no longer match "
            "the results and "
            f"were moved to {outdated}.") in result.output
    assert _leftovers(out) == []
    monkeypatch.undo()
    again = _run(experiment, out)  # space freed: the same command completes and renders everything
    assert again.exit_code == 0, again.output
    assert (out / "results.xlsx").is_file() and (out / "review" / "index.html").is_file()


def test_a_full_disk_while_writing_the_reports_keeps_the_tables_and_withdraws_old_reports(experiment, tmp_path,
                                                                                         monkeypatch):
    import bat_analysis.report._pdf as pdf

    out = tmp_path / "out"
    assert _run(experiment, out).exit_code == 0
    old_pdf = sorted((out / "reports").glob("*.pdf"))
    assert old_pdf
    # the next run has other results (a reviewer's threshold), so last run's reports are outdated
    patient = experiment.tubes[0].patient
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(f"corrections:\n  - patient: {patient}\n    pretreatment: none\n    threshold: 1500\n"
                         "    reviewer: AB\n    reason: test\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pdf, "_tables", full)
    result = _run(experiment, out, "--overrides", str(overrides))
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert (f"the reports could not be written (cannot write {out / 'reports' / old_pdf[0].name}: the disk is "
            "full" in result.output)
    with ResultStore.in_folder(out, create=False) as store:
        assert store.last_run()["status"] == "completed without reports"
    assert (out / "tubes.csv").is_file()
    assert not (out / "reports").exists() and not (out / "review").exists()
    assert len(list(out.glob("outdated-*/reports/*.pdf"))) == len(old_pdf)
    assert _leftovers(out) == [] and not list(out.glob(".reports-staging*"))


def test_bat_report_refuses_a_linked_reports_folder(experiment, tmp_path):
    out = tmp_path / "out"
    assert _run(experiment, out, "--no-reports").exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "reports").symlink_to(elsewhere, target_is_directory=True)
    patient = experiment.tubes[0].patient
    result = runner.invoke(app, ["report", str(out), "--patient", patient])
    assert result.exit_code == 4, result.output
    assert "reports: this folder is a symbolic link" in result.output and "Traceback" not in result.output
    assert list(elsewhere.iterdir()) == []
    full = runner.invoke(app, ["report", str(out)])  # a whole rendering replaces the link by a real folder
    assert full.exit_code == 0, full.output
    assert not (out / "reports").is_symlink() and list(elsewhere.iterdir()) == []
