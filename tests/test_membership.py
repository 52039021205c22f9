"""Gate membership: the polygon grid path against the exact winding-number test, and the one entry point
(:func:`apply_gate` on raw columns, :func:`evaluate` on transformed values) deciding alike."""

from __future__ import annotations

import numpy as np
import pytest

from bat_analysis.gating._binning import from_scale, to_scale
from bat_analysis.gating.gates import ArrayEvents, Dimension, PolygonGate, RangeGate, apply_gate, evaluate
from bat_analysis.gating._membership import cell_classes, grid_size, is_convex, polygon_mask
from bat_analysis.gating.transforms import from_spec

LOGICLE = from_spec({"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0})


@pytest.mark.parametrize("transformed", [False, True])
def test_polygon_mask_grid_path_equals_the_exact_test(transformed: bool) -> None:
    """Convex polygons over many events take the classified-grid path; membership is unchanged."""
    from flowutils.gating import points_in_polygon

    rng = np.random.default_rng(12)
    n = 300_000
    x = rng.uniform(-2000, 262144, n).astype(np.float32)
    y = rng.uniform(-2000, 262144, n).astype(np.float32)
    tf = LOGICLE if transformed else None
    dims = (Dimension("x", tf), Dimension("y", tf))
    sx, sy = to_scale(dims[0], x), to_scale(dims[1], y)
    lo, hi = np.quantile(sx, 0.1), np.quantile(sx, 0.9)
    ylo, yhi = np.quantile(sy, 0.1), np.quantile(sy, 0.9)
    verts = np.array([[lo, ylo], [hi, ylo + 0.1 * (yhi - ylo)], [hi, yhi], [0.5 * (lo + hi), yhi + 0.05],
                      [lo, 0.5 * (ylo + yhi)]])
    gate = PolygonGate("p", dims, vertices=verts)
    assert is_convex(verts)
    exact = np.asarray(points_in_polygon(verts, np.column_stack([sx, sy])), dtype=bool)
    assert np.array_equal(polygon_mask(gate, (x, y)), exact)
    # events exactly on grid-cell edges and vertices
    gx = np.linspace(lo, hi, 65)
    gy = np.linspace(ylo, yhi, 65)
    px, py = np.meshgrid(gx, gy)
    raw_x = from_scale(dims[0], px.ravel())
    raw_y = from_scale(dims[1], py.ravel())
    reps = np.repeat(np.column_stack([raw_x, raw_y]), 25, axis=0)  # enough events for the grid path
    ex_ = np.asarray(points_in_polygon(verts, np.column_stack([to_scale(dims[0], reps[:, 0]),
                                                                to_scale(dims[1], reps[:, 1])])), dtype=bool)
    assert np.array_equal(polygon_mask(gate, (reps[:, 0], reps[:, 1])), ex_)


@pytest.mark.parametrize("n", [3_000, 50_000, 400_000])
def test_polygon_mask_classified_cells_equal_the_exact_test_on_mixed_scales(n: int) -> None:
    """Linear x, logicle y (the cells gate) and a thin diagonal band (the singlets gate), at every grid size,
    with events placed exactly on the classification grid's cell edges and on the polygon's vertices."""
    from flowutils.gating import points_in_polygon

    rng = np.random.default_rng(n)
    x = rng.uniform(-5000, 270000, n).astype(np.float32)
    y = (rng.lognormal(9, 1.5, n) - 300).astype(np.float32)
    for dims, verts in (
            ((Dimension("x", None), Dimension("y", LOGICLE)),
             np.array([[30000.0, 0.1], [250000.0, 0.15], [280000.0, 0.9], [60000.0, 0.95], [20000.0, 0.5]])),
            ((Dimension("x", None), Dimension("y", None)),
             np.array([[100.0, 60.0], [500000.0, 300000.0], [500000.0, 420000.0], [100.0, 85.0]]))):
        if dims[1].transform is None:
            y = (x * rng.uniform(0.5, 0.9, n)).astype(np.float32)  # a diagonal cloud around the band
        gate = PolygonGate("p", dims, vertices=verts)
        nx, ny = (grid_size(n) if d.transform is None else 64 for d in dims)
        lo, hi = verts.min(axis=0), verts.max(axis=0)
        pad = 1e-4 * (hi - lo)
        gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], nx + 1)
        gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], ny + 1)
        on_edges = np.column_stack([from_scale(dims[0], rng.choice(gx, 500)),
                                    from_scale(dims[1], rng.choice(gy, 500))]).astype(np.float32)
        at_vertices = np.column_stack([from_scale(dims[0], verts[:, 0]),
                                       from_scale(dims[1], verts[:, 1])]).astype(np.float32)
        xs = np.concatenate([x, on_edges[:, 0], at_vertices[:, 0]])
        ys = np.concatenate([y, on_edges[:, 1], at_vertices[:, 1]])
        exact = np.asarray(points_in_polygon(verts, np.column_stack([to_scale(dims[0], xs),
                                                                      to_scale(dims[1], ys)])), dtype=bool)
        assert 0 < exact.sum() < len(xs)
        assert cell_classes(verts, gx, gy) is not None
        assert np.array_equal(polygon_mask(gate, (xs, ys)), exact)


def test_cell_classes_of_a_square() -> None:
    """Cells wholly inside, wholly outside and crossing the boundary of a square, either orientation."""
    edges = np.linspace(0.0, 4.0, 5)
    square = np.array([[1.5, 1.5], [2.5, 1.5], [2.5, 2.5], [1.5, 2.5]])
    for verts in (square, square[::-1]):
        classes = cell_classes(verts, edges, edges)
        assert classes[0, 0] == 0 and classes[3, 3] == 0 and classes[0, 3] == 0
        assert classes[1, 1] == 2 and classes[2, 2] == 2 and classes[1, 2] == 2
    shrunk = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 3.5], [0.5, 3.5]])
    classes = cell_classes(shrunk, edges, edges)
    assert classes[1, 1] == 1 and classes[2, 2] == 1 and classes[0, 0] == 2
    assert cell_classes(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), edges, edges) is None


def test_the_gate_engine_and_apply_gate_decide_alike() -> None:
    """The gate engine (transformed values) and apply_gate (raw columns) give the same members: ranges on a
    transformed scale, a convex polygon over many events (grid path) and a concave one (exact test only)."""
    from flowutils.gating import points_in_polygon

    rng = np.random.default_rng(21)
    n = 200_000
    x = (rng.lognormal(8, 1.5, n) - 300).astype(np.float32)
    y = rng.uniform(-1000, 262144, n).astype(np.float32)
    dims = (Dimension("x", LOGICLE), Dimension("y", None))
    convex = np.array([[0.3, 20000.0], [0.8, 30000.0], [0.85, 200000.0], [0.35, 150000.0]])
    concave = np.array([[0.3, 20000.0], [0.8, 30000.0], [0.5, 60000.0], [0.85, 200000.0], [0.35, 150000.0]])
    assert is_convex(convex) and not is_convex(concave)
    gates = [RangeGate("r", dims, mins=(0.4, None), maxs=(0.7, 100000.0)),
             PolygonGate("convex", dims, vertices=convex), PolygonGate("concave", dims, vertices=concave),
             PolygonGate("outside", dims, vertices=convex, complement=True)]
    engine = evaluate(gates, ArrayEvents({"x": x, "y": y}))
    scaled = np.column_stack([to_scale(dims[0], x), to_scale(dims[1], y)])
    for gate in gates:
        raw = apply_gate(gate, [x, y])
        assert np.array_equal(raw, engine[gate.name]), gate.name
        if isinstance(gate, PolygonGate):
            exact = np.asarray(points_in_polygon(gate.vertices, scaled), dtype=bool)
            assert np.array_equal(raw, ~exact if gate.complement else exact), gate.name
            assert np.array_equal(polygon_mask(gate, [scaled[:, 0], scaled[:, 1]], on_scale=True), exact)
    assert 0 < engine["convex"].sum() < n and engine["r"].sum() > 0


def test_apply_gate_keeps_the_outside_of_a_complemented_polygon() -> None:
    dims = (Dimension("x"), Dimension("y"))
    square = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    x, y = np.array([0.5, 2.0]), np.array([0.5, 2.0])
    assert apply_gate(PolygonGate("in", dims, vertices=square), [x, y]).tolist() == [True, False]
    assert apply_gate(PolygonGate("out", dims, vertices=square, complement=True), [x, y]).tolist() == [False, True]


def test_a_pentagram_is_not_convex_and_its_centre_is_outside() -> None:
    """A star whose edges all turn one way winds twice around its centre: the grid path, which holds only
    for convex polygons, must not take it (winding count modulo 2 leaves the centre out)."""
    from flowutils.gating import points_in_polygon

    angles = np.pi / 2 + 4 * np.pi * np.arange(5) / 5  # every second point of a regular pentagon
    star = np.column_stack([np.cos(angles), np.sin(angles)])
    assert not is_convex(star) and is_convex(star[[0, 3, 1, 4, 2]])  # the pentagon itself is convex
    assert is_convex(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))  # repeated vertex
    rng = np.random.default_rng(5)
    xy = rng.uniform(-1.1, 1.1, (100_000, 2))
    gate = PolygonGate("star", (Dimension("x"), Dimension("y")), vertices=star)
    exact = np.asarray(points_in_polygon(star, xy), dtype=bool)
    assert not exact[np.hypot(xy[:, 0], xy[:, 1]) < 0.2].any()
    assert np.array_equal(polygon_mask(gate, (xy[:, 0], xy[:, 1])), exact)


def _cell_classes_reference(v: np.ndarray, ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    """cell_classes as it was written first: new grid-sized arrays for every edge, classes by np.where."""
    area2 = float(np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1]))
    if area2 < 0:
        v = v[::-1]
    eps_x, eps_y = 1e-3 * (ex[1] - ex[0]), 1e-3 * (ey[1] - ey[0])
    x_lo, x_hi = (ex[:-1] - eps_x)[:, None], (ex[1:] + eps_x)[:, None]
    y_lo, y_hi = (ey[:-1] - eps_y)[None, :], (ey[1:] + eps_y)[None, :]
    inside = np.ones((len(ex) - 1, len(ey) - 1), dtype=bool)
    outside = np.zeros_like(inside)
    for (px, py), (qx, qy) in zip(v, np.roll(v, -1, axis=0)):
        a, b = -(qy - py), qx - px
        if a == 0.0 and b == 0.0:
            continue
        c = -(a * px + b * py)
        lo = (a * x_lo if a > 0 else a * x_hi) + (b * y_lo if b > 0 else b * y_hi) + c
        hi = (a * x_hi if a > 0 else a * x_lo) + (b * y_hi if b > 0 else b * y_lo) + c
        inside &= lo > 0
        outside |= hi < 0
    return np.where(inside, 1, np.where(outside, 0, 2)).astype(np.uint8)


@pytest.mark.parametrize("seed", range(12))
def test_cell_classes_in_place_equal_the_reference(seed: int) -> None:
    """The grid classification computed in reused buffers is the original formulation's, cell for cell,
    for convex polygons of either orientation (a repeated vertex included) on grids of several sizes."""
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(30, 2)) * rng.uniform(0.1, 5.0, 2) + rng.uniform(-3, 3, 2)
    v = pts[ConvexHull(pts).vertices]
    if seed % 2:
        v = v[::-1]
    if seed % 3 == 0:
        v = np.vstack([v[:2], v[1:]])  # a repeated vertex
    lo, hi = v.min(axis=0), v.max(axis=0)
    n = (17, 64, 300)[seed % 3]
    ex = np.linspace(lo[0] - 0.1, hi[0] + 0.1, n + 1)
    ey = np.linspace(lo[1] - 0.2, hi[1] + 0.05, n // 2 + 2)
    got = cell_classes(v, ex, ey)
    assert got is not None and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _cell_classes_reference(v, ex, ey))


@pytest.mark.parametrize("width", [0.001, 0.01, 0.2, 0.9, 1.5])
def test_in_box_equals_the_four_comparisons(width: float) -> None:
    """in_box (the x range first, the y range on its events when they are few) finds the events of the
    plain four comparisons, boxes narrow and wide, values on the box's edges and NaN included."""
    from bat_analysis.gating._membership import in_box

    rng = np.random.default_rng(int(width * 1000))
    x = rng.random(50_000).astype(np.float32)
    y = rng.random(50_000).astype(np.float32)
    rx = np.array([0.3, 0.3 + width])
    ry = np.array([0.1, 0.1 + width])
    x[:4] = np.float32(rx[0]), np.float32(rx[1]), np.nan, np.float32(0.3 + width / 2)
    y[:4] = np.float32(ry[0]), np.nan, np.float32(0.2), np.float32(ry[1])
    expected = np.flatnonzero((x >= rx[0]) & (x <= rx[1]) & (y >= ry[0]) & (y <= ry[1]))
    np.testing.assert_array_equal(in_box(x, y, rx, ry), expected)
