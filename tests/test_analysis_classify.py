"""Responder classes (docs/method.md, Responder classes): order of the rules, boundaries, reasons, cohort-relative
mode; config."""

from __future__ import annotations

import math

import pytest

from bat_analysis.analysis.classify import classify, cohort_classes
from bat_analysis.analysis.config import AnalysisConfig, ClassConfig
from bat_analysis.errors import AnalysisError


@pytest.mark.parametrize("value, label", [(80.0, "responder"), (79.99, "partial_responder"),
                                          (20.0, "partial_responder"), (19.99, "non_responder"),
                                          (-15.0, "non_responder")])
def test_class_boundaries(value, label):
    assert classify(untreated_positive=True, auc_inhibition_pct=value).label == label


def test_reason_states_numbers_and_rule():
    assert classify(untreated_positive=True, auc_inhibition_pct=91.04).reason == "AUC inhibition 91.0% ≥ 80%"
    d = classify(untreated_positive=True, auc_inhibition_pct=50.0, config=ClassConfig(responder_min=45))
    assert (d.label, d.reason) == ("responder", "AUC inhibition 50.0% ≥ 45%")


def test_not_evaluable_rules_come_first_in_order():
    d = classify(qc_failures=["negative control n.fcs: 120 basophils < 200"], non_releaser="x",
                 untreated_positive=True, auc_inhibition_pct=95.0)
    assert d.label == "not_evaluable" and d.reason.startswith("QC failed: negative control n.fcs")
    d = classify(non_releaser="fMLP net 30% but anti-FcεRI net 1%", untreated_positive=False,
                 auc_inhibition_pct=95.0)
    assert d.reason.startswith("basophil non-releaser")
    d = classify(untreated_positive=False, untreated_reason="maximum net 3.0% < 5%", auc_inhibition_pct=95.0)
    assert d.label == "not_evaluable" and "negative at every concentration" in d.reason
    d = classify(untreated_positive=True, auc_inhibition_pct=math.nan, inhibition_reason="no omalizumab arm")
    assert (d.label, d.reason) == ("not_evaluable", "AUC inhibition undefined: no omalizumab arm")


def test_cohort_median_and_tertiles():
    values = [10.0, 50.0, math.nan, 90.0, 30.0]
    med = cohort_classes(values, "median")  # median of 10, 30, 50, 90 = 40
    assert [d.label if d else None for d in med] == ["below_median", "above_median", None, "above_median",
                                                     "below_median"]
    assert "cohort median 40.0%" in med[0].reason
    ter = cohort_classes([0.0, 10.0, 20.0, 30.0, 40.0, 50.0], "tertiles")
    assert [d.label for d in ter] == ["low_tertile", "low_tertile", "middle_tertile", "middle_tertile",
                                      "high_tertile", "high_tertile"]
    with pytest.raises(AnalysisError, match="cohort_mode"):
        cohort_classes([1.0], "quartiles")


def test_config_defaults_are_the_spec_values():
    c = AnalysisConfig()
    assert c.threshold.percentile == 97.5
    assert (c.positivity.net_pct_min, c.positivity.require_si, c.positivity.si_min) == (5.0, False, 2.0)
    assert (c.qc.basophils_fail_below, c.qc.basophils_pass_min) == (200, 500)
    assert (c.qc.negative_warn_pct, c.qc.negative_fail_pct) == (10.0, 20.0)
    assert (c.qc.draw_to_assay_pass_h, c.qc.draw_to_assay_fail_h) == (4.0, 24.0)
    assert (c.fit.bottom_min, c.fit.bottom_max, c.fit.top_min, c.fit.top_max) == (0.0, 25.0, 0.0, 100.0)
    assert (c.classes.responder_min, c.classes.partial_min) == (80.0, 20.0)


def test_config_from_mapping_and_round_trip():
    c = AnalysisConfig.from_mapping({"threshold": {"percentile": 95}, "positivity": {"require_si": True},
                                     "markers": {"degranulation": "CD107a"}})
    assert c.threshold.percentile == 95.0 and c.positivity.require_si is True
    assert c.markers.degranulation == ("CD107a",)
    assert AnalysisConfig.from_mapping(c.to_dict()) == c
    assert AnalysisConfig.from_mapping(None) == AnalysisConfig()


def test_config_errors_name_every_key():
    with pytest.raises(AnalysisError) as err:
        AnalysisConfig.from_mapping({"qc": {"bogus": 1, "margin_warn_pct": "x"}, "fit": {"bootstrap_n": 1.5},
                                     "classes": {"partial_min": 90}, "extra": {}}, source="t.yaml")
    text = str(err.value)
    for key in ("analysis.qc.bogus: unknown key", "analysis.qc.margin_warn_pct: expected a number",
                "analysis.fit.bootstrap_n: expected a whole number", "analysis.extra: unknown section",
                "analysis.classes.partial_min: 90.0 must not exceed analysis.classes.responder_min"):
        assert key in text
    assert text.startswith("t.yaml")
    with pytest.raises(AnalysisError, match="threshold.percentile"):
        AnalysisConfig.from_mapping({"threshold": {"percentile": 100}})
    with pytest.raises(AnalysisError, match="expected a mapping"):
        AnalysisConfig.from_mapping({"qc": [1, 2]})
