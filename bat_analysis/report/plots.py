"""Figures for review and reports: gates on their parent's density, activation-marker histograms, dose-response curves.

Everything is drawn from the small records the pipeline keeps (gate geometry, 2-D histograms, the
basophils' marker values, fit results), never from all the events: a gate is an image of its parent's
density (``GateRecord.density``) with the gate's outline on top. Drawing functions (``draw_*``) take a
matplotlib ``Axes``. :class:`PngRenderer` makes the reports' PNGs: the per-tube plots (gates, activation
histogram) are painted with numpy into palette pixels over a frame matplotlib draws once per frame key
(:mod:`._paint`, ~2-3 ms a plot; a frame ~20 ms, drawn over the previous one of its layout), and their per-tube
words are ``Png.texts``, printed under the image by the HTML and the PDF. The processes drawing a run share those
frames through a folder (:class:`SharedFrames`): a frame read back is the frame drawn, byte for byte. The
dose-response curves are matplotlib's own figure, pixel for pixel: its axes, ticks and labels are drawn once per
axis limits and kept in Agg's pixels, each figure's marks, title and legend drawn by matplotlib over a copy
(:meth:`PngRenderer.dose_response`); other plots are drawn whole by matplotlib.

Text in the figures (gate, marker, allergen and file names, reviewers' reasons, units) comes from the inputs
and is drawn literally: every drawing function here and the PDF writer run under :func:`literal_text`, so
matplotlib never reads ``$...$`` as mathtext nor hands text to TeX (our own tick labels are plain text).
Control characters in drawn text and in ``Png.texts`` are shown as escapes (``textsafe.visible``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import stat
import struct
import textwrap
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # reports are rendered headless; must precede pyplot users in this process

import numpy as np  # noqa: E402
from matplotlib import patches  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402
from matplotlib.ticker import (FixedLocator, FuncFormatter, MaxNLocator, NullFormatter,  # noqa: E402
                               NullLocator)

from ..records import GateRecord, TubeResult  # noqa: E402
from ._paint import PNG_COMPRESSION, Box, Palette, encode_palette_png, fill_below, png_chunk, stroke  # noqa: E402

if TYPE_CHECKING:
    from ..analysis.dose_response import FitResult
from .._textsafe import MULTILINE_UNSAFE, in_font, visible  # noqa: E402

GATE_COLOUR = "#d62728"
ADJUSTED_COLOUR = "#ff7f0e"
ARM_COLOURS = {"none": "#1f77b4", "omalizumab": "#d62728"}
ARM_LABELS = {"none": "no pretreatment", "omalizumab": "omalizumab"}
DENSITY_CMAP = "viridis"
HISTOGRAM_GREY = "0.55"
NOTE_GREY = "0.25"  # how an automated gate was set, written in the plots drawn whole (plain text in captions)
ASINH_COFACTOR = 150.0  # linear width of the arcsinh display scale (compensated linear units)
ACTIVATION_FILL = "#9ecae1"  # the tube's activation histogram
NEGATIVE_TRACE = "0.2"  # the negative control's histogram, an outline over it
ADJUSTED_TEXT_COLOUR = "#c25e00"  # a manual adjustment's note as text: darker than its outline, to read on white
GATE_LINE_PT, THRESHOLD_LINE_PT, TRACE_LINE_PT = 1.6, 1.4, 1.0  # line widths (points)
DASHES = (3.7, 1.6)  # matplotlib's "--": dash and gap per point of line width
MANUAL_METHODS = ("override", "manual")
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}
# Type sizes (points) of every plot, for a plot of PLOT_SIZE inches shown at about 400 px wide on screen (tick
# labels ~12 px) or 3.6 in wide in print (8 pt): readable both ways; PLOT_DPI gives the enlarged image ~800 px.
TITLE_PT, LABEL_PT, TICK_PT, NOTE_PT, LEGEND_PT = 10.0, 8.5, 8.0, 7.5, 7.0
PLOT_SIZE = (3.6, 3.0)  # inches, one gate or histogram
PLOT_DPI = 225  # 810 x 675 px per plot


def literal_text() -> Any:
    """Context manager and decorator: matplotlib Text created and drawn inside shows its string as written
    (no mathtext for ``$...$``, no TeX), whatever the user's matplotlib settings."""
    return matplotlib.rc_context(LITERAL_TEXT)


def draws_literally(func: Any) -> Any:
    """Decorator of a drawing function: it runs under :func:`literal_text`, and afterwards every Text of the
    Axes or Figure it was given or returned is set to literal too (an Axes made by the caller outside
    :func:`literal_text` already holds its title and axis-label Text objects, which ``set_title`` and
    ``set_xlabel`` only fill). Control characters in them are shown as escapes (``textsafe.visible``)."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with literal_text():
            result = func(*args, **kwargs)
        for obj in (*args, *kwargs.values(), result):
            for target in (obj if isinstance(obj, (list, tuple)) else [obj]):
                if isinstance(target, (Axes, Figure)):
                    _literal_texts(target)
        return result
    return wrapper


def _literal_texts(target: Artist) -> None:
    """Every Text of ``target`` shown as written, control characters and characters its font has no glyph for
    as escapes (``textsafe.in_font``; see :func:`draws_literally`)."""
    for text in target.findobj(Text):
        text.set_parse_math(False)
        text.set_text(in_font(text.get_text(), _font_holds(text), MULTILINE_UNSAFE))


def _font_holds(text: Text) -> frozenset[str]:
    """The characters the font matplotlib draws ``text`` with has glyphs for."""
    from matplotlib.font_manager import findfont

    return _glyphs(findfont(text.get_fontproperties()))


@functools.lru_cache(maxsize=8)
def _glyphs(path: str) -> frozenset[str]:
    """The characters of a font file's character map (read once per font and process)."""
    from matplotlib.ft2font import FT2Font

    return frozenset(map(chr, FT2Font(path).get_charmap()))


def is_manual(record: GateRecord) -> bool:
    """True when a reviewer replaced the automated geometry of this gate."""
    return record.method in MANUAL_METHODS


def manual_reason(record: GateRecord) -> str | None:
    """The reviewer's name and reason recorded in the gate's diagnostics, if any."""
    diag = record.diagnostics or {}
    info = diag.get("override") if isinstance(diag.get("override"), Mapping) else diag
    parts = [str(info[k]) for k in ("reviewer", "reason") if info.get(k)]
    return " — ".join(parts) if parts else None


def _fmt_count(n: int) -> str:
    return f"{n:,}".replace(",", "\u2009")


def gate_caption(record: GateRecord) -> str:
    """``count of parent (xx.x%)`` in words, with a note for an empty parent."""
    if not record.parent_count:
        return f"{_fmt_count(record.count)} events (parent empty)"
    pct = 100.0 * record.count / record.parent_count
    return f"{_fmt_count(record.count)} of {_fmt_count(record.parent_count)} ({pct:.1f}%)"


def _axis_label(record: GateRecord, i: int) -> str:
    dims = list(record.geometry.get("dims") or record.dims)
    tnames = list(record.geometry.get("transforms") or [None] * len(dims))
    if i >= len(dims):
        return ""
    t = tnames[i] if i < len(tnames) else None
    t = str(t).split("(")[0].strip() if t else None  # "logicle(T=262144,W=0.5,...)" -> "logicle"
    return f"{dims[i]} ({t})" if t else str(dims[i])


def _edges(record: GateRecord) -> list[np.ndarray]:
    return [np.asarray(e, dtype=float) for e in (record.density_edges or ())]


def _orient(density: np.ndarray, ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    """The histogram as ``numpy.histogram2d`` lays it out (``H[x_bin, y_bin]``)."""
    h = np.asarray(density, dtype=float)
    if h.shape == (len(ey) - 1, len(ex) - 1) and h.shape != (len(ex) - 1, len(ey) - 1):
        h = h.T  # stored as image rows (y, x): bring it to (x, y)
    if h.shape != (len(ex) - 1, len(ey) - 1):
        raise ValueError(f"density of shape {h.shape} does not match edges "
                         f"({len(ex) - 1}, {len(ey) - 1})")
    return h


def _density_image(ax: Axes, density: np.ndarray, ex: np.ndarray, ey: np.ndarray) -> Artist:
    """Image of a 2-D histogram (log colour scale, empty bins blank); axis limits are left alone."""
    h = _orient(density, ex, ey)
    img = np.ma.masked_less_equal(h.T, 0)
    vmin, vmax = _log_limits(h)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    dx, dy = np.diff(ex), np.diff(ey)
    if np.allclose(dx, dx[0]) and np.allclose(dy, dy[0]):
        return ax.imshow(img, origin="lower", extent=(ex[0], ex[-1], ey[0], ey[-1]), aspect="auto",
                         cmap=DENSITY_CMAP, norm=norm, interpolation="nearest")
    return ax.pcolormesh(ex, ey, img, cmap=DENSITY_CMAP, norm=norm, shading="flat")


def _span(lo: float | None, hi: float | None, lim: tuple[float, float]) -> tuple[float, float]:
    """A range side left open (None) runs past the axis limit."""
    pad = (lim[1] - lim[0]) or 1.0
    return (lim[0] - pad if lo is None else float(lo), lim[1] + pad if hi is None else float(hi))


def _draw_outline(ax: Axes, geometry: Mapping[str, Any], ndim_drawn: int, colour: str,
                  style: str) -> list[Artist]:
    """The gate's outline added to the axes (returns the artists drawn)."""
    artists = _outline_artists(ax, geometry, ndim_drawn, colour, style)
    for artist in artists:
        if isinstance(artist, patches.Patch):
            ax.add_patch(artist)
        elif isinstance(artist, Line2D):
            ax.add_line(artist)
        else:
            ax.add_artist(artist)
    return artists


def boolean_expression(geometry: Mapping[str, Any]) -> str:
    """A boolean gate's expression in words: ``cells AND NOT debris``."""
    words = {True: "NOT ", False: ""}
    ops = [f"{words[bool(c)]}{r}" for r, c in geometry.get("operands", [])]
    op = geometry.get("op", "and")
    return f"NOT {ops[0]}" if op == "not" and ops else f" {op.upper()} ".join(ops)


def _outline_parts(geometry: Mapping[str, Any], ndim_drawn: int, xlim: tuple[float, float],
                   ylim: tuple[float, float]) -> list[tuple[str, Any]]:
    """What a gate's outline is made of, in data units, for the matplotlib drawing and the painted one alike:
    ``("vline", x)`` (a line across the axes' height), ``("polygon", N x 2 vertices)`` (closed; a range's
    rectangle, its open sides past the limits), ``("ellipse", (centre, width, height, angle in degrees))`` and
    ``("text", expression)`` for a boolean gate."""
    kind = geometry.get("type")
    if kind == "range":
        mins, maxs = list(geometry.get("mins", [])), list(geometry.get("maxs", []))
        if ndim_drawn == 1 or len(mins) == 1:
            return [("vline", float(v)) for v in (mins[0], maxs[0]) if v is not None]
        x0, x1 = _span(mins[0], maxs[0], xlim)
        y0, y1 = _span(mins[1], maxs[1], ylim)
        return [("polygon", np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))]
    if kind == "polygon":
        return [("polygon", np.asarray(geometry["vertices"], dtype=float)[:, :2])]
    if kind == "ellipsoid":
        mean = np.asarray(geometry["mean"], dtype=float)
        cov = np.asarray(geometry["covariance"], dtype=float)
        if ndim_drawn == 1 or mean.size == 1:
            half = math.sqrt(float(geometry["distance_square"]) * cov.reshape(-1)[0])
            return [("vline", float(v)) for v in (mean[0] - half, mean[0] + half)]
        # the marginal ellipse in the two drawn dimensions
        vals, vecs = np.linalg.eigh(cov[:2, :2] * float(geometry["distance_square"]))
        vals = np.clip(vals, 0.0, None)
        angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
        return [("ellipse", (tuple(mean[:2]), 2 * math.sqrt(vals[1]), 2 * math.sqrt(vals[0]), angle))]
    if kind == "boolean":
        return [("text", boolean_expression(geometry))]
    return []


def _ellipse_points(centre: Sequence[float], width: float, height: float, angle: float,
                    n: int = 256) -> np.ndarray:
    """``n`` points on an ellipse (as ``patches.Ellipse`` draws it: axes ``width`` x ``height`` rotated by
    ``angle`` degrees about ``centre``)."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    a = math.radians(angle)
    x, y = 0.5 * width * np.cos(t), 0.5 * height * np.sin(t)
    return np.column_stack([centre[0] + x * math.cos(a) - y * math.sin(a),
                            centre[1] + x * math.sin(a) + y * math.cos(a)])


def _outline_artists(ax: Axes, geometry: Mapping[str, Any], ndim_drawn: int, colour: str,
                     style: str) -> list[Artist]:
    """The gate's outline as artists not yet added to the axes."""
    kw = dict(fill=False, edgecolor=colour, linewidth=GATE_LINE_PT, linestyle=style, zorder=3)
    out: list[Artist] = []
    for part, value in _outline_parts(geometry, ndim_drawn, ax.get_xlim(), ax.get_ylim()):
        if part == "vline":
            out.append(Line2D([value, value], [0, 1], color=colour, linewidth=GATE_LINE_PT, linestyle=style,
                              zorder=3, transform=ax.get_xaxis_transform()))
        elif part == "polygon":
            out.append(patches.Polygon(value, closed=True, **kw))
        elif part == "ellipse":
            centre, width, height, angle = value
            out.append(patches.Ellipse(centre, width, height, angle=angle, **kw))
        else:
            out.append(Text(0.03, 0.03, value, transform=ax.transAxes, fontsize=NOTE_PT, color=colour, zorder=4,
                            bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.5)))
    return out


def _message(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=LABEL_PT, color="0.35",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


Limits = tuple[tuple[float, float], tuple[float, float]]


def _ndim(record: GateRecord) -> int:
    """0: nothing to draw, 1: a histogram, 2: a density image."""
    edges = _edges(record)
    if record.density is None or not edges:
        return 0
    return 1 if len(edges) == 1 or np.asarray(record.density).ndim == 1 else 2


def _own_limits(record: GateRecord) -> Limits:
    edges = _edges(record)
    if _ndim(record) == 1:
        h = np.asarray(record.density, dtype=float)
        return (float(edges[0][0]), float(edges[0][-1])), (0.0, max(float(h.max(initial=0)), 1.0) * 1.1)
    return (float(edges[0][0]), float(edges[0][-1])), (float(edges[1][0]), float(edges[1][-1]))


def frame_key(record: GateRecord) -> tuple[str, str, str, int]:
    """Gates plotted on one frame across tubes: same name, axes and kind of plot."""
    return (record.name, _axis_label(record, 0), _axis_label(record, 1), _ndim(record))


def shared_gate_limits(results: Iterable[TubeResult]) -> dict[tuple[str, str, str, int], Limits]:
    """Axis limits holding every tube's histogram of each gate: the same gate is then drawn on the same
    axes in every tube (comparable at a glance, and its frame is drawn only once). Each limit is widened to
    a round number (:func:`round_out`), so that other tubes with nearly the same range (another patient's)
    share the frame too.

    For 1-D histograms the height is the 90th percentile of the tubes' peaks, so that one tube's burst
    (a clog) does not flatten every other tube's trace; its own bars run off the top.
    """
    spans: dict[tuple[str, str, str, int], list[Limits]] = {}
    for result in results:
        for record in result.gates:
            if _ndim(record):
                spans.setdefault(frame_key(record), []).append(_own_limits(record))
    out: dict[tuple[str, str, str, int], Limits] = {}
    for key, lims in spans.items():
        xs = [x for x, _ in lims]
        ys = [y for _, y in lims]
        xlim = (min(x[0] for x in xs), max(x[1] for x in xs))
        if key[3] == 1:
            ylim = (0.0, float(np.percentile([y[1] for y in ys], 90)))
        else:
            ylim = (min(y[0] for y in ys), max(y[1] for y in ys))
        out[key] = (round_out(*xlim), round_out(*ylim))
    return out


def round_out(lo: float, hi: float, parts: int = 20) -> tuple[float, float]:
    """``(lo, hi)`` widened to multiples of a round step (1, 2 or 5 × 10^k, about ``1/parts`` of the span);
    unchanged when not finite or empty."""
    span = hi - lo
    if not (math.isfinite(lo) and math.isfinite(hi) and span > 0):
        return lo, hi
    raw = span / parts
    unit = 10.0 ** math.floor(math.log10(raw))
    step = next(m * unit for m in (1, 2, 5, 10) if m * unit >= raw)
    if step >= 1:
        return math.floor(lo / step) * step, math.ceil(hi / step) * step
    per = round(1.0 / step)  # a step below 1 is 1/per exactly: n/per is the nearest float (0.95, not 19 × 0.05)
    return math.floor(lo * per) / per, math.ceil(hi * per) / per


def _gate_frame(record: GateRecord, ax: Axes, limits: Limits | None = None) -> int:
    """The parts of a gate plot that do not depend on the tube's data: limits (the gate's own, or
    ``limits`` shared by a run), labels, ticks, name. Returns the number of dimensions drawn."""
    ax.set_title(record.name, fontsize=TITLE_PT, loc="left", fontweight="bold", y=1.0, pad=3)
    ndim = _ndim(record)
    if not ndim:
        _message(ax, "no density recorded")
        return 0
    (x0, x1), (y0, y1) = limits or _own_limits(record)
    ax.set_xlabel(_axis_label(record, 0), fontsize=LABEL_PT)
    ax.set_ylabel("events" if ndim == 1 else _axis_label(record, 1), fontsize=LABEL_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    return ndim


def _gate_marks(record: GateRecord, ax: Axes, ndim_drawn: int, adjusted_reason: str | None) -> list[Artist]:
    """The parts that change from tube to tube, drawn with matplotlib: density, outline, counts and how the
    gate was set (the painted plots of :class:`PngRenderer` paint the same, see :func:`_paint_gate`)."""
    colour, style = _outline_style(record, adjusted_reason)
    edges = _edges(record)
    artists: list[Artist] = []
    if ndim_drawn == 1:
        artists.append(ax.stairs(np.asarray(record.density, dtype=float).reshape(-1), edges[0], fill=True,
                                 color=HISTOGRAM_GREY))
    elif ndim_drawn == 2:
        artists.append(_density_image(ax, np.asarray(record.density), edges[0], edges[1]))
    for shape in _outlined_shapes(record, ndim_drawn):
        artists += _draw_outline(ax, shape, ndim_drawn, colour, style)
    above = ax.transAxes + ScaledTranslation(0, 3 / 72, ax.figure.dpi_scale_trans)  # 3 pt above the frame
    artists.append(ax.text(1.0, 1.0, gate_caption(record), transform=above, ha="right", va="bottom",
                           fontsize=NOTE_PT))
    note, note_colour = method_note(record, adjusted_reason)
    artists.append(ax.text(0.98, 0.03, textwrap.fill(note, 42), transform=ax.transAxes, ha="right",
                           va="bottom", fontsize=NOTE_PT, color=note_colour, zorder=5,
                           bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.2)))
    return artists


def _outline_style(record: GateRecord, adjusted_reason: str | None) -> tuple[str, str]:
    """Colour and line style of a gate's outline: orange dashed when a reviewer adjusted it, else red solid."""
    return (ADJUSTED_COLOUR, "--") if is_manual(record) or adjusted_reason is not None else (GATE_COLOUR, "-")


def _outlined_shapes(record: GateRecord, ndim_drawn: int) -> list[Mapping[str, Any]]:
    """The geometries outlined: the gate's and a composite gate's members (over a density); a boolean gate's
    expression is written even without one."""
    if ndim_drawn:
        return [record.geometry, *record.geometry.get("members", [])]
    return [record.geometry] if record.geometry.get("type") == "boolean" else []


def _log_limits(h: np.ndarray) -> tuple[float, float]:
    """The log colour scale's (vmin, vmax) of a density: counts from 1 (0.5 when every bin holds at most 1)."""
    vmax = float(h.max(initial=0))
    return (1.0 if vmax > 1 else 0.5), max(vmax, 1.0)


def _bins(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index of each value (-1 outside the edges)."""
    i = np.searchsorted(edges, values, side="right") - 1
    i[values == edges[-1]] = len(edges) - 2
    i[(i < 0) | (i >= len(edges) - 1)] = -1
    return i


@draws_literally
def draw_gate(record: GateRecord, ax: Axes, *, adjusted_reason: str | None = None) -> None:
    """The parent's density (image of the stored histogram) with the gate's outline and counts.

    The title names the gate, the caption gives count, parent count and % of parent and how the gate
    was obtained (its estimator, fixed, fallback, not gated). A manually adjusted gate is outlined in
    orange, dashed, and labelled "manually adjusted" with the reviewer's reason when known.
    """
    _gate_marks(record, ax, _gate_frame(record, ax), adjusted_reason)


def method_note(record: GateRecord, adjusted_reason: str | None = None) -> tuple[str, str]:
    """How the gate was obtained, in words, and the colour to write it in."""
    diag = record.diagnostics or {}
    if is_manual(record) or adjusted_reason is not None:
        reason = adjusted_reason or manual_reason(record)
        return "manually adjusted" + (f": {reason}" if reason else ""), ADJUSTED_COLOUR
    if record.method == "not_gated":
        return f"not gated: {diag.get('failure', 'no estimate')}", GATE_COLOUR
    text = "fallback geometry (estimate failed)" if record.method == "fallback" else record.method
    if record.geometry.get("keep") == "outside":
        text += ", keeps events outside"
    return text, NOTE_GREY


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _power_label(value: float, _pos: int | None = None) -> str:
    """Tick label in plain text (no mathtext: much faster to lay out): 0, 10², -10³, 500."""
    if value == 0:
        return "0"
    exponent = math.log10(abs(value))
    if abs(exponent - round(exponent)) < 1e-9 and abs(exponent) >= 2:
        return ("-" if value < 0 else "") + "10" + str(int(round(exponent))).translate(_SUPERSCRIPT)
    return f"{value:g}"


def _asinh_ticks(lo: float, hi: float, cofactor: float) -> list[float]:
    """0 and the powers of ten beyond the linear zone (as on a logicle axis), inside [lo, hi]."""
    start = max(1, math.floor(math.log10(max(cofactor, 1.0))))
    ticks = [0.0] if lo <= 0 <= hi else []
    for k in range(start, 10):
        for v in (10.0 ** k, -(10.0 ** k)):
            if lo <= v <= hi:
                ticks.append(v)
    return sorted(ticks)


def _printed_pct(values: np.ndarray, threshold: float, given: float | None) -> float:
    """The % above the threshold a histogram prints: ``given`` (the report passes tubes.csv's number), else
    :func:`bat_analysis.analysis.metrics.pct_above` — the one definition the tables use."""
    if given is not None:
        return given
    from ..analysis.metrics import pct_above  # here: drawing workers are always given the number

    return pct_above(values, threshold)


def activation_range(arrays: Iterable[np.ndarray | None], thresholds: Iterable[float | None] = (), *,
                     cofactor: float = ASINH_COFACTOR) -> tuple[float, float] | None:
    """A display range (compensated linear) that holds 99% of every array's values and every threshold, its
    ends on the display scale (arcsinh) widened to multiples of 0.5 (so that other tubes with nearly the same
    range share the axis's frame).

    Used to give all tubes of a patient the same activation axis, so that their histograms compare at a glance.
    """
    lows, highs = [], []
    for a in arrays:
        if a is not None and np.size(a):
            lo, hi = np.percentile(np.arcsinh(np.asarray(a, dtype=float) / cofactor), [0.5, 99.5])
            lows.append(lo)
            highs.append(hi)
    for t in thresholds:
        if t is not None and math.isfinite(t):
            lows.append(math.asinh(t / cofactor))
            highs.append(math.asinh(t / cofactor))
    if not lows:
        return None
    lo, hi = min(lows), max(highs)
    pad = 0.05 * ((hi - lo) or 1.0)
    lo, hi = math.floor((lo - pad) * 2.0) / 2.0, math.ceil((hi + pad) * 2.0) / 2.0
    return float(np.sinh(lo) * cofactor), float(np.sinh(hi) * cofactor)


def _activation_frame(ax: Axes, marker: str, xlim: tuple[float, float], cofactor: float,
                      population: str = "basophils") -> None:
    """Axis, ticks, labels and title of an activation histogram (shared by every tube of a run)."""
    ax.set_title(f"{marker} on {population}", fontsize=TITLE_PT, loc="left", fontweight="bold", y=1.0, pad=3)
    ax.set_xscale("asinh", linear_width=cofactor)
    ax.set_xlim(*xlim)
    ax.xaxis.set_major_locator(FixedLocator(_asinh_ticks(xlim[0], xlim[1], cofactor)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(_power_label))
    ax.set_ylim(0, 140)  # room for the legend above the modes
    ax.set_yticks(range(0, 101, 25))
    ax.set_xlabel(f"{marker} (compensated, arcsinh scale)", fontsize=LABEL_PT)
    ax.set_ylabel("% of mode", fontsize=LABEL_PT)
    ax.tick_params(labelsize=TICK_PT)


def _has_threshold(threshold: float | None) -> bool:
    return threshold is not None and math.isfinite(threshold)


def _activation_histograms(values: np.ndarray, neg: np.ndarray | None, xlim: tuple[float, float],
                           cofactor: float, bins: int, pcts: tuple[float | None, float | None]
                           ) -> tuple[np.ndarray, list[tuple[str, np.ndarray, np.ndarray, float | None]]]:
    """The bin edges (compensated linear, even on the arcsinh scale) and, for the tube and the negative control
    when they have values, ``(name, values, % of mode per bin, % to print or None)``."""
    edges_t = np.linspace(math.asinh(xlim[0] / cofactor), math.asinh(xlim[1] / cofactor), bins + 1)
    out = []
    for name, v, given in (("this tube", values, pcts[0]), ("negative control", neg, pcts[1])):
        if v is None or not v.size:
            continue
        h, _ = np.histogram(np.arcsinh(v / cofactor), edges_t)
        out.append((name, v, 100.0 * h / h.max() if h.max() > 0 else h.astype(float), given))
    return np.sinh(edges_t) * cofactor, out


def _activation_labels(hists: Sequence[tuple[str, np.ndarray, np.ndarray, float | None]], threshold: float | None,
                       marker: str) -> tuple[list[str], str | None]:
    """The legend's words: each histogram's name with its % above the threshold and n, and the threshold's."""
    if not _has_threshold(threshold):
        return [name for name, *_ in hists], None
    assert threshold is not None
    return ([f"{name}: {_printed_pct(v, threshold, given):.1f}% {marker}+ (n={v.size})" for name, v, _, given in hists],
            f"threshold {threshold:.4g}")


def _activation_marks(ax: Axes, values: np.ndarray, neg: np.ndarray | None, threshold: float | None,
                      marker: str, xlim: tuple[float, float], cofactor: float, bins: int, *,
                      pcts: tuple[float | None, float | None] = (None, None),
                      population: str = "basophils") -> list[Artist]:
    """The tube's histogram, the negative control's, the threshold and the legend (``pcts``: the tube's and
    the negative control's % above the threshold to print, see :func:`_printed_pct`)."""
    artists: list[Artist] = []
    edges, hists = _activation_histograms(values, neg, xlim, cofactor, bins, pcts)
    labels, threshold_label = _activation_labels(hists, threshold, marker)
    for (name, _, h, _), label in zip(hists, labels):
        kw = (dict(fill=True, color=ACTIVATION_FILL) if name == "this tube" else
              dict(fill=False, color=NEGATIVE_TRACE, linewidth=TRACE_LINE_PT))
        artists.append(ax.add_patch(patches.StepPatch(h, edges, label=label, **kw)))
    if not values.size:
        artists.append(ax.text(0.5, 0.45, f"no {population} in this tube", transform=ax.transAxes, ha="center",
                               fontsize=NOTE_PT))
    if threshold_label is not None:
        artists.append(ax.add_line(Line2D([threshold, threshold], [0, 1], color=GATE_COLOUR,
                                          linewidth=THRESHOLD_LINE_PT, zorder=3, label=threshold_label,
                                          transform=ax.get_xaxis_transform())))
    else:
        artists.append(ax.text(0.98, 0.5, "no threshold available", transform=ax.transAxes, ha="right",
                               fontsize=NOTE_PT, color=GATE_COLOUR))
    if hists or threshold_label is not None:
        handles = [a for a in artists if isinstance(a, (patches.StepPatch, Line2D))]
        artists.append(ax.legend(handles=handles, fontsize=LEGEND_PT, loc="upper right", frameon=True,
                                 framealpha=0.85, edgecolor="none", handlelength=1.2))
    return artists


@draws_literally
def draw_activation(values: np.ndarray, negative_values: np.ndarray | None, threshold: float | None,
                    ax: Axes, *, marker: str = "CD63", cofactor: float = ASINH_COFACTOR, bins: int = 80,
                    xlim: tuple[float, float] | None = None, pct: float | None = None,
                    negative_pct: float | None = None, population: str = "basophils") -> list[Artist]:
    """Histogram of the basophils' activation marker with its threshold and the negative control overlaid
    (titled "``marker`` on ``population``", the gating template's names).

    Values are compensated linear; the x axis uses matplotlib's arcsinh scale (linear near zero,
    logarithmic beyond ``cofactor``), over ``xlim`` (default: the data's range). Each histogram is
    normalised to its mode; the legend gives each one's % above the threshold: ``pct`` and
    ``negative_pct`` when given (the reports pass tubes.csv's), else computed by
    :func:`bat_analysis.analysis.metrics.pct_above`.
    """
    values = np.asarray(values, dtype=float)
    neg = None if negative_values is None else np.asarray(negative_values, dtype=float)
    xlim = xlim or activation_range([values, neg], [threshold], cofactor=cofactor)
    if xlim is None:
        ax.set_title(f"{marker} on {population}", fontsize=TITLE_PT, loc="left", fontweight="bold", y=1.0, pad=3)
        _message(ax, f"no {population}")
        return []
    _activation_frame(ax, marker, xlim, cofactor, population)
    return _activation_marks(ax, values, neg, threshold, marker, xlim, cofactor, bins, pcts=(pct, negative_pct),
                             population=population)


def marker_values(result: TubeResult, marker: str) -> np.ndarray:
    """The basophils' values of ``marker`` (matched case-insensitively; empty when absent)."""
    wanted = marker.casefold()
    for key, values in result.basophil_values.items():
        if key.casefold() == wanted:
            return np.asarray(values)
    return np.empty(0)


@draws_literally
def draw_tube_row(result: TubeResult, axes: Sequence[Axes], *, negative_values: np.ndarray | None,
                  threshold: float | None, marker: str = "CD63",
                  adjusted: Mapping[str, str] | None = None) -> None:
    """All gates of a tube, then its activation histogram, one per axes (``len(result.gates) + 1`` axes).

    ``adjusted`` maps gate names to a reviewer's reason for gates marked manually adjusted elsewhere.
    """
    adjusted = adjusted or {}
    if len(axes) < len(result.gates) + 1:
        raise ValueError(f"{result.tube.file}: {len(result.gates) + 1} axes needed, {len(axes)} given")
    for record, ax in zip(result.gates, axes):
        draw_gate(record, ax, adjusted_reason=adjusted.get(record.name))
    draw_activation(marker_values(result, marker), negative_values, threshold,
                    axes[len(result.gates)], marker=marker)


@draws_literally
def draw_tube_panel(result: TubeResult, *, negative_values: np.ndarray | None, threshold: float | None,
                    marker: str = "CD63", adjusted: Mapping[str, str] | None = None,
                    panel_size: tuple[float, float] = (3.0, 2.6)) -> Figure:
    """A one-row figure with every gate of the tube and its activation histogram."""
    n = len(result.gates) + 1
    fig = Figure(figsize=(panel_size[0] * n, panel_size[1]))
    axes = fig.subplots(1, n, squeeze=False)[0]
    draw_tube_row(result, list(axes), negative_values=negative_values, threshold=threshold, marker=marker,
                  adjusted=adjusted)
    fig.suptitle(f"{result.tube.file}", fontsize=9, x=0.01, ha="left")
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.18, top=0.8, wspace=0.3)
    return fig


@dataclass(frozen=True)
class Png:
    """One rendered drawing: what it shows (``kind`` gate / activation / dose_response, ``title``) and bytes.

    ``texts`` belong with the image but are not in its pixels: the per-tube plots of :meth:`PngRenderer.gate`
    and :meth:`PngRenderer.activation` carry their words here (count caption, how the gate was set, the
    activation plot's percentages and threshold, a boolean gate's expression; control characters shown as
    escapes, line feeds kept), for the HTML and the PDF to print under the image (escaped for HTML). Drawings
    made with matplotlib (:meth:`PngRenderer.render`, :meth:`PngRenderer.dose_response`) have none.
    ``text_colours`` gives each text's colour (``#rrggbb``; ``""``: the default): the manual-adjustment note is
    ADJUSTED_TEXT_COLOUR."""

    kind: str
    title: str
    data: bytes
    width: int
    height: int
    texts: tuple[str, ...] = ()
    text_colours: tuple[str, ...] = ()

    def captions(self) -> list[tuple[str, str]]:
        """``(text, colour)`` for each of ``texts`` (colour ``""``: the default)."""
        colours = list(self.text_colours) + [""] * (len(self.texts) - len(self.text_colours))
        return list(zip(self.texts, colours))


def encode_png(rgba: np.ndarray, level: int = PNG_COMPRESSION) -> bytes:
    """An Agg buffer (``H x W x 4``, 8-bit) as an 8-bit RGB PNG: rows unfiltered (filter type 0), zlib ``level``.

    A standard PNG that any reader opens. Measured on the report's 810 x 675 plots: 3.0 ms and 47 KiB each, where
    Pillow (adaptive row filters, level 4) took 10.4 ms for 39 KiB; the plots are flat colours on white, which
    zlib compresses well without the filters. Used for the drawings made with Agg (dose-response curves: 1080 x 765
    px, ~4.6 ms and ~72 KiB, the RGB copied a plane at a time); the per-tube plots are palette PNGs
    (:func:`._paint.encode_palette_png`)."""
    h, w = rgba.shape[:2]
    rows = np.empty((h, w * 3 + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None on every row
    rgb = rows[:, 1:].reshape(h, w, 3)
    for channel in range(3):  # a plane at a time: ~5x faster than one strided copy of the three
        rgb[..., channel] = rgba[..., channel]
    header = struct.pack(">LLBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows, level))
            + png_chunk(b"IEND", b""))


# ------------------------------------------------------------------------------ painted per-tube plots
@functools.lru_cache(maxsize=1)
def palette() -> Palette:
    """The per-tube plots' 256 colours (see :class:`._paint.Palette`)."""
    return Palette((GATE_COLOUR, ADJUSTED_COLOUR, HISTOGRAM_GREY, ACTIVATION_FILL, NEGATIVE_TRACE), DENSITY_CMAP)


@dataclass(frozen=True)
class Frame:
    """A cached frame in palette pixels and what painting over it needs: the axes' interior (``box``, whose
    ``keep`` mask protects a legend), its white pixels (``blank``: densities and bars paint only there, under
    the spines), matplotlib's data-to-display transform (``transform``, frozen), the data value at each of the
    box's column and row centres (``xs``; ``ys`` top-down) and pixels per point."""

    pixels: np.ndarray
    box: Box
    blank: np.ndarray
    transform: Any
    xs: np.ndarray
    ys: np.ndarray
    px_per_pt: float

    def to_pixels(self, xy: Any) -> np.ndarray:
        """Data points (``N x 2``) as continuous buffer coordinates (column, row from the top)."""
        display = self.transform.transform(np.asarray(xy, dtype=float).reshape(-1, 2))
        return np.column_stack([display[:, 0], self.pixels.shape[0] - display[:, 1]])

    def row_of(self, y: np.ndarray) -> np.ndarray:
        """Continuous buffer rows of data heights ``y`` (the plot's y axis is linear)."""
        x = np.full(np.shape(y), self.xs[len(self.xs) // 2] if len(self.xs) else 0.0)
        return self.to_pixels(np.column_stack([x, y]))[:, 1]

    def vline(self, pixels: np.ndarray, x: float, colour: int, width_pt: float,
              dashes: tuple[float, float] | None = None) -> None:
        """A line across the box's height at data ``x``."""
        col = self.to_pixels([[x, self.ys[0] if len(self.ys) else 0.0]])[0, 0]
        pad = width_pt * self.px_per_pt
        stroke(pixels, self.box, np.array([[col, self.box.r0 - pad], [col, self.box.r1 + pad]]), colour,
               width_pt * self.px_per_pt, dashes=dashes)


def _frame_axes(size: tuple[float, float], dpi: int, margins: Mapping[str, float]) -> Axes:
    """A new figure's axes, placed by ``margins``, to draw frames on (see :func:`_draw_frame`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with literal_text():
        fig = Figure(figsize=size, dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        fig.subplots_adjust(**margins)
    return ax


def _draw_frame(draw: Any, size: tuple[float, float], dpi: int, margins: Mapping[str, float],
                ax: Axes | None = None, pixels: np.ndarray | None = None) -> Frame:
    """Draw ``draw(ax)`` once with matplotlib (text literal, see :func:`literal_text`) and keep it as a
    :class:`Frame` in palette pixels (a legend it drew is kept clear of every mark). ``ax``: axes of
    :func:`_frame_axes` (same size, dpi and margins) on which earlier frames were drawn, drawn over again:
    ``draw`` then sets all that it shows (see :meth:`PngRenderer.frame`); by default a new figure's.
    ``pixels``: the frame's pixels as drawn before (by another process, see :class:`SharedFrames`; the
    figure's size): the axes are set up for their transform and legend, not drawn."""
    if ax is None:
        ax = _frame_axes(size, dpi, margins)
    fig = ax.figure
    canvas = fig.canvas
    with literal_text():
        draw(ax)
        _literal_texts(fig)
        if pixels is None:
            canvas.draw()
    if pixels is None:
        pixels = palette().quantise(np.asarray(canvas.buffer_rgba()))
    height = pixels.shape[0]
    bb = ax.bbox  # display coordinates, from the bottom: the box holds the pixels wholly inside the axes
    r0, r1 = height - math.floor(bb.y1), height - math.ceil(bb.y0)
    c0, c1 = math.ceil(bb.x0), math.floor(bb.x1)
    r1, c1 = max(r0, r1), max(c0, c1)
    keep = None
    legend = ax.get_legend()
    if legend is not None:
        lb = legend.get_window_extent(canvas.get_renderer())
        keep = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        keep[max(0, height - math.ceil(lb.y1) - r0):max(0, height - math.floor(lb.y0) - r0),
             max(0, math.floor(lb.x0) - c0):max(0, math.ceil(lb.x1) - c0)] = True
    box = Box(r0, r1, c0, c1, keep)
    inverse = ax.transData.inverted()
    mid_x, mid_y = (bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2
    cols = np.arange(c0, c1) + 0.5
    rows = np.arange(r0, r1) + 0.5
    xs = inverse.transform(np.column_stack([cols, np.full(cols.size, mid_y)]))[:, 0]
    ys = inverse.transform(np.column_stack([np.full(rows.size, mid_x), height - rows]))[:, 1]
    return Frame(pixels, box, box.view(pixels) == palette().white, ax.transData.frozen(), xs, ys,
                 fig.dpi / 72.0)


def _dashes(style: str, width_pt: float) -> tuple[float, float] | None:
    return None if style == "-" else (DASHES[0] * width_pt, DASHES[1] * width_pt)


def _paint_bars(frame: Frame, pixels: np.ndarray, heights: np.ndarray, edges: np.ndarray, colour: int) -> None:
    """A histogram's filled bars from the x axis (``heights`` per bin between ``edges``), on the frame's blank
    pixels."""
    ix = _bins(edges, frame.xs)
    tops = np.where(ix >= 0, np.asarray(heights, dtype=float)[ix], np.nan)
    rows = np.where(np.isfinite(tops), frame.row_of(np.nan_to_num(tops)), np.inf)
    fill_below(pixels, frame.box, rows, colour, frame.blank)


def _paint_density(frame: Frame, pixels: np.ndarray, record: GateRecord) -> None:
    """The 2-D density, bin by bin on the log colour scale (empty bins blank), on the frame's blank pixels:
    each pixel takes the colour of the bin its centre falls in."""
    ex, ey = _edges(record)[:2]
    h = _orient(record.density, ex, ey)
    vmin, vmax = _log_limits(h)
    codes = np.full((h.shape[1] + 1, h.shape[0] + 1), palette().white, dtype=np.uint8)  # (y, x); last: outside
    filled = h.T > 0
    codes[:-1, :-1][filled] = palette().density(
        np.log(np.maximum(h.T[filled], vmin) / vmin) / (math.log(vmax / vmin) or 1.0))
    image = codes[_bins(ey, frame.ys)][:, _bins(ex, frame.xs)]  # -1 (outside the bins) picks the last: blank
    np.copyto(frame.box.view(pixels), image, where=frame.blank)


def _paint_outline(frame: Frame, pixels: np.ndarray, geometry: Mapping[str, Any], ndim_drawn: int, colour: str,
                   style: str, xlim: tuple[float, float], ylim: tuple[float, float]) -> list[str]:
    """A gate's outline (see :func:`_outline_parts`) painted in ``colour``/``style``; returns its texts."""
    index, width = palette().index(colour), GATE_LINE_PT * frame.px_per_pt
    dashes = _dashes(style, width)
    texts = []
    for part, value in _outline_parts(geometry, ndim_drawn, xlim, ylim):
        if part == "vline":
            frame.vline(pixels, value, index, GATE_LINE_PT, dashes)
        elif part in ("polygon", "ellipse"):
            points = value if part == "polygon" else _ellipse_points(*value)
            stroke(pixels, frame.box, frame.to_pixels(points), index, width, closed=True, dashes=dashes)
        else:
            texts.append(value)
    return texts


def _paint_gate(frame: Frame, record: GateRecord, ndim: int, limits: Limits | None,
                adjusted_reason: str | None) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """A gate's marks painted over a copy of its frame's pixels, and its texts with their colours: the caption
    (count of parent), how the gate was set, a boolean gate's expression."""
    pixels = frame.pixels.copy()
    if ndim == 1:
        _paint_bars(frame, pixels, np.asarray(record.density, dtype=float).reshape(-1), _edges(record)[0],
                    palette().index(HISTOGRAM_GREY))
    elif ndim == 2:
        _paint_density(frame, pixels, record)
    colour, style = _outline_style(record, adjusted_reason)
    xlim, ylim = limits or ((0.0, 1.0), (0.0, 1.0))
    expressions = []
    for shape in _outlined_shapes(record, ndim):
        expressions += _paint_outline(frame, pixels, shape, ndim, colour, style, xlim, ylim)
    note, note_colour = method_note(record, adjusted_reason)
    text_colour = ADJUSTED_TEXT_COLOUR if colour == ADJUSTED_COLOUR else colour
    texts = [(gate_caption(record), ""), (note, "" if note_colour == NOTE_GREY else _text_colour(note_colour)),
             *((e, text_colour) for e in expressions)]
    return pixels, texts


def _text_colour(colour: str) -> str:
    """A caption's colour as ``#rrggbb`` (ADJUSTED_COLOUR, too faint as text, as ADJUSTED_TEXT_COLOUR)."""
    from matplotlib.colors import to_hex

    return ADJUSTED_TEXT_COLOUR if colour == ADJUSTED_COLOUR else to_hex(colour)


def _activation_key(ax: Axes, marker: str, xlim: tuple[float, float] | None, cofactor: float, population: str,
                    parts: tuple[bool, bool, bool]) -> None:
    """The frame of a painted activation histogram: axes, and a legend naming what ``parts`` says is drawn
    (this tube, the negative control, the threshold); their numbers are the plot's texts."""
    if xlim is None:
        ax.set_title(f"{marker} on {population}", fontsize=TITLE_PT, loc="left", fontweight="bold", y=1.0, pad=3)
        _message(ax, f"no {population}")
        return
    _activation_frame(ax, marker, xlim, cofactor, population)
    proxies = [patches.Patch(color=ACTIVATION_FILL, label="this tube"),
               patches.Patch(fill=False, edgecolor=NEGATIVE_TRACE, linewidth=TRACE_LINE_PT, label="negative control"),
               Line2D([], [], color=GATE_COLOUR, linewidth=THRESHOLD_LINE_PT, label="threshold")]
    handles = [p for p, shown in zip(proxies, parts) if shown]
    if handles:
        ax.legend(handles=handles, fontsize=LEGEND_PT, loc="upper right", frameon=True, framealpha=0.85,
                  edgecolor="none", handlelength=1.2)


def _paint_activation(frame: Frame, values: np.ndarray, neg: np.ndarray | None, threshold: float | None,
                      marker: str, xlim: tuple[float, float], cofactor: float, bins: int,
                      pcts: tuple[float | None, float | None], population: str
                      ) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The tube's histogram (filled), the negative control's (outline) and the threshold painted over a copy of
    the frame's pixels, and the texts: each histogram's % above the threshold, the threshold, what is missing."""
    pixels = frame.pixels.copy()
    edges, hists = _activation_histograms(values, neg, xlim, cofactor, bins, pcts)
    for name, _, h, _ in hists:
        if name == "this tube":
            _paint_bars(frame, pixels, h, edges, palette().index(ACTIVATION_FILL))
        else:
            outline = np.column_stack([np.repeat(edges, 2), np.concatenate([[0.0], np.repeat(h, 2), [0.0]])])
            stroke(pixels, frame.box, frame.to_pixels(outline), palette().index(NEGATIVE_TRACE),
                   TRACE_LINE_PT * frame.px_per_pt)
    labels, threshold_label = _activation_labels(hists, threshold, marker)
    texts = [(label, "") for label in labels]
    if threshold_label is not None:
        assert threshold is not None
        frame.vline(pixels, threshold, palette().index(GATE_COLOUR), THRESHOLD_LINE_PT)
        texts.append((threshold_label, ""))
    if not values.size:
        texts.append((f"no {population} in this tube", ""))
    if threshold_label is None:
        texts.append(("no threshold available", GATE_COLOUR))
    return pixels, texts


class SharedFrames:
    """A folder of frames' pixels shared by the processes that draw one run's plots (in the run's staging
    folder): a frame that one process drew is read back by the others instead of drawn again by matplotlib.

    A file holds one frame's palette indices, zlib-compressed, named by a digest of the frame's key and the
    renderer's size, dpi and margins, and is written atomically (a reader sees a whole file or none). What is
    read back is untrusted: a file that is not a regular file, is too big, does not decompress to exactly the
    frame's number of pixels or holds indices outside the palette is ignored with a warning (the frame is drawn
    and the file replaced). Nothing in it is executed or unpickled; the pixels are used read-only."""

    SUFFIX = ".frame"

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def name(self, key: tuple[Any, ...], size: tuple[float, float], dpi: int, margins: Mapping[str, float]) -> str:
        """The file name of a frame: a digest of everything its pixels depend on."""
        recipe = repr((key, tuple(size), dpi, sorted(margins.items()), matplotlib.__version__))
        return hashlib.sha256(recipe.encode("utf-8", "backslashreplace")).hexdigest() + self.SUFFIX

    def load(self, name: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The pixels (``shape``, uint8, read-only) stored as ``name``; None when there are none or they are not
        valid (with a warning)."""
        path = self.folder / name
        size = shape[0] * shape[1]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                         | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._ignored(path, f"it cannot be read ({exc.strerror or exc})")
        limit = size + size // 100 + 1024  # zlib's worst case is a few bytes more than the data
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a named pipe, a device
                return self._ignored(path, "it is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            return self._ignored(path, f"it cannot be read ({exc.strerror or exc})")
        finally:
            os.close(fd)
        if len(data) > limit:
            return self._ignored(path, f"it holds more than {limit} bytes")
        inflate = zlib.decompressobj()
        try:
            raw = inflate.decompress(data, size + 1)
        except zlib.error as exc:
            return self._ignored(path, f"it is not zlib data ({exc})")
        if len(raw) != size or not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
            return self._ignored(path, f"it does not hold exactly {shape[0]} x {shape[1]} pixels")
        pixels = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
        if int(pixels.max(initial=0)) >= len(palette().rgb):
            return self._ignored(path, f"it holds colours outside the palette's {len(palette().rgb)}")
        return pixels

    def save(self, name: str, pixels: np.ndarray) -> None:
        """Store ``pixels`` as ``name`` for the other processes (a failure to write is a warning: the frame
        was drawn all the same)."""
        from .._fileio import atomic_write_bytes
        from ..errors import BatError

        try:
            atomic_write_bytes(self.folder / name, zlib.compress(np.ascontiguousarray(pixels, np.uint8), 1),
                               durable=False)
        except BatError as exc:
            warnings.warn(f"a plot frame is not shared with the other drawing processes: {exc}", RuntimeWarning,
                          stacklevel=2)

    @staticmethod
    def _ignored(path: Path, why: str) -> None:
        warnings.warn(f"{path}: stored plot frame ignored, {why}; the frame is drawn again", RuntimeWarning,
                      stacklevel=3)
        return None


class PngRenderer:
    """Draws small figures and returns them as PNG bytes (Agg, fixed layout, no tight_layout).

    At plate scale the cost is axes, ticks and text, not pixels. The per-tube plots (:meth:`gate`,
    :meth:`activation`) are therefore painted: what they share across tubes (axes, ticks, labels, name, the
    activation plot's legend) is drawn once per frame by matplotlib and kept in palette pixels
    (:class:`Frame`); each tube's density, bars and outlines are painted with numpy into a copy of those pixels
    (:mod:`._paint`) and written as a palette PNG, ~3 ms each. Their per-tube words (counts, method,
    percentages) are the Png's ``texts``, shown beside the image by the HTML and the PDF. The dose-response
    curves (:meth:`dose_response`) are drawn by matplotlib over a kept frame of their axes, ~25 ms each instead of
    ~75 ms for the whole figure (:meth:`render`, for any other drawing).
    """

    def __init__(self, *, size: tuple[float, float] = PLOT_SIZE, dpi: int = PLOT_DPI,
                 max_frames: int = 64, shared: SharedFrames | None = None) -> None:
        self.size = size
        self.dpi = dpi
        self.shared = shared  # frames drawn by other processes of the run, and this one's for them
        self.margins = dict(left=0.2, right=0.97, bottom=0.15, top=0.91)
        self.max_frames = max_frames
        self._frames: dict[tuple[Any, ...], Frame] = {}
        self._axes: dict[tuple[Any, ...], Axes] = {}  # layout -> the axes its frames are drawn on (see frame)
        self._curve_frames: dict[tuple[Any, ...], _CurveFrame] = {}

    def _encode(self, rgba: np.ndarray) -> bytes:
        return encode_png(rgba)

    @literal_text()
    def render(self, kind: str, title: str, draw: Any, *, size: tuple[float, float] | None = None,
               margins: Mapping[str, float] | None = None) -> Png:
        """Call ``draw(ax)`` on a fresh axes and encode the figure as PNG."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        w, h = size or self.size
        fig = Figure(figsize=(w, h), dpi=self.dpi)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        draw(ax)
        fig.subplots_adjust(**(margins or self.margins))
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        return Png(kind, title, self._encode(rgba), rgba.shape[1], rgba.shape[0])

    @literal_text()
    def dose_response(self, fits: Mapping[str, FitResult], *, title: str,
                      intervals: Mapping[str, tuple[float, float]] | None = None, marker: str = "CD63",
                      population: str = "basophils") -> Png:
        """One allergen's curves as :func:`draw_dose_response` draws them on a CURVE_SIZE figure (CURVE_MARGINS),
        pixel for pixel: the frame (axes, ticks, labels) is drawn once per :func:`_curve_frame_key` (the same axis
        limits and labels) and kept; each figure's marks, title and legend are drawn over a copy of it."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = Figure(figsize=CURVE_SIZE, dpi=self.dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        _dose_response(fits, ax, title=title, intervals=intervals, marker=marker, population=population)
        fig.subplots_adjust(**CURVE_MARGINS)
        key = _curve_frame_key(ax, CURVE_SIZE, self.dpi, CURVE_MARGINS)
        if key is None:
            _literal_texts(fig)
            fig.canvas.draw()
            rgba = np.asarray(fig.canvas.buffer_rgba())
        else:
            marks = _marks(ax)
            frame = self._curve_frames.get(key)
            for target in (marks if frame is not None else [fig]):
                _literal_texts(target)  # once: control characters become escapes
            if frame is None:
                frame = _draw_curve_frame(fig, ax, marks)
                if len(self._curve_frames) >= CURVE_FRAMES:
                    self._curve_frames.pop(next(iter(self._curve_frames)))
                self._curve_frames[key] = frame
            rgba = _draw_over_frame(frame, marks, self.dpi)
        return Png("dose_response", title, self._encode(rgba), rgba.shape[1], rgba.shape[0])

    def frame(self, key: tuple[Any, ...], draw: Any, layout: tuple[Any, ...] | None = None) -> Frame:
        """The frame drawn by ``draw(ax)`` for ``key``, drawn on first use and kept (the oldest of more than
        ``max_frames`` is dropped).

        ``layout``: the frames of one layout are drawn on one matplotlib axes, each over the one before (a new
        figure and its ticks cost about a third of a frame). Their ``draw`` must set everything the frame shows
        (title, labels, scales, locators, formatters, limits, the legend or its absence), and add no artist
        (a message: then no layout), so that a frame's pixels are those of a new figure's, whatever was drawn
        before (tests/test_report_paint.py). None: a new figure.

        With :attr:`shared`, a frame another process drew is read back instead of drawn (only its axes are set
        up), and a frame drawn here is stored for the others."""
        cached = self._frames.get(key)
        if cached is None:
            ax = None
            if layout is not None:  # taken out while drawing: put back only when drawn without error
                ax = self._axes.pop(layout, None)
            if ax is None:
                ax = _frame_axes(self.size, self.dpi, self.margins)
            shared, name, stored = self.shared, "", None
            if shared is not None:
                width, height = ax.figure.canvas.get_width_height()
                name = shared.name(key, self.size, self.dpi, self.margins)
                stored = shared.load(name, (height, width))
            cached = _draw_frame(draw, self.size, self.dpi, self.margins, ax, stored)
            if layout is not None:
                self._axes[layout] = ax
            if shared is not None and stored is None:
                shared.save(name, cached.pixels)
            if len(self._frames) >= self.max_frames:
                self._frames.pop(next(iter(self._frames)))
            self._frames[key] = cached
        return cached

    @staticmethod
    def _png(kind: str, title: str, pixels: np.ndarray, texts: Sequence[tuple[str, str]]) -> Png:
        shown = [(visible(t, MULTILINE_UNSAFE), c) for t, c in texts if t]
        return Png(kind, title, encode_palette_png(pixels, palette().rgb), pixels.shape[1], pixels.shape[0],
                   tuple(t for t, _ in shown), tuple(c for _, c in shown))

    def gate(self, record: GateRecord, *, adjusted_reason: str | None = None,
             limits: Limits | None = None) -> Png:
        """One gate plot, painted over its frame: ``limits`` shared by the patient's tubes (or the gate's own),
        with the same frame for every tube with the same limits."""
        ndim = _ndim(record)
        lims = (limits or _own_limits(record)) if ndim else None
        frame = self.frame(("gate", *frame_key(record), lims), lambda ax: _gate_frame(record, ax, lims),
                           ("gate",) if ndim else None)
        pixels, texts = _paint_gate(frame, record, ndim, lims, adjusted_reason)
        return self._png("gate", record.name, pixels, texts)

    def activation(self, values: np.ndarray, negative_values: np.ndarray | None, threshold: float | None, *,
                   marker: str = "CD63", xlim: tuple[float, float] | None = None,
                   cofactor: float = ASINH_COFACTOR, bins: int = 80, pct: float | None = None,
                   negative_pct: float | None = None, population: str = "basophils") -> Png:
        """The activation histogram (as :func:`draw_activation` draws it), painted over its frame; the legend
        names its parts and the texts give their numbers. Every tube drawn with the same ``xlim`` (a patient's: see
        :func:`activation_range`) shares the frame."""
        values = np.asarray(values, dtype=float)
        neg = None if negative_values is None else np.asarray(negative_values, dtype=float)
        xlim = xlim or activation_range([values, neg], [threshold], cofactor=cofactor)
        parts = (bool(values.size), neg is not None and bool(neg.size), _has_threshold(threshold))
        lims = None if xlim is None else (float(xlim[0]), float(xlim[1]))
        frame = self.frame(("activation", marker, lims, cofactor, population, parts),
                           lambda ax: _activation_key(ax, marker, lims, cofactor, population, parts),
                           None if lims is None else ("activation", parts))
        if lims is None:
            return self._png("activation", marker, frame.pixels.copy(), [])
        pixels, texts = _paint_activation(frame, values, neg, threshold, marker, lims, cofactor, bins,
                                          (pct, negative_pct), population)
        return self._png("activation", marker, pixels, texts)

    def tube(self, result: TubeResult, *, negative_values: np.ndarray | None, threshold: float | None,
             marker: str = "CD63", adjusted: Mapping[str, str] | None = None,
             xlim: tuple[float, float] | None = None,
             gate_limits: Mapping[tuple[str, str, str, int], Limits] | None = None,
             pct: float | None = None, negative_pct: float | None = None,
             population: str = "basophils") -> list[Png]:
        """One PNG per gate of the tube, then the activation histogram; ``xlim`` and ``gate_limits``
        (from :func:`activation_range` and :func:`shared_gate_limits` of a patient's tubes) put them on the same axes;
        ``pct`` and ``negative_pct`` are the percentages the histogram prints (see :func:`draw_activation`)."""
        adjusted = adjusted or {}
        gate_limits = gate_limits or {}
        pngs = [self.gate(rec, adjusted_reason=adjusted.get(rec.name), limits=gate_limits.get(frame_key(rec)))
                for rec in result.gates]
        values = marker_values(result, marker)
        pngs.append(self.activation(values, negative_values, threshold, marker=marker, xlim=xlim, pct=pct,
                                    negative_pct=negative_pct, population=population))
        return pngs


def _fmt_conc(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "–"


def fit_summary(fit: FitResult) -> str:
    """One line on a fit: EC50 with its CI and R², or why EC50 is not estimable."""
    unit = f" {fit.unit}" if fit.unit else ""
    if fit.status == "ok":
        lo, hi = fit.ec50_ci
        ci = f" (95% CI {_fmt_conc(lo)}–{_fmt_conc(hi)})" if math.isfinite(lo) and math.isfinite(hi) else ""
        r2 = f", R² {fit.r2:.2f}" if math.isfinite(fit.r2) else ""
        return f"EC50 {_fmt_conc(fit.ec50)}{unit}{ci}{r2}"
    return f"EC50 not estimable: {fit.ec50_reason or fit.status}"


def _error_bars(ax: Axes, conc: np.ndarray, y: np.ndarray, files: Sequence[str],
                intervals: Mapping[str, tuple[float, float]], colour: str) -> None:
    """Each point's interval (``intervals`` by file) as a vertical error bar; points without one have none."""
    if len(files) != conc.size:
        return
    rows = [(c, v, intervals.get(f, (math.nan, math.nan))) for c, v, f in zip(conc, y, files)]
    rows = [(c, v, lo, hi) for c, v, (lo, hi) in rows if math.isfinite(lo) and math.isfinite(hi)]
    if not rows:
        return
    c, v, lo, hi = (np.asarray(col, dtype=float) for col in zip(*rows))
    ax.errorbar(c, v, yerr=np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]), fmt="none",
                ecolor=colour, elinewidth=0.8, capsize=2, zorder=2.5)


@draws_literally
def draw_dose_response(fits: Mapping[str, FitResult], ax: Axes, *, title: str | None = None,
                       intervals: Mapping[str, tuple[float, float]] | None = None, marker: str = "CD63",
                       population: str = "basophils") -> None:
    """% marker-positive cells against concentration (log axis) for each arm: points, fitted 4PL, EC50 with
    its CI.

    ``fits`` maps the arm (``none``, ``omalizumab``) to its ``FitResult``. Points left out of the fit
    (after the maximum of a bell-shaped series) are drawn hollow; ``intervals`` (file -> the tube's 95%
    interval of its %, tubes.csv's ``pct_cd63_ci_low``/``_high``) are drawn as error bars; the EC50 is a
    dotted vertical line with its bootstrap confidence interval shaded. ``marker`` and ``population`` name
    the axis as the gating template does. The reports draw the same through :meth:`PngRenderer.dose_response`.
    """
    _dose_response(fits, ax, title=title, intervals=intervals, marker=marker, population=population)


def _dose_response(fits: Mapping[str, FitResult], ax: Axes, *, title: str | None,
                   intervals: Mapping[str, tuple[float, float]] | None, marker: str, population: str) -> None:
    """:func:`draw_dose_response` without making its Text literal afterwards (the caller does)."""
    drawn = False
    unit = None
    # legend lines wrapped to the axes' width (a "not estimable" reason is long); ~0.55 em per character
    width_pt = ax.get_position().width * ax.figure.get_figwidth() * 72
    wrap = max(30, int(width_pt / (LEGEND_PT * 0.55)) - 6)
    for arm in sorted(fits, key=lambda a: (a != "none", a)):
        fit = fits[arm]
        unit = unit or fit.unit
        colour = ARM_COLOURS.get(arm, "0.3")
        conc = np.asarray(fit.concentrations, dtype=float)
        if conc.size == 0:
            continue
        drawn = True
        used = np.asarray(fit.used, dtype=bool) if np.size(fit.used) == conc.size else np.ones(conc.size, bool)
        y = np.asarray(fit.y, dtype=float)
        summary = fit_summary(fit).replace("R² ", "R²\u00a0")  # R² stays with its value
        label = textwrap.fill(f"{ARM_LABELS.get(arm, arm)}: {summary}", wrap, subsequent_indent="  ")
        ax.plot(conc[used], y[used], "o", color=colour, markersize=4, label=label, zorder=3)
        if (~used).any():
            ax.plot(conc[~used], y[~used], "o", markerfacecolor="none", markeredgecolor=colour,
                    markersize=4, zorder=3)
        _error_bars(ax, conc, y, fit.files, intervals or {}, colour)
        if fit.fitted:
            lo_x, hi_x = math.log10(conc.min()), math.log10(conc.max())
            pad = 0.1 * ((hi_x - lo_x) or 1.0)
            xs = np.linspace(lo_x - pad, hi_x + pad, 120)
            ax.plot(10.0 ** xs, fit.curve(xs), "-", color=colour, linewidth=1.3, zorder=2)
        if fit.status == "ok":
            ax.axvline(fit.ec50, color=colour, linestyle=":", linewidth=1.1, zorder=2)
            lo, hi = fit.ec50_ci
            if math.isfinite(lo) and math.isfinite(hi):
                ax.axvspan(lo, hi, color=colour, alpha=0.12, linewidth=0, zorder=1)
    ax.set_title(title or "dose–response", fontsize=TITLE_PT, loc="left", fontweight="bold", y=1.0, pad=3)
    if not drawn:
        _message(ax, "no valid allergen tube")
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_power_label))  # plain text: mathtext is slow to lay out
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 135)  # headroom for the legend above 100%
    ax.yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))  # as set_yticks, without making the ticks now
    ax.set_xlabel(f"concentration ({unit})" if unit else "concentration", fontsize=LABEL_PT)
    ax.set_ylabel(f"% {marker}+ {population}", fontsize=LABEL_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.grid(True, which="major", color="0.9", linewidth=0.6)
    ax.legend(fontsize=LEGEND_PT, loc="upper left", frameon=True, framealpha=0.85, edgecolor="none",
              handlelength=1.0)


# ------------------------------------------------------------------------------ dose-response figures
CURVE_SIZE = (4.8, 3.4)  # inches, one allergen's curves: 1080 x 765 px at PLOT_DPI
CURVE_MARGINS = {"left": 0.12, "right": 0.97, "bottom": 0.14, "top": 0.91}
CURVE_FRAMES = 8  # frames kept per renderer (3.3 MB of pixels and a figure each), the oldest dropped first


@dataclass(frozen=True)
class _CurveFrame:
    """What a dose-response figure shares with every other of the same axes (see :func:`_curve_frame_key`):
    its pixels (``rgba``, Agg's buffer) with the axes, ticks and labels but without the marks, title, grid
    and spines; and ``lines``, the grid lines and spines of the figure that drew it, each with the z-order
    at which its axes draw it, to be drawn among each patient's marks as matplotlib orders them (the grid and
    the spines lie on a shaded EC50 interval and under the points)."""

    rgba: np.ndarray
    lines: tuple[tuple[float, Artist], ...]


def _marks(ax: Axes) -> list[Artist]:
    """What differs between figures of the same frame: the Axes' lines, collections, patches, texts, titles
    and legend, in the order the Axes lists (and draws) its children."""
    own = {id(a) for group in (ax.lines, ax.collections, ax.patches) for a in group}
    legend = ax.get_legend()
    return [a for a in ax.get_children() if id(a) in own or isinstance(a, Text) or a is legend]


def _curve_frame_key(ax: Axes, size: tuple[float, float], dpi: int,
                    margins: Mapping[str, float]) -> tuple[Any, ...] | None:
    """What the frame of a figure drawn by :func:`draw_dose_response` on ``ax`` depends on: figure size, dpi,
    margins, axis labels and limits (the ticks follow from these; the title is drawn with the marks, so the
    allergens of a plate share a frame). None for a figure without the log-scaled curve axes (nothing to plot:
    drawn whole)."""
    if ax.get_xscale() != "log" or ax.texts:
        return None
    return (tuple(size), dpi, tuple(sorted(margins.items())), ax.get_xlabel(), ax.get_ylabel(),
            tuple(map(float, ax.get_xlim())), tuple(map(float, ax.get_ylim())))


def _grid_lines(ax: Axes) -> list[tuple[float, Artist]]:
    """The grid lines matplotlib draws for ``ax`` (the major ticks within the view, as ``Axis.draw`` picks
    them), with their axis' z-order."""
    lines = []
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        a, b = sorted(axis.get_transform().transform([lo, hi]))
        tol = (b - a) * 1e-10
        for tick in axis.get_major_ticks():
            loc = float(np.asarray(axis.get_transform().transform(tick.get_loc())).ravel()[0])
            if a - tol <= loc <= b + tol and tick.gridline.get_visible():
                lines.append((axis.get_zorder(), tick.gridline))
    return lines


def _draw_curve_frame(fig: Figure, ax: Axes, marks: Sequence[Artist]) -> _CurveFrame:
    """Draw ``fig`` (its Agg canvas; its Text made literal by the caller) without ``marks``, grid lines and
    spines, as a :class:`_CurveFrame`; every artist is left visible as it was."""
    grid = [t.gridline for axis in (ax.xaxis, ax.yaxis) for t in axis.get_major_ticks()]
    hidden = [a for a in (*marks, *grid, *ax.spines.values()) if a.get_visible()]
    for a in hidden:
        a.set_visible(False)
    try:
        fig.canvas.draw()
    finally:
        for a in hidden:
            a.set_visible(True)
    grid = _grid_lines(ax)  # the same ticks, now placed as drawn
    spines = [(s.get_zorder(), s) for s in ax.spines.values() if s.get_visible()]
    return _CurveFrame(np.array(fig.canvas.buffer_rgba()), tuple([*spines, *grid]))


def _draw_over_frame(frame: _CurveFrame, marks: Sequence[Artist], dpi: float) -> np.ndarray:
    """``marks`` drawn with Agg over a copy of ``frame``'s pixels, its grid lines and spines among them in
    matplotlib's order (by z-order; marks first at equal z-order, as an Axes lists its children): the pixels
    the whole figure would have."""
    from matplotlib.backends.backend_agg import RendererAgg

    h, w = frame.rgba.shape[:2]
    renderer = RendererAgg(w, h, dpi)
    np.asarray(renderer.buffer_rgba())[...] = frame.rgba
    layers = [(a.get_zorder(), a) for a in marks] + list(frame.lines)
    for _, artist in sorted(layers, key=lambda za: za[0]):
        artist.draw(renderer)
    return np.asarray(renderer.buffer_rgba())
