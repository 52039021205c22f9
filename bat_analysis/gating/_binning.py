"""Binning raw event values on a dimension's scale without transforming every event.

Contract. :func:`bin_index` gives, for raw values (float32 events, compensated but untransformed), the bin
of each among equally spaced edges on a dimension's scale (its transform applied) -- the same bin as
``np.searchsorted(from_scale(dim, edges), values, side="right") - 1``, with -1 below the first edge and
``bins`` at or above the last. :func:`binner` prepares that binning once for many chunks of one column
(density images, the polygon grid of :mod:`bat_analysis.gating._membership`).

Why: a transform (logicle, asinh) costs far more per event than a comparison, and a gate or a density
image only needs to know which bin or cell an event falls in. So the edges are inverse-transformed once
(:func:`from_scale`) and raw values are compared with them.

How, and what is exact:

* Linear scales are binned arithmetically (``floor((x - e0) / width)``) in float64: exact up to the
  rounding of that division for a value on an edge.
* Transformed scales: few values are placed by binary search among the raw edges (exact). Many values go
  through a lookup table of 65,536 (16,384 for fewer values; more when there are many bins and values,
  about 512 cells per bin) equal cells in raw units: a cell lying within one bin gives that bin; a cell
  holding an edge, its two neighbours (a value's cell is found by rounding arithmetic) and the two end
  cells are marked unsure and their values are placed by binary search -- so the table's answer is the
  binary search's. When most values fall in unsure cells (bins finer than the cells where the data are),
  every value is searched instead.
* "Searched" values of a scale whose transform is cheap to apply (``cheap_apply``: a closed form or the
  table of :class:`~bat_analysis.gating.transforms.FastLogicle`) are placed from a guess (:func:`_guessed`):
  the transformed value gives the bin up to rounding, the raw edges either side confirm it or move it by
  one, and any value still not held by its bin (NaN, a guess off by more) is binary-searched -- so the
  answer is the binary search's whatever the guess, at about half its cost.
* Grid lookups (``shift >= 1``: 0 is "below the grid", ``bins + shift`` "above") of float32 values do
  the cell arithmetic in float32: on a linear scale when the grid lies within 2048 bin widths of zero, a
  value's position is then off by at most 1e-3 of a bin (callers enlarge their cells by that:
  :func:`bat_analysis.gating._membership.polygon_mask` pads its grid by 1e-4 of the polygon's size and
  judges cells enlarged by 1e-3); through the lookup table, with one guard cell on each side resolved by
  search, so values at the table's ends are never misplaced by float32 rounding.
* :data:`CHUNK`: callers bin a column in chunks of this many events, so that the few passes over each
  chunk's temporaries stay in the cache.

Equality with the binary search is tested in ``tests/test_binning.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["CHUNK", "LUT_CELLS", "bin_index", "binner", "from_scale", "to_scale"]


# ---------------------------------------------------------------------------------------------- scales
def to_scale(dim: Any, values: np.ndarray) -> np.ndarray:
    """Values on the dimension's scale (transform applied when it has one)."""
    if dim.transform is None:
        return np.asarray(values, dtype=np.float64)
    return np.asarray(dim.transform.apply(np.asarray(values, dtype=np.float64)), dtype=np.float64)


def from_scale(dim: Any, values: np.ndarray) -> np.ndarray:
    """Raw values of scale positions (inverse transform when the dimension has one)."""
    if dim.transform is None:
        return np.asarray(values, dtype=np.float64)
    return np.asarray(dim.transform.inverse(np.asarray(values, dtype=np.float64)), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- bins
#: cells of the raw-unit lookup table for transformed scales (a quarter of it for fewer values)
LUT_CELLS = 1 << 16
#: events per chunk of the polygon grid lookup (its temporaries stay in the cache)
CHUNK = 1 << 17


def _count_at_or_below(edges: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``np.searchsorted(edges, points, side="right")`` for increasing ``edges`` and non-decreasing ``points``:
    each edge is placed among the points instead (the first point at or above it) and the edges counted up
    to each point -- a search per edge (a few hundred) rather than per point (tens of thousands)."""
    first = np.searchsorted(points, edges, side="left")  # non-decreasing: the edges are increasing
    runs = np.diff(np.concatenate([[0], first, [len(points)]]))
    return np.repeat(np.arange(len(edges) + 1, dtype=np.int32), runs)


#: fewer values than this are binned by the binary search itself (the guess costs a few array passes)
_GUESS_MIN = 256


def _guessed(values: np.ndarray, raw: np.ndarray, dim: Any, edges: np.ndarray, shift: int,
             scaled: np.ndarray | None = None) -> np.ndarray:
    """The binary search's bins, found from a guess: each value's bin on the scale (``dim.transform.apply``,
    a closed form or table, right up to its rounding), checked against the raw edges and moved by one bin
    where the value lies below or above it; a moved value whose new bin does not hold it either (a guess off
    by more than one bin) and a value without a place on the scale (NaN) are searched. The answer is
    ``searchsorted(raw, values, side="right") - 1 + shift`` for every value, whatever the guess.
    ``scaled``: the values on the scale when the caller has them (the transform is then not applied)."""
    bins = len(raw) - 1
    if scaled is None:
        scaled = dim.transform.apply(values)
    pos = np.asarray(scaled, dtype=np.float64) - edges[0]
    pos *= bins / (edges[-1] - edges[0])
    nan = np.isnan(pos)
    np.fmax(pos, -1, out=pos)
    np.fmin(pos, bins, out=pos)
    b = pos.astype(np.intp)  # truncation: -0.5 -> 0 is moved down below when the value is under raw[0]
    # lower[b + 1] <= value < upper[b + 1] is bin b's interval (bin -1 below raw[0], bin ``bins`` from raw[-1] up)
    lower = np.concatenate([[-np.inf], raw])
    upper = np.concatenate([raw, [np.inf, np.inf]])
    down = values < lower[b + 1]
    up = values >= upper[b + 1]
    up &= b < bins  # the last bin has no upper edge (+inf included)
    b -= down
    b += up
    recheck = np.flatnonzero(down | up | nan)
    if len(recheck):
        rb, rv = b[recheck], values[recheck]
        held = (lower[rb + 1] <= rv) & ((rv < upper[rb + 1]) | (rb == bins))
        bad = recheck[~held]
        b[bad] = np.searchsorted(raw, values[bad], side="right") - 1
    b += shift
    return b.astype(np.int32)


def bin_index(values: np.ndarray, dim: Any, edges: np.ndarray, shift: int = 0,
              scaled: np.ndarray | None = None) -> np.ndarray:
    """Bin of each raw value among equally spaced scale edges (-1 or len(edges)-1 when outside), plus ``shift``.

    Linear scales are binned arithmetically. On a transformed scale the edges are inverse-transformed
    once; many values are binned through a lookup table of 65536 (or 16384, or for many bins and values
    up to 512 per bin) equal raw cells (a cell that holds a bin edge, or touches one, is resolved by binary
    search for its values only), few values by binary search directly.

    With ``shift`` >= 1 (grid lookups: 0 is "below", bins + 1 "above") float32 values of a linear scale are
    binned in float32 with the shift folded into the arithmetic, when the grid lies within 2048 bin widths
    of zero; a value's position is then off by at most 1e-3 of a bin (callers enlarge their cells by that).

    ``scaled``: the values already on the dimension's scale (``to_scale(dim, values)``), when the caller has
    computed them: a transformed scale's bins are then placed from them (:func:`_guessed`: confirmed by the
    raw edges, so the answer is the binary search's whatever they hold) without a table or a transform.
    """
    if scaled is not None and dim.transform is not None and len(scaled) == len(values):
        raw = from_scale(dim, edges)
        if np.all(np.diff(raw) > 0):
            return _guessed(values, raw, dim, edges, shift, scaled)
    return binner(values.dtype, len(values), dim, edges, shift)(values)


def binner(dtype: np.dtype, n: int, dim: Any, edges: np.ndarray, shift: int = 0
            ) -> Callable[[np.ndarray], np.ndarray]:
    """The binning of :func:`bin_index` for ``n`` values of ``dtype``, prepared once (applied per chunk)."""
    bins = len(edges) - 1
    if dim.transform is None:
        width = (edges[-1] - edges[0]) / bins
        if shift >= 1 and dtype == np.float32 and max(abs(edges[0]), abs(edges[-1])) <= 2048 * width:
            scale, offset = np.float32(1.0 / width), np.float32(shift - edges[0] / width)

            def linear32(values: np.ndarray) -> np.ndarray:
                t = np.multiply(values, scale)
                t += offset
                np.clip(t, shift - 1, bins + shift, out=t)
                return t.astype(np.int32)
            return linear32

        def linear(values: np.ndarray) -> np.ndarray:
            # floor((values - edges[0]) * (1 / width)), in one temporary (the same types: float64 edges)
            idx = np.subtract(values, edges[0])
            idx *= 1.0 / width
            np.floor(idx, out=idx)
            out = np.clip(idx, -1, bins, out=idx).astype(np.int32)
            if shift:
                out += shift
            return out
        return linear
    raw = from_scale(dim, edges)
    increasing = bool(np.all(np.diff(raw) > 0))

    def search(values: np.ndarray) -> np.ndarray:
        if increasing and getattr(dim.transform, "cheap_apply", False) and len(values) >= _GUESS_MIN:
            return _guessed(values, raw, dim, edges, shift)
        return (np.searchsorted(raw, values, side="right") + (shift - 1)).astype(np.int32)

    # about 512 cells per bin keeps the cells holding an edge (resolved one by one) few
    n_cells = LUT_CELLS if n >= LUT_CELLS else LUT_CELLS // 4
    while n_cells < 512 * bins and n >= 8 * n_cells:
        n_cells *= 2
    if n < n_cells or not increasing:
        return search
    r0, r1 = float(raw[0]), float(raw[-1])
    w = (r1 - r0) / n_cells
    starts = np.arange(n_cells, dtype=np.float64)  # r0 + w k, computed in place
    starts *= w
    starts += r0
    b_lo = _count_at_or_below(raw, starts) - 1
    b_hi = _count_at_or_below(raw, starts + w) - 1
    # a cell holding a bin edge, its neighbours (rounding of a value's cell) and the two end cells are
    # resolved by binary search; every other cell lies within one bin. An edge can also fall in the
    # rounding gap between one cell's end (start + w) and the next cell's start (r0 + w (k + 1)): the
    # cell before that gap counts as holding it.
    holds_edge = b_lo != b_hi
    holds_edge[:-1] |= b_lo[:-1] != b_lo[1:]
    unsure = holds_edge.copy()
    unsure[1:] |= holds_edge[:-1]
    unsure[:-1] |= holds_edge[1:]
    unsure[[0, -1]] = True
    unsure_mark = -2 - 2 * shift
    cells = np.where(unsure, unsure_mark, b_lo + shift)

    def resolve(values: np.ndarray, out: np.ndarray) -> np.ndarray:
        todo = np.flatnonzero(out == unsure_mark)
        if len(todo):
            out[todo] = np.searchsorted(raw, values[todo], side="right") + (shift - 1)
        return out

    def mostly_unsure(values: np.ndarray, cell_of: Callable[[np.ndarray], np.ndarray]) -> bool:
        """Whether most values fall in cells holding an edge (bins finer than the table's cells where
        the data are): a binary search of all values is then cheaper than the table."""
        sample = values[::64]
        return len(sample) > 0 and float(np.mean(cell_of(sample) == unsure_mark)) > 0.3

    if shift >= 1 and dtype == np.float32 and abs(r0) <= 4 * n_cells * w:
        # float32 cell positions, off by far less than the one cell the neighbours' marking allows; a
        # guard cell on each side (resolved by search) keeps values at the ends from being misplaced
        lut32 = np.concatenate([[-1 + shift, unsure_mark], cells, [unsure_mark, bins + shift]]).astype(np.int32)
        scale, offset = np.float32(1.0 / w), np.float32(2.0 - r0 / w)

        def cell32(values: np.ndarray) -> np.ndarray:
            k = np.multiply(values, scale)
            k += offset
            np.clip(k, 0, n_cells + 3, out=k)
            return lut32[k.astype(np.int32)]

        def table32(values: np.ndarray) -> np.ndarray:
            return search(values) if mostly_unsure(values, cell32) else resolve(values, cell32(values))
        return table32
    lut = np.concatenate([[-1 + shift], cells, [bins + shift]]).astype(np.int32)

    def cell(values: np.ndarray) -> np.ndarray:
        # floor((values - r0) * (1 / w)), in one temporary (the same types: r0 and w are Python floats)
        k = np.subtract(values, r0)
        k *= 1.0 / w
        np.floor(k, out=k)
        np.clip(k, -1, n_cells, out=k)
        return lut[k.astype(np.int32) + 1]

    def table(values: np.ndarray) -> np.ndarray:
        return search(values) if mostly_unsure(values, cell) else resolve(values, cell(values))
    return table
