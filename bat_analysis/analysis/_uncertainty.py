"""Uncertainty of the numbers a class is judged on (docs/method.md, "Uncertainty").

* Per tube: ``proportion_interval`` — the Wilson score interval of %positive on the tube's basophil count
  (scipy's ``binomtest(...).proportion_ci``), so a tube of 180 basophils carries a wider interval than one
  of 1,000.
* Per patient × allergen: ``auc_inhibition_interval`` — a seeded, reproducible bootstrap over each tube's
  basophils through the whole computation: each replicate resamples the negative control of both arms and
  re-derives its threshold by the same method (``threshold.rethreshold``), resamples every allergen tube's
  basophils (drawn as Binomial(n, fraction above the replicate's threshold), which is a nonparametric
  resample of the tube's events counted against that threshold), recomputes net %positive, the AUC of
  both arms over their shared concentrations and the AUC inhibition. The interval is the percentile
  interval of the replicates.
* ``class_confidence``: ``high`` when the interval lies inside one class and every arm rests on at least
  ``classes.min_concentrations_confident`` concentrations; ``borderline`` otherwise. The class itself stays
  the point estimate's.

Same inputs → same numbers: the generator is seeded from ``fit.bootstrap_seed`` and the patient/allergen.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bat_analysis.analysis.config import AnalysisConfig, ClassConfig
from bat_analysis.analysis.omalizumab import inhibition_pct, mean_by_x, shared_aucs
from bat_analysis.analysis.threshold import ThresholdEstimate, rethreshold

NAN = float("nan")


def proportion_interval(k: int, n: int, level: float = 95.0) -> tuple[float, float]:
    """Wilson score interval of ``k`` positive of ``n``, in percent; (NaN, NaN) when ``n`` is 0."""
    if n <= 0:
        return NAN, NAN
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level / 100.0, method="wilson")
    return 100.0 * float(ci.low), 100.0 * float(ci.high)


@dataclass
class ArmSample:
    """What one arm's AUC rests on: its negative control's values and threshold, and its allergen tubes."""

    reference: np.ndarray  # the negative control's activation-marker values (pooled when several)
    threshold: ThresholdEstimate
    tubes: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (concentration, basophil values)


def _net_by_x(arm: ArmSample, rng: np.random.Generator, config: AnalysisConfig) -> dict[float, float] | None:
    ref = arm.reference[rng.integers(0, arm.reference.size, arm.reference.size)]
    t = rethreshold(arm.threshold, ref, config.threshold)
    if math.isnan(t):
        return None
    neg = 100.0 * np.count_nonzero(ref > t) / ref.size
    conc, net = [], []
    for c, values in arm.tubes:
        n = values.size
        above = n - int(np.searchsorted(values, t, side="right"))  # values are sorted
        pct = 100.0 * rng.binomial(n, above / n) / n
        conc.append(c)
        net.append(pct - neg)
    return mean_by_x(np.asarray(conc), np.asarray(net))


def auc_inhibition_interval(none: ArmSample, omalizumab: ArmSample, config: AnalysisConfig, key: str
                            ) -> tuple[float, float, int]:
    """(low, high, usable replicates) of the bootstrap percentile interval of AUC inhibition (%).

    ``key`` (e.g. "patient/allergen") seeds the generator together with ``fit.bootstrap_seed``. Replicates
    whose untreated AUC is 0 (inhibition undefined) are left out; fewer than half usable → (NaN, NaN, n).
    """
    fc = config.fit
    n_boot = fc.inhibition_bootstrap_n
    if n_boot <= 0 or not none.tubes or not omalizumab.tubes:
        return NAN, NAN, 0
    rng = np.random.default_rng([fc.bootstrap_seed, zlib.crc32(key.encode("utf-8"))])
    arms = [ArmSample(np.asarray(a.reference, dtype=np.float64), a.threshold,
                      [(c, np.sort(np.asarray(v, dtype=np.float64))) for c, v in a.tubes if np.size(v)])
            for a in (none, omalizumab)]
    draws = []
    for _ in range(n_boot):
        a = _net_by_x(arms[0], rng, config)
        b = _net_by_x(arms[1], rng, config)
        if a is None or b is None:
            continue
        _, auc_a, auc_b = shared_aucs(a, b, clip_negative=fc.auc_clip_negative)
        value = inhibition_pct(auc_b, auc_a)
        if not math.isnan(value):
            draws.append(value)
    if len(draws) < n_boot / 2:
        return NAN, NAN, len(draws)
    tail = (100.0 - fc.ci_level) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high), len(draws)


CLASS_BANDS = ("non_responder", "partial_responder", "responder")


def class_of(value: float, config: ClassConfig) -> str:
    """The band of ``value`` (AUC inhibition %) among the three evaluable classes."""
    if value >= config.responder_min:
        return "responder"
    if value >= config.partial_min:
        return "partial_responder"
    return "non_responder"


def class_confidence(low: float, high: float, n_concentrations: Sequence[int], config: ClassConfig, *,
                     level: float = 95.0) -> tuple[str, str]:
    """(``high`` | ``borderline``, the sentence saying why) for an evaluable class; ``n_concentrations`` is
    the number of concentrations each arm's series rests on, ``level`` the interval's level (%)."""
    few = min(n_concentrations) if n_concentrations else 0
    if math.isnan(low) or math.isnan(high):
        return "borderline", "no interval for the AUC inhibition"
    lo_class, hi_class = class_of(low, config), class_of(high, config)
    interval = f"{level:g}% CI {low:.1f}–{high:.1f}%"
    if few < config.min_concentrations_confident:
        return "borderline", (f"{interval}; an arm rests on {few} concentration(s), fewer than "
                              f"{config.min_concentrations_confident}")
    if lo_class != hi_class:
        spans = CLASS_BANDS[CLASS_BANDS.index(lo_class):CLASS_BANDS.index(hi_class) + 1]
        return "borderline", f"{interval} spans {' and '.join(spans)}"
    return "high", f"{interval} inside the {lo_class} range"
