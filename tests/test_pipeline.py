"""The map step and its executors: same results for any worker count, bad files isolated, the run lock."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guards import inject_hang, no_hang

from bat_analysis.errors import BatError
from bat_analysis.records import TubeResult
from bat_analysis.pipeline import GateTask, RunLock, cache_key, run_local

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_experiment(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    out = tmp_path_factory.mktemp("sim")
    exp = simulate_experiment(out, n_patients=1, n_events=6000, seed=11, n_concentrations=3,
                              basophil_pct=(2.5, 3.0))  # ~150 basophils a tube: enough to form a population
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
    with no_hang(120, "the batch (the hung tube was not stopped)"):
        yield


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
    inject_hang(tmp_path, victim)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    late = _gate_in_child(tasks[1], 5)
    assert not late.ok and late.flags[0].code == "TUBE_TIMEOUT" and "longer than 5 s" in late.error
    fine = _gate_in_child(tasks[0], 60)
    assert fine.ok and fine.n_basophils > 0


def test_summary_says_what_became_of_the_reports(small_experiment, tmp_path, monkeypatch):
    """``RunSummary.reports``: written, kept when nothing changed, not_written with --no-reports or without a
    renderer, failed when the renderer fails (the run then completes without reports); the files a renderer
    reports writing are the run's outputs."""
    import shutil

    import bat_analysis.report as report
    from bat_analysis.pipeline import RunOptions, run
    from bat_analysis.report._html import ReportPaths, report_filename
    from bat_analysis.store import ResultStore

    data = tmp_path / "data"
    shutil.copytree(small_experiment.out_dir, data, ignore=shutil.ignore_patterns("garbage.fcs"))
    out = tmp_path / "out"

    def fake_render(out_dir, results, scores, run_info, *, patients=None, workers=None, **_):
        paths = ReportPaths()
        for p in sorted({r.tube.patient for r in results}):
            for kind in ("html", "pdf"):
                target = Path(out_dir) / "reports" / f"{report_filename(p)}.{kind}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(p)
                getattr(paths, kind)[p] = target
        paths.gallery = Path(out_dir) / "review" / "index.html"
        paths.gallery.parent.mkdir(parents=True, exist_ok=True)
        paths.gallery.write_text("gallery")
        return paths

    def options(**kw):
        return RunOptions(data_dir=data, layout=small_experiment.layout_path, out=out, workers=1, quiet=True, **kw)

    monkeypatch.setattr(report, "render_reports", fake_render)
    first = run(options())
    assert first.reports == "written" and first.report_note is None and first.report_error is None
    assert {p.relative_to(out).as_posix() for p in first.outputs} >= {"reports/P01.html", "reports/P01.pdf",
                                                                     "review/index.html"}
    again = run(options())
    assert again.reports == "kept" and "kept" in again.report_note
    skipped = run(options(reports=False))
    assert skipped.reports == "not_written" and "--no-reports" in skipped.report_note

    def broken(*args, **kwargs):
        raise TypeError("'bool' object is not callable")

    (out / "review" / "index.html").unlink()  # reports missing: rendered again
    monkeypatch.setattr(report, "render_reports", broken)
    failed = run(options())
    assert failed.reports == "failed" and "could not be written (TypeError" in failed.report_error
    with ResultStore.in_folder(out) as store:
        assert store.last_run()["status"] == "completed without reports"
    monkeypatch.delattr(report, "render_reports")  # the renderer is not installed
    missing = run(options())
    assert missing.reports == "not_written" and "renderer is not available" in missing.report_note


def test_merged_patient_scores_keep_every_field():
    """Scores of patients scored one at a time merge into one experiment's: every field of ExperimentScores
    is carried (a field added to it and not merged fails here)."""
    import dataclasses

    import pandas as pd

    from bat_analysis.analysis.config import AnalysisConfig
    from bat_analysis.analysis.score import ExperimentScores
    from bat_analysis.pipeline import _merge_scores

    config = AnalysisConfig()
    parts = [ExperimentScores(tubes=pd.DataFrame({"file": [f"{p}.fcs"]}), patients=pd.DataFrame({"patient": [p]}),
                              fits={(p, "birch", "none"): f"fit {p}"}, thresholds={(p, "none", "CD63"): f"thr {p}"},
                              effects={(p, "birch"): f"effect {p}"}, config=config,
                              references={(p, "none"): (f"{p}_neg.fcs",)},
                              tube_markers=pd.DataFrame({"file": [f"{p}.fcs"], "marker": ["CD63"]}))
             for p in ("P01", "P02")]
    merged = _merge_scores(parts)
    assert {f.name for f in dataclasses.fields(ExperimentScores)} == {"tubes", "patients", "fits", "thresholds",
                                                                       "effects", "config", "references",
                                                                       "tube_markers"}
    assert list(merged.tubes["file"]) == ["P01.fcs", "P02.fcs"] and list(merged.patients["patient"]) == ["P01", "P02"]
    assert list(merged.tube_markers["file"]) == ["P01.fcs", "P02.fcs"]
    assert merged.fits == {**parts[0].fits, **parts[1].fits} and merged.effects == {**parts[0].effects,
                                                                                   **parts[1].effects}
    assert merged.thresholds == {**parts[0].thresholds, **parts[1].thresholds} and merged.config is config
    assert merged.references == {**parts[0].references, **parts[1].references}


def test_a_patient_without_values_merges_with_the_others_types():
    """A patient none of whose tubes was gated has all-empty value columns (object, from None): merged with the
    others' they keep the others' number type, with no pandas FutureWarning about all-NA entries."""
    import warnings

    import numpy as np
    import pandas as pd

    from bat_analysis.analysis.config import AnalysisConfig
    from bat_analysis.analysis.score import ExperimentScores
    from bat_analysis.pipeline import _merge_scores

    def part(p, pct, when):
        return ExperimentScores(tubes=pd.DataFrame({"file": [f"{p}.fcs"], "pct_cd63": [pct], "when": [when]}),
                                patients=pd.DataFrame({"patient": [p]}), config=AnalysisConfig(),
                                tube_markers=pd.DataFrame({"file": [f"{p}.fcs"]}))
    parts = [part("P01", 12.5, pd.Timestamp("2026-01-01")), part("P02", None, None), part("P03", 3.0, None)]
    assert parts[1].tubes["pct_cd63"].dtype == object
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = _merge_scores(parts)
    assert merged.tubes["pct_cd63"].dtype == np.float64 and merged.tubes["pct_cd63"].isna().tolist() == [False, True,
                                                                                                         False]
    assert merged.tubes["when"].dtype.kind == "M"


# ---------------------------------------------------------------- progress (issue 14, "Progress")
def _recorded_progress(monkeypatch):
    """Make runs display their progress on a recorded console; returns the list of Progress objects made."""
    import io

    import bat_analysis.pipeline as pipeline
    from rich.console import Console

    made = []
    real = pipeline._progress

    def recorded(quiet):
        progress = real(False)
        progress.live.console = Console(file=io.StringIO(), width=160, force_terminal=False, record=True)
        made.append(progress)
        return progress

    monkeypatch.setattr(pipeline, "_progress", recorded)
    return made


def test_progress_counts_patients_and_report_files_with_an_eta(simulated, tmp_path, monkeypatch):
    """Scoring shows n of N patients, each scored as soon as its tubes are stored (during the gating), and
    report writing n of N files (each patient's HTML and PDF, the gallery) with an ETA column, never "0/?"."""
    from bat_analysis.pipeline import RunOptions, run

    exp = simulated(n_patients=2, n_events=3000, seed=21, n_concentrations=2)
    made = _recorded_progress(monkeypatch)
    seen = []  # (tube's patient, patients scored) as each tube is stored

    def on_result(i, result):
        scoring = next(t for t in made[0].tasks if t.description == "Scoring patients")
        seen.append((result.tube.patient, scoring.completed, scoring.total))

    summary = run(RunOptions(data_dir=exp.out_dir, layout=exp.layout_path, out=tmp_path / "out", workers=1),
                  on_result=on_result)
    assert summary.reports == "written"
    tasks = {t.description: t for t in made[0].tasks}
    assert (tasks["Scoring patients"].completed, tasks["Scoring patients"].total) == (2, 2)
    assert (tasks["Writing reports"].completed, tasks["Writing reports"].total) == (5, 5)  # 2 x (HTML, PDF) + gallery
    # one worker gates in layout order: P01 is scored before P02's first tube is stored
    first_p02 = next(scored for patient, scored, _ in seen if patient == "P02")
    assert first_p02 == 1 and all(total == 2 for *_, total in seen)
    text = made[0].live.console.export_text()
    assert "Scoring patients" in text and "2/2" in text and "5/5" in text and "ETA" in text
    assert "0/?" not in text and "1/1" not in text


def test_preloaded_gating_libraries_are_all_that_gating_a_tube_imports(small_experiment):
    """Gating a tube in a process that ran ``preload_gating`` imports no further scipy, scikit-image or
    flowutils module: the run's forked workers inherit every library gating uses (a library added to the
    estimators and not to GATING_LIBRARIES fails here). Nor is scipy.signal imported at all (~0.4 s of the run's
    start-up: gating/_peaks.py, gating/_simplify.py)."""
    import subprocess
    import sys

    code = f"""
import sys
from pathlib import Path
from bat_analysis.gating.templates import load_template
from bat_analysis.gating.tube import gate_tube
from bat_analysis.io.layout import read_layout
from bat_analysis.pipeline import preload_gating
preload_gating()
before = set(sys.modules)
tubes = read_layout(Path({str(small_experiment.layout_path)!r}), Path({str(small_experiment.out_dir)!r}),
                    check_unlisted=False)
for tube in tubes[:3]:
    gate_tube(Path({str(small_experiment.out_dir)!r}) / tube.file, tube, load_template("bat_ccr3_cd63"))
print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("scipy", "skimage", "flowutils")))
print("scipy.signal" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "False"], out.stdout


def test_check_inputs_hashes_beside_the_imports_and_stops_at_ctrl_c(tmp_path, monkeypatch):
    """The inputs are hashed in threads while ``meanwhile`` (the run's imports) runs; Ctrl-C during it leaves the
    files not yet begun unhashed (it does not wait for the whole plate to be read)."""
    import threading
    import time

    from bat_analysis import pipeline
    from bat_analysis.records import Tube

    tubes = []
    for i in range(60):
        (tmp_path / f"t{i:02d}.fcs").write_bytes(b"FCS3.1")
        tubes.append(Tube(file=f"t{i:02d}.fcs", patient="P1", condition="negative_control"))
    hashed, threads = [], set()

    def slow_hash(path, **_):
        threads.add(threading.get_ident())
        time.sleep(0.02)
        hashed.append(path)
        return "0" * 64

    monkeypatch.setattr(pipeline, "file_sha256", slow_hash)
    ran = []
    check = pipeline.check_inputs(tubes, tmp_path, pipeline._progress(True), meanwhile=lambda: ran.append(1))
    assert ran == [1] and len(hashed) == 60 and set(check.checksums.values()) == {"0" * 64}
    assert threading.get_ident() not in threads

    hashed.clear()

    def interrupted():
        time.sleep(0.05)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.check_inputs(tubes, tmp_path, pipeline._progress(True), meanwhile=interrupted)
    time.sleep(0.1)
    assert len(hashed) < 20
