"""QC rules (docs/method.md, QC rules) at their boundaries, and the combination with gating flags."""

from __future__ import annotations

import math

import pytest

from bat_analysis.analysis.config import AnalysisConfig, QcConfig
from bat_analysis.analysis.metrics import MarkerMetrics
from bat_analysis.analysis.qc import (anti_fceri_flags, basophil_count_flags, draw_to_assay_flags, fmlp_flags,
                                      fraction_flags, negative_control_flags, status_of, tube_qc)
from bat_analysis.records import Flag, Tube, TubeResult

QC = QcConfig()


def _levels(flags):
    return [(f.code, f.severity) for f in flags]


@pytest.mark.parametrize("n, expected", [(199, [("LOW_BASOPHILS", "fail")]), (200, [("LOW_BASOPHILS", "warn")]),
                                         (499, [("LOW_BASOPHILS", "warn")]), (500, [])])
def test_basophil_count_boundaries(n, expected):
    assert _levels(basophil_count_flags(n, QC)) == expected


@pytest.mark.parametrize("key, value, expected", [
    ("acquisition_qc", 0.0999, []), ("acquisition_qc", 0.10, [("ACQUISITION_QC", "warn")]),
    ("acquisition_qc", 0.25, [("ACQUISITION_QC", "warn")]),
    ("acquisition_qc", 0.2501, [("ACQUISITION_QC", "fail")]),
    ("margin", 0.019, []), ("margin", 0.02, [("MARGIN_EVENTS", "warn")]), ("margin", 0.051, [("MARGIN_EVENTS", "fail")]),
    ("doublets", 0.099, []), ("doublets", 0.15, [("DOUBLETS", "warn")]), ("doublets", 0.21, [("DOUBLETS", "fail")]),
])
def test_event_fraction_boundaries(key, value, expected):
    assert _levels(fraction_flags({key: value}, QC)) == expected


def _m(pct, net, si, marker="CD63"):
    return MarkerMetrics(marker, 100.0, pct, net, si, None)


def test_negative_control_spontaneous_activation():
    assert negative_control_flags(_m(9.9, 0, 1), QC) == []
    assert _levels(negative_control_flags(_m(15.0, 0, 1), QC)) == [("HIGH_SPONTANEOUS", "warn")]
    assert _levels(negative_control_flags(_m(20.5, 0, 1), QC)) == [("HIGH_SPONTANEOUS", "fail")]


def test_fmlp_rule_needs_net_and_si():
    assert fmlp_flags(_m(12.0, 6.0, 2.0), QC) == []
    assert _levels(fmlp_flags(_m(20.0, 6.0, 1.4), QC)) == [("FMLP_NEGATIVE", "fail")]
    assert _levels(fmlp_flags(_m(6.0, 4.0, 3.0), QC)) == [("FMLP_NEGATIVE", "fail")]
    assert fmlp_flags(_m(6.0, 6.0, math.nan), QC) == []  # negative control 0%: SI infinite


def test_anti_fceri_rule_and_non_releaser():
    assert anti_fceri_flags(_m(40, 10.0, 5), QC, True) == []
    assert _levels(anti_fceri_flags(_m(12, 7.0, 5), QC, True)) == [("ANTI_FCERI_LOW", "warn")]
    assert _levels(anti_fceri_flags(_m(5, 2.0, 1), QC, True)) == [("NON_RELEASER", "fail")]
    assert _levels(anti_fceri_flags(_m(5, 2.0, 1), QC, False)) == [("ANTI_FCERI_NEGATIVE", "fail")]


def test_draw_to_assay_from_layout_columns():
    assert draw_to_assay_flags({}, QC) == []
    ok = {"draw_time": "2026-03-01 08:00", "assay_time": "2026-03-01 11:30"}
    assert draw_to_assay_flags(ok, QC) == []
    late = {"draw_time": "2026-03-01 08:00", "assay_time": "2026-03-01 20:00"}
    assert _levels(draw_to_assay_flags(late, QC)) == [("DRAW_TO_ASSAY", "warn")]
    assert "12.0 h" in draw_to_assay_flags(late, QC)[0].message
    assert _levels(draw_to_assay_flags({"draw_to_assay_h": "30"}, QC)) == [("DRAW_TO_ASSAY", "fail")]
    assert _levels(draw_to_assay_flags({"draw_to_assay_h": "soon"}, QC)) == [("DRAW_TIME_UNREADABLE", "warn")]
    assert _levels(draw_to_assay_flags({"draw_time": "x", "assay_time": "y"}, QC)) == [
        ("DRAW_TIME_UNREADABLE", "warn")]


def test_spillover_and_gating_flags_combined():
    tube = Tube("t.fcs", "P1", "allergen", "none", "A", 1.0, "ng/mL")
    r = TubeResult(tube, n_events=1000, n_basophils=800, has_spillover=False, n_fluorescent_markers=3,
                   event_fractions={"acquisition_qc": 0.01, "margin": 0.0, "doublets": 0.05},
                   flags=[Flag("ONE_PEAK", "warn", "one density peak on SSC")])
    q = tube_qc(r, _m(30, 25, 10), AnalysisConfig())
    assert q.status == "fail"
    assert q.codes == "ONE_PEAK;NO_SPILLOVER"
    assert "values are not compensated" in q.reasons


def test_errored_tube_fails_with_reason():
    r = TubeResult(Tube("bad.fcs", "P1", "fmlp"), error="truncated DATA segment")
    q = tube_qc(r, None, AnalysisConfig())
    assert q.status == "fail" and q.codes == "NOT_GATED" and "truncated DATA segment" in q.reasons


def test_status_of():
    assert status_of([]) == "pass"
    assert status_of([Flag("A", "warn", "")]) == "warn"
    assert status_of([Flag("A", "warn", ""), Flag("B", "fail", "")]) == "fail"
