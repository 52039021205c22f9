"""Figures for review and reports: gates on their parent's density, activation-marker histograms, dose-response curves.

Everything is drawn from the small records the pipeline keeps (gate geometry, 2-D histograms, the
basophils' marker values, fit results), never from all the events: a gate is an image of its parent's
density (``GateRecord.density``) with the gate's outline on top. Drawing functions take a matplotlib
``Axes``; :class:`PngRenderer` turns one tube's drawings into small PNGs quickly at plate scale.

Text in the figures (gate, marker, allergen and file names, reviewers' reasons, units) comes from the inputs
and is drawn literally: every drawing function here and the PDF writer run under :func:`literal_text`, so
matplotlib never reads ``$...$`` as mathtext nor hands text to TeX (our own tick labels are plain text).
"""

from __future__ import annotations

import functools
import math
import struct
import textwrap
import zlib
from dataclasses import dataclass
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

if TYPE_CHECKING:
    from ..analysis.dose_response import FitResult
from .._textsafe import MULTILINE_UNSAFE, visible  # noqa: E402

GATE_COLOUR = "#d62728"
ADJUSTED_COLOUR = "#ff7f0e"
ARM_COLOURS = {"none": "#1f77b4", "omalizumab": "#d62728"}
ARM_LABELS = {"none": "no pretreatment", "omalizumab": "omalizumab"}
DENSITY_CMAP = "viridis"
HISTOGRAM_GREY = "0.55"
ASINH_COFACTOR = 150.0  # linear width of the arcsinh display scale (compensated linear units)
MANUAL_METHODS = ("override", "manual")
PNG_COMPRESSION = 1  # zlib level of the plots' PNGs (see encode_png)
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
                    for text in target.findobj(Text):
                        text.set_parse_math(False)
                        text.set_text(visible(text.get_text(), MULTILINE_UNSAFE))
        return result
    return wrapper


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
    img = np.ma.masked_less_equal(_orient(density, ex, ey).T, 0)
    vmax = float(img.max()) if img.count() else 1.0
    norm = LogNorm(vmin=1.0 if vmax > 1 else 0.5, vmax=max(vmax, 1.0))
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


def _attach(ax: Axes, artist: Artist) -> Artist:
    """Make a detached artist drawable on ``ax`` without adding it (no data-limit bookkeeping, which
    costs more than the drawing itself for patches)."""
    artist.set_figure(ax.figure)
    artist.axes = ax
    if not artist.is_transform_set():
        artist.set_transform(ax.transData)
    artist.set_clip_path(ax.patch)
    return artist


def _outline_artists(ax: Axes, geometry: Mapping[str, Any], ndim_drawn: int, colour: str,
                     style: str) -> list[Artist]:
    """The gate's outline as artists not yet added to the axes."""
    kind = geometry.get("type")
    kw = dict(fill=False, edgecolor=colour, linewidth=1.6, linestyle=style, zorder=3)
    line_kw = dict(color=colour, linewidth=1.6, linestyle=style, zorder=3, transform=ax.get_xaxis_transform())
    if kind == "range":
        mins, maxs = list(geometry.get("mins", [])), list(geometry.get("maxs", []))
        if ndim_drawn == 1 or len(mins) == 1:
            return [Line2D([float(v), float(v)], [0, 1], **line_kw) for v in (mins[0], maxs[0]) if v is not None]
        x0, x1 = _span(mins[0], maxs[0], ax.get_xlim())
        y0, y1 = _span(mins[1], maxs[1], ax.get_ylim())
        return [patches.Rectangle((x0, y0), x1 - x0, y1 - y0, **kw)]
    if kind == "polygon":
        return [patches.Polygon(np.asarray(geometry["vertices"], dtype=float)[:, :2], closed=True, **kw)]
    if kind == "ellipsoid":
        mean = np.asarray(geometry["mean"], dtype=float)
        cov = np.asarray(geometry["covariance"], dtype=float)
        if ndim_drawn == 1 or mean.size == 1:
            half = math.sqrt(float(geometry["distance_square"]) * cov.reshape(-1)[0])
            return [Line2D([v, v], [0, 1], **line_kw) for v in (mean[0] - half, mean[0] + half)]
        # the marginal ellipse in the two drawn dimensions
        vals, vecs = np.linalg.eigh(cov[:2, :2] * float(geometry["distance_square"]))
        vals = np.clip(vals, 0.0, None)
        angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
        return [patches.Ellipse(tuple(mean[:2]), 2 * math.sqrt(vals[1]), 2 * math.sqrt(vals[0]),
                                angle=angle, **kw)]
    if kind == "boolean":
        words = {True: "NOT ", False: ""}
        ops = [f"{words[bool(c)]}{r}" for r, c in geometry.get("operands", [])]
        op = geometry.get("op", "and")
        text = f"NOT {ops[0]}" if op == "not" and ops else f" {op.upper()} ".join(ops)
        return [Text(0.03, 0.03, text, transform=ax.transAxes, fontsize=NOTE_PT, color=colour, zorder=4,
                     bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.5))]
    return []


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
    axes in every tube (comparable at a glance, and its frame is drawn only once).

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
        out[key] = (xlim, ylim)
    return out


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


def _gate_marks(record: GateRecord, ax: Axes, ndim_drawn: int, adjusted_reason: str | None, *,
                painted: bool = False) -> list[Artist]:
    """The parts that change from tube to tube: density, outline, counts and how the gate was set.

    With ``painted`` the density is left out (the caller paints it into the pixels, see
    :func:`paint_density`) and the outline is drawn from detached artists (none added to the axes)."""
    manual = is_manual(record) or adjusted_reason is not None
    colour, style = (ADJUSTED_COLOUR, "--") if manual else (GATE_COLOUR, "-")
    edges = _edges(record)
    artists: list[Artist] = []
    if not painted and ndim_drawn == 1:
        artists.append(ax.stairs(np.asarray(record.density, dtype=float).reshape(-1), edges[0], fill=True,
                                 color=HISTOGRAM_GREY))
    elif not painted and ndim_drawn == 2:
        artists.append(_density_image(ax, np.asarray(record.density), edges[0], edges[1]))
    shapes = [record.geometry, *record.geometry.get("members", [])] if ndim_drawn else (
        [record.geometry] if record.geometry.get("type") == "boolean" else [])
    for shape in shapes:
        if painted:
            artists += [_attach(ax, a) for a in _outline_artists(ax, shape, ndim_drawn, colour, style)]
        else:
            artists += _draw_outline(ax, shape, ndim_drawn, colour, style)
    above = ax.transAxes + ScaledTranslation(0, 3 / 72, ax.figure.dpi_scale_trans)  # 3 pt above the frame
    artists.append(ax.text(1.0, 1.0, gate_caption(record), transform=above, ha="right", va="bottom",
                           fontsize=NOTE_PT))
    note, note_colour = method_note(record, adjusted_reason)
    artists.append(ax.text(0.98, 0.03, textwrap.fill(note, 42), transform=ax.transAxes, ha="right",
                           va="bottom", fontsize=NOTE_PT, color=note_colour, zorder=5,
                           bbox=dict(facecolor="white", alpha=0.8, edgecolor="none", pad=1.2)))
    return artists


_LUTS: dict[str, np.ndarray] = {}


def _lut(name: str) -> np.ndarray:
    """A colour map as 256 RGB rows (uint8), as matplotlib maps normalised values to colours."""
    if name not in _LUTS:
        from matplotlib import colormaps

        _LUTS[name] = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
    return _LUTS[name]


def _pixel_centres(lo: float, hi: float, lim: tuple[float, float], flip_height: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Buffer indices strictly inside the display span [lo, hi] and the data values at their centres
    (rows count from the top of the buffer when ``flip_height`` is the buffer's height)."""
    idx = np.arange(math.ceil(lo), math.floor(hi))
    centre = idx + 0.5
    values = lim[0] + (centre - lo) / (hi - lo) * (lim[1] - lim[0])
    if flip_height is not None:
        idx = flip_height - 1 - idx  # display y grows upwards, buffer rows downwards
    return idx, values


def _bins(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index of each value (-1 outside the edges)."""
    i = np.searchsorted(edges, values, side="right") - 1
    i[values == edges[-1]] = len(edges) - 2
    i[(i < 0) | (i >= len(edges) - 1)] = -1
    return i


def paint_density(rgba: np.ndarray, ax: Axes, record: GateRecord, ndim_drawn: int,
                  frame_state: dict[str, Any] | None = None) -> None:
    """Paint the gate's stored histogram into an Agg buffer (``H × W × 4``) inside ``ax``'s frame.

    The 2-D density is colour-mapped on a log scale (empty bins left blank), the 1-D histogram filled in
    grey, as :func:`draw_gate` draws them with matplotlib, but straight into the pixels: no image
    resampling, no path. Only white pixels are painted, so the frame's spines and ticks stay on top.
    ``frame_state`` (a dict kept with a cached frame, whose pixels ``rgba`` then holds) keeps the pixel
    grid and the frame's blank pixels from one tube to the next."""
    state = frame_state if frame_state is not None else {}
    if "grid" not in state:
        box = ax.bbox
        cols, xs = _pixel_centres(box.x0, box.x1, ax.get_xlim())
        rows, ys = _pixel_centres(box.y0, box.y1, ax.get_ylim(), flip_height=rgba.shape[0])
        blank = None
        if cols.size and rows.size:
            region = rgba[rows[-1]:rows[0] + 1, cols[0]:cols[-1] + 1]  # rows[] runs bottom-up
            blank = np.all(region[..., :3] == 255, axis=-1)[::-1]  # bottom-up, as ys
        state["grid"] = (cols, xs, rows, ys, blank)
    cols, xs, rows, ys, blank = state["grid"]
    if blank is None:
        return
    edges = _edges(record)
    region = rgba[rows[-1]:rows[0] + 1, cols[0]:cols[-1] + 1]
    if ndim_drawn == 1:
        h = np.asarray(record.density, dtype=float).reshape(-1)
        ix = _bins(edges[0], xs)
        tops = np.where(ix >= 0, h[ix], -np.inf)
        fill = (ys[:, None] <= tops[None, :]) & blank
        colour = np.array([int(255 * float(HISTOGRAM_GREY) + 0.5)] * 3, dtype=np.uint8)
    else:
        h = _orient(record.density, edges[0], edges[1])
        ix, iy = _bins(edges[0], xs), _bins(edges[1], ys)
        values = h[ix[None, :], iy[:, None]]
        values[(iy < 0)[:, None] | (ix < 0)[None, :]] = 0
        fill = (values > 0) & blank
        vmax = float(h.max(initial=0))
        vmin = 1.0 if vmax > 1 else 0.5
        vmax = max(vmax, 1.0)
        span = math.log(vmax / vmin) or 1.0
        t = np.log(np.maximum(values[fill], vmin) / vmin) / span
        colour = _lut(DENSITY_CMAP)[np.clip((t * 256).astype(int), 0, 255)]
    view = region[::-1]  # bottom-up, as ys and fill
    view[..., :3][fill] = colour


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
    return text, "0.25"


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
    """A display range (compensated linear) that holds 99% of every array's values and every threshold.

    Used to give all tubes of a run the same activation axis, so that their histograms compare at a glance.
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
    return float(np.sinh(lo - pad) * cofactor), float(np.sinh(hi + pad) * cofactor)


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


def _place(ax: Axes, artist: Artist, detached: bool) -> Artist:
    """Add ``artist`` to ``ax``, or only make it drawable there (``detached``: nothing to remove later)."""
    if detached:
        return _attach(ax, artist)
    if isinstance(artist, patches.Patch):
        return ax.add_patch(artist)
    if isinstance(artist, Line2D):
        return ax.add_line(artist)
    return ax.add_artist(artist)


def _activation_marks(ax: Axes, values: np.ndarray, neg: np.ndarray | None, threshold: float | None,
                      marker: str, xlim: tuple[float, float], cofactor: float, bins: int, *,
                      detached: bool = False, pcts: tuple[float | None, float | None] = (None, None),
                      population: str = "basophils") -> list[Artist]:
    """The tube's histogram, the negative control's, the threshold and the legend (``pcts``: the tube's and
    the negative control's % above the threshold to print, see :func:`_printed_pct`)."""
    artists: list[Artist] = []
    edges_t = np.linspace(math.asinh(xlim[0] / cofactor), math.asinh(xlim[1] / cofactor), bins + 1)
    edges = np.sinh(edges_t) * cofactor
    has_t = threshold is not None and math.isfinite(threshold)
    lines = []
    for v, given, kw in ((values, pcts[0], dict(fill=True, color="#9ecae1", label="this tube")),
                         (neg, pcts[1], dict(fill=False, color="0.2", linewidth=1.0, label="negative control"))):
        if v is None or not v.size:
            continue
        h, _ = np.histogram(np.arcsinh(v / cofactor), edges_t)
        h = 100.0 * h / h.max() if h.max() > 0 else h.astype(float)
        artist = _place(ax, patches.StepPatch(h, edges, **kw), detached)
        artists.append(artist)
        lines.append((artist, v, given))
    if not values.size:
        artists.append(ax.text(0.5, 0.45, f"no {population} in this tube", transform=ax.transAxes, ha="center",
                               fontsize=NOTE_PT))
    if has_t:
        assert threshold is not None
        artists.append(_place(ax, Line2D([threshold, threshold], [0, 1], color=GATE_COLOUR, linewidth=1.4,
                                         zorder=3, label=f"threshold {threshold:.4g}",
                                         transform=ax.get_xaxis_transform()), detached))
        for artist, v, given in lines:
            pct = _printed_pct(v, threshold, given)
            artist.set_label(f"{artist.get_label()}: {pct:.1f}% {marker}+ (n={v.size})")
    else:
        artists.append(ax.text(0.98, 0.5, "no threshold available", transform=ax.transAxes, ha="right",
                               fontsize=NOTE_PT, color=GATE_COLOUR))
    if lines or has_t:
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
    """One rendered drawing: what it shows (``kind`` gate / activation / dose_response, ``title``) and bytes."""

    kind: str
    title: str
    data: bytes
    width: int
    height: int
    texts: tuple[str, ...] = ()  # what its marks print: captions and legend entries (not axes or titles)


def _printed(artists: Iterable[Artist]) -> tuple[str, ...]:
    """The texts of captions and legend entries among ``artists``, in order."""
    from matplotlib.legend import Legend

    out: list[str] = []
    for artist in artists:
        if isinstance(artist, Legend):
            out += [t.get_text() for t in artist.get_texts()]
        elif isinstance(artist, Text):
            out.append(artist.get_text())
    return tuple(t for t in out if t)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + kind + data + struct.pack(">L", zlib.crc32(kind + data))


def encode_png(rgba: np.ndarray, level: int = PNG_COMPRESSION) -> bytes:
    """An Agg buffer (``H x W x 4``, 8-bit) as an 8-bit RGB PNG: rows unfiltered (filter type 0), zlib ``level``.

    A standard PNG that any reader opens. Measured on the report's 810 x 675 plots: 3.0 ms and 47 KiB each, where
    Pillow (adaptive row filters, level 4) took 10.4 ms for 39 KiB; the plots are flat colours on white, which
    zlib compresses well without the filters. The PDF embeds these bytes as they are (``pdf._EmbeddedPngs``)."""
    h, w = rgba.shape[:2]
    rows = np.empty((h, w * 3 + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None on every row
    rows[:, 1:].reshape(h, w, 3)[...] = rgba[..., :3]
    header = struct.pack(">LLBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, level))
            + _chunk(b"IEND", b""))


class PngRenderer:
    """Draws small figures and returns them as PNG bytes (Agg, fixed layout, no tight_layout).

    At plate scale the cost is axes, ticks and text, not pixels. Gate plots of the same gate with the
    same bins and labels share everything but their density, outline and captions, so the shared part
    (frame, ticks, labels, name) is drawn once and kept as a background; each tube then paints its
    density straight into a copy of those pixels (:func:`paint_density`) and draws only its outline and
    captions over it (matplotlib's blitting, with artists not added to the axes). Other plots are drawn
    whole.
    """

    def __init__(self, *, size: tuple[float, float] = PLOT_SIZE, dpi: int = PLOT_DPI,
                 max_frames: int = 64) -> None:
        self.size = size
        self.dpi = dpi
        self.margins = dict(left=0.2, right=0.97, bottom=0.15, top=0.91)
        self.max_frames = max_frames
        self._frames: dict[tuple[Any, ...], tuple[Figure, Any, Axes, Any, dict[str, Any]]] = {}

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
        legend = ax.get_legend()
        return Png(kind, title, self._encode(rgba), rgba.shape[1], rgba.shape[0],
                   _printed([*ax.texts, *([legend] if legend is not None else [])]))

    @literal_text()
    def _blit(self, kind: str, title: str, key: tuple[Any, ...], frame: Any, marks: Any,
              paint: Any = None) -> Png:
        """Draw ``marks(ax) -> artists`` over the cached background drawn by ``frame(ax)`` for ``key``,
        after ``paint(rgba, ax, frame_state)`` (if given) has written into the restored pixels."""
        cached = self._frames.get(key)
        if cached is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            fig = Figure(figsize=self.size, dpi=self.dpi)
            canvas = FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            frame(ax)
            fig.subplots_adjust(**self.margins)
            canvas.draw()
            cached = (fig, canvas, ax, canvas.copy_from_bbox(fig.bbox), {})
            if len(self._frames) >= self.max_frames:
                self._frames.pop(next(iter(self._frames)))
            self._frames[key] = cached
        fig, canvas, ax, background, state = cached
        canvas.restore_region(background)
        if paint is not None:
            paint(np.asarray(canvas.buffer_rgba()), ax, state)
        before = set(ax.get_children())
        artists = marks(ax)
        added = [a for a in ax.get_children() if a not in before]  # detached artists need no removal
        try:
            renderer = canvas.get_renderer()
            for artist in sorted(artists, key=lambda a: a.get_zorder()):
                artist.draw(renderer)
            rgba = np.asarray(canvas.buffer_rgba())
            data = self._encode(rgba)
        finally:
            for artist in added:
                artist.remove()
        return Png(kind, title, data, rgba.shape[1], rgba.shape[0], _printed(artists))

    def gate(self, record: GateRecord, *, adjusted_reason: str | None = None,
             limits: Limits | None = None) -> Png:
        """One gate plot. Over ``limits`` shared by the run (or its own bins, for a 2-D gate), the frame
        is drawn once and reused by every tube with the same frame; otherwise the plot is drawn whole."""
        ndim = _ndim(record)
        if ndim == 0 or (limits is None and ndim == 1):
            return self.render("gate", record.name,
                               lambda ax: draw_gate(record, ax, adjusted_reason=adjusted_reason))
        lims = limits or _own_limits(record)
        key = ("gate", *frame_key(record), lims)
        return self._blit("gate", record.name, key, lambda ax: _gate_frame(record, ax, lims),
                          lambda ax: _gate_marks(record, ax, ndim, adjusted_reason, painted=True),
                          lambda rgba, ax, state: paint_density(rgba, ax, record, ndim, state))

    def activation(self, values: np.ndarray, negative_values: np.ndarray | None, threshold: float | None, *,
                   marker: str = "CD63", xlim: tuple[float, float] | None = None,
                   cofactor: float = ASINH_COFACTOR, bins: int = 80, pct: float | None = None,
                   negative_pct: float | None = None, population: str = "basophils") -> Png:
        """The activation histogram (see :func:`draw_activation`); with a run-wide ``xlim`` its frame is
        drawn once for every tube."""
        values = np.asarray(values, dtype=float)
        neg = None if negative_values is None else np.asarray(negative_values, dtype=float)
        if xlim is None:
            return self.render("activation", marker,
                               lambda ax: draw_activation(values, neg, threshold, ax, marker=marker,
                                                          cofactor=cofactor, bins=bins, pct=pct,
                                                          negative_pct=negative_pct, population=population))
        key = ("activation", marker, float(xlim[0]), float(xlim[1]), cofactor, population)
        return self._blit("activation", marker, key,
                          lambda ax: _activation_frame(ax, marker, xlim, cofactor, population),
                          lambda ax: _activation_marks(ax, values, neg, threshold, marker, xlim, cofactor,
                                                       bins, detached=True, pcts=(pct, negative_pct),
                                                       population=population))

    def tube(self, result: TubeResult, *, negative_values: np.ndarray | None, threshold: float | None,
             marker: str = "CD63", adjusted: Mapping[str, str] | None = None,
             xlim: tuple[float, float] | None = None,
             gate_limits: Mapping[tuple[str, str, str, int], Limits] | None = None,
             pct: float | None = None, negative_pct: float | None = None,
             population: str = "basophils") -> list[Png]:
        """One PNG per gate of the tube, then the activation histogram; ``xlim`` and ``gate_limits``
        (from :func:`activation_range` and :func:`shared_gate_limits`) put every tube on the same axes;
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
    the axis as the gating template does.
    """
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
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(f"concentration ({unit})" if unit else "concentration", fontsize=LABEL_PT)
    ax.set_ylabel(f"% {marker}+ {population}", fontsize=LABEL_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.grid(True, which="major", color="0.9", linewidth=0.6)
    ax.legend(fontsize=LEGEND_PT, loc="upper left", frameon=True, framealpha=0.85, edgecolor="none",
              handlelength=1.0)
