"""4PL fit, acceptance rules, AUC, bell shape, bootstrap CI (docs/method.md, Dose response), the omalizumab effect."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bat_analysis.analysis.config import AnalysisConfig, FitConfig
from bat_analysis.analysis.dose_response import analyse_series, fit_4pl, four_pl, trapezoid_auc
from bat_analysis.analysis.omalizumab import inhibition_pct, omalizumab_effect

CONC = np.array([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
NO_BOOT = AnalysisConfig(fit=FitConfig(bootstrap_n=0))


def test_four_pl_hand_values():
    assert four_pl(0.5, 10, 90, 0.5, 1.3) == pytest.approx(50.0)  # at EC50: half-way
    # one decade above EC50 with h = 1: 10 + 80 / (1 + 10^-1) = 82.7272...
    assert four_pl(1.0, 10, 90, 0.0, 1.0) == pytest.approx(10 + 80 / 1.1)
    assert four_pl(-1.0, 10, 90, 0.0, 1.0) == pytest.approx(10 + 80 / 11)


def test_trapezoid_auc_hand_values():
    assert trapezoid_auc(np.array([0, 1, 2.0]), np.array([0, 10, 20.0])) == 20.0
    assert trapezoid_auc(np.array([0, 1.0]), np.array([-4, 10.0])) == 5.0  # negative net clipped to 0
    assert trapezoid_auc(np.array([0, 1.0]), np.array([-4, 10.0]), clip_negative=False) == 3.0
    assert trapezoid_auc(np.array([1, 0, 1.0]), np.array([10, 0, 20.0])) == 7.5  # duplicates averaged, sorted


@pytest.mark.parametrize("params", [(5.0, 80.0, -0.7, 1.0), (0.0, 55.0, 0.3, 2.0), (12.0, 95.0, 1.1, 0.8)])
def test_fitter_recovers_exact_curves(params):
    x = np.log10(CONC)
    fitted, sse = fit_4pl(x, four_pl(x, *params), FitConfig())
    assert sse < 1e-8
    assert fitted == pytest.approx(np.array(params), abs=1e-3)


def test_series_summary_hand_checked():
    y = four_pl(np.log10(CONC), 4.0, 70.0, 0.0, 1.0)
    net = y - 4.0
    res = analyse_series("P1", "Ara h 2", "none", CONC, y, net, unit="ng/mL", config=NO_BOOT)
    assert res.status == "ok"
    assert res.ec50 == pytest.approx(1.0, rel=1e-4)
    assert res.cd_sens == pytest.approx(100.0, rel=1e-4)
    assert res.cd_max == pytest.approx(float(y.max()))
    x = np.log10(CONC)
    expected_auc = sum((net[i] + net[i + 1]) / 2 * (x[i + 1] - x[i]) for i in range(5))
    assert res.auc == pytest.approx(expected_auc)
    assert res.r2 == pytest.approx(1.0)
    assert res.flags == []


def test_ec50_outside_range_is_not_estimable_with_reason():
    y = four_pl(np.log10(CONC), 2.0, 60.0, 3.8, 1.2)  # EC50 ≈ 6300 > 1000
    res = analyse_series("P1", "A", "none", CONC, y, y - 2, config=NO_BOOT)
    assert res.status == "not_estimable"
    assert math.isnan(res.ec50) and math.isnan(res.cd_sens)
    assert "above the highest tested concentration 1e+03" in res.ec50_reason
    assert "EC50_NOT_ESTIMABLE" in [f.code for f in res.flags]


def test_flat_series_has_no_dose_response():
    y = np.array([3.0, 2.5, 3.4, 2.8, 3.1, 2.9])
    res = analyse_series("P1", "A", "omalizumab", CONC, y, y - 3, config=NO_BOOT)
    assert res.status == "not_estimable"
    assert res.ec50_reason.startswith("no dose response")
    assert res.flags == []  # no response is a result, not a QC warning


def test_too_few_points_not_fitted():
    res = analyse_series("P1", "A", "none", CONC[:3], [5.0, 40.0, 80.0], [0.0, 35.0, 75.0], config=NO_BOOT)
    assert res.status == "not_fitted"
    assert "at least 4 needed" in res.ec50_reason
    assert res.cd_max == 80.0


def test_bell_shaped_fitted_up_to_maximum():
    x = np.log10(CONC)
    conc = np.append(CONC, 10000.0)
    y = np.append(four_pl(x, 2.0, 80.0, -0.5, 1.5), 50.0)  # drop of ~28 points at the top dose
    y[-2] = 80.0
    res = analyse_series("P1", "A", "none", conc, y, y - 2, config=NO_BOOT)
    assert res.bell_shaped
    assert res.used.tolist() == [True] * 6 + [False]
    assert (10000.0, "after the maximum of a bell-shaped series") in res.excluded
    assert "BELL_SHAPED" in [f.code for f in res.flags]
    assert res.status == "ok"


def test_invalid_points_excluded_with_reasons():
    y = four_pl(np.log10(CONC), 4.0, 70.0, 0.0, 1.0)
    conc = np.append(CONC, 0.0)
    res = analyse_series("P1", "A", "none", conc, np.append(y, 50.0), np.append(y - 4, 46.0),
                         invalid=[(5.0, "t5.fcs: QC fail")], config=NO_BOOT)
    reasons = dict(res.excluded)
    assert reasons[0.0].startswith("concentration not a positive number")
    assert reasons[5.0] == "t5.fcs: QC fail"
    assert res.x.size == 6


def test_bootstrap_ci_seeded():
    rng = np.random.default_rng(2)
    y = four_pl(np.log10(CONC), 5.0, 75.0, 0.2, 1.2) + rng.normal(0, 2.0, CONC.size)
    cfg = AnalysisConfig(fit=FitConfig(bootstrap_n=40))
    a = analyse_series("P1", "A", "none", CONC, y, y - 5, config=cfg)
    b = analyse_series("P1", "A", "none", CONC, y, y - 5, config=cfg)
    assert a.ec50_ci == b.ec50_ci  # same seed, same key → identical
    assert a.ec50_ci[0] < a.ec50 < a.ec50_ci[1]
    assert a.bootstrap_n == 40
    c = analyse_series("P2", "A", "none", CONC, y, y - 5, config=cfg)  # another series: another stream
    assert c.ec50_ci != a.ec50_ci


@pytest.mark.slow
def test_bootstrap_ci_coverage_near_nominal():
    rng = np.random.default_rng(20)
    cfg = AnalysisConfig(fit=FitConfig(bootstrap_n=40))
    covered = []
    for i in range(40):
        log_ec50, hill = rng.uniform(-1, 1), rng.uniform(0.8, 2.0)
        y = four_pl(np.log10(CONC), 5.0, 75.0, log_ec50, hill) + rng.normal(0, 2.0, CONC.size)
        res = analyse_series(f"P{i}", "A", "none", CONC, y, y - 5, config=cfg)
        if res.estimable:
            lo, hi = np.log10(res.ec50_ci)
            covered.append(lo <= log_ec50 <= hi)
    assert len(covered) >= 35
    assert np.mean(covered) >= 0.8  # nominal 95%; the plain percentile interval gave ~0.77


def test_omalizumab_effect_hand_computed():
    x = CONC[:3]
    none = analyse_series("P1", "A", "none", x, [12.0, 22.0, 32.0], [10.0, 20.0, 30.0], config=NO_BOOT)
    oma = analyse_series("P1", "A", "omalizumab", x, [4.0, 7.0, 17.0], [2.0, 5.0, 15.0], config=NO_BOOT)
    eff = omalizumab_effect(none, oma)
    # AUC none: (10+20)/2 + (20+30)/2 = 40; omalizumab: (2+5)/2 + (5+15)/2 = 13.5
    assert eff.auc_none == 40.0 and eff.auc_omalizumab == 13.5
    assert eff.auc_inhibition_pct == pytest.approx(66.25)
    assert eff.inhibition_by_concentration == pytest.approx({0.01: 80.0, 0.1: 75.0, 1.0: 50.0})
    assert math.isnan(eff.ec50_shift_log10) and "not estimable" in eff.ec50_shift_reason


def test_ec50_shift_and_undefined_inhibition():
    y_n = four_pl(np.log10(CONC), 2.0, 70.0, -1.0, 1.0)
    y_o = four_pl(np.log10(CONC), 2.0, 70.0, 0.5, 1.0)
    none = analyse_series("P", "A", "none", CONC, y_n, y_n - 2, config=NO_BOOT)
    oma = analyse_series("P", "A", "omalizumab", CONC, y_o, y_o - 2, config=NO_BOOT)
    eff = omalizumab_effect(none, oma)
    assert eff.ec50_shift_log10 == pytest.approx(1.5, abs=1e-3)
    assert inhibition_pct(3.0, 0.0) != inhibition_pct(3.0, 0.0)  # NaN: untreated ≤ 0
    assert inhibition_pct(5.0, 20.0) == 75.0


def test_arms_with_different_concentrations_compare_shared_ones():
    none = analyse_series("P", "A", "none", [1, 10, 100], [10, 30, 50], [10, 30, 50], config=NO_BOOT)
    oma = analyse_series("P", "A", "omalizumab", [1, 10, 1000], [0, 10, 20], [0, 10, 20], config=NO_BOOT)
    eff = omalizumab_effect(none, oma)
    assert eff.concentrations == pytest.approx((1.0, 10.0))
    assert eff.auc_inhibition_pct == pytest.approx(100 * (1 - 5.0 / 20.0))
    assert [f.code for f in eff.flags] == ["CONCENTRATIONS_DIFFER"]


def test_series_messages_name_the_primary_marker():
    cfg = AnalysisConfig.from_mapping({"markers": {"activation": ["CD69"]}})
    conc = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    pct = [2.0, 10.0, 60.0, 30.0, 10.0, float("nan")]
    res = analyse_series("P1", "birch", "none", conc, pct, pct, config=cfg)
    assert (1000.0, "no %CD69+ value") in res.excluded
    bell = next(f for f in res.flags if f.code == "BELL_SHAPED")
    assert "%CD69+ falls by 50.0 points" in bell.message and "CD63" not in bell.message
