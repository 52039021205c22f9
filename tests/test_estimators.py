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


def test_histogram_1d_counts_every_event_in_the_bin_of_its_scaled_value() -> None:
    rng = np.random.default_rng(1)
    for dim, x in ((Dimension("t"), rng.uniform(3.0, 90.0, 5000)),
                   (Dimension("x", LOGICLE), lognormal(rng, 2000, 1.5, 5000) - 300)):
        counts, edges = est.histogram_1d(x, dim, bins=50)
        assert len(counts) == 50 and len(edges) == 51 and counts.sum() == len(x)  # the largest value too
        scaled = x if dim.transform is None else LOGICLE.apply(x)
        assert edges[0] == pytest.approx(scaled.min()) and edges[-1] >= scaled.max()
        ref = np.bincount(np.clip(np.searchsorted(edges, scaled, side="right") - 1, 0, 49), minlength=50)
        assert np.abs(counts - ref).sum() <= 2  # the same except within float error of an edge
    assert est.histogram_1d(np.array([]), Dimension("t")) is None
    same, edges = est.histogram_1d(np.full(10, 7.0), Dimension("t"), bins=4)
    assert same.sum() == 10 and edges[0] < 7.0 < edges[-1]


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


CCR3_SSC = (Dimension("CCR3", LOGICLE), Dimension("SSC-A", LOGICLE))


def ccr3_cluster(seed: int, n_baso: int, **over: object) -> tuple[est.Estimate, np.ndarray, np.ndarray, np.ndarray]:
    """The basophil cluster estimated on :func:`marker_sample`'s CCR3/SSC-A events: (estimate, x, y, labels)."""
    x, y, lab = marker_sample(np.random.default_rng(seed), n_baso)
    return est.estimate_cluster(gd("basophils", [x, y], CCR3_SSC), params("cluster_2d", **over)), x, y, lab


@pytest.mark.parametrize("n_baso", [150, 600])
def test_cluster_finds_the_ssc_low_marker_high_population(n_baso: int) -> None:
    e, x, y, lab = ccr3_cluster(8 + n_baso, n_baso)
    dims = CCR3_SSC
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


@pytest.mark.parametrize("n_baso", [0, 10])
def test_cluster_without_its_population_refuses_the_one_left_on_the_other_side(n_baso: int) -> None:
    # too few basophils to form a population: the only CCR3+ population left is the eosinophils (SSC-high);
    # gating them as basophils would report their CD63 with nothing to say so
    e, x, y, lab = ccr3_cluster(12 + n_baso, n_baso)
    assert not e.ok and e.flags[0].code == "CLUSTER_GATE_FAILED" and e.density is not None
    assert e.diagnostics["y_position"] > 0.9
    message = e.flags[0].message
    assert "no basophils found" in message and "high-SSC-A populations" in message and "at least 30 events" in message
    # the check can be switched off in a template (y_side_within: 1): the old choice, the eosinophils
    e, *_ = ccr3_cluster(12 + n_baso, n_baso, y_side_within=1.0)
    assert e.ok and e.mask[lab == 3].sum() > 0.9 * (lab == 3).sum()


def test_side_position_among_the_population_peaks() -> None:
    ys = np.array([0.2, 0.5, 1.0])
    assert est._side_position(0.2, ys, "low") == 0.0 and est._side_position(1.0, ys, "low") == 1.0
    assert est._side_position(0.6, ys, "low") == pytest.approx(0.5)
    assert est._side_position(1.0, ys, "high") == 0.0 and est._side_position(0.2, ys, "high") == 1.0
    assert est._side_position(0.7, np.array([0.7]), "low") == 0.0  # alone: nothing to compare with


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


def test_fraction_is_the_mask_mean_exactly() -> None:
    """``fraction`` (a count and one division) gives ``mask.mean()`` to the last bit."""
    rng = np.random.default_rng(21)
    for n in (1, 7, 50_000, 1_234_567):
        for p in (0.0, 0.001, 0.37, 0.999, 1.0):
            mask = rng.random(n) < p
            assert est.fraction(mask) == float(mask.mean())


def test_density_image_from_values_already_on_the_scale_is_the_same() -> None:
    rng = np.random.default_rng(23)
    dx, dy = Dimension("CCR3", LOGICLE), Dimension("SSC-A", LOGICLE)
    x = np.concatenate([rng.normal(0, 40, 40_000), lognormal(rng, 5000, 0.4, 3000)]).astype(np.float32)
    y = lognormal(rng, 20000, 0.5, len(x)).astype(np.float32)
    xlim, ylim = est.scale_limits(dx, x), est.scale_limits(dy, y)
    plain = est.density_image(x, y, dx, dy, xlim, ylim)
    guided = est.density_image(x, y, dx, dy, xlim, ylim, x_scaled=est.to_scale(dx, x))
    assert all(np.array_equal(a, b) for a, b in zip(plain, guided))


@pytest.mark.parametrize("sort_first", [False, True])
def test_order_statistics_of_sorted_values_are_the_same(sort_first: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantiles and medians taken of the sorted values (where sorting is the faster way) and the values
    strictly below / above a pivot are numpy's own of the unsorted values, to the last bit; ties, repeated
    values, float32 and float64, a NaN left out of the slices."""
    monkeypatch.setattr(est, "_sorting_is_faster", lambda: sort_first)
    rng = np.random.default_rng(24)
    for dtype in (np.float32, np.float64):
        for v in (rng.lognormal(5, 2, 50_000) - 100, np.round(rng.normal(0, 3, 20_001)), rng.random(1000)):
            v = v.astype(dtype)
            ordered, is_sorted = est.for_order_statistics(v)
            assert is_sorted == sort_first
            for q in (0.0001, 0.0005, [0.001, 0.999], [0.01, 0.99], [0.25, 0.75]):
                assert np.array_equal(np.quantile(ordered, q), np.quantile(v, q))
            pivot = float(np.quantile(v, 0.4))
            below, above = est.strictly_below(ordered, pivot, is_sorted), est.strictly_above(ordered, pivot, is_sorted)
            assert np.median(pivot - below) == np.median(pivot - v[v < pivot])
            assert np.median(above - pivot) == np.median(v[v > pivot] - pivot)
            assert sorted(below.tolist()) == sorted(v[v < pivot].tolist())
            assert sorted(above.tolist()) == sorted(v[v > pivot].tolist())
    with_nan = np.sort(np.concatenate([rng.random(2000), [np.nan, np.nan]]))
    assert np.array_equal(est.strictly_above(with_nan, 0.5, True), with_nan[with_nan > 0.5])
    assert np.array_equal(est.strictly_below(with_nan, 0.5, True), with_nan[with_nan < 0.5])


def test_split_point_and_singlets_do_not_depend_on_sorting_first(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(25)
    v = np.concatenate([rng.normal(0.2, 0.03, 40_000), rng.normal(0.7, 0.05, 2000)])
    area = lognormal(rng, 80_000, 0.3, 30_000)
    height = area * rng.normal(0.85, 0.03, len(area))
    dims = (Dimension("FSC-A", None), Dimension("FSC-H", None))
    results = []
    for sort_first in (False, True):
        monkeypatch.setattr(est, "_sorting_is_faster", lambda s=sort_first: s)
        single = est.estimate_singlets(gd("singlets", [area.astype(np.float32), height.astype(np.float32)], dims,
                                          [262144.0, 262144.0]), params("singlet_band"))
        results.append((est._split_point(v, 2.5), single.diagnostics, single.mask))
    assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
    assert np.array_equal(results[0][2], results[1][2])


def test_histogram_of_sorted_values_is_numpys() -> None:
    """Counting equal bins by placing the edges among sorted values gives np.histogram's counts and edges:
    values on every edge, ties, out-of-range values, float32 and float64, many bin counts."""
    rng = np.random.default_rng(26)
    for trial in range(400):
        n = int(rng.integers(1, 3000))
        v = [rng.normal(0, 1, n), np.round(rng.normal(0, 5, n)) / 4, rng.lognormal(0, 2, n)][trial % 3]
        v = v.astype(np.float64 if trial % 2 else np.float32)
        lo, hi = (float(np.quantile(v, 0.01)), float(np.quantile(v, 0.99))) if trial % 5 else (float(v.min()),
                                                                                              float(v.max()))
        hi = hi if hi > lo else lo + 1
        bins = int(rng.choice([7, 64, 256, 1000]))
        edges = np.histogram_bin_edges(v[:0], bins=bins, range=(lo, hi))
        v = np.concatenate([v, edges[rng.integers(0, len(edges), 20)].astype(v.dtype)])
        expected = np.histogram(v, bins=bins, range=(lo, hi))
        got = est.histogram(np.sort(v), True, bins, (lo, hi))
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_time_bin_counts_of_events_in_acquisition_order_are_bincounts() -> None:
    """Counting non-decreasing time bins by placing the bin starts among them gives np.bincount's counts;
    events out of order are counted by np.bincount itself."""
    rng = np.random.default_rng(27)
    for n_bins in (1, 20, 2000):
        ordered = np.sort(rng.integers(0, n_bins, 100_000)).astype(np.int32)
        ordered[-50:] = n_bins - 1  # an empty bin or two before a crowded last one
        shuffled = rng.permutation(ordered)
        for which in (ordered, shuffled, ordered[:1], ordered[:0]):
            got = est._bin_counts(which, n_bins)
            assert np.array_equal(got, np.bincount(which, minlength=n_bins)) and len(got) == n_bins
    gappy = np.repeat(np.array([0, 3, 3, 9], dtype=np.int32), 1000)
    assert np.array_equal(est._bin_counts(gappy, 12), np.bincount(gappy, minlength=12))


def _density_by_selection(ix: np.ndarray, iy: np.ndarray, bins: int, weights) -> np.ndarray:
    """The density image as it was counted before: the events inside the window selected, then counted."""
    ok = (ix >= 0) & (ix < bins) & (iy >= 0) & (iy < bins)
    w = None if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), ix.shape)[ok]
    counts = np.bincount(ix[ok] * bins + iy[ok], weights=w, minlength=bins * bins).reshape(bins, bins)
    return counts if w is None else np.rint(counts).astype(np.int64)


@pytest.mark.parametrize("weights", [None, 3, 40, "per_event", 2.5])
def test_density_counted_with_a_border_equals_counting_the_selected_events(weights) -> None:
    """_binned_counts (events outside the window counted on a border, cropped; a stride multiplied) gives
    the counts of selecting the events inside the window first, weighted sums included."""
    from bat_analysis.gating.estimators import _binned_counts

    rng = np.random.default_rng(7)
    bins = 64
    ix = rng.integers(-1, bins + 1, 30_000).astype(np.int32)
    iy = rng.integers(-1, bins + 1, 30_000).astype(np.int32)
    if weights == "per_event":
        weights = np.where(rng.random(30_000) < 0.1, 1.0, 37.0)
    got = _binned_counts(ix, iy, bins, weights)
    expected = _density_by_selection(ix, iy, bins, weights)
    assert got.dtype == np.int64 and got.shape == (bins, bins)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", range(40))
def test_fill_holes_is_scipys(seed: int) -> None:
    """fill_holes (background components labelled once) fills what scipy's binary_fill_holes fills: smooth
    blobs with holes, noise, regions touching the border, an empty and a full image, thin shapes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 90)), int(rng.integers(1, 90))) if seed % 4 == 3 else (128, 128)
    kind = seed % 5
    if kind == 0:
        region = ndimage.gaussian_filter(rng.random(shape), 1 + seed % 4) > 0.5
    elif kind == 1:
        region = rng.random(shape) < 0.6
    elif kind == 2:
        region = np.zeros(shape, dtype=bool) if seed % 2 else np.ones(shape, dtype=bool)
    elif kind == 3:
        region = np.zeros(shape, dtype=bool)
        region[::7, :] = True
        region[:, ::5] = True
    else:
        region = ndimage.gaussian_filter(rng.random(shape), 3) > 0.48
        region[0, :] = True
    np.testing.assert_array_equal(est.fill_holes(region), ndimage.binary_fill_holes(region))
