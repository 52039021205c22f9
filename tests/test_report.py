"""Reports: gate drawings, per-patient HTML and PDF, the review gallery (bat_analysis.report)."""

from __future__ import annotations

import math
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bat_analysis.analysis.score import ExperimentScores, score_experiment
from bat_analysis.records import Flag, GateRecord, Tube, TubeResult
from bat_analysis.report import render_reports
from bat_analysis.report._views import report_filename
from bat_analysis.report.plots import (PngRenderer, draw_activation, draw_dose_response, draw_gate,
                                       draw_tube_panel)

CONCS = (0.01, 0.04, 0.16, 0.64)
GATES = ("acquisition_qc", "margin", "cells", "singlets", "basophils")


def _density(rng: np.random.Generator, n: int = 4000) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    x = rng.normal(0.5, 0.12, n)
    y = rng.normal(0.4, 0.15, n)
    h, ex, ey = np.histogram2d(x, y, bins=64, range=[[0, 1], [0, 1]])
    return h.astype(np.uint16), (ex, ey)


def _gates(rng: np.random.Generator, n_events: int, n_bas: int, *, override: bool = False) -> list[GateRecord]:
    dens, edges = _density(rng)
    time_h, time_e = np.histogram(rng.uniform(0, 100, 3000), bins=50, range=(0, 100))
    geo = [
        {"type": "range", "dims": ["Time"], "transforms": [None], "mins": [2.0], "maxs": [98.0]},
        {"type": "range", "dims": ["FSC-A", "SSC-A"], "transforms": [None, None], "mins": [None, None],
         "maxs": [0.98, 0.98]},
        {"type": "polygon", "dims": ["FSC-A", "SSC-A"], "transforms": ["linear", "linear"],
         "vertices": [[0.2, 0.1], [0.8, 0.1], [0.85, 0.8], [0.25, 0.9]]},
        {"type": "ellipsoid", "dims": ["FSC-A", "FSC-H"], "transforms": [None, None], "mean": [0.5, 0.4],
         "covariance": [[0.02, 0.01], [0.01, 0.03]], "distance_square": 4.0},
        {"type": "polygon", "dims": ["CCR3", "SSC-A"], "transforms": ["logicle", "logicle"],
         "vertices": [[0.55, 0.05], [0.95, 0.05], [0.95, 0.45], [0.55, 0.45]]},
    ]
    counts = [n_events - 200, n_events - 400, n_events // 2, n_events // 2 - 300, n_bas]
    out = []
    parent, parent_count = None, n_events
    for i, (name, g) in enumerate(zip(GATES, geo)):
        g = dict(g, name=name, parent=parent)
        if i == 0:
            d, e = time_h, (time_e,)
        else:
            d, e = dens, edges
        method = "override" if override and name == "basophils" else "estimator"
        diag = {"reviewer": "A. Reviewer", "reason": "eosinophils inside"} if method == "override" else {}
        out.append(GateRecord(name, parent, tuple(g["dims"]), g, counts[i], parent_count, method, diag, d, e))
        parent, parent_count = name, counts[i]
    return out


def _pct(conc: float, ec50: float, top: float) -> float:
    return 3.0 + (top - 3.0) / (1.0 + 10 ** ((np.log10(ec50) - np.log10(conc)) * 1.2))


def make_results(n_patients: int = 2, seed: int = 0) -> list[TubeResult]:
    """Tubes of ``n_patients`` patients: 2 arms × (negative control, anti-FcεRI, fMLP, 5 allergen doses).

    Patient P01 has a low-basophil warning in each arm and a reviewer-adjusted basophil gate; P02 an
    unreadable fMLP tube.
    """
    rng = np.random.default_rng(seed)
    results = []
    for p in range(n_patients):
        patient = f"P{p + 1:02d}"
        for arm, top in (("none", 80.0), ("omalizumab", 25.0)):
            tubes = [Tube(f"{patient}_{arm}_neg.fcs", patient, "negative_control", arm),
                     Tube(f"{patient}_{arm}_fceri.fcs", patient, "anti_fceri", arm),
                     Tube(f"{patient}_{arm}_fmlp.fcs", patient, "fmlp", arm)]
            tubes += [Tube(f"{patient}_{arm}_birch_{c:g}.fcs", patient, "allergen", arm, "birch", c, "ng/mL")
                      for c in CONCS]
            for t in tubes:
                n_bas = 800
                frac = {"negative_control": 2.5, "anti_fceri": 60.0, "fmlp": 40.0}.get(t.condition)
                if frac is None:
                    frac = _pct(t.concentration, 0.3, top)
                n_act = int(round(n_bas * frac / 100))
                values = np.concatenate([rng.lognormal(5.0, 0.6, n_bas - n_act), rng.lognormal(8.0, 0.5, n_act)])
                flags: list[Flag] = []
                error = None
                if t.file == f"{patient}_{arm}_birch_0.04.fcs" and p == 0:
                    flags.append(Flag("LOW_BASOPHILS", "warn", "only 312 basophils (< 500)"))
                if t.file == f"{patient}_{arm}_fmlp.fcs" and p == 1 and arm == "none":
                    error = "cannot read file: truncated DATA segment"
                    flags.append(Flag("UNREADABLE", "fail", error))
                override = t.file == f"{patient}_{arm}_birch_0.16.fcs" and p == 0 and arm == "none"
                gates = [] if error else _gates(rng, 50000, len(values), override=override)
                markers = {} if error else {"CD63": values.astype(np.float32),
                                            "CD203c": rng.lognormal(6, 0.4, len(values)).astype(np.float32)}
                results.append(TubeResult(t, 0 if error else 50000, 0 if error else len(values), markers,
                                          {"acquisition_qc": 0.004, "margin": 0.008, "doublets": 0.05}, gates,
                                          flags, True, 4, "ab" * 32, error))
    return results


def make_experiment(n_patients: int = 2, seed: int = 0) -> tuple[list[TubeResult], ExperimentScores]:
    results = make_results(n_patients, seed)
    return results, score_experiment(results)


RUN_INFO = {"version": "0.1.0", "template": "bat_ccr3_cd63", "template_sha256": "cd" * 32,
            "command": "bat run data --layout layout.csv --out out", "date": "2026-11-23T18:00:00+00:00",
            "checksums": {"P01_none_neg.fcs": "ef" * 32},
            "manual_adjustments": [{"kind": "gate", "file": "P01_none_birch_0.16.fcs", "gate": "basophils",
                                    "reviewer": "A. Reviewer", "reason": "eosinophils inside",
                                    "decided_at": "2026-11-23T17:00:00+00:00", "source": "overrides.yaml"}]}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.tubes: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.scripts_src: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "div" and "tube" in (a.get("class") or "").split():
            self.tubes.append(a)
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        elif tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.scripts_src.append(a.get("src") or a.get("href") or "")


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def _pdf_pages(path: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", path.read_bytes()))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TubeResult], ExperimentScores, Any]:
    out = tmp_path_factory.mktemp("out")
    results, scores = make_experiment()
    paths = render_reports(out, results, scores, RUN_INFO, workers=1)
    return out, results, scores, paths


@pytest.mark.slow
def test_every_patient_gets_html_and_pdf(rendered: Any) -> None:
    out, results, _, paths = rendered
    patients = sorted({r.tube.patient for r in results})
    assert sorted(paths.html) == patients and sorted(paths.pdf) == patients
    for p in patients:
        assert paths.html[p] == out / "reports" / f"{report_filename(p)}.html"
        assert paths.pdf[p].read_bytes().startswith(b"%PDF")
        assert _pdf_pages(paths.pdf[p]) >= 1
    assert paths.gallery == out / "review" / "index.html"


@pytest.mark.slow
def test_patient_html_contains_every_figure(rendered: Any) -> None:
    _, results, scores, paths = rendered
    for patient, path in paths.html.items():
        mine = [r for r in results if r.tube.patient == patient]
        n_curves = len({k[1] for k in scores.fits if k[0] == patient})
        parsed = _parse(path)
        expected = sum(len(r.gates) + 1 for r in mine) + n_curves  # gates + CD63 histogram per tube
        assert len(parsed.imgs) == expected
        assert all((i.get("src") or "").startswith("data:image/png;base64,") for i in parsed.imgs)
        assert sum(1 for i in parsed.imgs if i.get("data-kind") == "dose_response") == n_curves
        assert not parsed.scripts_src  # self-contained: nothing fetched
        text = path.read_text(encoding="utf-8")
        for r in mine:
            assert r.tube.file in text
        rows = scores.patients[scores.patients["patient"] == patient]
        assert len(rows) == 1
        for _, row in rows.iterrows():
            assert row["class"].replace("_", " ") in text and row["class_reason"] in text
        assert "Audit trail" in text and "cd" * 32 in text


@pytest.mark.slow
def test_pdf_has_a_page_per_tube_block(rendered: Any) -> None:
    _, results, _, paths = rendered
    # summary + tables + 14 tubes at two per page
    n_tubes = sum(1 for r in results if r.tube.patient == "P01")
    assert _pdf_pages(paths.pdf["P01"]) >= 2 + n_tubes // 2


@pytest.mark.slow
def test_gallery_puts_flagged_tubes_first_and_links_reports(rendered: Any) -> None:
    _, results, _, paths = rendered
    parsed = _parse(paths.gallery)
    assert len(parsed.tubes) == len(results)
    assert len(parsed.imgs) == sum(len(r.gates) + 1 for r in results)
    review = paths.gallery.parent
    for img in parsed.imgs:  # linked image files, all present, loaded lazily
        assert img.get("loading") == "lazy"
        assert (review / (img.get("src") or "")).read_bytes().startswith(b"\x89PNG")
    assert len(list((review / "img").iterdir())) == len(parsed.imgs)
    statuses = [t["data-status"] for t in parsed.tubes]
    rank = {"fail": 0, "warn": 1, "pass": 2}
    assert [rank[s] for s in statuses] == sorted(rank[s] for s in statuses)
    assert statuses[0] == "fail" and "pass" in statuses
    assert parsed.tubes[0]["data-patient"] == "P02"
    assert "UNREADABLE" in (parsed.tubes[0]["data-flags"] or "")
    assert any(h.startswith("../reports/P01.html#tube-") for h in parsed.links)
    text = paths.gallery.read_text(encoding="utf-8")
    assert 'id="f-patient"' in text and 'id="f-flag"' in text and '<option value="LOW_BASOPHILS">' in text


@pytest.mark.slow
def test_manual_adjustment_is_marked(rendered: Any) -> None:
    _, _, _, paths = rendered
    text = paths.html["P01"].read_text(encoding="utf-8")
    assert "gate basophils manually adjusted" in text and "eosinophils inside" in text
    assert "gate basophils manually adjusted" not in paths.html["P02"].read_text(encoding="utf-8")


@pytest.mark.slow
def test_patients_subset_leaves_gallery_alone(tmp_path: Path) -> None:
    results, scores = make_experiment()
    paths = render_reports(tmp_path, results, scores, RUN_INFO, patients=["P02"], pdf=False)
    assert list(paths.html) == ["P02"] and paths.gallery is None
    assert not (tmp_path / "review").exists()


def test_unknown_patient_is_refused(tmp_path: Path) -> None:
    from bat_analysis.errors import BatError

    results, scores = make_experiment(1)
    with pytest.raises(BatError, match="P09"):
        render_reports(tmp_path, results, scores, RUN_INFO, patients=["P09"])


def test_draw_gate_uses_the_histogram_image_and_outline() -> None:
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage
    from matplotlib.patches import Ellipse, Polygon

    rng = np.random.default_rng(1)
    gates = _gates(rng, 5000, 400, override=True)
    fig = Figure()
    axes = fig.subplots(1, len(gates))
    for g, ax in zip(gates, axes):
        draw_gate(g, ax)
    assert not any(ax.collections for ax in axes)  # no scatter of events
    assert isinstance(axes[2].images[0], AxesImage)
    img = axes[2].images[0].get_array()
    assert img.shape == (64, 64) and int(img.sum()) == int(gates[2].density.sum())
    assert any(isinstance(p, Polygon) for p in axes[2].patches)
    assert any(isinstance(p, Ellipse) for p in axes[3].patches)
    assert len(axes[0].lines) == 2  # 1-D range: two limits on the time histogram
    texts = " ".join(t.get_text() for t in axes[4].texts)
    assert "manually adjusted" in texts and "eosinophils inside" in texts
    caption = f"({100 * gates[2].count / gates[2].parent_count:.1f}%)"
    assert any(caption in t.get_text() for t in axes[2].texts)


def test_ellipse_drawn_at_the_gate_boundary() -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    rng = np.random.default_rng(2)
    g = _gates(rng, 5000, 400)[3]
    fig = Figure()
    ax = fig.add_subplot()
    draw_gate(g, ax)
    ell = next(p for p in ax.patches if isinstance(p, Ellipse))
    # points on the drawn outline have Mahalanobis distance² == distance_square
    pts = ell.get_patch_transform().transform(np.column_stack([np.cos(np.linspace(0, 6, 7)),
                                                               np.sin(np.linspace(0, 6, 7))]))
    inv = np.linalg.inv(np.asarray(g.geometry["covariance"]))
    d = pts - np.asarray(g.geometry["mean"])
    assert np.allclose(np.einsum("ij,jk,ik->i", d, inv, d), g.geometry["distance_square"], rtol=1e-6)


def test_histogram_prints_the_pct_of_tubes_csv_for_every_tube() -> None:
    """The % a report's histogram prints is the number in tubes.csv (``pct_cd63``), for every tube of a run,
    and it is that number, not a second computation: a changed table changes the print."""
    from bat_analysis.report._html import draw_tubes
    from bat_analysis.report._views import RunView, tube_views

    results, scores = make_experiment(1)
    table = {r["file"]: r for r in scores.tubes.to_dict(orient="records")}
    views = tube_views(results, scores, RunView({}))
    draw_tubes(views)
    for v in views:
        histogram = v.images[-1]
        row = table[v.result.tube.file]
        assert histogram.kind == "activation"
        printed = [t for t in histogram.texts if t.startswith("this tube: ")]
        assert printed == [f"this tube: {row['pct_cd63']:.1f}% CD63+ (n={row['n_basophils']})"], v.result.tube.file
    assert len(views) == len(table) and all(np.isfinite(r["pct_cd63"]) for r in table.values())

    tube = views[-1].result.tube.file
    scores.tubes.loc[scores.tubes["file"] == tube, "pct_cd63"] = 12.345
    again = [v for v in tube_views(results, scores, RunView({})) if v.result.tube.file == tube]
    draw_tubes(again)
    assert [t for t in again[0].images[-1].texts if t.startswith("this tube: ")] == [
        f"this tube: 12.3% CD63+ (n={table[tube]['n_basophils']})"]


def test_tube_views_take_threshold_and_negative_control_from_the_scores() -> None:
    """The reports show the reference the scoring used (``scores.thresholds``, ``scores.references``); they
    never choose it again."""
    from bat_analysis.report._views import RunView, tube_views

    results, scores = make_experiment(1)
    by_file = {r.tube.file: r for r in results}
    for v in tube_views(results, scores, RunView({})):
        t = v.result.tube
        est = scores.thresholds[(t.patient, t.pretreatment, "CD63")]
        assert v.negative_files == scores.references[(t.patient, t.pretreatment)] == est.reference_files
        assert v.threshold == est.value and v.threshold_method == est.method
        want = np.concatenate([by_file[f].basophil_values["CD63"] for f in v.negative_files])
        assert np.array_equal(v.negative_values, want)
    scores.references[("P01", "omalizumab")] = ("P01_none_neg.fcs",)
    del scores.thresholds[("P01", "omalizumab", "CD63")]
    oma = [v for v in tube_views(results, scores, RunView({})) if v.result.tube.pretreatment == "omalizumab"]
    assert all(v.negative_files == ("P01_none_neg.fcs",) and v.threshold is None and v.pct is None for v in oma)


def test_activation_histogram_reports_pct_above_threshold() -> None:
    from matplotlib.figure import Figure

    values = np.array([10.0, 100.0, 1000.0, 5000.0])
    neg = np.array([5.0, 20.0, 600.0, 400.0])
    fig = Figure()
    ax = fig.add_subplot()
    draw_activation(values, neg, 500.0, ax)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "this tube: 50.0% CD63+ (n=4)" in labels
    assert "negative control: 25.0% CD63+ (n=4)" in labels
    assert ax.get_xscale() == "asinh"
    assert any(np.allclose(line.get_xdata(), 500.0) for line in ax.lines)


def test_activation_without_threshold_or_basophils() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    draw_activation(np.array([1.0, 2.0]), None, float("nan"), ax1)
    assert any("no threshold" in t.get_text() for t in ax1.texts)
    draw_activation(np.empty(0), None, 100.0, ax2)
    assert any("no basophils" in t.get_text() for t in ax2.texts)


def test_dose_response_draws_points_curve_and_ec50() -> None:
    from matplotlib.figure import Figure

    results, scores = make_experiment(1)
    fits = {arm: scores.fits[("P01", "birch", arm)] for arm in ("none", "omalizumab")}
    fig = Figure()
    ax = fig.add_subplot()
    draw_dose_response(fits, ax, title="birch")
    assert ax.get_xscale() == "log"
    fit = fits["none"]
    assert fit.status == "ok"
    points = [line for line in ax.lines if line.get_linestyle() == "None"]
    assert any(np.allclose(line.get_xdata(), fit.concentrations) for line in points)
    assert any(np.allclose(line.get_xdata(), fit.ec50) for line in ax.lines if line.get_linestyle() == ":")
    labels = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert f"EC50 {fit.ec50:.3g} ng/mL" in labels


def test_tube_panel_has_a_plot_per_gate_and_histogram() -> None:
    results, _ = make_experiment(1)
    res = results[4]
    fig = draw_tube_panel(res, negative_values=results[0].basophil_values["CD63"], threshold=300.0)
    assert len(fig.axes) == len(res.gates) + 1


def test_png_renderer_draws_each_gate_then_the_activation_histogram() -> None:
    """(Its speed is measured by benchmarks/bench_report.py, not here.)"""
    results, _ = make_experiment(1)
    renderer = PngRenderer(dpi=150)
    pngs = renderer.tube(results[4], negative_values=results[0].basophil_values["CD63"], threshold=300.0)
    assert [p.kind for p in pngs] == ["gate"] * 5 + ["activation"]
    assert all(p.data.startswith(b"\x89PNG") for p in pngs)


@pytest.mark.slow
def test_parallel_drawing_gives_the_same_images(tmp_path: Path) -> None:
    """A patient's plots drawn in a worker process (as runs draw them, patient by patient) are the images drawn
    in this process."""
    from bat_analysis.report._html import _pool, draw_tubes, render_patient
    from bat_analysis.report._views import RunView, tube_views

    results, scores = make_experiment(1)
    views = tube_views(results, scores, RunView({}))
    draw_tubes(views)
    pool = _pool(2)
    try:
        twins = pool.submit(render_patient, tmp_path, results, scores, {}, write=False).result().images
    finally:
        pool.shutdown()
    assert [[p.data for p in v.images] for v in views] == [[p.data for p in twins[v.result.tube.file]]
                                                           for v in views]


def test_axis_limits_are_rounded_out_to_round_numbers() -> None:
    """Limits widen to multiples of 1, 2 or 5 × 10^k (about a twentieth of the span), exactly (0.95, not
    0.9500000000000001), so that nearly equal ranges give the same limits (and share a frame)."""
    from bat_analysis.report.plots import round_out

    assert round_out(0.0157, 0.9018) == (0.0, 0.95) and round_out(0.0209, 0.9236) == (0.0, 0.95)
    assert round_out(-5242.88, 267386.88) == (-20000.0, 280000.0)
    assert round_out(0.0002, 89.49) == (0.0, 90.0) and round_out(0.0, 146.3) == (0.0, 150.0)
    assert round_out(-0.25, 1.0) == (-0.3, 1.0)
    assert round_out(1.0, 1.0) == (1.0, 1.0) and round_out(0.0, math.inf) == (0.0, math.inf)


def test_shared_gate_limits_hold_every_tube_and_ignore_one_burst() -> None:
    from bat_analysis.report.plots import frame_key, shared_gate_limits

    results = make_results(1)[:10]
    cells = [r.gates[2] for r in results if r.gates]
    shifted = cells[0]
    shifted.density_edges = (shifted.density_edges[0] + 0.5, shifted.density_edges[1] - 0.25)
    burst = results[1].gates[0]
    burst.density = burst.density.copy()
    burst.density[10] = 10_000  # a clog in one tube
    limits = shared_gate_limits(results)
    (x0, x1), (y0, y1) = limits[frame_key(shifted)]
    assert (x0, x1, y0, y1) == (0.0, 1.5, -0.3, 1.0)  # every tube's range, (0, 1.5) x (-0.25, 1.0), rounded out
    _, (t0, t1) = limits[frame_key(burst)]
    assert t0 == 0.0 and t1 < 10_000
    assert t1 >= float(np.median([r.gates[0].density.max() for r in results if r.gates]))


def _uncaptioned(record: GateRecord, limits: Any = None) -> Any:
    """A whole matplotlib drawing of a gate without its captions (the painted plots carry them as texts)."""
    from matplotlib.text import Text

    from bat_analysis.report.plots import _gate_frame, _gate_marks

    def draw(ax: Any) -> None:
        for artist in _gate_marks(record, ax, _gate_frame(record, ax, limits), None):
            if isinstance(artist, Text):
                artist.remove()
    return draw


def _decoded(png: Any) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png.data)) as img:
        return np.asarray(img.convert("RGB"), dtype=int)


def _off_outlines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels farther than 4 px from a red or orange (outline) pixel of either image: there painted and
    matplotlib's pictures are comparable (outlines are compared in test_report_paint.py)."""
    from scipy.ndimage import binary_dilation

    def hue(im: np.ndarray) -> np.ndarray:
        return (im[..., 0] - im[..., 1] > 50) & (im[..., 0] - im[..., 2] > 50)

    return ~binary_dilation(hue(a) | hue(b), iterations=4)


def test_blitted_gate_matches_a_whole_drawing() -> None:
    """The painted density over a cached frame is matplotlib's picture of it (its captions, now texts beside
    the image, left out of the reference), but for the outline's anti-aliasing."""
    results = make_results(1)
    record = results[3].gates[2]
    renderer = PngRenderer()
    renderer.gate(results[2].gates[2])  # the frame is drawn for another tube first
    fast = renderer.gate(record)
    a, b = _decoded(fast), _decoded(renderer.render("gate", record.name, _uncaptioned(record)))
    assert a.shape == b.shape
    # the same picture: the density painted into the pixels matches matplotlib's image up to the palette's
    # colour steps (±4 levels), and only a few anti-aliased pixels differ more
    off = _off_outlines(a, b)
    assert np.mean(np.any(np.abs(a - b) > 4, axis=-1)[off]) < 0.002
    other = _decoded(renderer.gate(results[5].gates[2]))
    assert np.mean(np.any(other != a, axis=-1)) > 0.01  # another tube's density really is drawn


def test_not_gated_and_fallback_gates_say_so() -> None:
    from matplotlib.figure import Figure

    dens, edges = _density(np.random.default_rng(4))
    not_gated = GateRecord("basophils", "singlets", ("CCR3", "SSC-A"), {}, 0, 900, "not_gated",
                           {"failure": "one density peak"}, dens, edges)
    fallback = GateRecord("cells", None, ("FSC-A", "SSC-A"),
                          {"type": "polygon", "dims": ["FSC-A", "SSC-A"],
                           "vertices": [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]},
                          800, 1000, "fallback", {"fallback_used": True}, None, None)
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    draw_gate(not_gated, ax1)
    draw_gate(fallback, ax2)
    assert any("not gated: one density peak" in t.get_text() for t in ax1.texts)
    assert not ax1.patches and ax1.images  # the density, and no outline
    texts = " ".join(t.get_text() for t in ax2.texts)
    assert "fallback geometry" in texts and "no density recorded" in texts


def test_empty_experiment_renders_an_empty_gallery(tmp_path: Path) -> None:
    results, scores = make_experiment(1)
    paths = render_reports(tmp_path, [], scores, RUN_INFO, pdf=False, workers=None)
    assert paths.html == {} and paths.gallery is not None
    assert len(_parse(paths.gallery).tubes) == 0


def test_painted_gates_match_whole_drawings_for_every_kind() -> None:
    """1-D histograms (time), ranges, polygons, ellipses and a manually adjusted gate, on run-wide axes
    (matplotlib's reference drawn without the captions, which the painted plots carry as texts)."""
    from bat_analysis.report.plots import frame_key, shared_gate_limits

    rng = np.random.default_rng(7)
    records = _gates(rng, 5000, 400, override=True)
    limits = shared_gate_limits([TubeResult(Tube("t.fcs", "P", "negative_control", "none"), 5000, 400, {}, {},
                                            records, [])])
    renderer = PngRenderer()
    for record in records:
        lims = limits[frame_key(record)]
        a = _decoded(renderer.gate(record, limits=lims))
        b = _decoded(renderer.render("gate", record.name, _uncaptioned(record, lims)))
        off = _off_outlines(a, b)
        assert np.mean(np.any(np.abs(a - b) > 4, axis=-1)[off]) < 0.01, record.name  # anti-aliased bar edges
        painted = np.all(a == np.array([140, 140, 140]), axis=-1) if record.name == "acquisition_qc" else (
            np.abs(a[..., 1] - a[..., 0]) > 60)  # grey bars, or viridis greens
        assert painted.mean() > 0.01, record.name


# ---------------------------------------------------------------------------------- hostile text (trust)
LONG = "<script>alert('id')</script>$x^2$ " + "P" * 300
HOSTILE_PATIENTS = {"P01": LONG + " one", "P02": LONG + " two"}  # differ only after any cut
HOSTILE_ALLERGEN = "$\\frac{a}{b}$ birch $\\notacommand{a}$ <b>pollen</b>"
HOSTILE_DIM = "$x^2$ CCR3"
HOSTILE_REASON = "$\\undefined$ <script>alert('reason')</script>"


def hostile_experiment() -> tuple[list[TubeResult], ExperimentScores]:
    """Two patients of the usual experiment (arm none only) whose IDs, allergen, file names, marker label
    and reviewer's reason carry HTML, mathtext and path characters."""
    from dataclasses import replace

    out = []
    for r in make_results(2):
        if r.tube.pretreatment != "none":
            continue
        t = r.tube
        tube = replace(t, patient=HOSTILE_PATIENTS[t.patient], file=f"<img src=x onerror=alert(1)>$y$/{t.file}",
                       allergen=HOSTILE_ALLERGEN if t.allergen else None)
        gates = []
        for g in r.gates:
            if g.name == "basophils":
                geometry = dict(g.geometry, dims=[HOSTILE_DIM, "SSC-A"])
                diag = {"reviewer": "A. $Reviewer$", "reason": HOSTILE_REASON} if g.diagnostics else {}
                g = replace(g, dims=(HOSTILE_DIM, "SSC-A"), geometry=geometry, diagnostics=diag)
            gates.append(g)
        out.append(replace(r, tube=tube, gates=gates))
    return out, score_experiment(out)


def test_hostile_text_is_drawn_and_written_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust items 6 and 8: '$...$' in an allergen, file name, marker label or reason is never mathtext
    (an invalid expression used to stop the reports); HTML in any of them is escaped; a 300-character
    patient ID gets a valid report file name, distinct from an ID that differs only after the cut."""
    results, scores = hostile_experiment()
    paths = render_reports(tmp_path, results, scores, RUN_INFO, workers=1)

    assert sorted(paths.html) == sorted(HOSTILE_PATIENTS.values()) == sorted(paths.pdf)
    stems = {p: report_filename(p) for p in HOSTILE_PATIENTS.values()}
    assert len(set(stems.values())) == 2
    for patient, stem in stems.items():
        assert len(stem.encode("utf-8")) <= 100 and "/" not in stem and not stem.startswith(".")
        assert paths.html[patient] == tmp_path / "reports" / f"{stem}.html"
        assert paths.pdf[patient].read_bytes().startswith(b"%PDF")
        html = paths.html[patient].read_text(encoding="utf-8")
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>pollen" not in html
        assert escape(patient) in html and escape(HOSTILE_ALLERGEN) in html
    assert escape(HOSTILE_REASON) in paths.html[HOSTILE_PATIENTS["P01"]].read_text(encoding="utf-8")
    gallery = paths.gallery.read_text(encoding="utf-8")
    assert "<script>alert" not in gallery and "<img src=x" not in gallery
    images = sorted((tmp_path / "review" / "img").iterdir())
    assert len(images) == sum(len(r.gates) + 1 for r in results)  # one file per plot: no name collided
    assert all(len(p.name.encode("utf-8")) <= 255 and p.read_bytes().startswith(b"\x89PNG") for p in images)

    pdfplumber = pytest.importorskip("pdfplumber")
    with pdfplumber.open(paths.pdf[HOSTILE_PATIENTS["P01"]]) as pdf:  # the PDF's text as written, wrapped
        written = re.sub(r"\s", "", "".join(page.extract_text() or "" for page in pdf.pages))
    for literal in (HOSTILE_ALLERGEN, HOSTILE_REASON, HOSTILE_PATIENTS["P01"]):
        assert re.sub(r"\s", "", literal) in written, literal


def test_plots_never_read_user_text_as_mathtext() -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(3)
    records = _gates(rng, 5000, 400, override=True)
    bas = records[-1]
    bas.geometry = dict(bas.geometry, dims=[HOSTILE_DIM, "SSC-A"])
    bas.diagnostics = {"reviewer": "$R$", "reason": HOSTILE_REASON}
    fig = Figure()
    ax = fig.subplots(1, 3)
    draw_gate(bas, ax[0])
    draw_activation(np.linspace(1, 5000, 500), None, 900.0, ax[1], marker="$\\bad$ CD63")
    results, scores = make_experiment(1)
    fits = {k[2]: f for k, f in scores.fits.items() if k[0] == "P01"}
    draw_dose_response(fits, ax[2], title=HOSTILE_ALLERGEN)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    texts = [t for a in ax for t in a.findobj(lambda o: hasattr(o, "get_parse_math")) if "$" in t.get_text()]
    assert {t.get_text() for t in texts} >= {HOSTILE_ALLERGEN, "$\\bad$ CD63 on basophils"}
    assert not any(t.get_parse_math() for t in texts)
    png = PngRenderer().render("dose_response", HOSTILE_ALLERGEN,
                               lambda a: draw_dose_response(fits, a, title=HOSTILE_ALLERGEN))
    assert png.data.startswith(b"\x89PNG")


def test_a_character_the_plot_font_lacks_is_drawn_as_its_escape_not_a_box() -> None:
    # matplotlib draws a glyph DejaVu Sans lacks as an empty box (and warns): two allergen or marker names in
    # another script would look alike; written as \\uNNNN they stay readable and distinct
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results, scores = make_experiment(1)
    fits = {k[2]: f for k, f in scores.fits.items() if k[0] == "P01"}
    fig = Figure()
    ax = fig.subplots(1, 2)
    draw_dose_response(fits, ax[0], title="花粉 Bet v 1 – µg")
    draw_activation(np.linspace(1, 5000, 500), None, 900.0, ax[1], marker="CD63 ✓")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" would fail here
        FigureCanvasAgg(fig).draw()
    texts = {t.get_text() for a in ax for t in a.findobj(lambda o: hasattr(o, "get_parse_math"))}
    assert "\\u82b1\\u7c89 Bet v 1 – µg" in texts  # the Latin, Greek and dash DejaVu holds are kept
    assert "CD63 ✓ on basophils" in texts  # DejaVu Sans has a check mark
    png = PngRenderer().render("dose_response", "花粉", lambda a: draw_dose_response(fits, a, title="花粉"))
    assert png.data.startswith(b"\x89PNG")


def test_tube_anchors_and_gallery_images_are_distinct_per_file() -> None:
    """Files whose names differ only in characters a file name cannot keep used to share an anchor, and
    so one tube's gallery images overwrote the other's."""
    from dataclasses import replace

    from bat_analysis.report._html import image_files
    from bat_analysis.report._views import TubeView
    from bat_analysis.report.plots import Png

    base = make_results(1)[0]
    files = ["P01 neg.fcs", "P01-neg.fcs", "P01_neg.fcs", "P01/neg.fcs", "x" * 250 + "a.fcs", "x" * 250 + "b.fcs"]
    views = [TubeView(replace(base, tube=replace(base.tube, file=f)), i) for i, f in enumerate(files)]
    for v in views:
        v.images = [Png("gate", "basophils " * 20, b"", 1, 1)]
    names = [image_files(v)[0] for v in views]
    assert len({v.anchor for v in views}) == len(files) and len(set(names)) == len(files)
    assert all(len(n.split("/", 1)[1].encode()) <= 200 and n.count("/") == 1 for n in names)


def test_dose_response_points_have_their_tubes_intervals_as_error_bars() -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    from bat_analysis.report._views import point_intervals

    results, scores = make_experiment(1)
    fits = {arm: scores.fits[("P01", "birch", arm)] for arm in ("none", "omalizumab")}
    rows = scores.tubes.to_dict(orient="records")
    intervals = point_intervals(rows)
    ax = Figure().add_subplot()
    draw_dose_response(fits, ax, title="birch", intervals=intervals, marker="CD69", population="T cells")
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = [seg for c in bars for seg in c.get_segments()]
    assert len(segments) == sum(len(f.files) for f in fits.values()) >= 8
    by_file = {r["file"]: r for r in rows}
    fit = fits["none"]
    for c, f in zip(fit.concentrations, fit.files):  # each bar spans the tube's interval at its concentration
        low, high = by_file[f]["pct_cd63_ci_low"], by_file[f]["pct_cd63_ci_high"]
        assert any(np.allclose(seg, [[c, low], [c, high]]) for seg in segments), f
    assert ax.get_ylabel() == "% CD69+ T cells"


def _cd69_experiment() -> tuple[list[TubeResult], ExperimentScores]:
    from bat_analysis.analysis.config import AnalysisConfig

    results = make_results(1)
    for r in results:
        r.basophil_values = {("CD69" if k == "CD63" else k): v for k, v in r.basophil_values.items()}
    return results, score_experiment(results, AnalysisConfig.from_mapping({"markers": {"activation": ["CD69"]}}))


def test_reports_name_the_templates_marker_and_population(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CD69 experiment on T cells is reported as CD69 on T cells: no CD63 anywhere, headers included."""
    from bat_analysis.report import _pdf as pdf_module

    results, scores = _cd69_experiment()
    assert scores.patients.loc[0, "class"] != "not_evaluable"
    written: list[str] = []
    text, table = pdf_module._Flow.text, pdf_module._Flow.table

    def record_text(self: Any, value: str, *args: Any, **kw: Any) -> Any:
        written.append(value)
        return text(self, value, *args, **kw)

    def record_table(self: Any, headers: Any, rows: Any, *args: Any, **kw: Any) -> Any:
        written.extend(str(h) for h in headers)
        written.extend(str(row[0]) for row in rows)
        return table(self, headers, rows, *args, **kw)

    monkeypatch.setattr(pdf_module._Flow, "text", record_text)
    monkeypatch.setattr(pdf_module._Flow, "table", record_table)
    info = {**RUN_INFO, "template": "lab_tcell_cd69", "population": "T cells"}
    paths = render_reports(tmp_path, results, scores, info, gallery=False)
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", paths.html["P01"].read_text(encoding="utf-8"))
    assert "cd63" not in html.lower() and "cd63" not in " ".join(written).lower()  # (images' base64 left out)
    assert "%CD69+" in html and "<th>CD69 threshold</th>" in html and "<th>CD69+ (% of T cells)</th>" in html
    assert "CD69 threshold" in written and "CD69+ (% of T cells)" in written and "T cells (n)" in written
    assert any("CD69+ of T cells" in w for w in written)
    assert "<th>Basophils (n)</th>" not in html and "<th>T cells (n)</th>" in html


def test_the_class_is_stated_with_its_auc_inhibition_interval(tmp_path: Path) -> None:
    results, scores = make_experiment(1)
    row = scores.patients.iloc[0]
    assert np.isfinite(row.auc_inhibition_ci_low) and row.class_confidence
    paths = render_reports(tmp_path, results, scores, RUN_INFO, gallery=False, pdf=False)
    html = paths.html["P01"].read_text(encoding="utf-8")
    expected = (f"AUC inhibition {row.auc_inhibition_pct:.1f}% (95% CI {row.auc_inhibition_ci_low:.1f}–"
                f"{row.auc_inhibition_ci_high:.1f}%), confidence {row.class_confidence}")
    assert expected in html


def test_activation_histogram_is_titled_with_the_templates_population() -> None:
    from matplotlib.figure import Figure

    results, _ = make_experiment(1)
    values = results[0].basophil_values["CD63"]
    ax = Figure().add_subplot()
    draw_activation(values, values, 500.0, ax, marker="CD69", population="T cells")
    assert ax.get_title(loc="left") == "CD69 on T cells"
    empty = Figure().add_subplot()
    draw_activation(np.empty(0), None, None, empty, marker="CD69", population="T cells")
    assert empty.get_title(loc="left") == "CD69 on T cells"
    assert "no T cells" in " ".join(t.get_text() for t in empty.texts)


def test_a_not_evaluable_class_does_not_show_its_auc_inhibition_as_counting() -> None:
    from bat_analysis.report._views import RunView

    run = RunView({})
    row = {"class": "not_evaluable", "auc_inhibition_pct": 12.5, "auc_inhibition_ci_low": float("nan"),
           "class_confidence": ""}
    assert run.inhibition_text(row) == " · AUC inhibition 12.5%, not used: the patient is not evaluable"
    counted = run.inhibition_text({**row, "class": "non_responder", "class_confidence": "high"})
    assert counted == " · AUC inhibition 12.5%, confidence high"


def test_no_flags_is_not_said_above_a_patient_level_flag(tmp_path: Path) -> None:
    from bat_analysis.report._html import patient_html
    from bat_analysis.report._views import Notice, RunView, patient_views, tube_views

    results, scores = make_experiment(1)
    run = RunView(dict(RUN_INFO))
    (view,) = patient_views(tube_views(results, scores, run), scores).values()
    for t in view.tubes:
        t.flags.clear()
    view.patient_flags[:] = [Notice("EC50_NOT_ESTIMABLE", "warn", "Ara h 2 (none): EC50 not estimable")]
    html = patient_html(view, run)
    flags = html[html.index("<h2>Flags</h2>"):html.index("<h2>Gating, tube by tube</h2>")]
    assert "No flags." not in flags and "EC50_NOT_ESTIMABLE" in flags
    view.patient_flags.clear()
    html = patient_html(view, run)
    assert "No flags." in html[html.index("<h2>Flags</h2>"):]


def test_drawing_processes_leave_ctrl_c_to_the_run() -> None:
    """The report's drawing processes ignore Ctrl-C (the run stops them), so a Ctrl-C in the terminal prints
    no traceback from each of them."""
    import signal

    from bat_analysis.report._html import _pool

    pool = _pool(1)
    try:
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=60) == signal.SIG_IGN
    finally:
        pool.shutdown()


# ------------------------------------------------------------------------------ dose-response figures
def _curve_fits() -> dict[str, dict[str, Any]]:
    """Dose-response cases for the reports' curves: a long wrapped legend entry, a shaded EC50 interval wider
    than the points, a point left out of the fit (hollow), an arm without a colour of its own, hostile text."""
    from dataclasses import replace

    from bat_analysis.analysis.dose_response import analyse_series

    conc = [0.01, 0.1, 1.0, 10.0, 100.0]
    files = [f"f{i}.fcs" for i in range(5)]
    rising = analyse_series("P1", "birch", "none", conc, [5, 20, 50, 57, 56], [2, 17, 47, 54, 53], unit="ng/mL",
                            files=files)
    flat = analyse_series("P1", "birch", "omalizumab", conc, [3, 3, 4, 5, 9], [0, 0, 1, 2, 6], unit="ng/mL")
    assert rising.status == "ok" and flat.status != "ok"
    banded = replace(rising, ec50_ci=(0.02, 3000.0), used=np.array([True, True, True, True, False]))
    return {"birch": {"none": rising, "omalizumab": flat},
            "grass": {"none": banded},
            HOSTILE_ALLERGEN + "\x07": {"other\x1b[31m": replace(flat, arm="other")},
            "nothing": {"none": replace(rising, concentrations=np.zeros(0))}}


def _whole_figure(renderer: PngRenderer, title: str, fits: dict[str, Any], intervals: dict[str, Any]) -> Any:
    from bat_analysis.report.plots import CURVE_MARGINS, CURVE_SIZE

    return renderer.render("dose_response", title,
                           lambda ax: draw_dose_response(fits, ax, title=title, intervals=intervals),
                           size=CURVE_SIZE, margins=CURVE_MARGINS)


def test_dose_response_png_is_the_whole_figure_drawn_by_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's curves are drawn over a frame kept per axis limits; each PNG is byte for byte the figure
    draw_dose_response draws whole, whether its frame was drawn for it, for another allergen before, or not
    at all (nothing to plot), and in any order."""
    import bat_analysis.report.plots as plots

    frames = []
    draw_frame = plots._draw_curve_frame
    monkeypatch.setattr(plots, "_draw_curve_frame", lambda *a: frames.append(a) or draw_frame(*a))
    cases = _curve_fits()
    intervals = {"f1.fcs": (15.0, 26.0), "f3.fcs": (50.0, 61.0)}
    whole = {t: _whole_figure(PngRenderer(), t, fits, intervals) for t, fits in cases.items()}
    shared = PngRenderer()
    for order in (list(cases), list(reversed(cases))):
        for title in order:
            png = shared.dose_response(cases[title], title=title, intervals=intervals)
            alone = PngRenderer().dose_response(cases[title], title=title, intervals=intervals)
            assert png.data == alone.data == whole[title].data, title
            assert (png.kind, png.title, png.width, png.height) == ("dose_response", title, 1080, 765)
    # birch and the hostile title share their axes; grass's interval widens its x axis; "nothing" has none
    assert len(shared._curve_frames) == 2
    assert len(frames) == 2 + 2 * 3  # the shared renderer's two; one per renderer drawing alone, "nothing" none
    monkeypatch.setattr(plots, "CURVE_FRAMES", 1)  # one frame kept: birch's is dropped for grass's and drawn again
    one = PngRenderer()
    for title in ("birch", "grass", HOSTILE_ALLERGEN + "\x07", "birch"):
        assert one.dose_response(cases[title], title=title, intervals=intervals).data == whole[title].data
        assert len(one._curve_frames) == 1
    assert len(frames) == 2 + 2 * 3 + 3


def _rgb(png: Any) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png.data)) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def test_dose_response_png_shows_points_curve_ec50_and_interval() -> None:
    """What the curve shows, found in the PNG's pixels at the data positions (the axes' transform of the same
    figure): filled and hollow points, the fitted curve, the dotted EC50 line and its shaded interval, the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    from bat_analysis.report.plots import ARM_COLOURS, CURVE_MARGINS, CURVE_SIZE, PLOT_DPI

    fit = _curve_fits()["grass"]["none"]
    renderer = PngRenderer()
    renderer.dose_response(_curve_fits()["birch"], title="birch")  # another figure first: frames are kept
    px = _rgb(renderer.dose_response({"none": fit}, title="grass"))
    fig = Figure(figsize=CURVE_SIZE, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_dose_response({"none": fit}, ax, title="grass")
    fig.subplots_adjust(**CURVE_MARGINS)

    def at(x: float, y: float) -> np.ndarray:
        cx, cy = ax.transData.transform((x, y))
        return px[int(px.shape[0] - cy), int(cx)]

    blue = np.array(to_rgb(ARM_COLOURS["none"])) * 255
    tint = 255 - 0.12 * (255 - blue)  # the EC50 interval over white

    def near(rgb: np.ndarray, colour: np.ndarray, tol: float = 12) -> bool:
        return bool(np.abs(rgb - colour).max() <= tol)

    for c, y in zip(fit.concentrations[:4], fit.y[:4]):  # points in the fit: filled
        assert near(at(c, y), blue), (c, y)
    c, y = fit.concentrations[4], fit.y[4]  # the point left out: a ring, not filled
    cx, cy = ax.transData.transform((c, y))
    ring = [px[int(px.shape[0] - cy), int(cx + dx)] for dx in range(-12, 13)]
    assert not near(at(c, y), blue, 100) and any(near(p, blue, 30) for p in ring)
    for lx in (-1.5, 0.7):  # the fitted 4PL
        x = 10.0 ** lx
        assert near(at(x, float(fit.curve(np.array([lx]))[0])), blue, 30), x
    cx = ax.transData.transform((fit.ec50, 0))[0]  # the dotted EC50 line: about half of its column coloured
    top, bottom = (int(px.shape[0] - ax.transData.transform((1, v))[1]) for v in (100, 0))
    column = px[top:bottom, int(round(cx)) - 1:int(round(cx)) + 2].min(axis=1)
    coloured = np.mean([near(p, blue, 40) for p in column])
    assert 0.3 < coloured < 0.8, coloured
    for x in (0.03, 2000.0):  # inside the interval, away from marks and grid: tinted; outside it: white
        assert near(at(x, 70), tint, 3), x
    assert near(at(0.004, 70), np.array([255, 255, 255]), 0)
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    box = px[int(px.shape[0] - legend.y1):int(px.shape[0] - legend.y0), int(legend.x0):int(legend.x1)]
    assert (box.max(axis=2) < 80).sum() > 500  # its text is drawn (dark pixels)
