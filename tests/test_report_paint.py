"""Per-tube plots painted into palette pixels (bat_analysis.report._paint, PngRenderer.gate / .activation).

The painted pixels are checked against matplotlib itself: a reference axes drawn as the renderer draws its frame
gives the data transform, and each bin centre, outline vertex or threshold must land where that transform puts it.
The PNGs are decoded with Pillow; the words that left the pixels (Png.texts) are checked in the HTML."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bat_analysis.records import GateRecord, Tube, TubeResult
from bat_analysis.report._paint import Box, encode_palette_png, stroke
from bat_analysis.report.plots import (ACTIVATION_FILL, ADJUSTED_COLOUR, ADJUSTED_TEXT_COLOUR, GATE_COLOUR,
                                       NEGATIVE_TRACE, PngRenderer, _activation_frame, _gate_frame, palette)

XE = np.linspace(0.0, 2.0, 21)  # 20 x 16 bins
YE = np.linspace(-1.0, 1.0, 17)
LIMITS = ((-0.4, 2.3), (-1.3, 1.1))  # run-wide limits wider than this tube's bins
SQUARE = [[0.3, -0.6], [1.6, -0.5], [1.5, 0.7], [0.4, 0.6]]


def _record(geometry: dict[str, Any], *, method: str = "estimator", density: np.ndarray | None = None,
            diagnostics: dict[str, Any] | None = None) -> GateRecord:
    if density is None:
        rng = np.random.default_rng(5)
        density = rng.permutation(np.arange(1, 20 * 16 + 1)).reshape(20, 16).astype(float) * 3
        density[rng.random(density.shape) < 0.2] = 0  # empty bins stay blank
    geometry = {"dims": ["FSC-A", "SSC-A"], "transforms": [None, None], **geometry}
    return GateRecord("cells", None, ("FSC-A", "SSC-A"), geometry, 900, 1000, method, diagnostics or {},
                      density, (XE, YE))


def _reference_axes(renderer: PngRenderer, draw: Any) -> Any:
    """Axes drawn as the renderer draws a frame (same size, dpi, margins): its transData is matplotlib's word
    on where each data point goes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=renderer.size, dpi=renderer.dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax)
    fig.subplots_adjust(**renderer.margins)
    canvas.draw()
    return ax


def _pixel(ax: Any, points: Any) -> np.ndarray:
    """Buffer (row, column) of data points by matplotlib's transform (rows from the top)."""
    display = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    height = ax.figure.bbox.height
    return np.column_stack([np.floor(height - display[:, 1]), np.floor(display[:, 0])]).astype(int)


def _indices(png: Any) -> np.ndarray:
    with Image.open(io.BytesIO(png.data)) as img:
        assert img.mode == "P"
        return np.asarray(img)


def _rgb(png: Any) -> np.ndarray:
    with Image.open(io.BytesIO(png.data)) as img:
        return np.asarray(img.convert("RGB"), dtype=int)


def _colour(name: str) -> np.ndarray:
    return palette().rgb[palette().index(name)].astype(int)


# ------------------------------------------------------------------------------------------------ density
def test_each_bin_is_painted_where_matplotlib_puts_it_in_its_log_colour() -> None:
    record = _record({})  # no outline: every bin centre is visible
    renderer = PngRenderer()
    png = renderer.gate(record, limits=LIMITS)
    ax = _reference_axes(renderer, lambda a: _gate_frame(record, a, LIMITS))
    centres = np.array([[(XE[i] + XE[i + 1]) / 2, (YE[j] + YE[j + 1]) / 2] for i in range(20) for j in range(16)])
    rows, cols = _pixel(ax, centres).T
    h = record.density.reshape(-1)
    t = np.log(np.maximum(h, 1.0)) / np.log(h.max())
    expected = np.where(h > 0, palette().density(t), palette().white)
    assert np.array_equal(_indices(png)[rows, cols], expected)

    # and the colours are matplotlib's own image of the density (up to the palette's steps)
    from bat_analysis.report.plots import _density_image

    reference = renderer.render("gate", "cells", lambda a: (_gate_frame(record, a, LIMITS),
                                                            _density_image(a, record.density, XE, YE)))
    assert np.abs(_rgb(png)[rows, cols] - _rgb(reference)[rows, cols]).max() <= 4


def test_a_1d_histogram_is_grey_bars_up_to_each_bins_height() -> None:
    density = np.array([5.0, 20.0, 0.0, 35.0, 10.0])
    edges = (np.linspace(0.0, 100.0, 6),)
    record = GateRecord("acquisition_qc", None, ("Time",), {"type": "range", "dims": ["Time"], "mins": [None],
                                                              "maxs": [None]}, 70, 70, "fixed", {}, density, edges)
    limits = ((0.0, 100.0), (0.0, 40.0))
    renderer = PngRenderer()
    png = _rgb(renderer.gate(record, limits=limits))
    ax = _reference_axes(renderer, lambda a: _gate_frame(record, a, limits))
    grey = _colour("0.55")
    for i, top in enumerate(density):
        x = (edges[0][i] + edges[0][i + 1]) / 2
        (r_top, c), (r_base, _) = _pixel(ax, [[x, top], [x, 0.0]])
        below = png[r_top + 2:r_base - 1, c]  # a pixel off either end: the bar's edge and the spine
        assert np.all(below == grey), i
        assert not np.any(np.all(png[:r_top - 1, c] == grey, axis=-1)), i  # nothing above the bar's top


# ----------------------------------------------------------------------------------------------- outlines
def _on_outline(png: np.ndarray, rc: np.ndarray, colour: np.ndarray, radius: int = 1) -> bool:
    r, c = rc
    window = png[r - radius:r + radius + 1, c - radius:c + radius + 1]
    return bool(np.any(np.all(window == colour, axis=-1)))


def test_polygon_vertices_and_edges_land_where_matplotlib_maps_them() -> None:
    record = _record({"type": "polygon", "vertices": SQUARE}, density=np.zeros((20, 16)))
    renderer = PngRenderer()
    png = _rgb(renderer.gate(record, limits=LIMITS))
    ax = _reference_axes(renderer, lambda a: _gate_frame(record, a, LIMITS))
    red = _colour(GATE_COLOUR)
    vertices = np.asarray(SQUARE)
    for rc in _pixel(ax, vertices):
        assert _on_outline(png, rc, red), rc
    midpoints = (vertices + np.roll(vertices, -1, axis=0)) / 2
    for rc in _pixel(ax, midpoints):  # the stroke is centred on the edge: its red pixels' centroid is there
        r, c = rc
        window = np.all(png[r - 6:r + 7, c - 6:c + 7] == red, axis=-1)
        centroid = np.argwhere(window).mean(axis=0) - 6
        assert np.hypot(*centroid) <= 1.0, (rc, centroid)
    r, c = _pixel(ax, midpoints[1:2])[0]  # a near-vertical edge: its width along a row
    width = np.all(png[r, c - 10:c + 11] == red, axis=-1).sum()
    assert 4 <= width <= 6  # 1.6 pt at 225 dpi: 5 px


def test_ellipse_and_1d_lines_land_where_matplotlib_maps_them() -> None:
    mean, cov, d2 = np.array([1.0, 0.0]), np.array([[0.04, 0.01], [0.01, 0.06]]), 4.0
    record = _record({"type": "ellipsoid", "mean": mean.tolist(), "covariance": cov.tolist(), "distance_square": d2},
                     density=np.zeros((20, 16)))
    renderer = PngRenderer()
    png = _rgb(renderer.gate(record, limits=LIMITS))
    ax = _reference_axes(renderer, lambda a: _gate_frame(record, a, LIMITS))
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = np.column_stack([np.cos(angles), np.sin(angles)])
    boundary = mean + circle @ np.linalg.cholesky(cov * d2).T  # Mahalanobis distance² == d2
    assert all(_on_outline(png, rc, _colour(GATE_COLOUR)) for rc in _pixel(ax, boundary))

    density = np.full(10, 3.0)
    time = GateRecord("acquisition_qc", None, ("Time",), {"type": "range", "dims": ["Time"], "mins": [12.5],
                                                          "maxs": [80.0]}, 70, 70, "fixed", {}, density,
                      (np.linspace(0.0, 100.0, 11),))
    limits = ((0.0, 100.0), (0.0, 5.0))
    png = _rgb(renderer.gate(time, limits=limits))
    ax = _reference_axes(renderer, lambda a: _gate_frame(time, a, limits))
    for x in (12.5, 80.0):
        for y in (0.5, 2.5, 4.5):  # the whole height
            assert _on_outline(png, _pixel(ax, [[x, y]])[0], _colour(GATE_COLOUR)), (x, y)


def _edge_colours(png: np.ndarray, ax: Any, a: Any, b: Any) -> np.ndarray:
    """The colour at each pixel along the line from data point ``a`` to ``b``."""
    ends = _pixel(ax, [a, b]).astype(float)
    n = int(np.abs(ends[1] - ends[0]).max())
    t = np.linspace(0.1, 0.9, int(n * 0.8))
    rc = np.round(ends[0] + t[:, None] * (ends[1] - ends[0])).astype(int)
    return png[rc[:, 0], rc[:, 1]]


def test_manual_outlines_are_orange_dashed_and_automated_red_solid() -> None:
    renderer = PngRenderer()
    auto = _record({"type": "polygon", "vertices": SQUARE}, density=np.zeros((20, 16)))
    manual = _record({"type": "polygon", "vertices": SQUARE}, method="override", density=np.zeros((20, 16)))
    ax = _reference_axes(renderer, lambda a: _gate_frame(auto, a, LIMITS))
    red, orange = _colour(GATE_COLOUR), _colour(ADJUSTED_COLOUR)
    along = _edge_colours(_rgb(renderer.gate(auto, limits=LIMITS)), ax, SQUARE[0], SQUARE[1])
    assert np.all(np.all(along == red, axis=-1))
    for png in (renderer.gate(manual, limits=LIMITS), renderer.gate(auto, limits=LIMITS, adjusted_reason="moved")):
        along = np.all(_edge_colours(_rgb(png), ax, SQUARE[0], SQUARE[1]) == orange, axis=-1)
        assert 0.5 < along.mean() < 0.85  # dashes: 3.7 on, 1.6 off per point of width
        assert np.count_nonzero(np.diff(along.astype(int)) == 1) >= 3  # several dashes
        assert not np.any(np.all(_rgb(png) == red, axis=-1))


def test_outlines_are_clipped_to_the_axes_and_survive_hostile_geometry() -> None:
    renderer = PngRenderer()
    frame_only = _indices(renderer.gate(_record({}, density=np.zeros((20, 16))), limits=LIMITS))
    for vertices in ([[-1e300, -1e300], [1e300, 0.0], [0.5, 1e300]],
                     [[0.2, 0.2], [np.inf, 0.5], [np.nan, 0.1], [1.0, -0.5]],
                     [[0.5, 0.5]], [[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]]):
        png = renderer.gate(_record({"type": "polygon", "vertices": vertices}, density=np.zeros((20, 16))),
                            limits=LIMITS)
        changed = np.argwhere(_indices(png) != frame_only)
        box = next(f for k, f in renderer._frames.items() if k[0] == "gate").box
        assert np.all((changed[:, 0] >= box.r0) & (changed[:, 0] < box.r1)
                      & (changed[:, 1] >= box.c0) & (changed[:, 1] < box.c1)), vertices


def test_stroke_paints_only_inside_its_box_and_spares_kept_pixels() -> None:
    pixels = np.zeros((60, 80), dtype=np.uint8)
    keep = np.zeros((40, 60), dtype=bool)
    keep[:10, :10] = True
    box = Box(10, 50, 10, 70, keep)
    stroke(pixels, box, np.array([[0.0, 0.0], [80.0, 60.0], [0.0, 60.0]]), 7, 5.0, closed=True)
    painted = pixels == 7
    assert painted.any() and not painted[:10].any() and not painted[50:].any()
    assert not painted[:, :10].any() and not painted[:, 70:].any() and not painted[10:20, 10:20].any()


# ------------------------------------------------------------------------------------------ activation plot
def test_activation_bars_trace_and_threshold_land_where_matplotlib_maps_them() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.lognormal(5, 0.5, 700), rng.lognormal(8, 0.4, 300)])
    neg = rng.lognormal(5, 0.5, 900)
    xlim, threshold = (-200.0, 20000.0), 600.0
    renderer = PngRenderer()
    png = renderer.activation(values, neg, threshold, xlim=xlim, pct=31.0, negative_pct=1.5)
    ax = _reference_axes(renderer, lambda a: _activation_frame(a, "CD63", xlim, 150.0))
    rgb = _rgb(png)
    for y in (10.0, 60.0, 125.0):
        assert _on_outline(rgb, _pixel(ax, [[threshold, y]])[0], _colour(GATE_COLOUR), radius=2), y
    edges_t = np.linspace(np.arcsinh(xlim[0] / 150), np.arcsinh(xlim[1] / 150), 81)
    h, _ = np.histogram(np.arcsinh(values / 150), edges_t)
    h = 100.0 * h / h.max()
    mode = int(h.argmax())
    x = float(np.sinh((edges_t[mode] + edges_t[mode + 1]) / 2) * 150)
    (top, c), = _pixel(ax, [[x, 100.0]])
    column = np.all(rgb[:, c] == _colour(ACTIVATION_FILL), axis=-1)
    assert abs(int(np.argmax(column)) - top) <= 1  # the mode's bar reaches 100% of mode
    assert np.any(np.all(rgb == _colour(NEGATIVE_TRACE), axis=-1))
    assert png.texts == ("this tube: 31.0% CD63+ (n=1000)", "negative control: 1.5% CD63+ (n=900)",
                         "threshold 600")


def test_activation_without_threshold_or_cells_says_so_in_its_texts() -> None:
    renderer = PngRenderer()
    png = renderer.activation(np.array([1.0, 2.0, 300.0]), None, float("nan"), xlim=(-10.0, 1000.0))
    assert png.texts == ("this tube", "no threshold available")
    assert png.text_colours == ("", GATE_COLOUR)
    empty = renderer.activation(np.empty(0), None, 100.0, xlim=(-10.0, 1000.0), population="T cells")
    assert empty.texts == ("threshold 100", "no T cells in this tube")
    nothing = renderer.activation(np.empty(0), None, None, population="T cells")
    assert nothing.texts == () and _indices(nothing).shape == (675, 810)


# ------------------------------------------------------------------------------------- PNG and the texts
def test_palette_png_decodes_with_pillow_to_the_painted_pixels() -> None:
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    indices[5:20] = indices[4]  # repeated rows (the Up filter's zeros)
    colours = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    data = encode_palette_png(indices, colours)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # chunk CRCs
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "P" and img.size == (53, 37)
        assert np.array_equal(np.asarray(img), indices)
        assert np.array_equal(np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256], colours)
        assert np.array_equal(np.asarray(img.convert("RGB")), colours[indices])

    record = _record({"type": "polygon", "vertices": SQUARE})
    png = PngRenderer().gate(record, limits=LIMITS)
    assert (png.width, png.height) == (810, 675) and _indices(png).max() < len(palette().rgb)


def test_gate_words_are_texts_not_pixels() -> None:
    """Two tubes with different counts and methods: identical pixels outside the axes (the caption is not
    drawn), their words in Png.texts, the manual note in its colour."""
    renderer = PngRenderer()
    auto = _record({"type": "polygon", "vertices": SQUARE})
    manual = _record({"type": "polygon", "vertices": SQUARE}, method="override",
                     diagnostics={"reviewer": "A. Reviewer", "reason": "eosinophils inside"})
    manual.count, manual.parent_count = 123, 4567
    a, b = renderer.gate(auto, limits=LIMITS), renderer.gate(manual, limits=LIMITS)
    frame = next(f for k, f in renderer._frames.items() if k[0] == "gate")
    outside = np.ones(_indices(a).shape, dtype=bool)
    outside[frame.box.r0:frame.box.r1, frame.box.c0:frame.box.c1] = False
    assert np.array_equal(_indices(a)[outside], _indices(b)[outside])
    assert a.texts == ("900 of 1\u2009000 (90.0%)", "estimator") and a.text_colours == ("", "")
    assert b.texts == ("123 of 4\u2009567 (2.7%)", "manually adjusted: A. Reviewer — eosinophils inside")
    assert b.text_colours == ("", ADJUSTED_TEXT_COLOUR)
    boolean = GateRecord("not_debris", None, (), {"type": "boolean", "op": "and",
                                                  "operands": [["cells", False], ["debris", True]]},
                         5, 10, "fixed", {}, None, None)
    png = renderer.gate(boolean)
    assert png.texts[-1] == "cells AND NOT debris" and png.text_colours[-1] == GATE_COLOUR


HOSTILE = "<script>alert(1)</script> \x1b[31m $\\frac{a}{b}$ \u202eevil & co"


def test_hostile_caption_text_is_escaped_in_the_html() -> None:
    from bat_analysis.report._html import _tube_section, img_tag, plot_figure
    from bat_analysis.report._views import TubeView
    from bat_analysis.report.plots import Png

    record = _record({"type": "polygon", "vertices": SQUARE}, method="override",
                     diagnostics={"reviewer": "$R$", "reason": HOSTILE})
    png = PngRenderer().gate(record, limits=LIMITS)
    assert "\x1b" not in "".join(png.texts) and "\u202e" not in "".join(png.texts)  # shown as escapes
    html = plot_figure(png, img_tag(png))
    assert "<script>" not in html and "\x1b" not in html and "\u202e" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "\\x1b[31m" in html and "\\u202eevil &amp; co" in html
    assert "$\\frac{a}{b}$" in html and f'style="color:{ADJUSTED_TEXT_COLOUR}"' in html

    from dataclasses import replace

    named = replace(record, name="$\\notacommand{a}$ \x1b[2J", geometry=dict(record.geometry, dims=["$\\frac{$", "y"]))
    assert PngRenderer().gate(named).data.startswith(b"\x89PNG")  # the frame's title and label drawn literally

    forged = Png("gate", "x", png.data, 10, 10, ("a", "b"), ('red;background:url(javascript:x)', '"><b>'))
    html = plot_figure(forged, "")
    assert "url(" not in html and "<b>" not in html and html.count("<span") == 2

    tube = TubeResult(Tube("t<1>.fcs", "P", "allergen", "none"), 10, 5, {}, {}, [record], [])
    view = TubeView(tube, 0)
    view.images = [png]
    section = _tube_section(view) + _tube_section(view, files=True)
    assert "<script>" not in section and section.count("<figcaption>") == 2
    assert section.count("manually adjusted: $R$ — &lt;script&gt;") == 2


@pytest.mark.parametrize("files", [False, True])
def test_each_plot_is_a_figure_with_its_words_under_it(files: bool) -> None:
    from html.parser import HTMLParser

    from bat_analysis.report._html import _tube_section
    from bat_analysis.report._views import TubeView

    import test_report

    result = test_report.make_results(1)[4]
    view = TubeView(result, 0)
    view.images = PngRenderer().tube(result, negative_values=None, threshold=300.0)

    class Figures(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.figures: list[list[str]] = []
            self.imgs = 0
            self._in = False

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag == "figure":
                self.figures.append([])
            elif tag == "img":
                self.imgs += 1
            elif tag == "span" and self.figures:
                self._in = True
                self.figures[-1].append("")

        def handle_endtag(self, tag: str) -> None:
            self._in = self._in and tag != "span"

        def handle_data(self, data: str) -> None:
            if self._in:
                self.figures[-1][-1] += data

    parser = Figures()
    parser.feed(_tube_section(view, files=files))
    assert parser.imgs == len(view.images) == len(parser.figures)
    assert parser.figures == [list(p.texts) for p in view.images]
    assert parser.figures[2][0].endswith("%)") and parser.figures[-1][0].startswith("this tube: ")


# ------------------------------------------------------------------------------------------ frames' pixels
def test_quantise_gives_each_pixel_its_nearest_palette_colour() -> None:
    """The quantised frame is the brute-force nearest colour of every pixel (the first of equals), for the
    greys of matplotlib's text and for any other colour, from RGB or RGBA (alpha ignored)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(2.0, 1.5), dpi=60)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _activation_frame(ax, "CD63", (-10.0, 9000.0), 150.0)
    ax.legend(handles=[Patch(color=ACTIVATION_FILL, label="this tube")])
    canvas.draw()
    rgba = np.array(canvas.buffer_rgba())
    rng = np.random.default_rng(3)
    rgba[:20, :30, :3] = rng.integers(0, 256, size=(20, 30, 3))  # any colour, and ties between two greys
    rgba[20:22, :, :3] = np.array([[0, 0, 0], [255, 255, 255], [3, 3, 3], [128, 127, 128]])[
        rng.integers(0, 4, size=(2, rgba.shape[1]))]
    rgb = rgba[..., :3].astype(int).reshape(-1, 3)
    table = palette().rgb.astype(int)
    brute = np.array([int(np.argmin(((table - p) ** 2).sum(axis=1))) for p in rgb]).reshape(rgba.shape[:2])
    assert np.array_equal(palette().quantise(rgba), brute)
    assert np.array_equal(palette().quantise(rgba[..., :3]), brute)
    assert (brute == palette().white).sum() > rgba.shape[0] * rgba.shape[1] // 2  # a frame: mostly white


def _gate_plots() -> list[tuple[GateRecord, Any]]:
    """Gates of different names, axes, kinds and ranges (a range whose ticks need an offset, a histogram,
    a name with a control character, a gate without a density), each with the limits it is drawn on."""
    square = {"type": "polygon", "vertices": SQUARE}
    big = GateRecord("singlets\x07", None, ("FSC-A", "FSC-H"), {"type": "polygon", "dims": ["FSC-A", "FSC-H"],
                     "vertices": [[2e6, 2e6], [3e6, 2e6], [3e6, 3e6]], "transforms": [None, None]}, 5, 9,
                     "estimator", {}, np.ones((4, 4)), (np.linspace(1e6, 4e6, 5), np.linspace(1e6, 4e6, 5)))
    hist = GateRecord("acquisition_qc", None, ("Time",), {"type": "range", "dims": ["Time"], "mins": [None],
                      "maxs": [None]}, 70, 70, "fixed", {}, np.array([5.0, 20.0, 0.0, 35.0]),
                      (np.linspace(0.0, 80.0, 5),))
    empty = GateRecord("lymphocytes", None, ("FSC-A", "SSC-A"), square, 0, 0, "not_gated", {}, None, None)
    return [(_record(square), LIMITS), (big, None), (hist, ((0.0, 90.0), (0.0, 40.0))), (empty, None),
            (_record(square), ((-1.0, 3.0), (-2.0, 2.0))), (hist, None)]


def _activation_plots() -> list[dict[str, Any]]:
    """Activation histograms with and without each part of the legend, on several axes."""
    rng = np.random.default_rng(4)
    values, neg = rng.lognormal(6, 0.8, 500), rng.lognormal(5, 0.5, 400)
    return [dict(values=values, negative_values=neg, threshold=600.0, xlim=(0.0, 82247.4)),
            dict(values=values, negative_values=None, threshold=None, xlim=(78.2, 30257.0), marker="CD203c"),
            dict(values=np.empty(0), negative_values=None, threshold=None, xlim=(-10.0, 1000.0)),
            dict(values=values, negative_values=neg, threshold=300.0, xlim=(-200.0, 2e5), population="T\x1bcells"),
            dict(values=values, negative_values=neg, threshold=600.0, xlim=(0.0, 30257.0)),
            dict(values=np.empty(0), negative_values=None, threshold=None, xlim=None)]


def _plot(renderer: PngRenderer, item: Any) -> Any:
    if isinstance(item, dict):
        kw = dict(item)
        return renderer.activation(kw.pop("values"), kw.pop("negative_values"), kw.pop("threshold"), **kw)
    record, limits = item
    return renderer.gate(record, limits=limits)


@pytest.mark.parametrize("order", ["forward", "backward", "shuffled"])
def test_frames_drawn_over_earlier_ones_equal_frames_on_a_new_figure(order: str) -> None:
    """A renderer draws the frames of one layout on one axes, each over the one before: every plot is byte for
    byte the plot a new renderer draws on a new figure, in whatever order the frames come."""
    plots: list[Any] = [*_gate_plots(), *_activation_plots()]
    rng = np.random.default_rng(0)
    sequence = {"forward": plots, "backward": plots[::-1],
                "shuffled": [plots[i] for i in rng.permutation(len(plots))]}[order]
    renderer = PngRenderer()
    drawn = [_plot(renderer, item) for item in sequence]
    for item, png in zip(sequence, drawn):
        alone = _plot(PngRenderer(), item)
        assert (png.data, png.texts) == (alone.data, alone.texts), item
    assert len(renderer._axes) >= 3  # frames were drawn over others: gates, and activations with a legend


def test_a_frame_is_the_matplotlib_figure_quantised() -> None:
    """A frame drawn on a new figure (placed first, drawn after) is the figure matplotlib draws when the frame
    is drawn first and placed after, each pixel in its nearest palette colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bat_analysis.report.plots import _activation_key, _literal_texts, literal_text

    record, limits = _gate_plots()[1]
    draws = [lambda ax: _gate_frame(record, ax, limits),
             lambda ax: _activation_key(ax, "CD63", (-10.0, 9000.0), 150.0, "basophils", (True, True, True))]
    renderer = PngRenderer()
    for i, draw in enumerate(draws):
        frame = renderer.frame(("test", i), draw, ("test", i))
        with literal_text():
            fig = Figure(figsize=renderer.size, dpi=renderer.dpi)
            canvas = FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            draw(ax)
            _literal_texts(fig)
            fig.subplots_adjust(**renderer.margins)
            canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
        table = palette().rgb.astype(int)
        colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        nearest = np.array([int(np.argmin(((table - c) ** 2).sum(axis=1))) for c in colours])
        assert np.array_equal(frame.pixels, nearest[inverse.reshape(-1)].reshape(rgb.shape[:2])), i
        assert np.allclose(frame.to_pixels([[1e3, 50.0]])[0],
                           [ax.transData.transform([1e3, 50.0])[0], 675 - ax.transData.transform([1e3, 50.0])[1]])


# ----------------------------------------------------------------------------- frames shared between processes
def _counting_draws(monkeypatch: Any) -> list[int]:
    """Counts matplotlib's drawings of a figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    drawn: list[int] = []
    real = FigureCanvasAgg.draw

    def draw(self: Any) -> Any:
        drawn.append(1)
        return real(self)

    monkeypatch.setattr(FigureCanvasAgg, "draw", draw)
    return drawn


def test_a_frame_drawn_by_one_process_is_read_back_by_another(tmp_path: Any, monkeypatch: Any) -> None:
    """Renderers sharing a folder (the run's drawing processes) draw each frame once between them: the second
    reads the frames back, draws none, and its plots are byte for byte those of a renderer that shares none."""
    from bat_analysis.report.plots import SharedFrames

    plots: list[Any] = [*_gate_plots(), *_activation_plots()]
    alone = [_plot(PngRenderer(), item) for item in plots]
    first = [_plot(PngRenderer(shared=SharedFrames(tmp_path)), item) for item in plots[::-1]][::-1]
    stored = sorted(p.name for p in tmp_path.iterdir())
    assert len(stored) == len(plots) and all(n.endswith(SharedFrames.SUFFIX) for n in stored)
    drawn = _counting_draws(monkeypatch)
    second = PngRenderer(shared=SharedFrames(tmp_path))
    again = [_plot(second, item) for item in plots]
    assert not drawn
    for a, b, c in zip(alone, first, again):
        assert (a.data, a.texts) == (b.data, b.texts) == (c.data, c.texts)
    frame = next(iter(second._frames.values()))
    assert not frame.pixels.flags.writeable  # read back: used, never painted over


def _bad_frames(folder: Any, name: str) -> dict[str, Any]:
    """Ways a stored frame can be wrong: each makes the file ``name`` in ``folder`` so."""
    import os
    import zlib

    size = 675 * 810

    def write(data: bytes) -> Any:
        return lambda: (folder / name).write_bytes(data)

    def link() -> None:
        (folder / "elsewhere").write_bytes(zlib.compress(bytes(size)))
        os.symlink(folder / "elsewhere", folder / name)

    return {"not zlib": write(b"\x93NUMPY garbage"),
            "too few pixels": write(zlib.compress(bytes(size - 1))),
            "too many pixels": write(zlib.compress(bytes(size + 1))),
            "a bomb": write(zlib.compress(bytes(50 * size))),
            "too big": write(bytes(2 * size)),
            "trailing data": write(zlib.compress(bytes(size)) + b"x"),
            "outside the palette": write(zlib.compress(b"\xff" * size)),
            "truncated": write(zlib.compress(bytes(size))[:100]),
            "a link": link,
            "a fifo": lambda: os.mkfifo(folder / name),
            "a folder": lambda: (folder / name).mkdir()}


@pytest.mark.parametrize("damage", list(_bad_frames(None, "").keys()))
def test_a_damaged_stored_frame_is_ignored_and_drawn_again(tmp_path: Any, monkeypatch: Any, damage: str) -> None:
    """A stored frame that is not exactly a frame's pixels in the palette (or not a regular file) is ignored with
    a warning naming it, never trusted: the frame is drawn, the plot is the plot drawn alone, and the file is
    replaced by the frame drawn (where a file can replace it)."""
    import os
    import warnings

    from bat_analysis.report.plots import SharedFrames

    if damage == "a fifo" and not hasattr(os, "mkfifo") or damage == "a link" and os.name == "nt":
        pytest.skip(f"{damage}: not made on this platform")
    record, limits = _gate_plots()[0]
    alone = PngRenderer().gate(record, limits=limits)
    PngRenderer(shared=SharedFrames(tmp_path)).gate(record, limits=limits)
    (name,) = [p.name for p in tmp_path.iterdir()]
    (tmp_path / name).unlink()
    _bad_frames(tmp_path, name)[damage]()
    drawn = _counting_draws(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = PngRenderer(shared=SharedFrames(tmp_path)).gate(record, limits=limits)
    assert (png.data, png.texts) == (alone.data, alone.texts)
    assert drawn == [1]
    messages = [str(w.message) for w in caught]
    assert any(name in m and "ignored" in m for m in messages), messages
    if damage != "a folder":  # the frame drawn replaced it: read back by the next renderer
        assert (tmp_path / name).is_file() and not (tmp_path / name).is_symlink()
        drawn.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert PngRenderer(shared=SharedFrames(tmp_path)).gate(record, limits=limits).data == alone.data
        assert not drawn
    else:  # a folder in its place: the frame is not shared, and the warning says so
        assert any("not shared" in m for m in messages), messages
