"""Automated gate estimation: each step estimates concrete geometry from a tube's own events.

Every estimator has one signature, ``estimator(data: GateData, params) -> Estimate``: it takes the
parent's events (:class:`GateData`: raw compensated values, one array per dimension, the dimensions with
their scale transforms and the channel ranges) and the typed parameters of the template's gate, and returns
an :class:`Estimate`: a gate of :mod:`bat_analysis.gating.gates` (or ``None`` when it failed), the
membership among the parent's events, diagnostics for review (peaks found, separation, fraction of
parent), flags, and the parent's 2-D density image with its edges in the gate's coordinates.

:data:`ESTIMATORS` is the one registry of estimators (see :class:`EstimatorSpec`): template validation
(method names, dimensions, parameter types, ranges and defaults), gating dispatch and the documentation
(``bat templates methods``) are all derived from it. Adding an estimator is one function and one entry
(:func:`register_estimator` for an estimator defined elsewhere).

Density images are binned on raw values with inverse-transformed bin edges, so no per-event transform
is needed to build them; polygons are tested only on the events inside their bounding box. Quantiles and
medians of a density sample are taken of its sorted values where numpy's vectorised sort makes that faster
than its partition (:func:`for_order_statistics`): the same numbers either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np

from ..records import Flag
from ._binning import bin_index, from_scale, to_scale
from .gates import BooleanGate, Dimension, Gate, PolygonGate, RangeGate, apply_gate
from ._membership import polygon_mask
from ._peaks import local_maxima, prominent_peaks
from ._simplify import simplify_chain

DENSITY_BINS = 128
#: density images and robust statistics are estimated on at most this many (evenly strided) events;
#: rare populations are kept whole (see estimate_cluster), gates are applied to every event
DENSITY_MAX_EVENTS = 50_000


@dataclass
class Estimate:
    """The outcome of one estimator on one tube."""

    gate: Gate | None
    mask: np.ndarray | None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    density: np.ndarray | None = None
    density_edges: tuple[np.ndarray, ...] | None = None
    members: tuple[Gate, ...] = ()  # operand gates of a boolean union (acquisition QC segments)

    @property
    def ok(self) -> bool:
        return self.gate is not None


@dataclass(frozen=True)
class GateData:
    """What an estimator is given: the parent's events of one gate of the template.

    ``cols`` holds one array of raw compensated values per dimension (the parent's events only),
    ``dims`` the dimensions with their scale transforms, ``ranges`` each channel's range ($PnR; None when
    the file gives none) and ``name`` the gate's name (for flags and the gate object).
    """

    name: str
    cols: tuple[np.ndarray, ...]
    dims: tuple[Dimension, ...]
    ranges: tuple[float | None, ...]


def failed(reason: str, code: str, gate_name: str, **diagnostics: Any) -> Estimate:
    """An estimate that found no geometry; the flag says why."""
    diagnostics = {"failure": reason, **diagnostics}
    return Estimate(None, None, diagnostics, [Flag(code, "warn", f"gate {gate_name}: {reason}")])


# ---------------------------------------------------------------------------------------------- scales
def scale_limits(dim: Dimension, values: np.ndarray, top: float | None = None,
                 low_quantile: float = 0.0005) -> tuple[float, float]:
    """A display window on the dimension's scale covering the data (and ``top``, the channel range).

    With a known channel range (scatter) the window runs from zero (at most 5% of the range below it)
    to the range or the largest value, capped at 1.5 x the range; otherwise from a low quantile
    (compensation spreads a few events far below zero) to the largest value.
    """
    if len(values) == 0:
        lo_raw, hi_raw = 0.0, float(top or 1.0)
    elif top is not None:  # a channel with a known range (scatter): from zero (or a little below) to the range
        lo_raw = min(max(float(values.min()), -0.05 * float(top)), 0.0)
        hi_raw = min(max(float(values.max()), float(top)), 1.5 * float(top))
    else:
        step = thin(len(values))
        lo_raw = float(np.quantile(for_order_statistics(values[::step])[0], low_quantile))
        hi_raw = float(values.max())
    lo, hi = to_scale(dim, np.array([lo_raw, hi_raw], dtype=np.float64))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("non-finite display window")
    span = hi - lo if hi > lo else 1.0
    return float(lo - 0.02 * span), float(hi + 0.02 * span)


def density_image(x: np.ndarray, y: np.ndarray, dx: Dimension, dy: Dimension,
                  xlim: tuple[float, float], ylim: tuple[float, float],
                  bins: int = DENSITY_BINS, weights: np.ndarray | float | None = None,
                  x_scaled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D histogram of raw events on the dimensions' scales; returns (counts, x edges, y edges) on scale.

    Binning compares raw values with inverse-transformed edges (equivalent to transforming every event;
    linear dimensions are binned arithmetically). ``weights`` (per event or one number) stand for thinned
    events (see :func:`thin`). ``x_scaled``: ``x`` on its scale when the caller has it (used as the guess
    of each event's bin, confirmed by the raw edges: same counts).
    """
    ex = np.linspace(xlim[0], xlim[1], bins + 1)
    ey = np.linspace(ylim[0], ylim[1], bins + 1)
    return _binned_counts(bin_index(x, dx, ex, scaled=x_scaled), bin_index(y, dy, ey), bins, weights), ex, ey


def histogram_1d(x: np.ndarray, dim: Dimension, bins: int = DENSITY_BINS) -> tuple[np.ndarray, np.ndarray] | None:
    """Histogram of raw events on the dimension's scale, from the smallest value to the largest: (counts, edges
    on the scale); None when there are no events or their span has no finite place on the scale. Every event
    is counted: one that the inverse transform's rounding puts just outside the edges counts in the end bin.
    What a 1-D gate set without an estimator's own histogram (a reviewer's correction, a fixed gate) is drawn
    over."""
    if len(x) == 0:
        return None
    lo, hi = to_scale(dim, np.array([np.min(x), np.max(x)], dtype=np.float64))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    edges[-1] = np.nextafter(hi, np.inf)
    idx = bin_index(np.asarray(x), dim, edges)
    # the edges span the values: one placed outside is at an end, moved there by the inverse transform's rounding
    np.clip(idx, 0, bins - 1, out=idx)
    return np.bincount(idx, minlength=bins).astype(np.int64), edges


def _binned_counts(ix: np.ndarray, iy: np.ndarray, bins: int, weights: np.ndarray | float | None) -> np.ndarray:
    """The bins x bins image of the events' bins (-1 below, ``bins`` above the window: left out), weighted.

    Counted on an image one bin wider on every side, whose border holds the events outside the window (no
    pass selecting the events inside, nor a copy of them), then cropped: the same counts, and the same
    weighted sums (each bin's weights added in event order). A whole-number weight for every event (a
    thinning stride) multiplies the counts: the sum of c equal whole numbers, exactly."""
    side = bins + 2
    flat = ix.astype(np.intp)
    flat += 1
    flat *= side
    flat += iy
    flat += 1
    if weights is not None and (np.ndim(weights) > 0 or float(weights) != int(weights)):  # type: ignore[arg-type]
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), flat.shape)
        summed = np.bincount(flat, weights=w, minlength=side * side).reshape(side, side)[1:-1, 1:-1]
        return np.rint(summed).astype(np.int64)
    counts = np.bincount(flat, minlength=side * side).reshape(side, side)[1:-1, 1:-1].astype(np.int64)
    if weights is not None:
        counts *= int(weights)  # type: ignore[arg-type]
    return counts


def thin(n: int, cap: int = DENSITY_MAX_EVENTS) -> int:
    """Stride that keeps at most ``cap`` of ``n`` events for density estimates (1: keep all)."""
    return max(1, -(-n // cap))


@lru_cache(maxsize=None)
def _sorting_is_faster() -> bool:
    """Whether sorting first (numpy's vectorised sort, where the CPU has one) makes ``np.quantile`` and
    ``np.median`` of a density sample faster than their partition of the unsorted values; measured once
    per process. Either way they give the same numbers: they depend only on the sorted values."""
    v = np.random.default_rng(0).standard_normal(DENSITY_MAX_EVENTS)

    def best(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(lambda: np.quantile(np.sort(v), [0.001, 0.999])) < best(lambda: np.quantile(v, [0.001, 0.999]))


def for_order_statistics(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """``values`` sorted when that makes quantiles and medians of them faster here (see
    :func:`_sorting_is_faster`), else as they are, and whether they were sorted: ``np.quantile`` and
    ``np.median`` of the result are those of ``values``."""
    if len(values) >= 1000 and _sorting_is_faster():
        return np.sort(values), True
    return values, False


def strictly_below(values: np.ndarray, pivot: float, is_sorted: bool) -> np.ndarray:
    """``values[values < pivot]`` (ascending, a slice, when ``values`` is sorted)."""
    if is_sorted and np.isfinite(pivot):
        return values[: np.searchsorted(values, pivot, side="left")]
    return values[values < pivot]


def strictly_above(values: np.ndarray, pivot: float, is_sorted: bool) -> np.ndarray:
    """``values[values > pivot]`` (ascending, a slice, when ``values`` is sorted; NaN, sorted last, left out)."""
    if is_sorted and np.isfinite(pivot):
        return values[np.searchsorted(values, pivot, side="right"): np.searchsorted(values, np.inf, side="right")]
    return values[values > pivot]


def histogram(ordered: np.ndarray, is_sorted: bool, bins: int, value_range: tuple[float, float]
              ) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(ordered, bins=bins, range=value_range)``; of sorted values, counted by placing the
    edges among them (numpy's equal bins are ``edges[i] <= x < edges[i + 1]``, the last one closed, on the
    edges numpy computes: the same counts) instead of a pass over every value."""
    if not is_sorted:
        return np.histogram(ordered, bins=bins, range=value_range)
    edges = np.histogram_bin_edges(ordered[:0], bins=bins, range=value_range)
    below = np.searchsorted(ordered, edges, side="left")
    below[-1] = np.searchsorted(ordered, edges[-1], side="right")
    return np.diff(below), edges


def fraction(mask: np.ndarray) -> float:
    """The fraction of True in a non-empty boolean mask: ``mask.mean()`` exactly (a count, then one
    division), without converting every element to float."""
    return np.count_nonzero(mask) / len(mask)


def small_counts(counts: np.ndarray) -> np.ndarray:
    """Counts stored compactly (uint16 when they fit, else uint32)."""
    return counts.astype(np.uint16 if counts.max(initial=0) < 65535 else np.uint32)


# ---------------------------------------------------------------------------------------------- 1. time
def _bin_counts(which: np.ndarray, n_bins: int) -> np.ndarray:
    """``np.bincount(which, minlength=n_bins)`` of bin numbers in [0, n_bins). Events usually come in
    acquisition order, so their time bins do not decrease: the counts are then found by placing each bin's
    start among them (no pass incrementing one counter after another)."""
    if len(which) > 1 and bool(np.all(which[1:] >= which[:-1])):
        return np.diff(np.searchsorted(which, np.arange(n_bins + 1, dtype=which.dtype), side="left"))
    return np.bincount(which, minlength=n_bins)


def estimate_flow_rate(data: GateData, params: Mapping[str, Any]) -> Estimate:
    """Acquisition QC: bins of the time channel whose event rate departs from the robust centre.

    The event count per time bin is compared with its median; bins further than ``n_mad`` robust SDs
    (1.4826 x MAD, at least the Poisson SD) above (bursts) or below (gaps, clogs) are removed.
    """
    t, dim, name = data.cols[0], data.dims[0], data.name
    n = len(t)
    tmin, tmax = (float(t.min()), float(t.max())) if n else (0.0, 0.0)
    if n == 0 or tmax <= tmin:
        return failed("the time channel is constant or empty", "ACQ_QC_SKIPPED", name, n_events=n)
    if params["bin_seconds"] > 0:
        n_bins = int(np.ceil((tmax - tmin) / params["bin_seconds"]))
    else:
        n_bins = int(n // params["target_events_per_bin"])
    n_bins = min(n_bins, 2000)
    if n_bins < params["min_bins"]:
        return failed(f"{n} events give {n_bins} time bins (< {params['min_bins']})", "ACQ_QC_SKIPPED", name,
                      n_bins=n_bins)
    edges = np.linspace(tmin, tmax, n_bins + 1)
    edges[-1] = np.nextafter(tmax, np.inf)
    pos = t - tmin  # bin of each event, with as few temporaries as the arithmetic allows
    pos *= n_bins / (tmax - tmin)
    which = pos.astype(np.int32)
    del pos
    np.clip(which, 0, n_bins - 1, out=which)
    counts = _bin_counts(which, n_bins).astype(np.float64)
    centre = float(np.median(counts))
    mad = float(np.median(np.abs(counts - centre)))
    sd = max(1.4826 * mad, np.sqrt(max(centre, 1.0)))
    z = (counts - centre) / sd
    bad = np.abs(z) > params["n_mad"]
    # a bin next to a removed bin that is itself half-way out belongs to the same event
    soft = np.abs(z) > params["n_mad"] / 2
    grow = bad.copy()
    grow[1:] |= bad[:-1] & soft[1:]
    grow[:-1] |= bad[1:] & soft[:-1]
    bad = grow
    keep_bins = ~bad
    # kept segments as half-open time ranges
    segments: list[tuple[float, float]] = []
    i = 0
    while i < n_bins:
        if keep_bins[i]:
            j = i
            while j + 1 < n_bins and keep_bins[j + 1]:
                j += 1
            segments.append((float(edges[i]), float(edges[j + 1])))
            i = j + 1
        else:
            i += 1
    diag = {"n_bins": n_bins, "bin_width": float(edges[1] - edges[0]), "median_rate": centre,
            "robust_sd": sd, "bins_removed": int(bad.sum()),
            "bursts": int(((z > params["n_mad"]) & bad).sum()), "gaps": int(((z < -params["n_mad"]) & bad).sum())}
    dens = counts.astype(np.int64)
    if not segments:
        est = failed("every time bin departs from the median rate", "ACQ_QC_FAILED", name, **diag)
        est.density, est.density_edges = small_counts(dens), (edges,)
        return est
    members = tuple(RangeGate(f"{name}.segment{k + 1}", (dim,), mins=(lo,), maxs=(hi,))
                    for k, (lo, hi) in enumerate(segments))
    if len(members) == 1:
        gate: Gate = RangeGate(name, (dim,), mins=members[0].mins, maxs=members[0].maxs)
        members = ()
    else:
        gate = BooleanGate(name, (dim,), op="or", operands=tuple((m.name, False) for m in members))
    mask = apply_gate(gate, [t], members)
    diag["fraction_removed"] = 1 - fraction(mask)
    flags = []
    if bad.any():
        flags.append(Flag("FLOW_RATE_ANOMALY", "warn",
                          f"{diag['bursts']} burst and {diag['gaps']} gap time bin(s) removed "
                          f"({100 * diag['fraction_removed']:.1f}% of events)"))
    return Estimate(gate, mask, diag, flags, small_counts(dens), (edges,), members)


# ---------------------------------------------------------------------------------------------- 2. margin
def estimate_margin(data: GateData, params: Mapping[str, Any]) -> Estimate:
    """Margin events: values at the top of a dimension's range ($PnR) are saturated and removed."""
    cols, dims, ranges, name = data.cols, data.dims, data.ranges, data.name
    tol = params["tolerance"]
    maxs_raw, diag = [], {}
    for dim, col, top in zip(dims, cols, ranges):
        if top is None or not np.isfinite(top) or top <= 0:
            return failed(f"dimension {dim.key} has no channel range ($PnR)", "MARGIN_SKIPPED", name)
        maxs_raw.append(float(top) * (1.0 - tol))
    mask = np.ones(len(cols[0]), dtype=bool)
    for dim, col, mx in zip(dims, cols, maxs_raw):
        sat = col >= mx
        diag[f"saturated_{dim.key}"] = int(sat.sum())
        mask &= ~sat
    maxs = tuple(float(to_scale(d, np.array([m]))[0]) for d, m in zip(dims, maxs_raw))
    gate = RangeGate(name, tuple(dims), mins=(None,) * len(dims), maxs=maxs)
    diag["fraction_removed"] = 1 - fraction(mask) if len(mask) else 0.0
    return Estimate(gate, mask, diag)


# ---------------------------------------------------------------------------------------------- 3. cells
def estimate_cells(data: GateData, params: Mapping[str, Any]) -> Estimate:
    """Cells on FSC-A/SSC-A: the density's populated region above the debris valley, as a polygon.

    The FSC profile of the smoothed density is searched for a debris peak (a peak at less than half the
    FSC of the next one); the valley after it bounds the cells on the left. The region where the smoothed
    density exceeds ``level`` x its maximum, right of the valley, is labelled; regions holding >= 0.5% of
    events are kept and their convex hull (padded) becomes the polygon. Hull vertices at the top of the
    window are moved beyond the data range so saturated-edge events are included consistently.
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    (x, y), (dx, dy), tops, name = data.cols, data.dims, data.ranges, data.name
    bins = params["bins"]
    step = thin(len(x))
    xs, ys = np.ascontiguousarray(x[::step]), np.ascontiguousarray(y[::step])
    xlim = scale_limits(dx, xs, tops[0])
    ylim = scale_limits(dy, ys, tops[1])
    counts, ex, ey = density_image(xs, ys, dx, dy, xlim, ylim, bins, weights=step if step > 1 else None)
    total = counts.sum()
    if total < 20:
        est = failed(f"only {int(total)} events in the scatter window", "CELLS_GATE_FAILED", name)
        est.density, est.density_edges = small_counts(counts), (ex, ey)
        return est
    smooth = ndimage.gaussian_filter(counts.astype(np.float64), params["smooth"])
    profile = ndimage.gaussian_filter1d(counts.sum(axis=1).astype(np.float64), 2.0)
    peaks = prominent_peaks(profile, 0.02 * profile.max())
    valley = 0
    debris_peak = None
    if len(peaks) >= 2:
        # debris: the lowest-FSC peak when it sits at less than half the FSC of the main cell peak
        main = peaks[1:][np.argmax(profile[peaks[1:]])]
        p0 = peaks[0]
        cx = lambda i: ex[0] + (i + 0.5) * (ex[1] - ex[0])  # noqa: E731
        raw0, raw_main = from_scale(dx, np.array([cx(p0), cx(main)]))
        if raw0 < 0.5 * raw_main:
            debris_peak = int(p0)
            valley = int(p0 + np.argmin(profile[p0:main + 1]))
    region = smooth > params["level"] * smooth.max()
    region[:valley + 1, :] = False if valley > 0 else region[:valley + 1, :]
    labels, n_lab = ndimage.label(region)
    if n_lab == 0:
        est = failed("no populated region above the debris", "CELLS_GATE_FAILED", name)
        est.density, est.density_edges = small_counts(counts), (ex, ey)
        return est
    mass = ndimage.sum(counts, labels, index=np.arange(1, n_lab + 1))
    keep_labels = np.flatnonzero(mass >= 0.005 * total) + 1
    if len(keep_labels) == 0:
        keep_labels = np.array([int(np.argmax(mass)) + 1])
    keep = np.isin(labels, keep_labels)
    ii, jj = np.nonzero(keep)
    pad = params["pad"]
    # pixel corners, padded, on scale
    wx, wy = ex[1] - ex[0], ey[1] - ey[0]
    px = np.concatenate([ex[ii] - pad * wx, ex[ii + 1] + pad * wx, ex[ii] - pad * wx, ex[ii + 1] + pad * wx])
    py = np.concatenate([ey[jj] - pad * wy, ey[jj] - pad * wy, ey[jj + 1] + pad * wy, ey[jj + 1] + pad * wy])
    if valley > 0:
        px = np.maximum(px, ex[valley + 1])
    pts = np.column_stack([px, py])
    try:
        hull = ConvexHull(pts)
    except QhullError:
        est = failed("the cell region is degenerate", "CELLS_GATE_FAILED", name)
        est.density, est.density_edges = small_counts(counts), (ex, ey)
        return est
    verts = pts[hull.vertices].copy()
    if len(verts) > 16:  # fewer edges to test per event; the hull moves inwards by at most half a bin
        scale = np.array([wx, wy])
        closed = np.vstack([verts, verts[:1]]) / scale
        verts = simplify_chain(closed, tolerance=0.5)[:-1] * scale
    # beyond the data range where the region reaches the top of the window
    top_x = ex[-1] - (pad + 1) * wx
    top_y = ey[-1] - (pad + 1) * wy
    verts[verts[:, 0] >= top_x, 0] = ex[-1] + 0.1 * (ex[-1] - ex[0])
    verts[verts[:, 1] >= top_y, 1] = ey[-1] + 0.1 * (ey[-1] - ey[0])
    verts[verts[:, 1] <= ey[0] + pad * wy, 1] = ey[0] - 0.1 * (ey[-1] - ey[0])
    try:  # still convex after the moves (the fast membership test needs it)
        verts = verts[ConvexHull(verts).vertices]
    except QhullError:
        pass  # a degenerate outline stays as it is and is tested event by event
    gate = PolygonGate(name, (dx, dy), vertices=verts)
    mask = polygon_mask(gate, (x, y))
    diag = {"debris_peak_x": None if debris_peak is None else float(ex[debris_peak] + wx / 2),
            "debris_valley_x": float(ex[valley]) if valley > 0 else None,
            "fsc_peaks": [float(ex[p] + wx / 2) for p in peaks], "regions_kept": int(len(keep_labels)),
            "fraction_of_parent": fraction(mask) if len(mask) else 0.0}
    return Estimate(gate, mask, diag, [], small_counts(counts), (ex, ey))


# ---------------------------------------------------------------------------------------------- 4. singlets
def estimate_singlets(data: GateData, params: Mapping[str, Any]) -> Estimate:
    """Singlets: the band of height/area ratios around the singlet mode.

    The mode of H/A is found on a smoothed histogram; the band's half-width is ``n_sd`` robust SDs
    estimated from the ratios ABOVE the mode (doublets lie below it and would inflate a symmetric
    estimate). The band becomes a polygon on FSC-A/FSC-H reaching beyond the data range.
    """
    from scipy import ndimage

    (area, height), (da, dh), tops, name = data.cols, data.dims, data.ranges, data.name
    step = thin(len(area))
    a_s, h_s = np.ascontiguousarray(area[::step]), np.ascontiguousarray(height[::step])
    ok = a_s > max(params["min_signal"], 0.0)
    n_ok = int(ok.sum())
    if n_ok < 50:
        return failed(f"only {n_ok} events with positive area", "SINGLETS_GATE_FAILED", name)
    r = (h_s[ok] / a_s[ok]).astype(np.float64)
    r_ordered, r_sorted = for_order_statistics(r)
    lo_q, hi_q = np.quantile(r_ordered, [0.01, 0.99])
    if not hi_q > lo_q:
        return failed("the height/area ratio does not vary", "SINGLETS_GATE_FAILED", name)
    hist, edges = histogram(r_ordered, r_sorted, 256, (lo_q - 0.1 * (hi_q - lo_q), hi_q + 0.1 * (hi_q - lo_q)))
    sm = ndimage.gaussian_filter1d(hist.astype(np.float64), 2.0)
    k = int(np.argmax(sm))
    mode = float((edges[k] + edges[k + 1]) / 2)
    upper = strictly_above(r_ordered, mode, r_sorted) - mode
    if len(upper) < 20:
        return failed("too few events above the ratio mode", "SINGLETS_GATE_FAILED", name)
    sd = 1.4826 * float(np.median(upper))
    lo, hi = mode - params["n_sd"] * sd, mode + params["n_sd"] * sd
    if lo <= 0:
        lo = mode / 2
    a_top = float(tops[0]) if tops[0] else float(area.max())
    a_lo, a_hi = max(float(np.quantile(for_order_statistics(a_s[ok])[0], 0.0001)) * 0.5, 1e-3), 2.0 * a_top
    # straight lines on linear scales need only their ends; curved ones are traced
    aa = np.array([a_lo, a_hi]) if da.transform is None and dh.transform is None else np.geomspace(a_lo, a_hi, 12)
    lower = np.column_stack([to_scale(da, aa), to_scale(dh, lo * aa)])
    upper_line = np.column_stack([to_scale(da, aa[::-1]), to_scale(dh, hi * aa[::-1])])
    gate = PolygonGate(name, (da, dh), vertices=np.vstack([lower, upper_line]))
    mask = polygon_mask(gate, (area, height))
    xlim = scale_limits(da, a_s, tops[0])
    ylim = scale_limits(dh, h_s, tops[1])
    counts, ex, ey = density_image(a_s, h_s, da, dh, xlim, ylim, weights=step if step > 1 else None)
    doublet_side = fraction(r < lo)
    diag = {"ratio_mode": mode, "ratio_sd": sd, "ratio_low": lo, "ratio_high": hi,
            "below_band": doublet_side, "fraction_of_parent": fraction(mask)}
    return Estimate(gate, mask, diag, [], small_counts(counts), (ex, ey))


# ---------------------------------------------------------------------------------------------- 5. cluster
def _split_point(v: np.ndarray, n_sd: float) -> tuple[float, float, float]:
    """Where the majority (negative) population ends on a scale: (mode, robust SD, split).

    The SD is the smaller of the MAD of the values below the mode and the half width at half maximum
    on the mode's low side (compensation spreading gives heavy negative tails that would widen the
    MAD); the split is mode + ``n_sd`` SDs, or the density valley before the next population when that
    comes first.
    """
    from scipy import ndimage

    ordered, is_sorted = for_order_statistics(v)
    lo, hi = np.quantile(ordered, [0.001, 0.999])
    hist, edges = histogram(ordered, is_sorted, 256, (lo, hi if hi > lo else lo + 1))
    sm = ndimage.gaussian_filter1d(hist.astype(np.float64), 2.0)
    width = edges[1] - edges[0]
    k = int(np.argmax(sm))
    mode = float((edges[k] + edges[k + 1]) / 2)
    below = mode - strictly_below(ordered, mode, is_sorted)
    sd = 1.4826 * float(np.median(below)) if len(below) >= 10 else float(np.std(v))
    low_side = np.flatnonzero(sm[:k] < sm[k] / 2)
    if len(low_side):
        sd = min(sd, (k - low_side[-1]) * width / 1.1774)
    split = mode + n_sd * sd
    peaks = prominent_peaks(sm, 0.01 * sm[k])
    after = peaks[peaks > k]
    if len(after):
        p = int(after[0])
        valley = k + int(np.argmin(sm[k:p + 1]))
        if sm[valley] < 0.5 * sm[p]:
            split = min(split, float(edges[valley] + width / 2))
    return mode, sd, split


def basin_saddles(smooth: np.ndarray, basins: np.ndarray) -> dict[tuple[int, int], float]:
    """Highest pass between every pair of adjacent labelled basins: {(a, b): height} with a < b."""
    saddles: dict[tuple[int, int], float] = {}
    for a_lab, b_lab, a_val, b_val in (
            (basins[:-1, :], basins[1:, :], smooth[:-1, :], smooth[1:, :]),
            (basins[:, :-1], basins[:, 1:], smooth[:, :-1], smooth[:, 1:])):
        diff = (a_lab != b_lab) & (a_lab > 0) & (b_lab > 0)
        la, lb = a_lab[diff], b_lab[diff]
        height = np.minimum(a_val[diff], b_val[diff])
        lo, hi = np.minimum(la, lb), np.maximum(la, lb)
        for key_a, key_b, h in zip(lo.tolist(), hi.tolist(), height.tolist()):
            k = (key_a, key_b)
            if h > saddles.get(k, -1.0):
                saddles[k] = h
    return saddles


def merge_basins(smooth: np.ndarray, basins: np.ndarray, n: int, ratio: float) -> np.ndarray:
    """Merge watershed basins separated by a shallow saddle (persistence-based merging).

    Two adjacent basins are merged when the highest pass between them is at least ``ratio`` x the lower
    of their two peaks, i.e. the smaller peak is noise on the larger population's shoulder. Returns the
    label each basin maps to (index 0 unused).
    """
    parent = np.arange(n + 1)
    peak = np.zeros(n + 1)
    np.maximum.at(peak, basins.ravel(), smooth.ravel())

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    saddles = basin_saddles(smooth, basins)
    for (a, b), h in sorted(saddles.items(), key=lambda kv: -kv[1]):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if h >= ratio * min(peak[ra], peak[rb]):
            keep, drop = (ra, rb) if peak[ra] >= peak[rb] else (rb, ra)
            parent[drop] = keep
    return np.array([find(i) for i in range(n + 1)])


def _extend_along_x(region: np.ndarray, basins: np.ndarray, smooth: np.ndarray, group: set[int],
                    peak_h: np.ndarray, real: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Open the cluster towards the x side: nothing is brighter on x within the cluster's y band.

    For every y bin of the region, the bins beyond it on the x side are added up to the window's edge,
    stopping at another population (a bin of a real basin outside the group whose density is above
    ``level`` x that basin's peak); sparse basins too small to be a population do not stop it.
    """
    others = [k + 1 for k in np.flatnonzero(real) if k not in group]
    other = np.isin(basins, others)
    level = params["level"] * peak_h[np.maximum(basins - 1, 0)]
    blocked = other & (smooth >= level)
    n_x = region.shape[0]
    cols = region.any(axis=0)
    rows = np.arange(n_x)[:, None]
    if params["x_side"] == "high":
        edge = np.where(cols, n_x - 1 - np.argmax(region[::-1], axis=0), n_x)
        beyond = (rows > edge[None, :]) & cols[None, :]
        stop = blocked & beyond
        first = np.where(stop.any(axis=0), np.argmax(stop, axis=0), n_x)
        extension = beyond & (rows < first[None, :])
    else:
        edge = np.where(cols, np.argmax(region, axis=0), -1)
        beyond = (rows < edge[None, :]) & cols[None, :]
        stop = blocked & beyond
        last = np.where(stop.any(axis=0), n_x - 1 - np.argmax(stop[::-1], axis=0), -1)
        extension = beyond & (rows > last[None, :])
    return region | extension


def _failed_with_density(reason: str, code: str, name: str, counts: np.ndarray,
                         edges: tuple[np.ndarray, ...], **diagnostics: Any) -> Estimate:
    """A failed estimate that still carries the parent's density image (the reviewer sees why)."""
    est = failed(reason, code, name, **diagnostics)
    est.density, est.density_edges = small_counts(counts), edges
    return est


@dataclass
class _ClusterDensity:
    """The parent's density for the cluster estimator: counts on the window, smoothed, and the x split."""

    counts: np.ndarray
    smooth: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    split_x: float

    @property
    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ex, self.ey


@dataclass
class _Populations:
    """Density populations after watershed and merging: peak bins, basin labels (1..n), mass, centres."""

    peaks: np.ndarray
    basins: np.ndarray
    mass: np.ndarray
    px: np.ndarray
    py: np.ndarray
    real: np.ndarray  # basins holding enough events to be a population
    peak_h: np.ndarray  # smoothed density at each peak


def _cluster_density(x: np.ndarray, y: np.ndarray, dx: Dimension, dy: Dimension,
                     params: Mapping[str, Any]) -> _ClusterDensity:
    """The x split of the majority population, then the density image with rare events kept whole.

    With many events the majority population is thinned evenly (and weighted back) while every event
    beyond its split on the x side is kept, so rare populations keep all their events.
    """
    from scipy import ndimage

    step = thin(len(x))
    xs_all = to_scale(dx, np.ascontiguousarray(x[::step]))
    _mode, _sd, split = _split_point(xs_all if params["x_side"] == "high" else -xs_all, params["split_n_sd"])
    split_x = split if params["x_side"] == "high" else -split
    weights: np.ndarray | None = None
    xd, yd = x, y
    if step > 1:
        raw_split = float(from_scale(dx, np.array([split_x]))[0])
        beyond_raw = x > raw_split if params["x_side"] == "high" else x < raw_split
        sel = beyond_raw.copy()
        sel[::step] = True
        idx = np.flatnonzero(sel)
        xd, yd = x[idx], y[idx]
        weights = np.where(beyond_raw[idx], 1.0, float(step))
    xlim = scale_limits(dx, xd)
    ylim = scale_limits(dy, yd)
    counts, ex, ey = density_image(xd, yd, dx, dy, xlim, ylim, params["bins"], weights=weights,
                                   x_scaled=xs_all if step == 1 else None)  # every event: already on scale
    smooth = ndimage.gaussian_filter(counts.astype(np.float64), params["smooth"])
    return _ClusterDensity(counts, smooth, ex, ey, split_x)


def _cluster_populations(dens: _ClusterDensity, peaks: np.ndarray, floor: float,
                         params: Mapping[str, Any]) -> _Populations:
    """Basins of a watershed from the density's local maxima, shallow passes merged, one peak per basin."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    smooth, counts = dens.smooth, dens.counts
    markers = np.zeros(counts.shape, dtype=np.int32)
    for k, (i, j) in enumerate(peaks):
        markers[i, j] = k + 1
    basins = watershed(-smooth, markers, mask=smooth > floor)
    root = merge_basins(smooth, basins, len(peaks), params["merge_ratio"])
    basins = root[basins]
    roots = np.unique(root[1:])
    # one peak per merged basin: its highest point
    peaks = np.array([np.unravel_index(np.argmax(np.where(basins == r, smooth, -1.0)), smooth.shape)
                      for r in roots])
    relabel = np.zeros(len(root), dtype=np.int32)
    relabel[roots] = np.arange(1, len(roots) + 1)
    basins = relabel[basins]
    mass = ndimage.sum(counts, basins, index=np.arange(1, len(peaks) + 1))
    wx, wy = dens.ex[1] - dens.ex[0], dens.ey[1] - dens.ey[0]
    px = dens.ex[0] + (peaks[:, 0] + 0.5) * wx
    py = dens.ey[0] + (peaks[:, 1] + 0.5) * wy
    real = mass >= params["peak_min_events"]
    return _Populations(peaks, basins, mass, px, py, real, smooth[peaks[:, 0], peaks[:, 1]])


def _join_candidates(pops: _Populations, cand: np.ndarray, best: int, smooth: np.ndarray,
                     params: Mapping[str, Any]) -> set[int]:
    """The chosen population plus neighbouring candidates displaced along x rather than y (e.g. activated
    basophils brighter in CD203c: same population, two modes) joined by a pass high enough."""
    px, py = pops.px, pops.py
    peak_val = smooth[tuple(pops.peaks[best])]
    saddles = basin_saddles(smooth, pops.basins)
    group = {best}
    peak_h = pops.peak_h
    changed = True
    while changed:
        changed = False
        for c in cand:
            if c in group:
                continue
            if abs(py[c] - py[best]) >= abs(px[c] - px[best]):
                continue
            h = max((saddles.get((min(a, c) + 1, max(a, c) + 1), 0.0) for a in group), default=0.0)
            if h >= params["join_ratio"] * min(peak_h[c], peak_val):
                group.add(int(c))
                changed = True
    return group


def _cluster_region(dens: _ClusterDensity, pops: _Populations, group: set[int], best: int,
                    params: Mapping[str, Any]) -> np.ndarray:
    """The cluster's bins: density above level x its peak, connected to the peak, never inside another real
    population's basin (small basins on its shoulders belong to it), opened along x and padded."""
    from scipy import ndimage

    smooth, basins, peak_h = dens.smooth, pops.basins, pops.peak_h
    others = [k + 1 for k in np.flatnonzero(pops.real) if k not in group]
    top = max(peak_h[g] for g in group)
    region = (smooth >= params["level"] * top) & ~np.isin(basins, others)
    lab, _ = ndimage.label(region)
    region = lab == lab[tuple(pops.peaks[best])]
    region = fill_holes(region)
    if params["extend_x"]:
        region = _extend_along_x(region, basins, smooth, group, peak_h, pops.real, params)
    if params["pad"] > 0:
        it = int(round(params["pad"]))
        region = ndimage.binary_dilation(region, iterations=it) if it > 0 else region
    return region


def fill_holes(region: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(region)`` of a 2-D mask: the region and every part of the
    background not connected (4-connectivity, scipy's default structure) to the image's border.

    scipy finds them by dilating the border into the background until nothing changes, a pass per step;
    here the background's components are labelled once and those holding a border pixel stay background."""
    from scipy import ndimage

    labels, _n = ndimage.label(~region)
    filled = np.ones(_n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        filled[edge] = False
    filled[0] = True  # the region itself
    return filled[labels]

def _outline(region: np.ndarray, ex: np.ndarray, ey: np.ndarray, bins: int) -> np.ndarray | str:
    """The polygon tracing a region of bins (vertices on scale), or why there is none.

    Vertices where the region reaches the window's edge are moved beyond the data.
    """
    from skimage.measure import find_contours

    padded = np.pad(region.astype(np.float64), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return "the chosen population has no boundary"
    contour = max(contours, key=len) - 1.0  # back to unpadded pixel indices
    contour = simplify_chain(contour, tolerance=0.5)
    if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
        contour = contour[:-1]
    if len(contour) < 3:
        return "the chosen population is too small to outline"
    wx, wy = ex[1] - ex[0], ey[1] - ey[0]
    verts = np.column_stack([ex[0] + (contour[:, 0] + 0.5) * wx, ey[0] + (contour[:, 1] + 0.5) * wy])
    # where the region reaches the window's edge, the gate continues beyond the data
    span_x, span_y = ex[-1] - ex[0], ey[-1] - ey[0]
    verts[contour[:, 0] >= bins - 1, 0] = ex[-1] + 0.25 * span_x
    verts[contour[:, 0] <= 0, 0] = ex[0] - 0.25 * span_x
    verts[contour[:, 1] >= bins - 1, 1] = ey[-1] + 0.25 * span_y
    verts[contour[:, 1] <= 0, 1] = ey[0] - 0.25 * span_y
    return verts


def _separation(smooth: np.ndarray, pops: _Populations, group: set[int], best: int) -> float | None:
    """How deep the density falls between the chosen peak and its nearest other population (None: alone)."""
    others = [k for k in np.flatnonzero(pops.real) if k not in group]
    if not others:
        return None
    px, py, peaks = pops.px, pops.py, pops.peaks
    peak_val = smooth[tuple(peaks[best])]
    near = min(others, key=lambda k: (px[k] - px[best]) ** 2 + (py[k] - py[best]) ** 2)
    line_i = np.linspace(peaks[best][0], peaks[near][0], 50).round().astype(int)
    line_j = np.linspace(peaks[best][1], peaks[near][1], 50).round().astype(int)
    dip = smooth[line_i, line_j].min()
    return float(1 - dip / min(peak_val, smooth[tuple(peaks[near])]))


_OTHER_SIDE = {"low": "high", "high": "low"}


def _side_position(y: float, ys: np.ndarray, side: str) -> float:
    """Where ``y`` lies among the population peaks ``ys``: 0 at the ``side`` extreme (the lowest for "low"),
    1 at the other; 0 when the peaks have no spread."""
    lo, hi = float(np.min(ys)), float(np.max(ys))
    if hi <= lo:
        return 0.0
    return float((y - lo) / (hi - lo) if side == "low" else (hi - y) / (hi - lo))


def estimate_cluster(data: GateData, params: Mapping[str, Any]) -> Estimate:
    """The cluster that is high/low on x and high/low on y, found on the 2-D density.

    The smoothed density image is split into basins by a watershed from its local maxima (however many
    there are); basins separated by a shallow pass are merged (``merge_ratio``), and basins holding fewer
    than ``peak_min_events`` events are not populations. Candidates are populations whose peak lies
    beyond the x split (see :func:`_split_point`); the one most extreme on y (``y_side``) is chosen, ties
    broken by x -- and refused when its peak lies more than ``y_side_within`` of the way from the ``y_side``
    extreme to the other among all the populations' peaks (the cluster sought is absent and the candidate left
    is another population: eosinophils when the basophils are too few) -- and neighbouring candidates
    displaced along x rather than y are joined to it
    (``join_ratio``: e.g. activated basophils brighter in CD203c). The cluster is the density above
    ``level`` x its peak connected to the peak and outside every other population's basin, opened
    towards the x side (``extend_x``), padded (``pad`` bins) and traced into a polygon whose vertices at
    the window's edge are moved beyond the data. Events far beyond the split are never thinned.
    """
    from skimage.feature import peak_local_max

    (x, y), (dx, dy), name = data.cols, data.dims, data.name
    n = len(x)
    if n < params["peak_min_events"]:
        return failed(f"only {n} events in the parent gate", "CLUSTER_GATE_FAILED", name, n_parent=n)
    # the density, its peaks and populations
    dens = _cluster_density(x, y, dx, dy, params)
    smooth = dens.smooth
    floor = 0.02 * params["peak_min_events"] / max(1.0, (2 * np.pi * max(params["smooth"], 1.0) ** 2))
    peaks = peak_local_max(smooth, min_distance=2, threshold_abs=floor, exclude_border=False)
    diag: dict[str, Any] = {"n_parent": n}
    if len(peaks) == 0:
        return _failed_with_density("no density peak", "CLUSTER_GATE_FAILED", name, dens.counts, dens.edges,
                                    **diag)
    pops = _cluster_populations(dens, peaks, floor, params)
    px, py, real, mass = pops.px, pops.py, pops.real, pops.mass
    beyond = px > dens.split_x if params["x_side"] == "high" else px < dens.split_x
    cand = np.flatnonzero(real & beyond)
    diag.update(populations=[{"x": float(a), "y": float(b), "events": int(m), "candidate": bool(c)}
                             for a, b, m, c in zip(px[real], py[real], mass[real], (real & beyond)[real])],
                n_populations=int(real.sum()), x_split=float(dens.split_x))
    if len(cand) == 0:
        return _failed_with_density(f"no population beyond the {dx.key} split ({int(real.sum())} population(s) "
                                    "found)", "CLUSTER_GATE_FAILED", name, dens.counts, dens.edges, **diag)
    # the chosen population (most extreme on y, then on x) and the candidates joined to it
    ysign = 1.0 if params["y_side"] == "low" else -1.0
    xsign = -1.0 if params["x_side"] == "high" else 1.0
    best = sorted(cand, key=lambda k: (ysign * py[k], xsign * px[k]))[0]
    # ... and it must lie on the y side among the parent's populations: when the cluster sought is absent (too
    # few basophils to form a population), the only candidate left is another one (CCR3+ eosinophils, SSC-high)
    position = _side_position(py[best], py[real], params["y_side"])
    diag["y_position"] = position
    if position > params["y_side_within"]:
        side, other = params["y_side"], _OTHER_SIDE[params["y_side"]]
        return _failed_with_density(
            f"no {name} found: the only {dx.key}-{params['x_side']} population ({int(mass[best])} events) lies with "
            f"the {other}-{dy.key} populations, not on the {side} side (its peak is {100 * position:.0f}% of the "
            f"way from the {side}est population's {dy.key} to the {other}est; at most "
            f"{100 * params['y_side_within']:.0f}%); the {name} are probably too few to form a population "
            f"(at least {params['peak_min_events']:g} events)", "CLUSTER_GATE_FAILED", name, dens.counts, dens.edges,
            **diag)
    group = _join_candidates(pops, cand, best, smooth, params)
    # its region, traced into a polygon
    region = _cluster_region(dens, pops, group, best, params)
    verts = _outline(region, dens.ex, dens.ey, params["bins"])
    if isinstance(verts, str):
        return _failed_with_density(verts, "CLUSTER_GATE_FAILED", name, dens.counts, dens.edges, **diag)
    gate = PolygonGate(name, (dx, dy), vertices=verts)
    mask = polygon_mask(gate, (x, y))
    # diagnostics for review
    sep = _separation(smooth, pops, group, best)
    diag.update(chosen={"x": float(px[best]), "y": float(py[best]), "events": int(mass[best])},
                joined=[{"x": float(px[g]), "y": float(py[g]), "events": int(mass[g])} for g in group if g != best],
                separation=sep, fraction_of_parent=fraction(mask), count=int(np.count_nonzero(mask)))
    flags = []
    if sep is not None and sep < 0.5:
        flags.append(Flag("CLUSTER_POORLY_SEPARATED", "warn",
                          f"gate {name}: the population is poorly separated from its neighbour "
                          f"(density dips by {100 * sep:.0f}%)"))
    return Estimate(gate, mask, diag, flags, small_counts(dens.counts), dens.edges)


# ---------------------------------------------------------------------------------------------- 6. 1-D split
def _smoothed_histogram(v: np.ndarray, bins: int, bandwidth: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Histogram of scale values over their 0.1-99.9% span (widened by 5% each side) and its Gaussian
    smoothing; returns (counts, edges, smoothed density, bin width). The kernel SD is ``bandwidth`` x
    Silverman's rule (0.9 x min(SD, IQR/1.34) x n^-1/5, R's ``bw.nrd0``; ``bandwidth`` is R's ``adjust``),
    between half a bin and a quarter of the bins."""
    from scipy import ndimage

    ordered = for_order_statistics(v)[0]
    lo, hi = np.quantile(ordered, [0.001, 0.999])
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    edges = np.linspace(lo - 0.05 * span, hi + 0.05 * span, bins + 1)
    counts, _ = np.histogram(v, bins=edges)
    width = float(edges[1] - edges[0])
    q1, q3 = np.quantile(ordered, [0.25, 0.75])
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite SD falls back below
        sd = float(np.std(v))
    spread = min(sd, float(q3 - q1) / 1.34) or sd
    sd_bins = bandwidth * 0.9 * spread * len(v) ** -0.2 / width
    sd_bins = float(np.clip(sd_bins, 0.5, bins / 4)) if np.isfinite(sd_bins) else bins / 16
    sm = ndimage.gaussian_filter1d(counts.astype(np.float64), sd_bins, mode="constant")
    return counts, edges, sm, width


def _two_modes(sm: np.ndarray, counts: np.ndarray, min_depth: float, min_peak: float, min_mode_events: int
               ) -> tuple[list[int], int | None, float]:
    """The highest mode and the highest other mode separated from it by a valley at least ``min_depth`` deep
    (relative to the smaller peak); returns (local maxima high enough to count, valley bin or None, depth).

    Local maxima lower than ``min_peak`` x the highest, and modes with fewer than ``min_mode_events``
    events (histogram ``counts``) beyond the valley, are noise in the tails. The valley is the middle of
    the bins within 0.1% of the smaller peak of the density's minimum between the two modes (a gap of empty
    bins between well-separated populations is split in its middle).
    """
    peaks = local_maxima(np.concatenate([[0.0], sm, [0.0]]))
    peaks = peaks - 1
    top = float(sm.max())
    peaks = [int(p) for p in peaks if sm[p] >= min_peak * top]
    order = sorted(peaks, key=lambda p: -sm[p])
    if len(order) < 2:
        return order, None, 0.0
    main = order[0]
    best_depth = 0.0
    for other in order[1:]:
        a, b = min(main, other), max(main, other)
        low = float(sm[a:b + 1].min())
        smaller = float(min(sm[main], sm[other]))
        depth = 1.0 - low / smaller
        best_depth = max(best_depth, depth)
        if depth < min_depth:
            continue
        near = np.flatnonzero(sm[a:b + 1] <= low + 1e-3 * smaller) + a
        valley = int(round((near[0] + near[-1]) / 2))
        beyond = counts[valley + 1:].sum() if other > main else counts[:valley].sum()
        if beyond >= min_mode_events:
            return order, valley, depth
    return order, None, best_depth


def estimate_split_1d(data: GateData, params: Mapping[str, Any]) -> Estimate:
    """A marker-positive (or -negative) gate: the valley between two density modes on one dimension.

    As flowDensity's ``deGate``: on the dimension's scale, a histogram of 256 bins smoothed with a Gaussian
    of SD ``bandwidth`` x Silverman's rule; the highest mode and the highest other mode separated from it by
    a valley at least ``min_depth`` deep (relative to the smaller peak; modes lower than ``min_peak`` x the
    highest, or with fewer than ``min_mode_events`` events beyond the valley, are ignored) give the split at the
    valley's minimum. With a single mode, the ``fallback`` is ``tail``: the split is where the density falls to
    ``tail`` x its peak on the ``side`` of the mode (flag ``SPLIT_FALLBACK``); ``none``: no gate
    (``SPLIT_FAILED``). The gate keeps the events at or above the split (``side`` = high) or below it (low),
    whatever their number.
    """
    col, dim, name = data.cols[0], data.dims[0], data.name
    n = len(col)
    step = thin(n)
    v = to_scale(dim, np.ascontiguousarray(col[::step]))
    v = v[np.isfinite(v)]
    if len(v) < params["min_events"]:
        return failed(f"only {len(v)} events with a finite {dim.key} value (< {params['min_events']})",
                      "SPLIT_FAILED", name, n_parent=n)
    if not float(v.max()) > float(v.min()):
        return failed(f"{dim.key} does not vary (every event at {float(v[0]):g})", "SPLIT_FAILED", name,
                      n_parent=n)
    with np.errstate(over="ignore"):
        span = float(v.max()) - float(v.min())
        # the histogram's window reaches 5% of the span beyond the values: it must be a number too
        window = (float(v.min()) - 0.05 * span, float(v.max()) + 0.05 * span)
    if not (np.isfinite(span) and np.isfinite(window).all()):
        return failed(f"{dim.key} values span beyond the numeric range ({float(v.min()):g} to {float(v.max()):g})",
                      "SPLIT_FAILED", name, n_parent=n)
    counts, edges, sm, width = _smoothed_histogram(v, 256, params["bandwidth"])
    centre = lambda i: float(edges[0] + (i + 0.5) * width)  # noqa: E731
    modes, valley, depth = _two_modes(sm, counts * step, params["min_depth"], params["min_peak"],
                                      params["min_mode_events"])
    diag: dict[str, Any] = {"n_parent": n, "modes": [centre(p) for p in modes[:5]],
                            "mode_heights": [float(sm[p] / sm.max()) for p in modes[:5]], "depth": depth}
    flags: list[Flag] = []
    high = params["side"] == "high"
    if valley is not None:
        split = centre(valley)
        diag.update(valley=split, fallback=None)
    else:
        reason = ("one density mode" if len(modes) < 2 else
                  f"no valley at least {params['min_depth']:g} deep between the modes (deepest {depth:.2f})")
        if params["fallback"] == "none":
            est = failed(f"{dim.key}: {reason}", "SPLIT_FAILED", name, **diag)
            est.density, est.density_edges = small_counts(counts), (edges,)
            return est
        k = modes[0]
        below_tail = sm < params["tail"] * sm[k]
        beyond = np.flatnonzero(below_tail[k:]) + k if high else np.flatnonzero(below_tail[:k + 1])
        if len(beyond):
            i = int(beyond[0] if high else beyond[-1])
            split = float(edges[i] if high else edges[i + 1])
        else:
            split = float(edges[-1] if high else edges[0])
        diag.update(valley=None, fallback="tail")
        flags.append(Flag("SPLIT_FALLBACK", "warn",
                          f"gate {name}: {reason} on {dim.key}; split where the density falls to "
                          f"{params['tail']:g} of its peak {'above' if high else 'below'} the mode"))
    gate = RangeGate(name, (dim,), mins=(split,) if high else (None,), maxs=(None,) if high else (split,))
    mask = apply_gate(gate, [col])
    diag.update(split=split, split_raw=float(from_scale(dim, np.array([split]))[0]),
                fraction_of_parent=fraction(mask) if n else 0.0, count=int(np.count_nonzero(mask)))
    return Estimate(gate, mask, diag, flags, small_counts(counts), (edges,))


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Param:
    """A typed estimator parameter: ``kind`` is 'number', 'integer', 'bool' or 'choice'.

    ``minimum``/``maximum`` bound numbers and integers (inclusive), ``choices`` lists a choice's values.
    """

    kind: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""

    def describe(self) -> str:
        """``integer, default 128, 32..1024: density image size per axis``."""
        kind = f"one of {'/'.join(self.choices)}" if self.kind == "choice" else self.kind
        default = str(self.default).lower() if self.kind == "bool" else self.default
        parts = [kind, f"default {default}"]
        if self.minimum is not None or self.maximum is not None:
            lo = "" if self.minimum is None else f"{self.minimum:g}"
            hi = "" if self.maximum is None else f"{self.maximum:g}"
            parts.append(f">= {lo}" if not hi else f"<= {hi}" if not lo else f"{lo}..{hi}")
        return ", ".join(parts) + (f": {self.doc}" if self.doc else "")


Estimator = Callable[[GateData, Mapping[str, Any]], Estimate]


@dataclass(frozen=True)
class EstimatorSpec:
    """One automated gate estimator: its template name, function, dimensions and typed parameters.

    ``n_dims`` is the number of dimensions the gate must have (-1: any number); ``params`` maps each
    parameter a template may set to its :class:`Param` (the function receives every one of them, defaults
    filled); ``doc`` says what the gate estimates; ``removes`` names the event fraction of the tube the gate
    removes (``acquisition_qc``, ``margin``, ``doublets``: reported in ``TubeResult.event_fractions`` and
    judged by QC), or None.
    """

    name: str
    function: Estimator
    n_dims: int
    params: Mapping[str, Param]
    doc: str
    removes: str | None = None

    def defaults(self) -> dict[str, Any]:
        """Every parameter at its default."""
        return {k: p.default for k, p in self.params.items()}

    def describe(self) -> str:
        """A few lines for a person: what it estimates, on how many dimensions, each parameter."""
        dims = "any number of dimensions" if self.n_dims < 0 else f"{self.n_dims} dimension(s)"
        lines = [f"{self.name} ({dims}): {self.doc}"]
        lines += [f"    {k}: {p.describe()}" for k, p in self.params.items()]
        return "\n".join(lines)


#: method name of a gate whose geometry is written in the template (``geometry:``); not an estimator
FIXED = "fixed"
#: the event fractions an estimator may remove (``EstimatorSpec.removes``)
EVENT_FRACTIONS = ("acquisition_qc", "margin", "doublets")

ESTIMATORS: dict[str, EstimatorSpec] = {}


def register_estimator(spec: EstimatorSpec) -> EstimatorSpec:
    """Add an estimator to :data:`ESTIMATORS` (templates may then use it); refuses a name already taken."""
    if spec.name in ESTIMATORS or spec.name == FIXED:
        raise ValueError(f"estimator {spec.name!r} is already registered")
    if spec.removes is not None and spec.removes not in EVENT_FRACTIONS:
        raise ValueError(f"estimator {spec.name!r}: removes {spec.removes!r}, expected one of {EVENT_FRACTIONS}")
    for key, p in spec.params.items():
        if p.kind not in ("number", "integer", "bool", "choice"):
            raise ValueError(f"estimator {spec.name!r}: parameter {key!r} has kind {p.kind!r}")
    ESTIMATORS[spec.name] = spec
    return spec


def unregister_estimator(name: str) -> None:
    """Remove an estimator added with :func:`register_estimator`."""
    del ESTIMATORS[name]


def describe_estimators() -> str:
    """Every registered estimator with its parameters (the text of ``bat templates methods``)."""
    fixed = f"{FIXED} (any number of dimensions): geometry given in the template ('geometry:')"
    return "\n".join([spec.describe() for spec in ESTIMATORS.values()] + [fixed])


register_estimator(EstimatorSpec("flow_rate", estimate_flow_rate, 1, {
    "bin_seconds": Param("number", 0.0, 0.0, doc="bin width in time units; 0 = choose from event count"),
    "target_events_per_bin": Param("integer", 200, 10, doc="events per bin when bin_seconds is 0"),
    "n_mad": Param("number", 5.0, 1.0, doc="bins further than n_mad robust SDs from the median are removed"),
    "min_bins": Param("integer", 20, 5, doc="fewer bins than this: no flow-rate check"),
}, "acquisition QC: remove flow-rate bursts and gaps on the time channel", removes="acquisition_qc"))
register_estimator(EstimatorSpec("margin", estimate_margin, -1, {
    "tolerance": Param("number", 0.001, 0.0, 0.2, doc="events within this fraction of $PnR of the top are saturated"),
}, "remove events saturated at the top of each dimension's range ($PnR)", removes="margin"))
register_estimator(EstimatorSpec("debris_density", estimate_cells, 2, {
    "bins": Param("integer", 128, 32, 1024, doc="density image size per axis"),
    "smooth": Param("number", 1.5, 0.0, 20.0, doc="Gaussian smoothing (bins)"),
    "level": Param("number", 0.002, 0.0, 0.5, doc="density contour as a fraction of the maximum"),
    "pad": Param("number", 2.0, 0.0, 20.0, doc="bins added around the cell region"),
}, "cells: exclude low-FSC debris using the FSC-A/SSC-A density"))
register_estimator(EstimatorSpec("singlet_band", estimate_singlets, 2, {
    "n_sd": Param("number", 4.0, 1.0, 20.0, doc="band half-width in robust SDs of H/A around its mode"),
    "min_signal": Param("number", 0.0, 0.0, doc="ignore events with area below this when fitting"),
}, "singlets: the FSC-A/FSC-H diagonal band, fitted on the ratio H/A", removes="doublets"))
register_estimator(EstimatorSpec("cluster_2d", estimate_cluster, 2, {
    "x_side": Param("choice", "high", choices=("high", "low"), doc="the cluster is high/low on dimension 1"),
    "y_side": Param("choice", "low", choices=("high", "low"), doc="the cluster is high/low on dimension 2"),
    "bins": Param("integer", 128, 32, 1024, doc="density image size per axis"),
    "smooth": Param("number", 1.5, 0.0, 20.0, doc="Gaussian smoothing (bins)"),
    "peak_min_events": Param("number", 30.0, 1.0, doc="a population needs at least this many events"),
    "merge_ratio": Param("number", 0.5, 0.0, 1.0,
                         doc="merge two density peaks when the pass between them is at least this "
                             "fraction of the lower peak"),
    "join_ratio": Param("number", 0.1, 0.0, 1.0,
                        doc="join a neighbouring candidate displaced along x when the pass between "
                            "them is at least this fraction of the lower peak"),
    "level": Param("number", 0.05, 0.0, 0.9, doc="cluster boundary as a fraction of the cluster's peak density"),
    "split_n_sd": Param("number", 4.0, 0.5, 20.0,
                        doc="x positivity: negative mode + n robust SDs when no valley is found"),
    "pad": Param("number", 2.0, 0.0, 20.0, doc="bins added around the cluster"),
    "y_side_within": Param("number", 0.5, 0.0, 1.0,
                           doc="the chosen population's peak must lie within this fraction of the way from the "
                               "y_side extreme to the other among the populations' peaks (1: no check)"),
    "extend_x": Param("bool", True, doc="open the gate towards the x side (nothing brighter belongs "
                                         "elsewhere within the cluster's y band)"),
}, "basophils: the x-high/low, y-high/low cluster of the 2-D density (number of populations found)"))
register_estimator(EstimatorSpec("split_1d", estimate_split_1d, 1, {
    "side": Param("choice", "high", choices=("high", "low"), doc="keep the events above (high) or below (low) "
                                                                  "the split"),
    "bandwidth": Param("number", 1.0, 0.05, 10.0,
                       doc="density smoothing: Gaussian SD as a multiple of Silverman's rule (R's adjust)"),
    "min_depth": Param("number", 0.3, 0.0, 1.0,
                       doc="a valley must fall at least this fraction below the smaller of its two modes"),
    "min_peak": Param("number", 0.01, 0.0, 1.0, doc="modes lower than this fraction of the highest are ignored"),
    "fallback": Param("choice", "tail", choices=("tail", "none"),
                      doc="one mode: split where the density falls to tail x its peak on the side (tail), "
                          "or no gate (none)"),
    "tail": Param("number", 0.05, 0.0001, 0.9, doc="the fallback split's density, as a fraction of the mode's peak"),
    "min_mode_events": Param("integer", 20, 1, doc="a second mode needs at least this many events beyond "
                                                    "the valley"),
    "min_events": Param("integer", 50, 2, doc="fewer events with a value than this: no split"),
}, "a marker-positive (side high) or -negative gate on one dimension: the valley between two density modes "
   "(flowDensity deGate), with a flagged fallback for a single mode"))
