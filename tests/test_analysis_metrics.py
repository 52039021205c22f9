"""Per-tube formulas (docs/method.md, Per-tube metrics) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bat_analysis.analysis.config import AnalysisConfig, PositivityConfig
from bat_analysis.analysis.metrics import (ArmReference, is_positive, net_pct, pct_above, ratio,
                                           tube_metrics)
from bat_analysis.analysis.threshold import ThresholdEstimate


def test_pct_above_is_strict_and_counts_exactly():
    values = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
    assert pct_above(values, 6.0) == 25.0  # 7 and 8 of 8; 6 itself is not above
    assert pct_above(values, 0.0) == 100.0
    assert math.isnan(pct_above(np.array([]), 1.0))


def test_net_and_si_hand_computed():
    assert net_pct(32.5, 2.5) == 30.0
    assert ratio(32.5, 2.5) == 13.0
    assert math.isnan(ratio(5.0, 0.0))


def test_positivity_rules():
    cfg = PositivityConfig()
    assert is_positive(5.0, 1.5, 7.0, cfg) is True  # net ≥ 5, SI optional by default
    assert is_positive(4.99, 10.0, 6.0, cfg) is False
    strict = PositivityConfig(require_si=True)
    assert is_positive(6.0, 1.9, 12.0, strict) is False
    assert is_positive(6.0, 2.0, 12.0, strict) is True
    assert is_positive(6.0, float("nan"), 6.0, strict) is True  # negative control at 0%: SI infinite
    assert is_positive(float("nan"), 1.0, 1.0, cfg) is None


def _reference(threshold: float, neg_pct: float, mfi: float) -> ArmReference:
    return ArmReference(thresholds={"CD63": ThresholdEstimate(threshold, "percentile")},
                        negative_pct={"CD63": neg_pct}, mfi=ThresholdEstimate(mfi, "median", marker="CD203c"))


def test_tube_metrics_hand_computed():
    values = {"cd63": np.array([100, 200, 900, 1000, 1100], dtype=np.float32),  # key case differs
              "CD203c": np.array([10, 20, 30, 40, 50], dtype=np.float32)}
    m = tube_metrics(values, 5, _reference(850.0, 4.0, 15.0), AnalysisConfig())
    cd63 = m.get("CD63")
    assert cd63.pct == 60.0
    assert cd63.net_pct == 56.0
    assert cd63.si == 15.0
    assert cd63.positive is True
    assert m.mfi == 30.0  # median
    assert m.si_mfi == 2.0
    assert m.flags == []


def test_si_undefined_is_flagged_not_silent():
    values = {"CD63": np.array([1, 2, 3, 100], dtype=np.float32)}
    m = tube_metrics(values, 4, _reference(50.0, 0.0, 1.0), AnalysisConfig())
    assert m.get("CD63").pct == 25.0
    assert math.isnan(m.get("CD63").si)
    assert [f.code for f in m.flags] == ["SI_UNDEFINED_CD63"]


def test_missing_activation_marker_fails():
    m = tube_metrics({"CD203c": np.ones(3)}, 3, _reference(1.0, 1.0, 1.0), AnalysisConfig())
    assert [(f.code, f.severity) for f in m.flags] == [("MARKER_MISSING", "fail")]


@pytest.mark.parametrize("marker", ["CD107a", "avidin"])
def test_other_degranulation_markers_reported_like_cd63(marker):
    ref = _reference(10.0, 10.0, 1.0)
    ref.thresholds[marker] = ThresholdEstimate(5.0, "percentile", marker=marker)
    ref.negative_pct[marker] = 20.0
    values = {"CD63": np.arange(20, dtype=np.float32), marker: np.array([1, 6, 7, 8, 9], dtype=np.float32)}
    m = tube_metrics(values, 5, ref, AnalysisConfig())
    other = m.get(marker)
    assert (other.pct, other.net_pct, other.si) == (80.0, 60.0, 4.0)
