"""score_experiment: table contracts, hand-checked values, errors, overrides, reference rules, order."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bat_analysis.analysis.config import AnalysisConfig, FitConfig, ThresholdConfig
from bat_analysis.analysis.dose_response import four_pl
from bat_analysis.analysis.score import PATIENT_COLUMNS, TUBE_COLUMNS, score_experiment
from bat_analysis.errors import AnalysisError
from bat_analysis.records import Tube, TubeResult

N = 600
CONC = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
CFG = AnalysisConfig(threshold=ThresholdConfig(method="percentile"), fit=FitConfig(bootstrap_n=0))


def _values(pct_above: float) -> dict[str, np.ndarray]:
    k = int(round(N * pct_above / 100.0))
    cd63 = np.concatenate([np.full(N - k, 10.0), np.full(k, 5000.0)]).astype(np.float32)
    return {"CD63": cd63, "CD203c": np.full(N, 100.0 + 2 * k, dtype=np.float32)}


def _result(file, patient, cond, arm, values, conc=None, **kw) -> TubeResult:
    tube = Tube(file, patient, cond, arm, "Bet v 1" if cond == "allergen" else None, conc,
                "ng/mL" if cond == "allergen" else None, extra=kw.pop("extra", ()))
    return TubeResult(tube, n_events=50 * N, n_basophils=len(values["CD63"]) if values else 0,
                      basophil_values=values or {}, has_spillover=True, n_fluorescent_markers=3,
                      event_fractions={"acquisition_qc": 0.01, "margin": 0.0, "doublets": 0.02}, **kw)


def _patient(pid="P1", top_none=70.0, top_oma=10.0, neg_arms=("none", "omalizumab")):
    out = []
    for arm, top in (("none", top_none), ("omalizumab", top_oma)):
        if arm in neg_arms:
            neg = {"CD63": np.arange(N, dtype=np.float32), "CD203c": np.full(N, 100.0, dtype=np.float32)}
            out.append(_result(f"{pid}_{arm}_neg.fcs", pid, "negative_control", arm, neg))
        out.append(_result(f"{pid}_{arm}_fceri.fcs", pid, "anti_fceri", arm, _values(60.0)))
        out.append(_result(f"{pid}_{arm}_fmlp.fcs", pid, "fmlp", arm, _values(40.0)))
        for j, c in enumerate(CONC):
            level = float(four_pl(math.log10(c), 2.5, top, 0.0, 1.0))
            out.append(_result(f"{pid}_{arm}_a{j}.fcs", pid, "allergen", arm, _values(level), c,
                               extra=(("draw_time", "2026-01-05 08:00"), ("assay_time", "2026-01-05 10:00"))))
    return out


def test_tables_start_with_the_contract_columns():
    s = score_experiment(_patient(), CFG)
    assert tuple(s.tubes.columns[:len(TUBE_COLUMNS)]) == TUBE_COLUMNS
    assert tuple(s.patients.columns[:len(PATIENT_COLUMNS)]) == PATIENT_COLUMNS
    assert {"qc_reasons", "threshold_method", "draw_time", "assay_time"} <= set(s.tubes.columns)
    assert len(s.tubes) == 18 and len(s.patients) == 1


def test_hand_checked_tube_values():
    s = score_experiment(_patient(), CFG)
    t = s.tubes.set_index("file")
    neg = t.loc["P1_none_neg.fcs"]
    # 97.5th percentile of 0..599: 599 × 0.975 = 584.025
    assert neg.cd63_threshold == pytest.approx(584.025)
    assert neg.pct_cd63 == pytest.approx(2.5)  # 585..599 = 15 of 600
    assert (neg.net_pct_cd63, neg.si_cd63, neg.cd203c_mfi, neg.si_cd203c) == (0.0, 1.0, 100.0, 1.0)
    fceri = t.loc["P1_none_fceri.fcs"]
    assert fceri.pct_cd63 == pytest.approx(60.0)
    assert fceri.net_pct_cd63 == pytest.approx(57.5)
    assert fceri.si_cd63 == pytest.approx(24.0)
    assert fceri.cd203c_mfi == 100.0 + 2 * 360 and fceri.si_cd203c == pytest.approx(8.2)
    assert fceri.qc_status == "pass" and fceri.qc_flags == ""
    assert neg.threshold_method == "percentile" and neg.threshold_reference == "P1_none_neg.fcs"


def test_patient_row_responder_with_reason():
    s = score_experiment(_patient(top_none=70.0, top_oma=5.0), CFG)
    row = s.patients.iloc[0]
    assert row["class"] == "responder"
    assert row["auc_inhibition_pct"] >= 80
    assert row["class_reason"].startswith(f"AUC inhibition {row['auc_inhibition_pct']:.1f}% ≥ 80%; 95% CI ")
    assert row["class_confidence"] in ("high", "borderline")
    assert row["ec50_none"] == pytest.approx(1.0, rel=0.1)
    assert row["cd_sens_none"] == pytest.approx(100.0 / row["ec50_none"])
    assert math.isnan(row["ec50_omalizumab"])
    assert row["fit_status_omalizumab"] == "not_estimable"
    fit = s.fits[("P1", "Bet v 1", "none")]
    assert fit.auc == pytest.approx(row["auc_none"])


def test_errored_tube_keeps_its_row_and_is_left_out_of_the_fit():
    results = _patient()
    bad = results[5]
    results[5] = TubeResult(bad.tube, error="truncated DATA segment")
    s = score_experiment(results, CFG)
    row = s.tubes.set_index("file").loc[bad.tube.file]
    assert row.qc_status == "fail" and row.qc_flags == "NOT_GATED"
    # the reason is given once in the row: in its error column, the QC reasons name the flag
    assert row.error == "truncated DATA segment" and row.qc_reasons == "NOT_GATED"
    assert math.isnan(row.pct_cd63)
    fit = s.fits[("P1", "Bet v 1", "none")]
    assert fit.x.size == 5
    assert any("QC fail" in reason for _, reason in fit.excluded)


def test_threshold_override_is_manual():
    s = score_experiment(_patient(), CFG, threshold_overrides={("P1", "none"): 4000.0})
    t = s.tubes.set_index("file")
    assert t.loc["P1_none_a3.fcs"].cd63_threshold == 4000.0
    assert t.loc["P1_none_a3.fcs"].threshold_method == "manual"
    assert t.loc["P1_omalizumab_a3.fcs"].threshold_method == "percentile"
    assert s.thresholds[("P1", "none", "CD63")].method == "manual"
    assert "MANUAL_THRESHOLD" in t.loc["P1_none_neg.fcs"].qc_flags
    table = s.thresholds_table()
    assert table.query("arm == 'none' and marker == 'CD63'").method.item() == "manual"
    with pytest.raises(AnalysisError, match="P9/none"):
        score_experiment(_patient(), CFG, threshold_overrides={("P9", "none"): 1.0})


def test_missing_arm_negative_uses_other_arm_and_flags():
    s = score_experiment(_patient(neg_arms=("none",)), CFG)
    t = s.tubes.set_index("file")
    assert t.loc["P1_omalizumab_a2.fcs"].cd63_threshold == pytest.approx(584.025)
    assert "THRESHOLD_FROM_OTHER_ARM" in t.loc["P1_omalizumab_a2.fcs"].qc_flags
    assert s.thresholds[("P1", "omalizumab", "CD63")].reference_arm == "none"


def test_references_name_each_arms_negative_controls_even_without_a_threshold():
    """``ExperimentScores.references``: the negative-control files of each patient × arm, the same files its
    thresholds name, also when no threshold could be set on them (reports show them from here)."""
    s = score_experiment(_patient(neg_arms=("none",)), CFG)
    assert s.references == {("P1", "none"): ("P1_none_neg.fcs",), ("P1", "omalizumab"): ("P1_none_neg.fcs",)}
    for (patient, arm, _), est in s.thresholds.items():
        assert est.reference_files == s.references[(patient, arm)]
    results = _patient()
    nan = {"CD63": np.full(N, np.nan, dtype=np.float32), "CD203c": np.full(N, 100.0, dtype=np.float32)}
    results = [_result(r.tube.file, "P1", "negative_control", "omalizumab", nan)
               if r.tube.file == "P1_omalizumab_neg.fcs" else r for r in results]
    s = score_experiment(results, CFG)
    assert ("P1", "omalizumab", "CD63") not in s.thresholds
    assert s.references == {("P1", "none"): ("P1_none_neg.fcs",), ("P1", "omalizumab"): ("P1_omalizumab_neg.fcs",)}
    assert score_experiment(_patient(neg_arms=()), CFG).references == {("P1", "none"): (), ("P1", "omalizumab"): ()}


def test_no_negative_control_at_all_is_not_evaluable():
    s = score_experiment(_patient(neg_arms=()), CFG)
    row = s.patients.iloc[0]
    assert row["class"] == "not_evaluable" and row["qc_status"] == "fail"
    assert "no usable negative control" in row["class_reason"]
    assert (s.tubes.qc_status == "fail").all()


def test_non_releaser_is_not_evaluable():
    results = [r if r.tube.condition != "anti_fceri" else _result(r.tube.file, "P1", "anti_fceri",
                                                                   r.tube.pretreatment, _values(3.0))
               for r in _patient()]
    s = score_experiment(results, CFG)
    row = s.patients.iloc[0]
    assert row["class"] == "not_evaluable"
    assert row["class_reason"].startswith("basophil non-releaser: arm none: fMLP net 37.5%")
    assert "NON_RELEASER" in s.tubes.set_index("file").loc["P1_none_fceri.fcs"].qc_flags


def test_order_is_stable_and_output_deterministic():
    results = _patient("P2") + _patient("P1", top_oma=40.0)
    a = score_experiment(results, CFG)
    b = score_experiment(list(reversed(results)), CFG)
    assert a.tubes.equals(b.tubes) and a.patients.equals(b.patients)
    assert list(a.tubes.patient[:18]) == ["P1"] * 18
    first = a.tubes.iloc[:9]
    assert list(first.condition[:3]) == ["negative_control", "anti_fceri", "fmlp"]
    assert list(first.concentration[3:]) == list(CONC)
    assert list(a.patients.patient) == ["P1", "P2"]
    assert a.patients.set_index("patient").loc["P1", "class"] == "partial_responder"


def test_cohort_mode_adds_columns():
    cfg = AnalysisConfig(threshold=CFG.threshold, fit=CFG.fit,
                         classes=AnalysisConfig().classes.__class__(cohort_mode="median"))
    s = score_experiment(_patient("P1", top_oma=5.0) + _patient("P2", top_oma=60.0), cfg)
    assert list(s.patients.cohort_class) == ["above_median", "below_median"]


def test_anti_ige_stands_in_for_anti_fceri_in_the_untreated_arm_only():
    results = []
    for r in _patient():
        if r.tube.condition == "anti_fceri":
            r = _result(r.tube.file.replace("fceri", "ige"), "P1", "anti_ige", r.tube.pretreatment, _values(3.0))
        results.append(r)
    row = score_experiment(results, CFG).patients.iloc[0]
    assert row["class"] == "not_evaluable"
    assert row["class_reason"].startswith("basophil non-releaser: arm none: fMLP net 37.5% (positive) but "
                                          "anti-IgE net 0.5%")


def test_both_positive_controls_negative_is_a_qc_failure():
    results = [r if r.tube.condition not in ("anti_fceri", "fmlp") else
               _result(r.tube.file, "P1", r.tube.condition, r.tube.pretreatment, _values(3.0)) for r in _patient()]
    row = score_experiment(results, CFG).patients.iloc[0]
    assert row["class"] == "not_evaluable" and row["qc_status"] == "fail"
    assert "no positive control responded in arm none" in row["class_reason"]


def test_other_degranulation_marker_scored_like_cd63():
    results = []
    for r in _patient():
        values = dict(r.basophil_values)
        values["CD107a"] = values["CD63"].copy()  # same values: same threshold rule, same percentages
        r.basophil_values = values
        results.append(r)
    t = score_experiment(results, CFG).tubes.set_index("file")
    row = t.loc["P1_none_fceri.fcs"]
    assert row.cd107a_threshold == row.cd63_threshold
    assert (row.pct_cd107a, row.net_pct_cd107a, row.si_cd107a) == (row.pct_cd63, row.net_pct_cd63, row.si_cd63)
    assert "pct_avidin" not in t.columns


def test_one_patient_row_per_allergen():
    import dataclasses

    second = []
    for r in _patient():
        if r.tube.condition == "allergen":
            tube = dataclasses.replace(r.tube, file=r.tube.file.replace(".fcs", "_phl.fcs"), allergen="Phl p 5")
            second.append(TubeResult(tube, r.n_events, r.n_basophils, r.basophil_values, dict(r.event_fractions),
                                     has_spillover=True, n_fluorescent_markers=3))
    s = score_experiment(_patient() + second, CFG)
    assert list(zip(s.patients.patient, s.patients.allergen)) == [("P1", "Bet v 1"), ("P1", "Phl p 5")]
    assert s.patients.auc_inhibition_pct.iloc[0] == s.patients.auc_inhibition_pct.iloc[1]
    assert set(s.fits) == {("P1", a, arm) for a in ("Bet v 1", "Phl p 5") for arm in ("none", "omalizumab")}


def _in_units(results, arm, unit, factor):
    """``results`` with ``arm``'s allergen tubes written in ``unit`` (concentration × ``factor``)."""
    import dataclasses
    out = []
    for r in results:
        if r.tube.condition == "allergen" and r.tube.pretreatment == arm:
            tube = dataclasses.replace(r.tube, concentration=r.tube.concentration * factor, unit=unit)
            r = dataclasses.replace(r, tube=tube)
        out.append(r)
    return out


def test_arms_in_different_mass_units_give_the_one_unit_results():
    """The omalizumab arm written in µg/mL, the untreated one in ng/mL (correct values): the same classes, AUC
    inhibition and its interval as the experiment written in ng/mL alone (once 42.4% instead of 94.9%, from
    the two numbers that happened to match)."""
    cfg = AnalysisConfig(threshold=ThresholdConfig(method="percentile"),
                         fit=FitConfig(bootstrap_n=0, inhibition_bootstrap_n=200))
    one = score_experiment(_patient(top_none=70.0, top_oma=4.0), cfg)
    mixed = score_experiment(_in_units(_patient(top_none=70.0, top_oma=4.0), "omalizumab", "µg/mL", 1e-3), cfg)
    a, b = one.patients.iloc[0], mixed.patients.iloc[0]
    assert a["class"] == "responder" and a["auc_inhibition_pct"] > 90
    for col in ("class", "class_confidence", "auc_inhibition_pct", "auc_inhibition_ci_low",
                "auc_inhibition_ci_high", "ec50_none", "ec50_omalizumab", "auc_none", "auc_omalizumab", "unit"):
        assert a[col] == b[col] or (a[col] != a[col] and b[col] != b[col]), col  # equal, or both NaN
    assert b["unit"] == "ng/mL" and "CONCENTRATIONS_DIFFER" not in b["qc_flags"]
    # tubes.csv keeps the layout's own concentration and unit, and states them in the reference unit
    assert "concentration_converted" not in one.tubes.columns
    t = mixed.tubes[(mixed.tubes["condition"] == "allergen") & (mixed.tubes["pretreatment"] == "omalizumab")]
    assert set(t["unit"]) == {"µg/mL"} and set(t["unit_converted"]) == {"ng/mL"}
    assert sorted(t["concentration_converted"]) == list(CONC)
    assert sorted(t["concentration"]) == [c * 1e-3 for c in CONC]
    pd_cols = [c for c in one.tubes.columns]
    assert list(mixed.tubes.drop(columns=["concentration_converted", "unit_converted"]).columns) == pd_cols


def test_activity_units_convert_only_among_themselves():
    from bat_analysis.analysis._units import UnitProblem, convert, convertible, parse_unit

    assert convert(2.0, "kU/L", "U/mL") == 2.0 and convert(1e4, "SQ-U/L", "SQ-U/mL") == 10.0
    assert convert(0.1, "µg/mL", "ng/mL") == 100.0 and convert(5.0, "mg/L", "µg/mL") == 5.0
    assert convert(250.0, "pg/mL", "ng/mL") == 0.25 and convert(1.0, "mg/mL", "pg/mL") == 1e9
    for a, b in (("SQ-U/mL", "BU/mL"), ("BU/mL", "AU/mL"), ("AU/mL", "kU/L"), ("BU/mL", "µg/mL"),
                 ("SQ-U/mL", "ng/mL"), ("BAU/mL", "BU/mL"), ("nmol/L", "ng/mL"), ("ng/mL", None)):
        assert not convertible(a, b) and not convertible(b, a), (a, b)
        with pytest.raises(UnitProblem):
            convert(1.0, a, b)
    for bad in ("drops", "mL", "%", "ng", "1:1000", "x" * 200, "ng/mL/s", "__import__('os')"):
        with pytest.raises(UnitProblem):
            parse_unit(bad)


def _replicate(r, label, file=None, values=None):
    import dataclasses
    tube = dataclasses.replace(r.tube, file=file or r.tube.file, extra=r.tube.extra + (("replicate", label),))
    return dataclasses.replace(r, tube=tube, **({"basophil_values": values} if values is not None else {}))


def test_replicates_kept_combined_and_all_fitted_with_a_cv_flag_on_a_noisy_pair():
    base = _patient()
    by_file = {r.tube.file: r for r in base}
    noisy, quiet = "P1_none_a4.fcs", "P1_none_a3.fcs"  # 10 and 1 ng/mL (≈ 66% and 35% CD63+)
    extra = [_replicate(by_file[noisy], "2", "P1_none_a4_r2.fcs", _values(30.0)),  # duplicate: 66 vs 30
             _replicate(by_file[quiet], "2", "P1_none_a3_r2.fcs"),  # triplicate, identical values
             _replicate(by_file[quiet], "3", "P1_none_a3_r3.fcs")]
    results = [_replicate(r, "1") if r.tube.file in (noisy, quiet) else r for r in base] + extra
    s = score_experiment(results, CFG)
    tubes = s.tubes.set_index("file")
    assert len(s.tubes) == len(base) + 3  # every replicate keeps its row
    assert list(tubes.loc[[quiet, "P1_none_a3_r2.fcs", "P1_none_a3_r3.fcs"], "replicate"]) == ["1", "2", "3"]
    assert set(tubes.loc[[quiet, "P1_none_a3_r2.fcs", "P1_none_a3_r3.fcs"], "replicate_n"]) == {3}
    assert tubes.loc[quiet, "replicate_cv_pct"] == 0.0
    assert "REPLICATE_CV_HIGH" not in tubes.loc[quiet, "qc_flags"]
    pair = tubes.loc[[noisy, "P1_none_a4_r2.fcs"]]
    a, b = pair["pct_cd63"]
    assert pair["replicate_mean_pct"].iloc[0] == pytest.approx((a + b) / 2)
    assert pair["replicate_cv_pct"].iloc[0] == pytest.approx(100 * np.std([a, b], ddof=1) / ((a + b) / 2))
    assert pair["replicate_cv_pct"].iloc[0] > 20
    assert all("REPLICATE_CV_HIGH" in f for f in pair["qc_flags"]) and set(pair["qc_status"]) == {"warn"}
    assert math.isnan(tubes.loc["P1_none_a0.fcs", "replicate_cv_pct"])
    assert "REPLICATE_CV_HIGH" in s.patients.iloc[0]["qc_flags"]
    fit = s.fits[("P1", "Bet v 1", "none")]
    assert len(fit.files) == len(CONC) + 3 and np.unique(fit.x).size == len(CONC)  # all replicates fitted
    # a limit above the pair's CV leaves it unflagged
    loose = AnalysisConfig(threshold=CFG.threshold, fit=CFG.fit,
                           qc=dataclasses.replace(CFG.qc, replicate_cv_max_pct=200.0))
    assert "REPLICATE_CV_HIGH" not in ";".join(score_experiment(results, loose).tubes["qc_flags"])


def test_single_tubes_get_no_replicate_columns():
    s = score_experiment(_patient(), CFG)
    assert not {"replicate_n", "replicate_mean_pct", "replicate_cv_pct"} & set(s.tubes.columns)


def test_a_simulated_cohort_in_mixed_units_gives_the_one_unit_classes():
    """Issue 13's closing check: the same cohort written in one unit and in mixed units (omalizumab arm in
    µg/mL; or the untreated arm in µg/mL, which then becomes the reference unit) gives equal classes and AUC
    inhibition for every patient; EC50s follow the reference unit."""
    from analysis_cohort import simulate_cohort  # tests/ is on sys.path (tests/conftest.py)

    results, _ = simulate_cohort(n_patients=5, seed=5)
    one = score_experiment(results).patients.set_index("patient")
    for arm, other in (("omalizumab", "none"), ("none", "omalizumab")):
        mixed = score_experiment(_in_units(results, arm, "µg/mL", 1e-3)).patients.set_index("patient")
        assert list(mixed["class"]) == list(one["class"])
        assert list(mixed["class_confidence"]) == list(one["class_confidence"])
        for col in ("auc_inhibition_pct", "auc_inhibition_ci_low", "auc_inhibition_ci_high"):
            assert np.array_equal(mixed[col].to_numpy(float), one[col].to_numpy(float), equal_nan=True), col
        scale = 1e-3 if arm == "none" else 1.0  # EC50s in the untreated arm's unit
        assert set(mixed["unit"]) == {"µg/mL" if arm == "none" else "ng/mL"}
        for col in ("ec50_none", "ec50_omalizumab"):
            np.testing.assert_allclose(mixed[col].to_numpy(float), one[col].to_numpy(float) * scale, rtol=1e-9)


def _renamed(results, rename):
    """The same tubes with their marker values under other names (``rename``: old -> new)."""
    for r in results:
        r.basophil_values = {rename.get(k, k): v for k, v in r.basophil_values.items()}
    return results


def test_a_cd69_experiment_is_scored_on_cd69_without_a_hidden_key():
    cfg = AnalysisConfig.from_mapping({"markers": {"activation": ["CD69"]}, "threshold": {"method": "percentile"},
                                       "fit": {"bootstrap_n": 0}})
    s = score_experiment(_renamed(_patient(), {"CD63": "CD69"}), cfg)
    reference = score_experiment(_patient(), CFG)
    columns = [c for c in reference.tubes.columns if c != "threshold_method"]
    assert s.tubes[columns].equals(reference.tubes[columns])  # the same numbers, now CD69's
    assert set(s.tubes.activation_marker) == {"CD69"} and "activation_marker" not in reference.tubes
    assert s.patients.loc[0, "class"] == reference.patients.loc[0, "class"] == "responder"
    assert set(s.tube_markers.marker) == {"CD69"} and s.tube_markers.primary.all()


def test_each_activation_marker_has_its_own_threshold_in_tube_markers():
    results = _patient()
    for r in results:  # CD69 is CD63 scaled 3-fold: its own threshold is 3 times CD63's, the same percentages
        r.basophil_values = {**r.basophil_values, "CD69": r.basophil_values["CD63"] * 3}
    cfg = AnalysisConfig.from_mapping({"markers": {"activation": ["CD69", "CD63"]},
                                       "threshold": {"method": "percentile"}, "fit": {"bootstrap_n": 0}})
    s = score_experiment(results, cfg)
    tm = s.tube_markers
    assert len(tm) == 2 * len(s.tubes) and list(tm.columns[:7]) == ["file", "patient", "condition", "allergen",
                                                                      "concentration", "pretreatment", "marker"]
    neg = tm[tm.file == "P1_none_neg.fcs"].set_index("marker")
    assert neg.loc["CD63", "threshold"] == pytest.approx(584.025)
    assert neg.loc["CD69", "threshold"] == pytest.approx(3 * 584.025)
    assert (neg.loc["CD69", "primary"], neg.loc["CD63", "primary"]) == (True, False)
    fceri = tm[tm.file == "P1_none_fceri.fcs"].set_index("marker")
    assert fceri.loc["CD69", "pct_positive"] == fceri.loc["CD63", "pct_positive"] == pytest.approx(60.0)
    assert fceri.loc["CD69", "pct_positive_ci_low"] < 60.0 < fceri.loc["CD69", "pct_positive_ci_high"]
    assert fceri.loc["CD63", "mfi"] == pytest.approx(5000.0) and fceri.loc["CD69", "mfi"] == pytest.approx(15000.0)
    assert fceri.loc["CD63", "si_mfi"] == pytest.approx(5000.0 / 299.5)
    t = s.tubes.set_index("file")
    # the primary marker fills the cd63_* columns (and says so); the other one has its own columns
    assert t.loc["P1_none_neg.fcs", "cd63_threshold"] == pytest.approx(3 * 584.025)
    assert t.loc["P1_none_neg.fcs", "activation_marker"] == "CD69"
    primary = AnalysisConfig.from_mapping({"markers": {"activation": ["CD69", "CD63"], "primary": "CD63"},
                                           "threshold": {"method": "percentile"}, "fit": {"bootstrap_n": 0}})
    t2 = score_experiment(results, primary).tubes.set_index("file")
    assert t2.loc["P1_none_neg.fcs", "cd63_threshold"] == pytest.approx(584.025)
    assert "activation_marker" not in t2.columns
    assert t2.loc["P1_none_neg.fcs", "cd69_threshold"] == pytest.approx(3 * 584.025)


def test_default_tube_markers_repeat_the_cd63_columns():
    s = score_experiment(_patient(), CFG)
    tm = s.tube_markers.set_index("file")
    t = s.tubes.set_index("file")
    assert list(tm.marker.unique()) == ["CD63"] and len(tm) == len(t)
    for col, mine in (("cd63_threshold", "threshold"), ("pct_cd63", "pct_positive"),
                      ("pct_cd63_ci_low", "pct_positive_ci_low"), ("net_pct_cd63", "net_pct_positive"),
                      ("si_cd63", "si")):
        assert np.allclose(t.loc[tm.index, col].astype(float), tm[mine].astype(float), equal_nan=True), col


def _excluded(r):
    from bat_analysis.analysis.score import EXCLUDED_FLAG
    from bat_analysis.records import Flag

    return dataclasses.replace(r, flags=[*r.flags, Flag(EXCLUDED_FLAG, "fail", "excluded by A on 2026-01-01: x")])


def test_a_tube_a_reviewer_excluded_keeps_its_row_and_is_used_for_nothing():
    # a positive control: a non-releaser's anti-FcεRI tubes excluded leave no IgE-pathway control to judge
    releaser = [r if r.tube.condition != "anti_fceri" else _excluded(_result(
        r.tube.file, "P1", "anti_fceri", r.tube.pretreatment, _values(3.0))) for r in _patient()]
    s = score_experiment(releaser, CFG)
    assert not s.patients.iloc[0]["class_reason"].startswith("basophil non-releaser")
    tubes = s.tubes.set_index("file")
    assert tubes.loc["P1_none_fceri.fcs", "qc_status"] == "fail"
    assert not math.isnan(tubes.loc["P1_none_fceri.fcs", "pct_cd63"])  # its numbers stay in its row
    # the negative control: no reference (the arm takes the other arm's, flagged)
    base = [_excluded(r) if r.tube.file == "P1_none_neg.fcs" else r for r in _patient()]
    s = score_experiment(base, CFG)
    assert s.references[("P1", "none")] == ("P1_omalizumab_neg.fcs",)
    assert "THRESHOLD_FROM_OTHER_ARM" in s.tubes.set_index("file").loc["P1_none_a3.fcs", "qc_flags"]
    # a replicate: not one of its group (the other keeps no replicate columns); an allergen tube: no fit point
    by_file = {r.tube.file: r for r in _patient()}
    noisy = "P1_none_a4.fcs"
    results = [_replicate(r, "1") if r.tube.file == noisy else r for r in _patient()]
    results.append(_excluded(_replicate(by_file[noisy], "2", "P1_none_a4_r2.fcs", _values(30.0))))
    s = score_experiment(results, CFG)
    tubes = s.tubes.set_index("file")
    assert "replicate_cv_pct" not in tubes.columns  # no group left: no replicate columns
    assert "REPLICATE_CV_HIGH" not in tubes.loc[noisy, "qc_flags"]
    assert "P1_none_a4_r2.fcs" not in s.fits[("P1", "Bet v 1", "none")].files
