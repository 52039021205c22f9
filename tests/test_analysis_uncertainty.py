"""Uncertainty of tube percentages and AUC inhibition, low-count tubes kept in the fit, class confidence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from analysis_cohort import simulate_cohort
from bat_analysis.analysis.config import AnalysisConfig, ClassConfig, FitConfig, QcConfig
from bat_analysis.analysis.score import score_experiment
from bat_analysis.analysis._uncertainty import class_confidence, proportion_interval


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), in percent."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (centre - half), 100 * (centre + half)


@pytest.mark.parametrize("k,n", [(0, 180), (5, 180), (90, 180), (25, 1000), (1000, 1000)])
def test_tube_interval_is_the_wilson_interval(k, n):
    low, high = proportion_interval(k, n)
    exp_low, exp_high = _wilson(k, n)
    assert low == pytest.approx(exp_low, abs=1e-9) and high == pytest.approx(exp_high, abs=1e-9)
    assert all(math.isnan(v) for v in proportion_interval(0, 0))


def test_tubes_table_carries_the_interval_of_each_percentage():
    results, _ = simulate_cohort(n_patients=2, seed=4)
    tubes = score_experiment(results).tubes
    ok = tubes.dropna(subset=["pct_cd63"])
    assert (ok.pct_cd63_ci_low <= ok.pct_cd63).all() and (ok.pct_cd63 <= ok.pct_cd63_ci_high).all()
    row = ok.iloc[0]
    k = round(row.pct_cd63 * row.n_basophils / 100)
    assert (row.pct_cd63_ci_low, row.pct_cd63_ci_high) == pytest.approx(_wilson(k, int(row.n_basophils)))
    # fewer basophils, wider interval
    mid = ok[(ok.pct_cd63 > 10) & (ok.pct_cd63 < 90)]
    p = mid.pct_cd63 / 100
    widths = (mid.pct_cd63_ci_high - mid.pct_cd63_ci_low) / np.sqrt(p * (1 - p))
    assert np.corrcoef(widths, 1 / np.sqrt(mid.n_basophils))[0, 1] > 0.95


def _responder_with_few_basophils():
    results, truth = simulate_cohort(n_patients=1, seed=11, n_basophils=(170, 240))
    return results, truth[0]


def test_tubes_failing_only_the_count_stay_in_the_fit():
    results, tp = _responder_with_few_basophils()
    low = [r.tube.file for r in results if r.n_basophils < 200 and r.tube.condition == "allergen"]
    assert low, "the seed must give allergen tubes under 200 basophils"
    scores = score_experiment(results)
    fitted = {f for fit in scores.fits.values() for f in fit.files}
    assert set(low) <= fitted
    failed = scores.tubes.set_index("file").loc[low]
    assert (failed.qc_status == "fail").all()  # the tube's own QC still says so
    codes = {f.code for fit in scores.fits.values() for f in fit.flags}
    assert "LOW_COUNT_KEPT" in codes
    strict = dataclasses.replace(AnalysisConfig(), qc=QcConfig(low_count_policy="exclude"))
    fitted_strict = {f for fit in score_experiment(results, strict).fits.values() for f in fit.files}
    assert not set(low) & fitted_strict


def test_auc_inhibition_interval_is_reproducible_and_shrinks_with_more_basophils():
    few, _ = simulate_cohort(n_patients=3, seed=21, n_basophils=(200, 260))
    many, _ = simulate_cohort(n_patients=3, seed=21, n_basophils=(4000, 4060))
    a, b = score_experiment(few).patients, score_experiment(few).patients
    cols = ["auc_inhibition_ci_low", "auc_inhibition_ci_high", "class_confidence", "class_reason"]
    assert a[cols].equals(b[cols])
    c = score_experiment(many).patients
    for df in (a, c):
        evaluable = df[df["class"] != "not_evaluable"]
        assert len(evaluable) == 3
        assert (evaluable.auc_inhibition_ci_low <= evaluable.auc_inhibition_pct).all()
        assert (evaluable.auc_inhibition_pct <= evaluable.auc_inhibition_ci_high).all()
    width = lambda df: (df.auc_inhibition_ci_high - df.auc_inhibition_ci_low).median()  # noqa: E731
    assert width(c) < width(a) / 2
    assert a.loc[0, "class_reason"].count("95% CI") == 1


def test_interval_covers_the_truth_most_of_the_time():
    results, truth = simulate_cohort(n_patients=24, seed=31, n_basophils=(300, 1500))
    cfg = dataclasses.replace(AnalysisConfig(), fit=FitConfig(bootstrap_n=0))
    p = score_experiment(results, cfg).patients.set_index("patient")
    covered = checked = 0
    for tp in truth:
        row = p.loc[tp.patient]
        if row["class"] == "not_evaluable" or math.isnan(row.auc_inhibition_ci_low):
            continue
        checked += 1
        covered += row.auc_inhibition_ci_low - 2 <= tp.auc_inhibition_pct <= row.auc_inhibition_ci_high + 2
    assert checked >= 15 and covered / checked >= 0.8, (covered, checked)


def test_class_confidence_rules():
    cfg = ClassConfig()
    assert class_confidence(85.0, 97.0, [6, 6, 6], cfg)[0] == "high"
    label, why = class_confidence(74.0, 88.0, [6, 6, 6], cfg)
    assert label == "borderline" and "spans partial_responder and responder" in why
    label, why = class_confidence(10.0, 90.0, [6, 6, 6], cfg)
    assert "spans non_responder and partial_responder and responder" in why
    label, why = class_confidence(90.0, 95.0, [6, 3, 3], cfg)
    assert label == "borderline" and "3 concentration(s), fewer than 4" in why
    assert class_confidence(float("nan"), float("nan"), [6, 6, 6], cfg)[0] == "borderline"


def test_a_reduced_series_is_never_a_confident_class():
    results, _ = simulate_cohort(n_patients=1, seed=5, n_basophils=(3000, 3001))
    # the omalizumab arm keeps three concentrations
    kept = [r for r in results if not (r.tube.pretreatment == "omalizumab" and r.tube.condition == "allergen"
                                       and r.tube.concentration is not None and r.tube.concentration > 5)]
    row = score_experiment(kept).patients.iloc[0]
    assert row["class"] == "responder"
    assert row["class_confidence"] == "borderline"
    assert "fewer than 4" in row["class_reason"]


def test_an_untreated_series_kept_below_the_count_minimum_is_judged_on_the_tubes_it_was_fitted_on():
    """Every untreated allergen tube at ~190 basophils (failing only the count, kept in the fit): positivity is
    judged on those same tubes, so a responder is classed, never 'negative at every concentration' beside a
    maximum net far above 5%."""
    results, _ = simulate_cohort(n_patients=1, seed=5, n_basophils=(3000, 3001))
    rng = np.random.default_rng(0)
    for r in results:
        if r.tube.condition == "allergen" and r.tube.pretreatment == "none":
            keep = rng.choice(r.n_basophils, size=190, replace=False)
            r.basophil_values = {k: v[keep] for k, v in r.basophil_values.items()}
            r.n_basophils = 190
    scores = score_experiment(results)
    row = scores.patients.iloc[0]
    low = scores.tubes[(scores.tubes.condition == "allergen") & (scores.tubes.pretreatment == "none")]
    assert (low.qc_status == "fail").all() and low.qc_flags.str.contains("LOW_BASOPHILS").all()
    assert row["class"] == "responder", row["class_reason"]
    assert "negative at every concentration" not in row["class_reason"]
