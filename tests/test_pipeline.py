"""The map step and its executors: same results for any worker count, bad files isolated, the run lock."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bat_analysis.errors import BatError
from bat_analysis.records import TubeResult
from bat_analysis.pipeline import GateTask, RunLock, cache_key, run_local

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_experiment(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    out = tmp_path_factory.mktemp("sim")
    exp = simulate_experiment(out, n_patients=1, n_events=6000, seed=11, n_concentrations=3)
    (out / "garbage.fcs").write_bytes(b"not an FCS file at all" * 50)
    return exp


def _tasks(exp, extra_bad: bool = True) -> list[GateTask]:
    from bat_analysis.gating.templates import load_template
    from bat_analysis.records import Tube

    template = load_template("bat_ccr3_cd63")
    tasks = [GateTask(path=str(exp.out_dir / t.file), tube=t, template=template) for t in exp.tubes]
    if extra_bad:
        bad = Tube(file="garbage.fcs", patient="P01", condition="allergen", pretreatment="none",
                   allergen="birch", concentration=1.0, unit="ng/mL")
        tasks.insert(2, GateTask(path=str(exp.out_dir / "garbage.fcs"), tube=bad, template=template))
    return tasks


def _fingerprint(r: TubeResult) -> tuple:
    values = tuple((m, r.basophil_values[m].tobytes()) for m in sorted(r.basophil_values))
    gates = tuple((g.name, repr(g.geometry), g.count, g.parent_count) for g in r.gates)
    return (r.tube.file, r.n_events, r.n_basophils, values, gates, tuple(r.flags), r.error)


def test_workers_give_identical_results_and_isolate_a_bad_file(small_experiment):
    tasks = _tasks(small_experiment)
    one = dict(run_local(tasks, 1))
    two = dict(run_local(tasks, 2))
    assert sorted(one) == sorted(two) == list(range(len(tasks)))
    for i in range(len(tasks)):
        assert _fingerprint(one[i]) == _fingerprint(two[i]), tasks[i].tube.file
    bad = one[2]
    assert not bad.ok and "garbage.fcs" in bad.error and any(f.severity == "fail" for f in bad.flags)
    good = [r for i, r in one.items() if i != 2]
    assert all(r.ok and r.n_basophils > 0 for r in good)
    assert all(r.file_sha256 and len(r.file_sha256) == 64 for r in one.values())


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                    reason="the crash is injected into forked workers by patching the parent")
def test_a_file_that_kills_its_worker_fails_alone(small_experiment, monkeypatch):
    import bat_analysis.gating.tube as tube_module

    real = tube_module.gate_tube
    victim = small_experiment.tubes[1].file

    def crashing(path, tube, template, **options):
        if tube.file == victim:
            os._exit(13)  # a worker dying without a Python exception (like a segfault or the OOM killer)
        return real(path, tube, template, **options)

    monkeypatch.setattr(tube_module, "gate_tube", crashing)
    tasks = _tasks(small_experiment, extra_bad=False)
    results = dict(run_local(tasks, 2))
    assert sorted(results) == list(range(len(tasks)))
    died = [r.tube.file for r in results.values() if any(f.code == "WORKER_DIED" for f in r.flags)]
    assert died == [victim]
    assert all(r.ok for r in results.values() if r.tube.file != victim)


def test_unexpected_exception_becomes_a_failed_tube(small_experiment, monkeypatch):
    import bat_analysis.gating.tube as tube_module

    def buggy(path, tube, template, **options):
        raise ZeroDivisionError("division by zero in an estimator")

    monkeypatch.setattr(tube_module, "gate_tube", buggy)
    results = dict(run_local(_tasks(small_experiment, extra_bad=False)[:2], 1))
    for r in results.values():
        assert not r.ok and "ZeroDivisionError" in r.error and r.flags[0].code == "GATING_CRASHED"
        assert r.file_sha256 is not None


def test_cache_key_changes_with_every_input(small_experiment):
    tube = small_experiment.tubes[0]
    base = cache_key("a" * 64, "t" * 64, tube, None)
    assert base == cache_key("a" * 64, "t" * 64, tube, None)
    from dataclasses import replace

    assert len({base, cache_key("b" * 64, "t" * 64, tube, None), cache_key("a" * 64, "u" * 64, tube, None),
                cache_key("a" * 64, "t" * 64, tube, "c" * 64),
                cache_key("a" * 64, "t" * 64, replace(tube, patient="P99"), None)}) == 5


_HOLDER = textwrap.dedent("""
    import sys, time
    from bat_analysis.pipeline import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_lock_refuses_a_second_run_and_ignores_a_stale_lock(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, env=env,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BatError, match=r"another 'bat run' is writing to this folder \(pid "
                                           rf"{holder.pid} .*choose another --out"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file remains (stale, naming a dead pid) but does not block
    assert (tmp_path / ".bat-run.lock").read_text().startswith(f"pid {holder.pid} ")
    with RunLock(tmp_path):
        assert (tmp_path / ".bat-run.lock").read_text().startswith(f"pid {os.getpid()} ")


def test_values_survive_pickling_for_workers(small_experiment):
    import pickle

    task = _tasks(small_experiment, extra_bad=False)[0]
    again = pickle.loads(pickle.dumps(task))
    assert again.tube == task.tube and again.template.sha256 == task.template.sha256
    assert again.template.gates == task.template.gates and again.path == task.path


def test_missing_distributed_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if bat-analysis[dask] were not installed
    from bat_analysis.pipeline import run_dask

    with pytest.raises(BatError, match=r"needs the 'distributed' package.*pip install 'bat-analysis\[dask\]'"):
        list(run_dask([], "tcp://127.0.0.1:8786"))


# ------------------------------------------------------------------------------------------------ time limit
@pytest.fixture()
def time_limit():
    """Fail a test that runs longer than 120 s instead of hanging the suite."""
    import signal

    def expired(signum, frame):
        raise TimeoutError("the batch did not finish within 120 s: the hung tube was not stopped")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _hang_on(monkeypatch, victim: str) -> None:
    import time

    import bat_analysis.gating.tube as tube_module

    real = tube_module.gate_tube

    def hanging(path, tube, template, **options):
        if tube.file == victim:
            time.sleep(3600)  # a file that keeps its worker busy for an hour
        return real(path, tube, template, **options)

    monkeypatch.setattr(tube_module, "gate_tube", hanging)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                    reason="the hang is injected into forked workers by patching the parent")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_tube_past_its_time_limit_fails_alone(small_experiment, monkeypatch, time_limit, workers):
    tasks = _tasks(small_experiment, extra_bad=False)[:5]
    victim = tasks[1].tube.file
    _hang_on(monkeypatch, victim)
    results = dict(run_local(tasks, workers, timeout_s=4))
    assert sorted(results) == list(range(len(tasks)))
    late = results[1]
    assert not late.ok and [f.code for f in late.flags] == ["TUBE_TIMEOUT"]
    assert late.error.startswith("gating took longer than 4 s and was stopped")
    assert late.file_sha256 == tasks[1].sha256
    assert all(r.ok and r.n_basophils > 0 for i, r in results.items() if i != 1)


def test_without_a_time_limit_one_worker_gates_in_this_process(small_experiment, monkeypatch):
    import bat_analysis.pipeline as pipeline

    monkeypatch.setattr(pipeline, "ProcessPoolExecutor", None)  # no pool may be started
    results = dict(run_local(_tasks(small_experiment, extra_bad=False)[:2], 1, timeout_s=None))
    assert all(r.ok for r in results.values())


def test_a_tube_gated_in_a_child_process_is_stopped_at_its_limit(small_experiment, tmp_path, monkeypatch,
                                                                 time_limit):
    """The Dask executor gates each tube in a child process of its worker: killed at the limit."""
    from bat_analysis.pipeline import _gate_in_child

    tasks = _tasks(small_experiment, extra_bad=False)
    victim = tasks[1].tube.file
    # the hang is injected into the child interpreter (a fresh process) by a sitecustomize module
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import time
        import bat_analysis.gating.tube as tube_module
        real = tube_module.gate_tube
        def hanging(path, tube, template, **options):
            if tube.file == {victim!r}:
                time.sleep(3600)
            return real(path, tube, template, **options)
        tube_module.gate_tube = hanging
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    late = _gate_in_child(tasks[1], 5)
    assert not late.ok and late.flags[0].code == "TUBE_TIMEOUT" and "longer than 5 s" in late.error
    fine = _gate_in_child(tasks[0], 60)
    assert fine.ok and fine.n_basophils > 0
