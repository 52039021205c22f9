"""Membership of events in a gate's own geometry: the fast paths and the exact tests, side by side.

Every gate's own membership goes through these functions, whether the gate engine evaluates a hierarchy
on values already on the gate's scales (:func:`bat_analysis.gating.gates.evaluate`, ``on_scale=True``) or
a tube is gated on raw compensated columns (:func:`bat_analysis.gating.gates.apply_gate`: each
dimension's transform is then applied, or inverted once, here).

* :func:`range_mask`: half-open ``min <= x < max`` compared in float64; on raw columns the limits are
  inverse-transformed once instead of transforming every event (the transforms are monotone).
* :func:`polygon_mask`: the exact test is FlowUtils' winding-number point-in-polygon (as FlowKit; edges
  inclusive) on the scale, applied to the events inside the polygon's bounding box
  (:func:`_polygon_exact`). The fast path, for a convex polygon over many events, classifies a grid over
  the (slightly padded) bounding box once (:func:`cell_classes`: each cell enlarged by 1e-3 of its width,
  judged inside, outside or boundary), bins the raw events into it (:mod:`bat_analysis.gating._binning`,
  in chunks) and sends only the events of boundary cells to the exact test (:func:`_polygon_grid`). The
  two give the same membership (``tests/test_membership.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._binning import CHUNK, binner, from_scale, to_scale

__all__ = ["cell_classes", "grid_size", "in_box", "is_convex", "polygon_mask", "range_mask"]


class _OnScale:
    """A dimension whose values are already on its scale (no transform to apply or invert)."""

    transform = None


_ON_SCALE = _OnScale()


def _scales(dims: Sequence[Any], on_scale: bool) -> list[Any]:
    return [_ON_SCALE] * len(dims) if on_scale else list(dims)


# ---------------------------------------------------------------------------------------------- ranges
def range_mask(dims: Sequence[Any], mins: Sequence[float | None], maxs: Sequence[float | None],
               cols: Sequence[np.ndarray], *, on_scale: bool = False) -> np.ndarray:
    """Members of a range (``min <= x < max`` on each dimension's scale; None: open) among the events.

    ``cols`` are raw values (one column per dimension; limits inverse-transformed once) or, with
    ``on_scale``, values on the dimensions' scales. Limits are compared as float64 scalars: a plain Python
    float would be cast to a float32 column's type (NEP 50) and a limit rounded onto an event's value would
    move that event across it.
    """
    mask = np.ones(len(cols[0]) if len(cols) else 0, dtype=bool)
    for dim, col, lo, hi in zip(_scales(dims, on_scale), cols, mins, maxs):
        if lo is not None:
            mask &= col >= (np.float64(lo) if dim.transform is None else from_scale(dim, np.array([lo]))[0])
        if hi is not None:
            mask &= col < (np.float64(hi) if dim.transform is None else from_scale(dim, np.array([hi]))[0])
    return mask


# ---------------------------------------------------------------------------------------------- polygons
def is_convex(v: np.ndarray) -> bool:
    """Whether a closed polygon (vertices in order) is convex: it turns one way at every vertex and once
    around in all (a pentagram turns one way too, but twice around: its centre is outside)."""
    d = np.diff(np.vstack([v, v[:1]]), axis=0)
    d = d[np.any(d != 0, axis=1)]  # a repeated vertex is no edge
    if len(d) < 3:
        return False
    nxt = np.roll(d, -1, axis=0)
    cross = d[:, 0] * nxt[:, 1] - d[:, 1] * nxt[:, 0]
    if not (np.all(cross >= 0) or np.all(cross <= 0)):
        return False
    turning = float(np.sum(np.arctan2(cross, d[:, 0] * nxt[:, 0] + d[:, 1] * nxt[:, 1])))
    return bool(abs(abs(turning) - 2 * np.pi) < 1e-6)


def cell_classes(v: np.ndarray, ex: np.ndarray, ey: np.ndarray) -> np.ndarray | None:
    """Class of each grid cell against a convex polygon: 0 outside, 1 inside, 2 boundary (None: degenerate).

    Every cell is enlarged by 1e-3 of its width on each side before it is judged, so an event binned
    into a neighbouring cell by rounding is still judged correctly. A cell is inside when its enlarged
    corners all lie strictly inside every edge's half-plane (then the whole cell does: the polygon is
    convex) and outside when they all lie strictly outside one edge's half-plane; any other cell is a
    boundary cell whose events are tested exactly.
    """
    area2 = float(np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1]))
    if not np.isfinite(area2) or area2 == 0.0:
        return None
    if area2 < 0:  # counter-clockwise: the inside is left of every edge
        v = v[::-1]
    eps_x = 1e-3 * (ex[1] - ex[0])
    eps_y = 1e-3 * (ey[1] - ey[0])
    x_lo, x_hi = (ex[:-1] - eps_x)[:, None], (ex[1:] + eps_x)[:, None]
    y_lo, y_hi = (ey[:-1] - eps_y)[None, :], (ey[1:] + eps_y)[None, :]
    inside = np.ones((len(ex) - 1, len(ey) - 1), dtype=bool)
    outside = np.zeros_like(inside)
    # the grid-sized temporaries are made once and reused for every edge (same arithmetic, in place)
    value = np.empty(inside.shape, dtype=np.float64)
    test = np.empty(inside.shape, dtype=bool)
    for (px, py), (qx, qy) in zip(v, np.roll(v, -1, axis=0)):
        # f(x, y) = a x + b y + c > 0 left of the edge p -> q
        a, b = -(qy - py), qx - px
        if a == 0.0 and b == 0.0:
            continue  # a repeated vertex is no edge
        c = -(a * px + b * py)
        # lowest value over the cell: (a x + b y) + c at the corner minimising each term
        np.add(a * x_lo if a > 0 else a * x_hi, b * y_lo if b > 0 else b * y_hi, out=value)
        value += c
        inside &= np.greater(value, 0, out=test)
        # highest value over the cell
        np.add(a * x_hi if a > 0 else a * x_lo, b * y_hi if b > 0 else b * y_lo, out=value)
        value += c
        outside |= np.less(value, 0, out=test)
    classes = np.full(inside.shape, 2, dtype=np.uint8)
    classes[outside] = 0
    classes[inside] = 1
    return classes


def grid_size(n: int) -> int:
    """Cells per side of the classification grid for ``n`` events (finer for more events)."""
    return int(np.clip(np.sqrt(n / 4.0), 32, 512))


def polygon_mask(gate: Any, cols: Sequence[np.ndarray], grid: int | None = None, *,
                 on_scale: bool = False) -> np.ndarray:
    """Members of a polygon gate (its ``vertices`` on its ``dims``' scales) among the events; ``complement``
    is not applied here (see :func:`bat_analysis.gating.gates.apply_gate`).

    ``cols`` are the raw x and y values (transformed here only for the events tested exactly) or, with
    ``on_scale``, values on the scales. A convex polygon over many events takes the grid path
    (:func:`_polygon_grid`; ``grid`` cells per side, by default finer for more events on a linear scale
    and 64 on a transformed one, whose lookup table costs more per bin); any other the exact test within
    the bounding box. Both answer as the exact test does for every event.
    """
    x, y = cols
    dims = _scales(gate.dims, on_scale)
    v = np.asarray(gate.vertices, dtype=np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    # the grid reaches beyond the polygon by more than a float32 binning error (see binning.bin_index)
    pad = 1e-4 * np.maximum(hi - lo, 1e-300)
    lo, hi = lo - pad, hi + pad
    gx, gy = (grid or (grid_size(len(x)) if d.transform is None else 64) for d in dims)
    ex = np.linspace(lo[0], hi[0], gx + 1)
    ey = np.linspace(lo[1], hi[1], gy + 1)
    classes = cell_classes(v, ex, ey) if len(x) > 4 * max(gx, gy) and is_convex(v) else None
    if classes is not None:
        mask, idx = _polygon_grid(classes, dims, x, y, ex, ey)
    else:
        mask = np.zeros(len(x), dtype=bool)
        rx = from_scale(dims[0], np.array([lo[0], hi[0]]))
        ry = from_scale(dims[1], np.array([lo[1], hi[1]]))
        idx = in_box(x, y, rx, ry)
    if len(idx):
        mask[idx] = _polygon_exact(v, dims, x[idx], y[idx])
    return mask


def in_box(x: np.ndarray, y: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """``np.flatnonzero((x >= rx[0]) & (x <= rx[1]) & (y >= ry[0]) & (y <= ry[1]))``: when few events lie in the
    x range (a gate on a rare population), the y range is tested on those events only."""
    in_x = x >= rx[0]
    in_x &= x <= rx[1]
    if np.count_nonzero(in_x) * 8 < len(x):
        idx = np.flatnonzero(in_x)
        yi = y[idx]
        return idx[(yi >= ry[0]) & (yi <= ry[1])]
    in_x &= y >= ry[0]
    in_x &= y <= ry[1]
    return np.flatnonzero(in_x)

def _polygon_grid(classes: np.ndarray, dims: Sequence[Any], x: np.ndarray, y: np.ndarray, ex: np.ndarray,
                  ey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fast path: events binned into the classified grid (edges ``ex``, ``ey`` on the scales).

    Returns the members found by their cell (inside cells) and the indices of the events in boundary cells,
    which the caller tests exactly; events beyond the grid fall in a ring of outside cells.
    """
    gx, gy = classes.shape
    table = np.zeros((gx + 2, gy + 2), dtype=np.uint8)
    table[1:-1, 1:-1] = classes
    flat = table.ravel()
    bin_x = binner(x.dtype, len(x), dims[0], ex, shift=1)
    bin_y = binner(y.dtype, len(y), dims[1], ey, shift=1)
    mask = np.empty(len(x), dtype=bool)
    todo = []
    # in chunks, so that the few passes over each chunk's temporaries stay in the cache
    for i in range(0, len(x), CHUNK):
        j = min(i + CHUNK, len(x))
        ix = bin_x(x[i:j])
        ix *= gy + 2
        ix += bin_y(y[i:j])
        cls = flat[ix]
        np.equal(cls, 1, out=mask[i:j])
        todo.append(np.flatnonzero(cls == 2) + i)
    return mask, (np.concatenate(todo) if todo else np.zeros(0, dtype=np.intp))


def _polygon_exact(v: np.ndarray, dims: Sequence[Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The exact test: FlowUtils' winding-number point-in-polygon of the events on the scales."""
    from flowutils.gating import points_in_polygon

    pts = np.column_stack([to_scale(dims[0], x), to_scale(dims[1], y)])
    return np.asarray(points_in_polygon(v, pts), dtype=bool)
