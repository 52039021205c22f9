"""The same run on a Dask distributed cluster (a LocalCluster over TCP) equals the local run."""

from __future__ import annotations

import pytest

from guards import inject_hang

from bat_analysis.errors import BatError
from bat_analysis.pipeline import RunOptions, run

distributed = pytest.importorskip("distributed", reason="the 'distributed' package (bat-analysis[dask]) is "
                                                        "not installed")


# basophils as in a real acquisition (~100 or more) in few events: fewer form no population and are not gated
SIMULATION = {"n_patients": 1, "n_events": 6000, "seed": 8, "n_concentrations": 4,  # experiment (conftest.py)
              "basophil_pct": (2.5, 3.0)}


@pytest.mark.slow
def test_local_cluster_equals_local_processes(experiment, tmp_path):
    local = tmp_path / "local"
    run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=local, workers=2, quiet=True,
                   reports=False))
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                                       dashboard_address=":0")
    try:
        assert cluster.scheduler_address.startswith("tcp://")
        on_dask = tmp_path / "dask"
        summary = run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=on_dask,
                                 scheduler=cluster.scheduler_address, quiet=True, reports=False))
    finally:
        cluster.close()
    assert summary.n_gated == len(experiment.tubes) and summary.n_failed == 0
    for name in ("tubes.csv", "patients.csv"):
        assert (on_dask / name).read_bytes() == (local / name).read_bytes(), name


def test_unreachable_scheduler_is_a_clear_error(experiment, tmp_path, monkeypatch):
    import bat_analysis.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(BatError, match="--scheduler: cannot reach the Dask scheduler.*running scheduler"):
        run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=tmp_path / "o",
                       scheduler="tcp://127.0.0.1:9", quiet=True, reports=False))
    from bat_analysis.store import ResultStore

    with ResultStore.in_folder(tmp_path / "o") as store:
        assert store.last_run()["status"] == "stopped"


@pytest.mark.slow
def test_a_tube_past_its_time_limit_on_the_cluster_fails_alone(experiment, tmp_path, monkeypatch):
    """On Dask each tube is gated in a child process of its worker, killed at the limit."""
    import csv
    import os
    from pathlib import Path

    victim = next(t.file for t in experiment.tubes if t.condition == "allergen")
    # the hang is injected into the child interpreters by a sitecustomize module on their PYTHONPATH
    inject_hang(tmp_path, victim)
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(root)]))
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                                       dashboard_address=":0")
    try:
        summary = run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=tmp_path / "o",
                                 scheduler=cluster.scheduler_address, quiet=True, reports=False, tube_timeout_s=8))
    finally:
        cluster.close()
    assert [f for f, _ in summary.failed] == [victim]
    assert summary.failed[0][1].startswith("gating took longer than 8 s and was stopped")
    with (tmp_path / "o" / "tubes.csv").open(newline="", encoding="utf-8") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert rows[victim]["qc_flags"] == "TUBE_TIMEOUT"
    others = [r for f, r in rows.items() if f != victim]
    assert all(r["error"] == "" and "TUBE_TIMEOUT" not in r["qc_flags"] for r in others)
    # gated as usual (this small experiment's tubes hold 35-57 basophils: some too few to form a population)
    assert sum(int(r["n_basophils"]) > 0 for r in others) >= len(others) // 2
