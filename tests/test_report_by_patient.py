"""Reports patient by patient: a patient's plots share axes taken from its own tubes (``drawing_jobs``), so they
are the same drawn alone or with the run; and reports drawn while the run gates — each patient's rendered as soon
as the patient is scored (``pipeline._EarlyReports``, ``report._html.PatientRendering``) — are the reports a
rendering at the end of the run writes; a reviewer's decision logged in the meantime makes the run render them
again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bat_analysis import __version__
from bat_analysis.pipeline import RunOptions, run
from bat_analysis.store import ResultStore

SIMULATION = {"n_patients": 2, "n_events": 5000, "seed": 21, "n_concentrations": 3}
COMMAND = "bat run DATA --out OUT"



def test_a_patients_plots_are_the_same_drawn_alone_or_with_the_run():
    """Axes come from the patient's own tubes: drawing one patient alone (``bat report --patient``, or during
    the gating) gives the images drawing the whole run gives; another patient's tubes do not move them."""
    from test_report import make_experiment

    from bat_analysis.report._html import draw_tubes, drawing_jobs
    from bat_analysis.report._views import RunView, tube_views
    from bat_analysis.report.plots import activation_range, marker_values

    results, scores = make_experiment(2)
    together = tube_views(results, scores, RunView({}))
    alone = tube_views([r for r in results if r.tube.patient == "P02"], scores, RunView({}))
    draw_tubes(together)
    draw_tubes(alone)
    of_p02 = [v for v in together if v.result.tube.patient == "P02"]
    assert [v.result.tube.file for v in of_p02] == [v.result.tube.file for v in alone] and alone
    assert [[p.data for p in v.images] for v in of_p02] == [[p.data for p in v.images] for v in alone]
    for patient in ("P01", "P02"):  # each patient's activation axis is its own tubes' range
        own = [v for v in together if v.result.tube.patient == patient]
        expected = activation_range([marker_values(v.result, v.marker) for v in own], [v.threshold for v in own])
        assert {j.xlim for j in drawing_jobs(together) if j.result.tube.patient == patient} == {expected}



def test_the_processes_rendering_a_run_share_their_frames_and_remove_them(tmp_path):
    """The processes rendering patients during a run share the frames they draw through a folder in the output
    folder: its files are frames, the plots are those a process drawing alone makes, and closing the rendering
    removes the folder."""
    from test_report import make_experiment

    from bat_analysis.report._html import PatientRendering, render_patient
    from bat_analysis.report.plots import SharedFrames

    results, scores = make_experiment(2)
    of = {p: [r for r in results if r.tube.patient == p] for p in ("P01", "P02")}
    rendering = PatientRendering(tmp_path / "early", {}, workers=2, pdf=False, fork=True)
    try:
        for patient, tubes in of.items():
            rendering.submit(patient, tubes, scores)
        made = rendering.finished()
        frames = rendering.frames
        assert frames is not None and frames.parent == tmp_path / "early"
        stored = [p.name for p in frames.iterdir()]
    finally:
        rendering.close()
    assert stored and all(name.endswith(SharedFrames.SUFFIX) for name in stored)
    assert not frames.exists() and rendering.frames is None
    for patient, tubes in of.items():
        alone = render_patient(tmp_path / "alone", tubes, scores, {}, pdf=False)
        assert {f: [p.data for p in pngs] for f, pngs in made[patient].images.items()} == \
            {f: [p.data for p in pngs] for f, pngs in alone.images.items()}




def _options(experiment, out: Path) -> RunOptions:
    return RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=2, quiet=True,
                      command=COMMAND)


def _counting_submissions(monkeypatch) -> list[str]:
    from bat_analysis.report import _html

    submitted: list[str] = []
    real = _html.PatientRendering.submit

    def submit(self, patient, results, scores):
        submitted.append(patient)
        return real(self, patient, results, scores)

    monkeypatch.setattr(_html.PatientRendering, "submit", submit)
    return submitted


def _outputs(out: Path) -> dict[str, bytes]:
    """The reports' HTML, the gallery and its images, with the run's start time (which differs between two
    runs) replaced by a placeholder; and each PDF's text, likewise."""
    import pdfplumber

    with ResultStore.in_folder(out) as store:
        started = store.runs()[-1]["started_at"]
    files: dict[str, bytes] = {}
    for path in sorted([*(out / "reports").glob("*.html"), out / "review" / "index.html",
                        *(out / "review" / "img").iterdir()]):
        data = path.read_bytes()
        files[path.relative_to(out).as_posix()] = data.replace(started.encode(), b"START") if path.suffix == ".html" \
            else data
    for path in sorted((out / "reports").glob("*.pdf")):
        with pdfplumber.open(path) as pdf:
            text = "\n".join(page.extract_text() or "" for page in pdf.pages)
        files[path.relative_to(out).as_posix()] = re.sub(re.escape(started), "START", text).encode()
    return files


@pytest.mark.slow
def test_reports_rendered_during_the_gating_are_those_rendered_at_the_end(experiment, tmp_path, monkeypatch):
    import bat_analysis.pipeline as pipeline

    submitted = _counting_submissions(monkeypatch)
    early = run(_options(experiment, tmp_path / "early"))
    assert early.reports == "written"
    assert sorted(submitted) == ["P01", "P02"]  # both patients were rendered while the run gated

    submitted.clear()
    monkeypatch.setattr(pipeline._EarlyReports, "usable", lambda self: False)  # all rendered at the end
    late = run(_options(experiment, tmp_path / "late"))
    assert late.reports == "written"
    a, b = _outputs(tmp_path / "early"), _outputs(tmp_path / "late")
    assert sorted(a) == sorted(b) and len(a) > 2 * 2 + 1
    for name in a:
        assert a[name] == b[name], name
    for out in (tmp_path / "early", tmp_path / "late"):  # no staging folder is left behind
        assert not [p.name for p in out.iterdir() if "staging" in p.name]


@pytest.mark.slow
def test_a_decision_logged_during_the_run_makes_the_early_reports_render_again(experiment, tmp_path, monkeypatch):
    """A reviewer excludes a tube of P01 after P01's reports were rendered, while the run still gates: the run
    scores P01 again without that tube, and its report says so (the early report, which does not, is dropped)."""
    submitted = _counting_submissions(monkeypatch)
    out = tmp_path / "out"
    layout = experiment.tubes
    target = next(t.file for t in layout if t.patient == "P01" and t.condition == "allergen")
    n_tubes = len(layout)
    seen: list[int] = []

    def exclude_when_done(i, result):
        seen.append(i)
        if len(seen) == n_tubes:  # the last tube: P01 was scored (and sent to render) long before
            with ResultStore.in_folder(out) as store:
                store.append_corrections([{"action": "exclude", "kind": "tube", "file": target, "value": None,
                                           "before": None, "reviewer": "QC reviewer", "reason": "clogged tube",
                                           "source": "test", "version": __version__}])

    summary = run(_options(experiment, out), on_result=exclude_when_done)
    assert "P01" in submitted
    assert summary.reports == "written"
    row = summary.tubes.set_index("file").loc[target]
    assert row["review_status"] == "excluded" and "EXCLUDED_BY_REVIEWER" in row["qc_flags"]
    html = (out / "reports" / "P01.html").read_text(encoding="utf-8")
    assert "EXCLUDED_BY_REVIEWER" in html and "clogged tube" in html


@pytest.mark.slow
def test_a_resumed_run_renders_reused_patients_beside_those_rendered_during_the_gating(experiment, tmp_path,
                                                                                      monkeypatch):
    """A run stopped after P01's tubes were stored, then resumed: P01's tubes are reused from the store (not
    scored during the gating), P02's gated and rendered during the gating; the reports are those of a run that
    renders everything at the end."""
    import bat_analysis.pipeline as pipeline

    submitted = _counting_submissions(monkeypatch)
    out = tmp_path / "resumed"
    n_first = sum(1 for t in experiment.tubes if t.patient == "P01")
    stored: list[int] = []

    def stop_after_p01(i, result):
        stored.append(i)
        if len(stored) == n_first + 1:
            raise KeyboardInterrupt

    def stopped_then_resumed(folder: Path):
        stored.clear()
        with pytest.raises(KeyboardInterrupt):
            run(_options(experiment, folder), on_result=stop_after_p01)
        assert not [p.name for p in folder.iterdir() if "staging" in p.name]  # the stopped run left none
        submitted.clear()
        return run(_options(experiment, folder))

    resumed = stopped_then_resumed(out)
    assert resumed.reports == "written" and 0 < resumed.n_reused < resumed.n_tubes
    assert submitted.count("P02") == 1 and "P01" not in submitted  # P01 was rendered at the end, beside P02

    monkeypatch.setattr(pipeline._EarlyReports, "usable", lambda self: False)  # the same, all rendered at the end
    stopped_then_resumed(tmp_path / "late")
    a, b = _outputs(out), _outputs(tmp_path / "late")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name
