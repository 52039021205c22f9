"""The activation threshold from the negative control: percentile, resting-peak model, reference choice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bat_analysis.analysis.config import ThresholdConfig
from bat_analysis.analysis.threshold import estimate_threshold, manual_threshold, mfi_reference, select_reference
from bat_analysis.errors import AnalysisError
from bat_analysis.records import Tube, TubeResult


def test_percentile_is_numpy_linear_percentile_hand_checked():
    values = np.arange(1, 41, dtype=np.float32)  # 1..40
    est = estimate_threshold(values, method="percentile")
    # rank (40-1)*0.975 = 38.025 → 39 + 0.025*(40-39) = 39.025
    assert est.value == pytest.approx(39.025)
    assert est.method == "percentile"
    assert est.n_events == 40


def test_unimodal_negative_keeps_the_plain_percentile():
    rng = np.random.default_rng(3)
    values = rng.lognormal(np.log(300), 0.5, 1000)
    est = estimate_threshold(values)
    assert est.method == "percentile"
    assert est.value == pytest.approx(np.percentile(values, 97.5))
    assert 100 * np.mean(values > est.value) == pytest.approx(2.5, abs=0.11)
    assert not [f for f in est.flags if f.code == "RESTING_PEAK_THRESHOLD"]


@pytest.mark.parametrize("activated", [0.08, 0.15, 0.30])
def test_high_background_uses_resting_peak_and_flags(activated):
    rng = np.random.default_rng(11)
    n = 1200
    a = int(n * activated)
    resting = rng.lognormal(np.log(300), 0.5, n - a)
    values = np.concatenate([resting, rng.lognormal(np.log(300 * 12), 0.5, a)])
    est = estimate_threshold(values)
    assert est.method == "resting_peak"
    assert [f.code for f in est.flags] == ["RESTING_PEAK_THRESHOLD"]
    # the plain percentile sits inside the activated population, the model at the resting edge
    true_edge = 300 * np.exp(1.959964 * 0.5)
    assert est.diagnostics["percentile_value"] > 2 * true_edge
    assert est.value == pytest.approx(true_edge, rel=0.15)
    measured = 100 * np.mean(values > est.value)
    assert measured == pytest.approx(100 * activated + 2.5 * (1 - activated), abs=1.5)


@pytest.mark.parametrize("seed", range(6))
def test_simulated_high_background_control_threshold_leaves_2_5_pct_of_its_resting_basophils_above(seed):
    # a simulated negative control with 8-15% spontaneously activated basophils (a few hundred basophils, each
    # labelled resting or activated): the threshold must leave 2.5% of the labelled resting basophils above it,
    # as the percentile rule promises, and read the control at its activated share + 2.5% of its resting share.
    # The resting Gaussian's 97.5% quantile (fitted to the lower 2-45% of the resting events) left 0.0-4.2%
    # of them above it over seeds 0-19, and read one control of the benchmark 7.6 points above its labels.
    from bat_analysis.simulate import simulate_tube

    tube = simulate_tube(n_events=60_000, scenario="high_background", seed=seed)
    values = tube.marker_values("CD63", tube.basophil)
    activated = tube.activated[tube.basophil]
    est = estimate_threshold(values)
    assert est.method == "resting_peak"
    resting_above = 100 * np.mean(values[~activated] > est.value)
    assert resting_above == pytest.approx(2.5, abs=0.5)
    excess = 100 * (np.mean(values > est.value) - activated.mean())
    assert excess == pytest.approx(2.5 * (1 - activated.mean()), abs=0.5)


def test_right_skewed_resting_peak_with_activated_events_keeps_the_promised_2_5_pct():
    # the resting peak skewed to the right on the log scale (its upper tail longer than its lower one) beside a
    # separate activated population: a Gaussian fitted to the lower quantiles has too small an SD and its
    # 97.5% quantile left ~17% of the resting events above it; the resting events' own percentile does not
    # depend on the peak's shape
    rng = np.random.default_rng(4)
    resting = np.exp(stats.skewnorm.rvs(4, loc=5.4, scale=0.5, size=3000, random_state=rng))
    values = np.concatenate([resting, rng.lognormal(np.log(7500), 0.45, 300)])
    est = estimate_threshold(values)
    assert est.method == "resting_peak"
    assert 100 * np.mean(resting > est.value) == pytest.approx(2.5, abs=0.5)


def test_bootstrap_rethreshold_takes_the_resting_events_percentile_below_the_same_cut():
    from bat_analysis.analysis.threshold import rethreshold

    rng = np.random.default_rng(8)
    values = np.concatenate([rng.lognormal(np.log(300), 0.35, 900), rng.lognormal(np.log(6000), 0.45, 100)])
    cfg = ThresholdConfig()
    est = estimate_threshold(values, config=cfg)
    assert est.method == "resting_peak"
    model = est.diagnostics["resting_model"]
    cut = model["cut"]
    assert model["cut_rule"].startswith("valley") and 1000 < cut < 4000
    assert model["activated_fraction"] == pytest.approx(np.mean(values > cut))
    assert est.value == np.percentile(values[values <= cut], 97.5)
    assert rethreshold(est, values, cfg) == est.value
    resample = values[rng.integers(0, values.size, values.size)]
    assert rethreshold(est, resample, cfg) == np.percentile(resample[resample <= cut], 97.5)


def test_forced_resting_peak_on_a_quiet_control_cuts_3_sd_above_the_resting_peak():
    values = np.random.default_rng(2).lognormal(np.log(300), 0.35, 2000)
    est = estimate_threshold(values, method="resting_peak")
    model = est.diagnostics["resting_model"]
    assert est.method == "resting_peak" and model["cut_rule"] == "3 SD above the resting peak"
    z_cut = np.arcsinh(model["cut"] / model["cofactor"])
    assert z_cut == pytest.approx(model["mu"] + 3 * model["sd"])
    assert est.value == np.percentile(values[values <= model["cut"]], 97.5)
    assert est.value == pytest.approx(np.percentile(values, 97.5), rel=0.02)


def test_bimodal_negative_detected():
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.lognormal(np.log(200), 0.4, 900), rng.lognormal(np.log(5000), 0.3, 100)])
    est = estimate_threshold(values)
    assert est.method == "resting_peak"
    assert est.diagnostics["resting_model"]["bimodal"] is True
    assert "separate activated population (10.0% of events" in est.flags[0].message
    mix = est.diagnostics["resting_model"]["mixture"]
    assert mix["weight"] == pytest.approx(0.10, abs=0.01) and mix["separation"] > 2 and mix["bic_delta"] > 10


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("activated", [0.001, 0.004, 0.01])
def test_quiet_control_with_a_small_activated_tail_keeps_the_percentile(seed, activated):
    # 0.1-1% spontaneously activated, well apart from the resting peak: smaller than the 2.5% above the
    # percentile, so the percentile is right and the model must stay quiet
    rng = np.random.default_rng(seed)
    n = 3000
    a = int(round(n * activated))
    values = np.concatenate([rng.lognormal(np.log(300), 0.35, n - a), rng.lognormal(np.log(8000), 0.45, a)])
    est = estimate_threshold(values)
    assert est.method == "percentile", est.diagnostics["resting_model"]["mixture"]
    assert est.value == pytest.approx(np.percentile(values, 97.5))


@pytest.mark.parametrize("shape", ["skewed", "heavy_tailed", "with_negatives"])
def test_unimodal_controls_of_other_shapes_keep_the_percentile(shape):
    # the old rule (events above a Gaussian fit of the lower half) fired on non-Gaussian resting peaks
    rng = np.random.default_rng(7)
    n = 5000
    if shape == "skewed":
        z = stats.skewnorm.rvs(6, loc=5.0, scale=0.6, size=n, random_state=rng)
        values = np.exp(z)
    elif shape == "heavy_tailed":
        values = np.exp(5.5 + 0.3 * rng.standard_t(3, n))
    else:  # compensation spreads dim events around zero
        values = rng.normal(40.0, 60.0, n)
    est = estimate_threshold(values)
    assert est.method == "percentile", est.diagnostics["resting_model"]["mixture"]
    assert not est.flags


def test_forced_methods_and_config():
    values = np.random.default_rng(1).lognormal(5, 0.5, 500)
    assert estimate_threshold(values, method="resting_peak").method == "resting_peak"
    p90 = estimate_threshold(values, config=ThresholdConfig(percentile=90.0, method="percentile"))
    assert p90.value == pytest.approx(np.percentile(values, 90))


def test_bad_inputs_refused_or_flagged():
    with pytest.raises(AnalysisError, match="no finite values"):
        estimate_threshold(np.array([np.nan, np.inf]))
    with pytest.raises(AnalysisError, match="threshold.method"):
        estimate_threshold(np.ones(10), method="gaussian")
    est = estimate_threshold(np.array([1.0, 2.0, np.nan, 3.0]))
    codes = {f.code for f in est.flags}
    assert codes == {"NONFINITE_REFERENCE_VALUES", "LOW_REFERENCE_EVENTS"}


def test_mfi_reference_and_manual():
    assert mfi_reference(np.array([5.0, 1.0, 3.0])).value == 3.0
    auto = estimate_threshold(np.arange(100.0), method="percentile")
    man = manual_threshold(42.0, previous=auto)
    assert (man.value, man.method, man.diagnostics["automated_value"]) == (42.0, "manual", auto.value)
    with pytest.raises(AnalysisError):
        manual_threshold(float("nan"))


def _neg(file: str, arm: str, ok: bool = True) -> TubeResult:
    return TubeResult(Tube(file, "P1", "negative_control", arm), n_basophils=10 if ok else 0,
                      basophil_values={"CD63": np.ones(10)}, error=None if ok else "unreadable")


def test_reference_same_arm_first():
    choice = select_reference([_neg("b.fcs", "omalizumab"), _neg("a.fcs", "none")], "none")
    assert choice.files == ("a.fcs",) and choice.arm == "none" and choice.flags == []


def test_reference_other_arm_when_missing_is_flagged():
    choice = select_reference([_neg("b.fcs", "omalizumab"), _neg("a.fcs", "none", ok=False)], "none")
    assert choice.files == ("b.fcs",) and choice.arm == "omalizumab"
    assert [f.code for f in choice.flags] == ["THRESHOLD_FROM_OTHER_ARM"]


def test_reference_none_at_all_fails_and_pools_duplicates():
    none = select_reference([], "none")
    assert none.tubes == [] and [(f.code, f.severity) for f in none.flags] == [("NO_NEGATIVE_CONTROL", "fail")]
    pooled = select_reference([_neg("b.fcs", "none"), _neg("a.fcs", "none")], "none")
    assert pooled.files == ("a.fcs", "b.fcs") and pooled.flags[0].code == "POOLED_NEGATIVE_CONTROLS"
def test_the_normal_quantiles_and_tail_are_scipy_stats_own():
    """threshold.py takes the normal distribution's quantiles and 3-SD tail from scipy.special (no per-call
    argument checks in the resting-peak fit's loop): the same numbers as scipy.stats.norm, bit for bit."""
    from scipy import special, stats

    from bat_analysis.analysis import threshold

    levels = np.concatenate([np.linspace(0.02, 0.45, 24) / (1.0 - f) for f in np.linspace(0.0, 0.5, 51)]
                            + [np.array([0.5, 0.9, 0.95, 0.975, 0.99, 0.999])])
    assert np.array_equal(special.ndtri(levels), stats.norm.ppf(levels))
    assert threshold._NORMAL_TAIL_3SD == stats.norm.sf(3.0)
