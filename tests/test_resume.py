"""Crash safety and determinism: a run killed with SIGKILL mid-batch, then re-run, ends identical to an
uninterrupted run; runs with 1 and 2 workers give byte-identical tables."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bat_analysis.pipeline import RunOptions, run
from guards import process_group_alive

ROOT = Path(__file__).resolve().parents[1]

# A real run in a child process that SIGKILLs itself right after the K-th tube is stored, while the
# other worker still has a tube in flight (nothing is flushed or cleaned up: as with kill -9).
_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from bat_analysis.pipeline import RunOptions, run

    data, out, k = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    done = []

    def on_result(i, result):
        done.append(i)
        if len(done) == k:
            os.kill(os.getpid(), signal.SIGKILL)

    run(RunOptions(data_dir=data, layout=data / "layout.csv", out=out, workers=2, quiet=True, reports=False),
        on_result=on_result)
    print("finished without being killed")
""")


SIMULATION = {"n_patients": 2, "n_events": 6000, "seed": 5, "n_concentrations": 4}  # experiment (conftest.py)


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory):
    """An uninterrupted run with one worker."""
    out = tmp_path_factory.mktemp("reference")
    summary = run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=1,
                             quiet=True, reports=False))
    assert summary.n_gated == len(experiment.tubes) and summary.n_reused == 0
    return out



def _stored_count(out: Path) -> int:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM tubes").fetchone()[0]
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_gives_identical_outputs(experiment, reference, tmp_path):
    out = tmp_path / "killed"
    k = 9
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "child.log"
    with open(log, "w") as fh:
        child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(experiment.out_dir), str(out), str(k)],
                                 env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        child.wait(timeout=300)
    # the workers the killed run left behind notice it and exit by themselves
    deadline = time.monotonic() + 10
    while process_group_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = process_group_alive(child.pid)
    if orphans:
        os.killpg(child.pid, signal.SIGKILL)
    assert not orphans, "worker processes outlived the killed run"
    assert child.returncode == -signal.SIGKILL, log.read_text()
    assert "finished without being killed" not in log.read_text()
    stored = _stored_count(out)
    assert k <= stored < len(experiment.tubes)  # finished tubes kept; the rest (incl. in flight) lost
    assert not (out / "tubes.csv").exists()
    assert (out / ".bat-run.lock").exists()  # stale lock of the killed run: must not block the re-run

    summary = run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=2,
                             quiet=True, reports=False))
    assert summary.n_reused == stored and summary.n_gated == len(experiment.tubes) - stored
    for name in ("tubes.csv", "patients.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_rerun_reuses_everything_and_is_byte_identical(experiment, reference, tmp_path):
    before = {n: (reference / n).read_bytes() for n in ("tubes.csv", "patients.csv")}
    summary = run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=reference,
                             workers=2, quiet=True, reports=False))
    assert summary.n_gated == 0 and summary.n_reused == len(experiment.tubes)
    assert {n: (reference / n).read_bytes() for n in before} == before
    from bat_analysis.store import ResultStore

    with ResultStore.in_folder(reference) as store:
        runs = store.runs()
    assert [r["status"] for r in runs] == ["completed", "completed"] and runs[-1]["n_reused"] == len(experiment.tubes)


def test_changed_file_is_regated(experiment, reference, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(experiment.out_dir, data)
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    victim = experiment.tubes[3].file
    raw = bytearray((data / victim).read_bytes())
    raw[-4:] = b"\x00\x00\x80\x3f"  # the last event value changes: a different file
    (data / victim).write_bytes(bytes(raw))
    summary = run(RunOptions(data_dir=data, layout=data / "layout.csv", out=out, workers=1, quiet=True,
                             reports=False))
    assert summary.n_gated == 1 and summary.n_reused == len(experiment.tubes) - 1


def test_scoring_patient_by_patient_equals_scoring_all_at_once(reference):
    from bat_analysis.analysis.score import score_experiment
    from bat_analysis._outputs import table_to_csv
    from bat_analysis.pipeline import analysis_config, load_run, score_results

    stored = load_run(reference, score=False)
    whole = score_experiment(stored.results, analysis_config(stored.template))
    by_patient = score_results(stored.results, stored.template, {}, store=None)  # all at once, no cache
    from bat_analysis.store import ResultStore

    with ResultStore.in_folder(reference) as store:
        cached = score_results(stored.results, stored.template, {}, store)  # per patient, from the cache
    assert len({r.tube.patient for r in stored.results}) == 2
    for scores in (by_patient, cached):
        assert table_to_csv(scores.tubes) == table_to_csv(whole.tubes)
        assert table_to_csv(scores.patients) == table_to_csv(whole.patients)
        assert sorted(scores.fits) == sorted(whole.fits)
