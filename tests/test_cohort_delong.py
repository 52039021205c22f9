"""DeLong's AUC intervals and paired test: pROC's published figures on its aSAH data set, and the original
O(m·n) definition of DeLong et al. (1988) computed here independently of the fast algorithm."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from bat_analysis.cohort._analyses import roc, roc_tests
from bat_analysis.cohort._delong import delong_auc, delong_paired
from bat_analysis.errors import AnalysisError

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "cohort_reference"
needs_reference = pytest.mark.skipif(not (REFERENCE / "aSAH.csv").is_file(),
                                     reason=f"pROC reference data not found at {REFERENCE}")

# pROC's figures, as printed in ../shared/cohort_reference/README.md
AUC_REFERENCE = {"s100b": (0.7314, 0.6301, 0.8326), "ndka": (0.6120, 0.5012, 0.7227),
                 "wfns": (0.8237, 0.7485, 0.8988)}
PAIRED_REFERENCE = {
    ("wfns", "s100b"): (2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka"): (2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b"): (-1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
}


def _decimals(printed: float) -> int:
    text = repr(printed)
    return len(text.split(".")[1]) if "." in text else 0


def _assert_printed(value: float, printed: float) -> None:
    """``value`` rounds to ``printed`` at the precision printed (for the long figures: within 1e-12)."""
    d = _decimals(printed)
    if d <= 6:
        assert round(value, d) == pytest.approx(printed, abs=10 ** -(d + 3)), (value, printed)
    else:
        assert value == pytest.approx(printed, rel=1e-12, abs=1e-14), (value, printed)


@pytest.fixture(scope="module")
def asah() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "aSAH.csv")


@needs_reference
@pytest.mark.parametrize("predictor", sorted(AUC_REFERENCE))
def test_auc_and_delong_interval_match_proc(asah, predictor):
    y = asah["outcome"].eq("Poor").to_numpy()
    assert y.sum() == 41 and (~y).sum() == 72
    r = delong_auc(asah[predictor].to_numpy(dtype=float), y)
    auc, lo, hi = AUC_REFERENCE[predictor]
    _assert_printed(r.auc, auc)
    _assert_printed(r.ci_low, lo)
    _assert_printed(r.ci_high, hi)


@needs_reference
@pytest.mark.parametrize("pair", sorted(PAIRED_REFERENCE))
def test_paired_delong_test_matches_proc(asah, pair):
    y = asah["outcome"].eq("Poor").to_numpy()
    a, b = pair
    t = delong_paired(asah[a].to_numpy(dtype=float), asah[b].to_numpy(dtype=float), y)
    z, p, lo, hi = PAIRED_REFERENCE[pair]
    _assert_printed(t.z, z)
    _assert_printed(t.p_value, p)
    _assert_printed(t.ci_low, lo)
    _assert_printed(t.ci_high, hi)


@needs_reference
def test_roc_table_on_the_reference_data(asah):
    """The analysis layer (text cells, outcome by value, direction chosen from the data) gives the same figures."""
    df = asah.astype(str).assign(patient=[f"S{i}" for i in range(len(asah))])
    table, points = roc(df, ["s100b", "ndka", "wfns"], "outcome", "Poor")
    for row in table.itertuples(index=False):
        auc, lo, hi = AUC_REFERENCE[row.predictor]
        _assert_printed(row.auroc, auc)
        _assert_printed(row.auroc_ci_low, lo)
        _assert_printed(row.auroc_ci_high, hi)
        assert row.direction == "higher" and (row.n_positive, row.n_negative) == (41, 72)
    tests = roc_tests(df, ["wfns", "s100b", "ndka"], "outcome", "Poor")
    got = {(r.predictor_a, r.predictor_b): r for r in tests.itertuples(index=False)}
    for (a, b), (z, p, lo, hi) in PAIRED_REFERENCE.items():
        r = got.get((a, b))
        sign = 1.0
        if r is None:  # the table holds (b, a): the difference changes sign
            r, sign = got[(b, a)], -1.0
        _assert_printed(sign * r.z, z)
        _assert_printed(r.p_value, p)
        lo_r, hi_r = (r.diff_ci_low, r.diff_ci_high) if sign > 0 else (-r.diff_ci_high, -r.diff_ci_low)
        _assert_printed(lo_r, lo)
        _assert_printed(hi_r, hi)


def _delong_by_definition(xs: list[np.ndarray], y: np.ndarray):
    """DeLong et al. 1988 directly: ψ over all positive × negative pairs, structural components, covariance."""
    pos = [x[y] for x in xs]
    neg = [x[~y] for x in xs]
    m, n = y.sum(), (~y).sum()
    v10, v01, aucs = [], [], []
    for p, q in zip(pos, neg):
        psi = (p[:, None] > q[None, :]).astype(float) + 0.5 * (p[:, None] == q[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))  # per positive
        v01.append(psi.mean(axis=0))  # per negative
    k = len(xs)
    s10 = np.array([[np.sum((v10[i] - aucs[i]) * (v10[j] - aucs[j])) / (m - 1) for j in range(k)] for i in range(k)])
    s01 = np.array([[np.sum((v01[i] - aucs[i]) * (v01[j] - aucs[j])) / (n - 1) for j in range(k)] for i in range(k)])
    return np.array(aucs), s10 / m + s01 / n


def test_fast_algorithm_equals_the_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.random(57) < 0.4
    a = np.round(rng.normal(size=57) + y, 1)  # rounded: many ties
    b = rng.integers(0, 4, 57) + y  # ordinal, heavy ties
    aucs, cov = _delong_by_definition([a, b], y)
    ra, rb = delong_auc(a, y), delong_auc(b, y)
    assert ra.auc == pytest.approx(aucs[0], abs=1e-12) and rb.auc == pytest.approx(aucs[1], abs=1e-12)
    assert ra.variance == pytest.approx(cov[0, 0], rel=1e-10)
    assert rb.variance == pytest.approx(cov[1, 1], rel=1e-10)
    t = delong_paired(a, b, y)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert t.z == pytest.approx((aucs[0] - aucs[1]) / math.sqrt(var), rel=1e-10)
    assert t.p_value == pytest.approx(2 * norm.sf(abs(t.z)), rel=1e-10)
    assert t.ci_high - t.ci_low == pytest.approx(2 * norm.ppf(0.975) * math.sqrt(var), rel=1e-10)


def test_auc_equals_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    for _ in range(5):
        y = rng.random(40) < 0.5
        x = rng.integers(0, 6, 40).astype(float)
        assert delong_auc(x, y).auc == pytest.approx(roc_auc_score(y, x), abs=1e-12)


def test_single_class_and_bad_inputs_are_refused():
    with pytest.raises(AnalysisError, match="single class"):
        delong_auc([1.0, 2.0, 3.0], [True, True, True])
    with pytest.raises(AnalysisError, match="differ in length"):
        delong_auc([1.0, 2.0], [True, False, True])
    with pytest.raises(AnalysisError, match="not finite"):
        delong_auc([1.0, float("nan"), 3.0], [True, False, True])


def test_perfect_separation_gives_auc_one_and_a_degenerate_interval():
    y = np.array([True] * 5 + [False] * 5)
    r = delong_auc(np.arange(10)[::-1].astype(float), y)
    assert r.auc == 1.0 and r.ci_high == 1.0 and r.variance == 0.0
    t = delong_paired(np.arange(10)[::-1].astype(float), np.arange(10)[::-1].astype(float), y)
    assert (t.z, t.p_value, t.difference) == (0.0, 1.0, 0.0)


def test_all_pairs_are_tested_once():
    rng = np.random.default_rng(0)
    n = 30
    df = pd.DataFrame({"patient": [f"P{i}" for i in range(n)], "out": ["a", "b"] * (n // 2)}
                      | {f"x{i}": rng.normal(size=n).astype(str) for i in range(4)})
    tests = roc_tests(df, ["x0", "x1", "x2", "x3"], "out", "b")
    assert list(zip(tests["predictor_a"], tests["predictor_b"])) == list(itertools.combinations(
        ["x0", "x1", "x2", "x3"], 2))
