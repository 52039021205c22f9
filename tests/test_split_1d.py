"""The 1-D marker split (``split_1d``): synthetic unimodal, bimodal and skewed data, and a real FCS file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bat_analysis.gating import estimators as est
from bat_analysis.gating.gates import Dimension, RangeGate
from bat_analysis.gating.transforms import from_spec

LOGICLE = from_spec({"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0})
MARKER = Dimension("CD4", LOGICLE)
CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"
FLOWSOM = CORPUS / "flowjo" / "flowsom"


def split(values: np.ndarray, dim: Dimension = MARKER, **over: object) -> est.Estimate:
    params = est.ESTIMATORS["split_1d"].defaults()
    params.update(over)
    return est.ESTIMATORS["split_1d"].function(est.GateData("pos", (values,), (dim,), (None,)), params)


def negatives(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unstained events: autofluorescence, spread by compensation."""
    return np.exp(np.log(300.0) + 0.5 * rng.standard_normal(n)) + rng.normal(0.0, 100.0, n)


def positives(rng: np.random.Generator, n: int, median: float = 15_000.0) -> np.ndarray:
    return np.exp(np.log(median) + 0.35 * rng.standard_normal(n))


def precision_recall(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = float((mask & truth).sum())
    return tp / max(mask.sum(), 1), tp / max(truth.sum(), 1)


@pytest.mark.parametrize("n_pos", [3000, 12_000])  # a minor (20%) and a heavy (~45%) positive population
def test_bimodal_split_is_the_valley_between_the_modes(n_pos: int) -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate([negatives(rng, 15_000), positives(rng, n_pos)])
    truth = np.arange(len(values)) >= 15_000
    e = split(values)
    assert e.ok and e.flags == [] and e.diagnostics["fallback"] is None
    assert isinstance(e.gate, RangeGate) and e.gate.maxs == (None,)
    modes = sorted(e.diagnostics["modes"][:2])
    assert modes[0] < e.diagnostics["split"] < modes[1]
    assert e.diagnostics["depth"] > 0.9
    precision, recall = precision_recall(e.mask, truth)
    assert precision >= 0.98 and recall >= 0.98
    # the other side keeps the complement; the density is there to draw
    low = split(values, side="low")
    assert np.array_equal(low.mask, ~e.mask)
    assert e.density is not None and len(e.density_edges) == 1 and len(e.density) == len(e.density_edges[0]) - 1


def test_a_dim_positive_shoulder_still_gives_a_valley() -> None:
    """Positives closer to the negatives (a heavy minor population, partly overlapping) are still split."""
    rng = np.random.default_rng(12)
    values = np.concatenate([negatives(rng, 20_000), positives(rng, 8000, median=3000.0)])
    truth = np.arange(len(values)) >= 20_000
    e = split(values)
    assert e.ok and e.diagnostics["fallback"] is None
    precision, recall = precision_recall(e.mask, truth)
    assert precision >= 0.95 and recall >= 0.95


@pytest.mark.parametrize("side", ["high", "low"])
def test_unimodal_data_fall_back_with_a_flag(side: str) -> None:
    rng = np.random.default_rng(13)
    values = negatives(rng, 20_000)
    e = split(values, side=side)
    assert e.ok and [f.code for f in e.flags] == ["SPLIT_FALLBACK"] and e.flags[0].severity == "warn"
    assert "one density mode" in e.flags[0].message
    assert e.diagnostics["fallback"] == "tail" and e.diagnostics["valley"] is None
    # the split lies in the tail on the chosen side: a few percent of the events or fewer are kept
    assert e.diagnostics["fraction_of_parent"] < 0.05
    mode = e.diagnostics["modes"][0]
    assert (e.diagnostics["split"] > mode) if side == "high" else (e.diagnostics["split"] < mode)
    # without a fallback: no gate, a clear flag
    none = split(values, side=side, fallback="none")
    assert not none.ok and none.flags[0].code == "SPLIT_FAILED" and "one density mode" in none.flags[0].message


def test_skewed_unimodal_data_have_no_spurious_valley() -> None:
    rng = np.random.default_rng(14)
    for values, dim in ((rng.gamma(1.5, 2000.0, 30_000), Dimension("lin")),
                        (np.exp(7.0 + 1.0 * rng.standard_normal(30_000)), MARKER),
                        (rng.exponential(3000.0, 30_000), MARKER)):
        e = split(values, dim)
        assert e.ok and [f.code for f in e.flags] == ["SPLIT_FALLBACK"], (dim, e.diagnostics)


def test_small_unimodal_samples_rarely_show_a_spurious_valley() -> None:
    """The bandwidth follows the number of events (Silverman's rule) and a second mode needs events."""
    spurious = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        for n in (300, 3000):
            for values, dim in ((rng.gamma(1.5, 2000.0, n), Dimension("lin")),
                                (np.exp(7.0 + rng.standard_normal(n)), MARKER),
                                (rng.exponential(3000.0, n), MARKER), (negatives(rng, n), MARKER)):
                spurious += split(values, dim).diagnostics["fallback"] != "tail"
    assert spurious <= 3  # of 160


@pytest.mark.parametrize("values", [np.empty(0), np.full(1000, 512.0), np.full(10, np.nan),
                                    np.array([np.inf, -np.inf, 1.0] * 30), np.array([1.0, 2.0, 3.0])],
                         ids=["empty", "constant", "nan", "inf", "three"])
def test_empty_or_constant_data_fail_with_a_clear_flag(values: np.ndarray) -> None:
    e = split(values)
    assert e.flags and e.flags[0].code in ("SPLIT_FAILED", "SPLIT_FALLBACK")
    if not e.ok:
        assert e.flags[0].code == "SPLIT_FAILED" and "gate pos" in e.flags[0].message
        assert e.diagnostics["failure"]
    else:
        assert len(e.mask) == len(values)


def test_templates_accept_the_split_and_check_its_parameters() -> None:
    from bat_analysis.gating.templates import method_names, method_params

    assert "split_1d" in method_names()
    assert set(method_params("split_1d")) == {"side", "bandwidth", "min_depth", "min_peak", "min_mode_events",
                                              "fallback", "tail", "min_events"}




def test_a_template_gates_a_tube_with_the_split(tmp_path: Path) -> None:
    """A user template names split_1d for a marker-positive gate (CCR3+ singlets: basophils and eosinophils)."""
    from bat_analysis.gating.templates import load_template
    from bat_analysis.gating.tube import gate_tube
    from bat_analysis.io.fcs_write import write_fcs
    from bat_analysis.records import Tube
    from bat_analysis.simulate import BASOPHIL, EOSINOPHIL, simulate_tube

    text = load_template("bat_ccr3_cd63").source_text
    at = text.index("  - name: basophils")
    gate = ("  - name: ccr3_pos\n    parent: singlets\n    dims: [CCR3]\n    method: split_1d\n"
            "    params: {side: high}\n\n")
    path = tmp_path / "ccr3_split.yaml"
    path.write_text(text[:at] + gate + text[at:], encoding="utf-8")
    sim = simulate_tube(n_events=20_000, seed=3)
    fcs = write_fcs(tmp_path / "t.fcs", sim.events, sim.pnn, sim.pns, spillover=sim.spillover)
    result = gate_tube(fcs, Tube("t.fcs", "P1", "allergen"), load_template(path))
    assert result.error is None
    record = next(g for g in result.gates if g.name == "ccr3_pos")
    assert record.method == "split_1d" and record.diagnostics["fallback"] is None
    assert record.density is not None and len(record.density_edges) == 1
    expected = int(np.isin(sim.population, [BASOPHIL, EOSINOPHIL]).sum())
    assert abs(record.count - expected) <= 0.05 * expected


# ---------------------------------------------------------------------------------------------- real data
FLOWSOM_FCS = FLOWSOM / "68983.fcs"
#: (FlowJo's parent population, the marker's channel, side, FlowJo's populations on that side of the marker)
FLOWSOM_SPLITS = [("Singlets2", "PE-A", "high", ("NK1_1+",)),  # NK1.1
                  ("ab T cells", "PE-Texas Red-A", "high", ("CD4 T cells", "DP T cells")),  # CD4
                  ("ab T cells", "Pacific Blue-A", "high", ("CD8 T cells", "DP T cells")),  # CD8
                  ("NK1_1-", "PE-Cy5-A", "high", ("B cells",))]


@pytest.mark.skipif(not FLOWSOM_FCS.exists(), reason=f"FlowSOM FCS file not found at {FLOWSOM_FCS}")
@pytest.mark.parametrize("parent,channel,side,populations", FLOWSOM_SPLITS, ids=[s[1] for s in FLOWSOM_SPLITS])
def test_split_agrees_with_flowjo_on_the_flowsom_file(parent: str, channel: str, side: str,
                                                       populations: tuple[str, ...]) -> None:
    """On the parent FlowJo gated, the split on the marker (FlowJo's own biex scale, compensated as FlowJo's
    gate asks) keeps FlowJo's marker-positive populations: precision and recall >= 0.9 (measured: >= 0.98)."""
    pytest.importorskip("flowkit", reason="reading FlowJo workspaces needs flowkit")
    from bat_analysis.gating.flowjo import read_workspace
    from bat_analysis.io.fcs import read_fcs

    sample = read_workspace(FLOWSOM / "gating.wsp")["68983.fcs"]
    fcs = read_fcs(FLOWSOM_FCS)
    masks = sample.document.evaluate(fcs.events, fcs.pnn)
    events = sample.document.events(fcs.events, fcs.pnn)
    by_name = {g.name: g for g in sample.document.gates}
    dim = next(d for d in by_name[populations[0]].dims if d.key == channel)
    raw = events.values(Dimension(dim.key, None, dim.compensation))  # compensated, untransformed
    in_parent = masks[parent]
    e = split(raw[in_parent], dim, side=side)
    assert e.ok and e.flags == [], e.diagnostics
    truth = np.logical_or.reduce([masks[p][in_parent] for p in populations])
    precision, recall = precision_recall(e.mask, truth)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall, e.diagnostics)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(np.float64, st.integers(0, 400), elements=st.floats(allow_nan=True, allow_infinity=True)),
       st.sampled_from([Dimension("lin"), MARKER]), st.sampled_from(["high", "low"]))
def test_split_never_raises_on_strange_data(values: np.ndarray, dim: Dimension, side: str) -> None:
    e = split(values, dim, side=side)
    if e.ok:
        assert e.mask is not None and e.mask.shape == values.shape and np.isfinite(e.diagnostics["split"])
    else:
        assert e.flags[0].code == "SPLIT_FAILED" and e.diagnostics["failure"]


@pytest.mark.parametrize("values", [np.r_[1.71847159e308, np.zeros(49)], np.r_[0.0, np.full(49, 1.71609292e308)]])
def test_values_whose_histogram_window_would_overflow_are_refused(values: np.ndarray) -> None:
    """Values near the float64 maximum whose span is a number but whose histogram window (5% wider on each
    side) is not: SPLIT_FAILED, not an exception."""
    e = split(values, Dimension("lin"), side="high")
    assert not e.ok and e.flags[0].code == "SPLIT_FAILED" and "numeric range" in e.diagnostics["failure"]
