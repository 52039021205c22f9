"""Responder classes (docs/method.md, Responder classes), in order, each with the numbers and the rule that decided it.

1. ``not_evaluable``: QC failed; basophil non-releaser; untreated allergen series negative at every
   concentration; inhibition undefined.
2. ``responder``: AUC inhibition ≥ responder_min; 3. ``partial_responder``: partial_min ≤ … < responder_min;
4. ``non_responder``: < partial_min.
A cohort-relative mode (median split or tertiles of inhibition among evaluable patients) is for research.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bat_analysis.analysis.config import ClassConfig
from bat_analysis.errors import AnalysisError

CLASSES = ("not_evaluable", "responder", "partial_responder", "non_responder")


@dataclass(frozen=True)
class ClassDecision:
    """A class and the sentence that justifies it."""

    label: str
    reason: str


def classify(*, qc_failures: Sequence[str] = (), non_releaser: str | None = None,
             untreated_positive: bool | None = None, untreated_reason: str = "",
             auc_inhibition_pct: float = math.nan, inhibition_reason: str = "",
             config: ClassConfig | None = None) -> ClassDecision:
    """The class of one patient × allergen; rules in the order of docs/method.md, Responder classes."""
    cfg = config or ClassConfig()
    if qc_failures:
        return ClassDecision("not_evaluable", "QC failed: " + "; ".join(qc_failures))
    if non_releaser:
        return ClassDecision("not_evaluable", f"basophil non-releaser: {non_releaser}")
    if untreated_positive is False:
        return ClassDecision("not_evaluable", "untreated allergen series negative at every concentration"
                             + (f" ({untreated_reason})" if untreated_reason else ""))
    if untreated_positive is None:
        return ClassDecision("not_evaluable", "no untreated allergen series"
                             + (f": {untreated_reason}" if untreated_reason else ""))
    if math.isnan(auc_inhibition_pct):
        return ClassDecision("not_evaluable", "AUC inhibition undefined"
                             + (f": {inhibition_reason}" if inhibition_reason else ""))
    v = auc_inhibition_pct
    if v >= cfg.responder_min:
        return ClassDecision("responder", f"AUC inhibition {v:.1f}% ≥ {cfg.responder_min:g}%")
    if v >= cfg.partial_min:
        return ClassDecision("partial_responder",
                             f"AUC inhibition {v:.1f}% in [{cfg.partial_min:g}%, {cfg.responder_min:g}%)")
    return ClassDecision("non_responder", f"AUC inhibition {v:.1f}% < {cfg.partial_min:g}%")


def cohort_classes(inhibition: Sequence[float], mode: str) -> list[ClassDecision | None]:
    """Cohort-relative labels for research: ``median`` → above/below the cohort median; ``tertiles`` →
    low/middle/high tertile. NaN entries (not evaluable) get None. Cut points are stated in the reasons."""
    values = np.asarray(inhibition, dtype=np.float64)
    ok = np.isfinite(values)
    out: list[ClassDecision | None] = [None] * values.size
    if not ok.any() or mode == "none":
        return out
    if mode == "median":
        med = float(np.median(values[ok]))
        for i in np.nonzero(ok)[0]:
            v = float(values[i])
            if v >= med:
                out[i] = ClassDecision("above_median", f"AUC inhibition {v:.1f}% ≥ cohort median {med:.1f}%")
            else:
                out[i] = ClassDecision("below_median", f"AUC inhibition {v:.1f}% < cohort median {med:.1f}%")
        return out
    if mode == "tertiles":
        t1, t2 = (float(q) for q in np.percentile(values[ok], [100.0 / 3.0, 200.0 / 3.0]))
        for i in np.nonzero(ok)[0]:
            v = float(values[i])
            if v < t1:
                out[i] = ClassDecision("low_tertile", f"AUC inhibition {v:.1f}% < 1st tertile {t1:.1f}%")
            elif v < t2:
                out[i] = ClassDecision("middle_tertile",
                                       f"AUC inhibition {v:.1f}% in [{t1:.1f}%, {t2:.1f}%) (cohort tertiles)")
            else:
                out[i] = ClassDecision("high_tertile", f"AUC inhibition {v:.1f}% ≥ 2nd tertile {t2:.1f}%")
        return out
    raise AnalysisError(f"unknown cohort mode {mode!r}", field="classes.cohort_mode",
                        expected="none, median or tertiles")
