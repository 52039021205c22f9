"""DeLong's nonparametric AUC variance and paired test, by the fast algorithm of Sun & Xu (2014).

Contract:

- ``delong_auc(scores, labels)`` → ``DelongAuc(auc, variance, ci_low, ci_high, n_positive, n_negative)``:
  the empirical AUC (ties count ½, so it equals the Mann–Whitney statistic divided by m·n and scikit-learn's
  ``roc_auc_score``), DeLong's variance ``S10/m + S01/n`` from the structural components, and the 95% interval
  ``auc ± z(0.975)·√variance`` (as pROC's ``ci.auc(method="delong")``), clipped to [0, 1].
- ``delong_paired(scores_a, scores_b, labels)`` → ``DelongPaired(auc_a, auc_b, difference, z, p_value,
  ci_low, ci_high)`` for two predictors measured on the same patients: ``Z = (A_a − A_b)/√(V_a + V_b − 2C)``
  with the covariance C of the structural components; p two-sided; the 95% interval of the difference
  ``A_a − A_b ± z(0.975)·√(…)`` — pROC's ``roc.test(method="delong", paired=TRUE)``.

``labels`` are booleans (True = positive class); ``scores`` are oriented so that higher means positive (flip the
sign of a predictor first when lower values mean positive). Missing scores are not accepted here: the caller
drops incomplete patients (for a paired test, patients missing either predictor). Raises ``AnalysisError``
when either class is empty or the inputs differ in length. With a single patient in a class the variance cannot be
estimated: variance, interval, Z and p are NaN (the AUC is still given). A zero variance (e.g. two identical
predictors) gives Z = 0 and p = 1 when the AUCs are equal.

Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
operating characteristic curves. IEEE Signal Process Lett 2014;21:1389–93. doi:10.1109/LSP.2014.2337313.
DeLong ER, DeLong DM, Clarke-Pearson DL. Biometrics 1988;44:837–45. This is written here because neither
scipy, statsmodels nor scikit-learn provide DeLong intervals or the paired test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from ..errors import AnalysisError

__all__ = ["DelongAuc", "DelongPaired", "delong_auc", "delong_paired"]

Z975 = float(norm.ppf(0.975))


@dataclass(frozen=True)
class DelongAuc:
    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int


@dataclass(frozen=True)
class DelongPaired:
    auc_a: float
    auc_b: float
    difference: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Scores (k × N) reordered positives first; returns (ordered, m positives, n negatives)."""
    labels = np.asarray(labels, dtype=bool)
    if scores.shape[1] != labels.shape[0]:
        raise AnalysisError("scores and outcome differ in length",
                            expected=f"{labels.shape[0]} scores, got {scores.shape[1]}")
    if not np.all(np.isfinite(scores)):
        raise AnalysisError("a score is missing or not finite", expected="finite numbers only")
    m = int(labels.sum())
    n = int(labels.size - m)
    if m == 0 or n == 0:
        raise AnalysisError("the outcome has a single class", expected="at least one positive and one negative")
    ordered = np.concatenate([scores[:, labels], scores[:, ~labels]], axis=1)
    return ordered, m, n


def _fast_delong(ordered: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Sun & Xu: AUCs (k) and their covariance (k × k) from midranks; positives are the first m columns."""
    k, total = ordered.shape
    n = total - m
    pos = ordered[:, :m]
    neg = ordered[:, m:]
    tx = np.vstack([rankdata(pos[r]) for r in range(k)])  # midranks within positives
    ty = np.vstack([rankdata(neg[r]) for r in range(k)])  # midranks within negatives
    tz = np.vstack([rankdata(ordered[r]) for r in range(k)])  # midranks in the pooled sample
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # … and of the negatives
    if m < 2 or n < 2:  # a class with one patient: its structural components have no variance estimate
        return aucs, np.full((k, k), np.nan)
    sx = np.atleast_2d(np.cov(v01))
    sy = np.atleast_2d(np.cov(v10))
    return aucs, sx / m + sy / n


def delong_auc(scores, labels) -> DelongAuc:
    """AUC of one predictor with DeLong's variance and 95% interval (see the module contract)."""
    s = np.asarray(scores, dtype=float).reshape(1, -1)
    ordered, m, n = _split(s, labels)
    aucs, cov = _fast_delong(ordered, m)
    auc = float(aucs[0])
    var = float(cov[0, 0])
    if math.isnan(var):
        return DelongAuc(auc=auc, variance=var, ci_low=math.nan, ci_high=math.nan, n_positive=m, n_negative=n)
    half = Z975 * math.sqrt(max(var, 0.0))
    return DelongAuc(auc=auc, variance=var, ci_low=max(0.0, auc - half), ci_high=min(1.0, auc + half),
                     n_positive=m, n_negative=n)


def delong_paired(scores_a, scores_b, labels) -> DelongPaired:
    """DeLong's test of two correlated AUCs on the same patients (see the module contract)."""
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise AnalysisError("the two predictors differ in length", expected="one value per patient for both")
    ordered, m, _n = _split(np.vstack([a, b]), labels)
    aucs, cov = _fast_delong(ordered, m)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if math.isnan(var):
        z = p = half = math.nan
    elif var <= 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0.0 else 0.0
        half = 0.0
    else:
        sd = math.sqrt(var)
        z = diff / sd
        p = float(2.0 * norm.sf(abs(z)))
        half = Z975 * sd
    return DelongPaired(auc_a=float(aucs[0]), auc_b=float(aucs[1]), difference=diff, z=z, p_value=p,
                        ci_low=diff - half, ci_high=diff + half)
