"""Automated gate estimators on synthetic numpy events with known membership."""

from __future__ import annotations

import numpy as np
import pytest

from bat_analysis.gating import estimators as est
from bat_analysis.gating.gates import ArrayEvents, BooleanGate, Dimension, PolygonGate, RangeGate, evaluate
from bat_analysis.gating.transforms import from_spec

LOGICLE = from_spec({"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0})


def params(method: str, **over: object) -> dict:
    p = est.ESTIMATORS[method].defaults()
    p.update(over)
    return p


def gd(name: str, cols, dims, ranges=None) -> est.GateData:
    """The estimators' input: a gate's name, its parent's columns, dimensions and channel ranges."""
    return est.GateData(name, tuple(cols), tuple(dims), tuple(ranges or (None,) * len(cols)))


def lognormal(rng: np.random.Generator, median: float, sd: float, n: int) -> np.ndarray:
    return np.exp(np.log(median) + sd * rng.standard_normal(n))


# ---------------------------------------------------------------------------------------------- fast paths
def test_density_image_equals_histogram_of_transformed_values() -> None:
    rng = np.random.default_rng(0)
    x = lognormal(rng, 2000, 1.5, 20_000) - 300
    y = rng.uniform(0, 262144, 20_000)
    dx, dy = Dimension("x", LOGICLE), Dimension("y")
    xl, yl = (-0.05, 1.02), (0.0, 262144.0)
    counts, ex, ey = est.density_image(x, y, dx, dy, xl, yl, bins=64)
    ref, _, _ = np.histogram2d(LOGICLE.apply(x), y, bins=[ex, ey])
    # identical except for values that sit within float error of an edge
    assert np.abs(counts - ref).sum() <= 2
    assert counts.sum() == pytest.approx(ref.sum(), abs=2)


def test_apply_gate_agrees_with_the_gate_engine() -> None:
    rng = np.random.default_rng(1)
    x = lognormal(rng, 3000, 1.2, 5000)
    y = lognormal(rng, 20000, 0.8, 5000)
    dx, dy = Dimension("x", LOGICLE), Dimension("y", LOGICLE)
    rng_gate = RangeGate("r", (dx, dy), mins=(0.4, None), maxs=(0.8, 0.9))
    poly = PolygonGate("p", (dx, dy), vertices=np.array([[0.3, 0.5], [0.9, 0.6], [0.7, 0.95], [0.35, 0.9]]))
    events = ArrayEvents({"x": x, "y": y})
    ref = evaluate([rng_gate, poly], events)
    assert np.array_equal(est.apply_gate(rng_gate, [x, y]), ref["r"])
    assert np.array_equal(est.apply_gate(poly, [x, y]), ref["p"])


# ---------------------------------------------------------------------------------------------- 1. time
def steady_times(rng: np.random.Generator, n: int, duration: float = 100.0) -> np.ndarray:
    return np.sort(rng.uniform(0, duration, n))


def test_flow_rate_removes_a_burst_and_keeps_steady_flow() -> None:
    rng = np.random.default_rng(2)
    t = steady_times(rng, 30_000)
    burst = rng.uniform(40.0, 40.5, 3000)
    times = np.concatenate([t, burst])
    e = est.estimate_flow_rate(gd("acq", [times], [Dimension("Time")]), params("flow_rate"))
    assert e.ok and e.flags[0].code == "FLOW_RATE_ANOMALY"
    removed = ~e.mask
    assert removed[30_000:].mean() > 0.99  # the burst
    assert removed[:30_000].mean() < 0.02  # steady events only near the burst
    assert isinstance(e.gate, BooleanGate) and len(e.members) == 2
    assert e.diagnostics["bursts"] >= 1
    # the recorded union of time ranges reproduces the membership
    sub = {m.name: est.apply_gate(m, [times]) for m in e.members}
    assert np.array_equal(np.logical_or.reduce(list(sub.values())), e.mask)


def test_flow_rate_gap_removes_its_edges_only_and_a_steady_run_removes_nothing() -> None:
    rng = np.random.default_rng(3)
    t = steady_times(rng, 30_000)
    e = est.estimate_flow_rate(gd("acq", [t], [Dimension("Time")]), params("flow_rate"))
    assert e.ok and e.mask.all() and not e.flags and isinstance(e.gate, RangeGate)
    gap = np.where(t > 50, t + 5.0, t)  # the flow stops for 5 s
    e = est.estimate_flow_rate(gd("acq", [gap], [Dimension("Time")]), params("flow_rate"))
    assert e.ok and e.mask.mean() > 0.98 and e.diagnostics["gaps"] >= 1


def test_flow_rate_with_too_few_events_or_constant_time_fails_with_a_flag() -> None:
    e = est.estimate_flow_rate(gd("acq", [np.arange(500.0)], [Dimension("Time")]), params("flow_rate"))
    assert not e.ok and e.flags[0].code == "ACQ_QC_SKIPPED" and "time bins" in e.diagnostics["failure"]
    e = est.estimate_flow_rate(gd("acq", [np.zeros(5000)], [Dimension("Time")]), params("flow_rate"))
    assert not e.ok and "constant" in e.diagnostics["failure"]


# ---------------------------------------------------------------------------------------------- 2. margin
def test_margin_removes_saturated_events() -> None:
    rng = np.random.default_rng(4)
    fsc = rng.uniform(0, 200_000, 10_000)
    ssc = rng.uniform(0, 200_000, 10_000)
    fsc[:100] = 262143.0
    ssc[100:150] = 262144.0
    dims = (Dimension("FSC-A"), Dimension("SSC-A"))
    e = est.estimate_margin(gd("margin", [fsc, ssc], dims, [262144.0, 262144.0]), params("margin"))
    assert e.ok and (~e.mask).sum() == 150 and not e.mask[:150].any()
    assert e.diagnostics["saturated_FSC-A"] == 100
    assert np.array_equal(est.apply_gate(e.gate, [fsc, ssc]), e.mask)
    e = est.estimate_margin(gd("margin", [fsc, ssc], dims, [None, 262144.0]), params("margin"))
    assert not e.ok and e.flags[0].code == "MARGIN_SKIPPED"


# ---------------------------------------------------------------------------------------------- 3. cells
def scatter_sample(rng: np.random.Generator, n_debris: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pops = [(12000, 0.5, 5000, 0.7, n_debris), (55000, 0.09, 11000, 0.2, 8000), (90000, 0.1, 38000, 0.2, 1500),
            (105000, 0.09, 115000, 0.17, 15000), (72000, 0.1, 17000, 0.22, 150)]
    f, s, lab = [], [], []
    for k, (fm, fs, sm, ss, n) in enumerate(pops):
        f.append(lognormal(rng, fm, fs, n))
        s.append(lognormal(rng, sm, ss, n))
        lab.append(np.full(n, k))
    return np.concatenate(f), np.concatenate(s), np.concatenate(lab)


def test_cells_exclude_debris_and_keep_every_leukocyte() -> None:
    rng = np.random.default_rng(5)
    fsc, ssc, lab = scatter_sample(rng)
    dims = (Dimension("FSC-A"), Dimension("SSC-A", LOGICLE))
    e = est.estimate_cells(gd("cells", [fsc, ssc], dims, (262144.0, 262144.0)), params("debris_density"))
    assert e.ok and e.diagnostics["debris_valley_x"] is not None
    assert e.mask[lab == 0].mean() < 0.35  # most debris out
    assert e.mask[lab == 4].mean() == 1.0  # every basophil in
    assert e.mask[lab > 0].mean() > 0.995
    assert e.density.shape == (128, 128) and e.density.dtype == np.uint16


def test_cells_without_debris_keep_the_lowest_population() -> None:
    rng = np.random.default_rng(6)
    fsc, ssc, lab = scatter_sample(rng, n_debris=0)
    dims = (Dimension("FSC-A"), Dimension("SSC-A", LOGICLE))
    e = est.estimate_cells(gd("cells", [fsc, ssc], dims, (262144.0, 262144.0)), params("debris_density"))
    assert e.ok and e.diagnostics["debris_valley_x"] is None and e.mask.mean() > 0.995


def test_cells_with_no_events_fail_with_a_flag() -> None:
    dims = (Dimension("FSC-A"), Dimension("SSC-A"))
    e = est.estimate_cells(gd("cells", [np.empty(0), np.empty(0)], dims, (262144.0, 262144.0)),
                           params("debris_density"))
    assert not e.ok and e.flags[0].code == "CELLS_GATE_FAILED"


# ---------------------------------------------------------------------------------------------- 4. singlets
def test_singlets_remove_doublets() -> None:
    rng = np.random.default_rng(7)
    a = lognormal(rng, 70000, 0.3, 20_000)
    h = a * (0.82 + 0.02 * rng.standard_normal(a.size))
    a2 = a[:1000] + a[1000:2000]
    h2 = np.maximum(h[:1000], h[1000:2000]) * rng.uniform(1.0, 1.25, 1000)
    area, height = np.concatenate([a, a2]), np.concatenate([h, h2])
    dims = (Dimension("FSC-A"), Dimension("FSC-H"))
    e = est.estimate_singlets(gd("singlets", [area, height], dims, (262144.0, 262144.0)), params("singlet_band"))
    assert e.ok
    assert e.mask[:20_000].mean() > 0.999
    assert e.mask[20_000:].mean() < 0.02
    assert e.diagnostics["ratio_mode"] == pytest.approx(0.82, abs=0.01)


def test_singlets_fail_cleanly_without_signal() -> None:
    dims = (Dimension("FSC-A"), Dimension("FSC-H"))
    e = est.estimate_singlets(gd("singlets", [np.zeros(1000), np.zeros(1000)], dims, (None, None)),
                              params("singlet_band"))
    assert not e.ok and e.flags[0].code == "SINGLETS_GATE_FAILED"


# ---------------------------------------------------------------------------------------------- 5. cluster
def marker_sample(rng: np.random.Generator, n_baso: int = 200, eos_ssc: float = 165000.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # (marker median, SSC median, n): lymphocytes, neutrophils, monocytes, eosinophils, basophils
    pops = [(60, 11000, 8000), (120, 115000, 15000), (150, 38000, 1500), (20000, eos_ssc, 700),
            (12000, 17000, n_baso)]
    x, y, lab = [], [], []
    for k, (xm, ym, n) in enumerate(pops):
        x.append(lognormal(rng, xm, 0.35, n) + 40 * rng.standard_normal(n))
        y.append(lognormal(rng, ym, 0.2 if k != 3 else 0.13, n))
        lab.append(np.full(n, k))
    return np.concatenate(x), np.concatenate(y), np.concatenate(lab)


@pytest.mark.parametrize("n_baso", [150, 600])
def test_cluster_finds_the_ssc_low_marker_high_population(n_baso: int) -> None:
    rng = np.random.default_rng(8 + n_baso)
    x, y, lab = marker_sample(rng, n_baso)
    dims = (Dimension("CCR3", LOGICLE), Dimension("SSC-A", LOGICLE))
    e = est.estimate_cluster(gd("basophils", [x, y], dims), params("cluster_2d"))
    assert e.ok
    truth = lab == 4
    precision = (e.mask & truth).sum() / e.mask.sum()
    recall = (e.mask & truth).sum() / truth.sum()
    assert precision > 0.97 and recall > 0.97
    assert e.mask[lab == 3].sum() == 0  # eosinophils (CCR3+, SSC-high) stay out
    assert e.diagnostics["n_populations"] >= 4
    # the estimator's mask (polygon_mask's fast path) is the gate engine's exact membership of the stored gate
    assert isinstance(e.gate, PolygonGate)
    exact = evaluate([e.gate], ArrayEvents({dims[0].key: x, dims[1].key: y}))[e.gate.name]
    assert np.array_equal(e.mask, exact)


def test_cluster_on_the_low_side() -> None:
    rng = np.random.default_rng(9)
    x, y, lab = marker_sample(rng, 400)
    # mirrored on the display scale: the target is now low on x (e.g. HLA-DR negative), the others high
    xm = 1.0 - LOGICLE.apply(x)
    ys = LOGICLE.apply(y)
    dims = (Dimension("HLA-DR"), Dimension("SSC-A"))
    e = est.estimate_cluster(gd("basophils", [xm, ys], dims), params("cluster_2d", x_side="low"))
    assert e.ok
    truth = lab == 4
    assert (e.mask & truth).sum() / truth.sum() > 0.95 and (e.mask & truth).sum() / e.mask.sum() > 0.95


def test_cluster_with_one_population_fails_with_a_flag() -> None:
    rng = np.random.default_rng(10)
    x = lognormal(rng, 60, 0.35, 10_000)
    y = lognormal(rng, 11000, 0.2, 10_000)
    dims = (Dimension("CCR3", LOGICLE), Dimension("SSC-A", LOGICLE))
    e = est.estimate_cluster(gd("basophils", [x, y], dims), params("cluster_2d"))
    assert not e.ok and e.flags[0].code == "CLUSTER_GATE_FAILED"
    assert e.density is not None  # still drawable for review
    e = est.estimate_cluster(gd("basophils", [x[:5], y[:5]], dims), params("cluster_2d"))
    assert not e.ok and "only 5 events" in e.diagnostics["failure"]


def test_cluster_joins_the_activated_mode_of_the_same_population() -> None:
    rng = np.random.default_rng(11)
    x, y, lab = marker_sample(rng, 150)
    # basophils' second mode: activated cells 2.4x brighter in CD203c, same SSC
    xa = lognormal(rng, 12000 * 2.4, 0.35, 150)
    ya = lognormal(rng, 17000, 0.2, 150)
    x, y, lab = np.concatenate([x, xa]), np.concatenate([y, ya]), np.concatenate([lab, np.full(150, 4)])
    dims = (Dimension("CD203c", LOGICLE), Dimension("SSC-A", LOGICLE))
    e = est.estimate_cluster(gd("basophils", [x, y], dims), params("cluster_2d"))
    truth = lab == 4
    assert e.ok and (e.mask & truth).sum() / truth.sum() > 0.97


def test_merge_basins_merges_shoulders_only() -> None:
    smooth = np.zeros((20, 5))
    smooth[:, 2] = np.concatenate([np.linspace(0, 10, 5), np.linspace(10, 8, 3), np.linspace(8, 9, 2),
                                   np.linspace(9, 0.1, 5), np.linspace(0.1, 4, 5)])
    basins = np.zeros(smooth.shape, dtype=int)
    basins[:8, 2], basins[8:15, 2], basins[15:, 2] = 1, 2, 3
    root = est.merge_basins(smooth, basins, 3, 0.5)
    assert root[1] == root[2] != root[3]


# ---------------------------------------------------------------------------------------------- robustness
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def columns(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["uniform", "constant", "lognormal", "negative", "two_points", "huge"]))
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        x, y = rng.uniform(-1000, 262144, n), rng.uniform(-1000, 262144, n)
    elif kind == "constant":
        x, y = np.full(n, 5.0), np.full(n, 5.0)
    elif kind == "lognormal":
        x, y = lognormal(rng, 1000, 2.0, n), lognormal(rng, 1000, 2.0, n)
    elif kind == "negative":
        x, y = -lognormal(rng, 1000, 1.0, n), rng.normal(0, 100, n)
    elif kind == "two_points":
        x = rng.choice([0.0, 262143.0], n)
        y = rng.choice([1.0, 2.0], n)
    else:
        x, y = rng.uniform(0, 1e9, n), rng.uniform(-1e9, 1e9, n)
    return x.astype(np.float32), y.astype(np.float32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns())
def test_estimators_never_raise_on_strange_data(cols: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = cols
    lin = (Dimension("FSC-A"), Dimension("SSC-A"))
    log = (Dimension("CCR3", LOGICLE), Dimension("SSC-A", LOGICLE))
    outcomes = [
        est.estimate_flow_rate(gd("acq", [x], [Dimension("Time")]), params("flow_rate")),
        est.estimate_margin(gd("margin", [x, y], lin, [262144.0, 262144.0]), params("margin")),
        est.estimate_cells(gd("cells", [x, y], lin, (262144.0, 262144.0)), params("debris_density")),
        est.estimate_singlets(gd("singlets", [x, y], lin, (262144.0, 262144.0)), params("singlet_band")),
        est.estimate_cluster(gd("basophils", [x, y], log), params("cluster_2d")),
    ]
    for e in outcomes:
        if e.ok:
            assert e.mask is not None and e.mask.shape == x.shape
        else:
            assert e.flags and e.diagnostics["failure"]


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
    sx, sy = est.to_scale(dims[0], x), est.to_scale(dims[1], y)
    lo, hi = np.quantile(sx, 0.1), np.quantile(sx, 0.9)
    ylo, yhi = np.quantile(sy, 0.1), np.quantile(sy, 0.9)
    verts = np.array([[lo, ylo], [hi, ylo + 0.1 * (yhi - ylo)], [hi, yhi], [0.5 * (lo + hi), yhi + 0.05],
                      [lo, 0.5 * (ylo + yhi)]])
    gate = PolygonGate("p", dims, vertices=verts)
    assert est._is_convex(verts)
    exact = np.asarray(points_in_polygon(verts, np.column_stack([sx, sy])), dtype=bool)
    assert np.array_equal(est.polygon_mask(gate, (x, y)), exact)
    # events exactly on grid-cell edges and vertices
    gx = np.linspace(lo, hi, 65)
    gy = np.linspace(ylo, yhi, 65)
    px, py = np.meshgrid(gx, gy)
    raw_x = est.from_scale(dims[0], px.ravel())
    raw_y = est.from_scale(dims[1], py.ravel())
    reps = np.repeat(np.column_stack([raw_x, raw_y]), 25, axis=0)  # enough events for the grid path
    ex_ = np.asarray(points_in_polygon(verts, np.column_stack([est.to_scale(dims[0], reps[:, 0]),
                                                                est.to_scale(dims[1], reps[:, 1])])), dtype=bool)
    assert np.array_equal(est.polygon_mask(gate, (reps[:, 0], reps[:, 1])), ex_)


def test_bin_index_lookup_table_equals_binary_search() -> None:
    rng = np.random.default_rng(13)
    values = np.concatenate([rng.lognormal(8, 2.5, 400_000) - 500, rng.normal(0, 50, 100_000)]).astype(np.float32)
    dim = Dimension("x", LOGICLE)
    edges = np.linspace(-0.05, 1.05, 129)
    raw = est.from_scale(dim, edges)
    values[:129] = raw.astype(np.float32)  # values at the edges themselves
    ref = np.searchsorted(raw, values, side="right") - 1
    assert len(values) >= est._LUT_CELLS
    assert np.array_equal(est._bin_index(values, dim, edges), ref)


def test_bin_index_small_lookup_table_equals_binary_search() -> None:
    rng = np.random.default_rng(14)
    values = (rng.lognormal(7, 2.0, 30_000) - 200).astype(np.float32)
    dim = Dimension("x", LOGICLE)
    edges = np.linspace(0.0, 1.0, 129)
    raw = est.from_scale(dim, edges)
    values[:129] = raw.astype(np.float32)
    assert est._LUT_CELLS // 4 <= len(values) < est._LUT_CELLS
    assert np.array_equal(est._bin_index(values, dim, edges), np.searchsorted(raw, values, side="right") - 1)


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
        nx, ny = (est._grid_size(n) if d.transform is None else 64 for d in dims)
        lo, hi = verts.min(axis=0), verts.max(axis=0)
        pad = 1e-4 * (hi - lo)
        gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], nx + 1)
        gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], ny + 1)
        on_edges = np.column_stack([est.from_scale(dims[0], rng.choice(gx, 500)),
                                    est.from_scale(dims[1], rng.choice(gy, 500))]).astype(np.float32)
        at_vertices = np.column_stack([est.from_scale(dims[0], verts[:, 0]),
                                       est.from_scale(dims[1], verts[:, 1])]).astype(np.float32)
        xs = np.concatenate([x, on_edges[:, 0], at_vertices[:, 0]])
        ys = np.concatenate([y, on_edges[:, 1], at_vertices[:, 1]])
        exact = np.asarray(points_in_polygon(verts, np.column_stack([est.to_scale(dims[0], xs),
                                                                      est.to_scale(dims[1], ys)])), dtype=bool)
        assert 0 < exact.sum() < len(xs)
        assert est._cell_classes(verts, gx, gy) is not None
        assert np.array_equal(est.polygon_mask(gate, (xs, ys)), exact)


def test_cell_classes_of_a_square() -> None:
    """Cells wholly inside, wholly outside and crossing the boundary of a square, either orientation."""
    edges = np.linspace(0.0, 4.0, 5)
    square = np.array([[1.5, 1.5], [2.5, 1.5], [2.5, 2.5], [1.5, 2.5]])
    for verts in (square, square[::-1]):
        classes = est._cell_classes(verts, edges, edges)
        assert classes[0, 0] == 0 and classes[3, 3] == 0 and classes[0, 3] == 0
        assert classes[1, 1] == 2 and classes[2, 2] == 2 and classes[1, 2] == 2
    shrunk = np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 3.5], [0.5, 3.5]])
    classes = est._cell_classes(shrunk, edges, edges)
    assert classes[1, 1] == 1 and classes[2, 2] == 1 and classes[0, 0] == 2
    assert est._cell_classes(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), edges, edges) is None


@pytest.mark.parametrize("transformed", [False, True])
def test_shifted_float32_bin_index_equals_the_plain_bins(transformed: bool) -> None:
    """Grid lookups bin float32 values in float32 with the shift folded in: same bins up to 1e-3 of a bin."""
    rng = np.random.default_rng(15)
    dim = Dimension("x", LOGICLE if transformed else None)
    values = np.concatenate([rng.lognormal(9, 1.5, 200_000) - 300, rng.uniform(-500, 3e5, 100_000)])
    edges = np.linspace(0.2, 0.9, 65) if transformed else np.linspace(20000.0, 270000.0, 513)
    raw = est.from_scale(dim, edges)
    values = np.concatenate([values, raw, np.nextafter(raw, -np.inf), np.nextafter(raw, np.inf)]).astype(np.float32)
    plain = est._bin_index(values, dim, edges)
    shifted = est._bin_index(values, dim, edges, shift=1)
    assert shifted.dtype == np.int32 and shifted.min() >= 0 and shifted.max() <= len(edges)
    differ = np.flatnonzero(shifted != plain + 1)
    if transformed:  # the lookup table (with its guard cells) resolves every uncertain cell exactly
        assert np.array_equal(shifted, np.searchsorted(raw, values, side="right"))
    else:  # only values within 1e-3 of a bin from an edge may land in the neighbouring bin
        pos = (values[differ].astype(np.float64) - edges[0]) / (edges[1] - edges[0])
        assert np.all(np.abs(pos - np.round(pos)) < 1e-3)
        assert np.all(np.abs(shifted[differ] - (plain[differ] + 1)) == 1)


@pytest.mark.parametrize("shift", [0, 1])
def test_bin_index_of_values_where_bins_are_finer_than_the_table(shift: int) -> None:
    """Values crowded where the scale's bins are narrower than the lookup table's cells (near zero on
    logicle) are binned by binary search throughout: same bins."""
    rng = np.random.default_rng(16)
    dim = Dimension("x", LOGICLE)
    values = rng.normal(0, 30, 70_000).astype(np.float32)
    edges = np.linspace(-0.05, 1.05, 513)
    raw = est.from_scale(dim, edges)
    got = est._bin_index(values, dim, edges, shift=shift)
    assert np.array_equal(got, np.searchsorted(raw, values, side="right") - 1 + shift)


# ---------------------------------------------------------------------------------------------- registry
def _toy_threshold(data: est.GateData, params) -> est.Estimate:
    """A toy estimator: events at or above ``at`` (on the dimension's scale)."""
    gate = RangeGate(data.name, data.dims, mins=(params["at"],), maxs=(None,))
    mask = est.apply_gate(gate, data.cols)
    return est.Estimate(gate, mask, {"toy_at": params["at"], "n_seen": len(data.cols[0])})


def test_one_registry_entry_makes_an_estimator_usable_in_templates(tmp_path) -> None:
    """Adding an estimator is one function and one entry: the template validates it (method, dimensions,
    typed parameters with defaults), gating dispatches to it and the documentation lists it."""
    import yaml

    from bat_analysis.errors import TemplateError
    from bat_analysis.gating.templates import load_template, parse_template
    from bat_analysis.gating.tube import gate_tube, template_dimension
    from bat_analysis.io.fcs_write import write_fcs
    from bat_analysis.records import Tube
    from bat_analysis.simulate import simulate_tube

    doc = yaml.safe_load(load_template("bat_ccr3_cd63").source_text)
    doc["gates"].append({"name": "toy", "parent": "basophils", "dims": ["CD63"], "method": "toy_threshold",
                         "params": {"at": 0.4}})
    text = yaml.safe_dump(doc, sort_keys=False)
    bad = yaml.safe_dump({**doc, "gates": doc["gates"][:-1] + [
        {**doc["gates"][-1], "dims": ["CD63", "SSC-A"], "params": {"at": "high", "colour": 1}}]}, sort_keys=False)
    with pytest.raises(TemplateError, match=r"gates\[5\] \(toy\)\.method: unknown method 'toy_threshold'"):
        parse_template(text)
    est.register_estimator(est.EstimatorSpec("toy_threshold", _toy_threshold, 1, {
        "at": est.Param("number", 0.5, 0.0, 1.0, doc="threshold on the dimension's scale"),
        "unused": est.Param("integer", 7, 1, doc="a parameter left at its default"),
    }, "a toy threshold"))
    try:
        with pytest.raises(ValueError, match="already registered"):
            est.register_estimator(est.EstimatorSpec("toy_threshold", _toy_threshold, 1, {}, "again"))
        template = parse_template(text)
        toy = template.gate("toy")
        assert toy.method == "toy_threshold" and toy.params == {"at": 0.4, "unused": 7}
        with pytest.raises(TemplateError) as err:
            parse_template(bad)
        assert {p.split(":")[0] for p in err.value.problems} == {
            "gates[5] (toy).dims", "gates[5] (toy).params.at", "gates[5] (toy).params.colour"}, err.value.problems
        assert "toy_threshold (1 dimension(s)): a toy threshold" in est.describe_estimators()
        assert "at: number, default 0.5, 0..1: threshold on the dimension's scale" in est.describe_estimators()

        sim = simulate_tube(n_events=20_000, seed=4, pct_activated=40.0)
        fcs = write_fcs(tmp_path / "t.fcs", sim.events, sim.pnn, sim.pns, spillover=sim.spillover)
        result = gate_tube(fcs, Tube("t.fcs", "P01", "negative_control"), template)
        rec = next(g for g in result.gates if g.name == "toy")
        basophils = next(g for g in result.gates if g.name == "basophils")
        cd63 = result.basophil_values["CD63"]
        raw_at = est.from_scale(template_dimension(template, "CD63"), np.array([0.4]))[0]
        assert rec.method == "toy_threshold" and rec.parent == "basophils"
        assert rec.diagnostics["toy_at"] == 0.4 and rec.diagnostics["n_seen"] == basophils.count
        assert rec.count == int(np.sum(cd63 >= raw_at)) and 0 < rec.count < basophils.count
        assert rec.geometry["type"] == "range" and rec.geometry["mins"] == [0.4]
    finally:
        est.unregister_estimator("toy_threshold")
    assert "toy_threshold" not in est.ESTIMATORS and "toy_threshold" not in est.describe_estimators()
    with pytest.raises(TemplateError, match="unknown method 'toy_threshold'"):
        parse_template(text)


def test_registry_refuses_bad_entries() -> None:
    with pytest.raises(ValueError, match="already registered"):
        est.register_estimator(est.EstimatorSpec("fixed", _toy_threshold, 1, {}, "fixed is the template's own"))
    with pytest.raises(ValueError, match="removes"):
        est.register_estimator(est.EstimatorSpec("toy2", _toy_threshold, 1, {}, "x", removes="debris"))
    with pytest.raises(ValueError, match="kind"):
        est.register_estimator(est.EstimatorSpec("toy3", _toy_threshold, 1, {"a": est.Param("text", "")}, "x"))
    assert not {"toy2", "toy3"} & set(est.ESTIMATORS)


def test_event_fractions_come_from_the_registry() -> None:
    """The fractions a tube reports (acquisition QC, margin, doublets) are named by the estimators."""
    assert {s.name: s.removes for s in est.ESTIMATORS.values() if s.removes} == {
        "flow_rate": "acquisition_qc", "margin": "margin", "singlet_band": "doublets"}
    assert set(est.EVENT_FRACTIONS) == {"acquisition_qc", "margin", "doublets"}
