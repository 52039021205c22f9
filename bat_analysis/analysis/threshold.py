"""Activation thresholds from the negative control (docs/method.md, Activation threshold).

The default is the empirical 97.5th percentile of the negative control's basophils (compensated linear
values), so that 2.5% of resting basophils lie above it. When the negative control holds a separate
activated population larger than that 2.5%, the percentile falls inside it; the activated events are then
set aside and the threshold is the same 97.5th percentile of the resting events alone — flagged
``RESTING_PEAK_THRESHOLD``. The activated events are those above a cut (``resting_peak_model``): the valley
between the two populations of the mixture test below, or, when the model is requested for a control without
them, 3 SD above the resting peak (a Gaussian on an arcsinh scale fitted to its lower quantiles). The
resting events' own percentile, not that Gaussian's 97.5% quantile: extrapolated from the lower half of a
few hundred events, the Gaussian's upper quantile scatters widely (and is biased by any skew of the peak).

When the model is used is a stated statistical criterion (``activated_population``): on the arcsinh scale a
two-component Gaussian mixture must beat one Gaussian by ``mixture_min_bic_delta`` of BIC, its two components
must be separated by Ashman's D ≥ ``mixture_min_separation`` with a valley between them (the fitted mixture
has two modes), and the upper component must hold at least ``mixture_min_weight_pct`` % of the events. A
unimodal control — skewed or heavy-tailed included — and a small spontaneously activated tail keep the plain
percentile (docs/method.md, "Activation threshold").

``select_reference`` applies the rule "same patient and arm; the patient's other negative control when
one arm lacks it" (flagged ``THRESHOLD_FROM_OTHER_ARM``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import math

import numpy as np
from scipy import special, stats

from bat_analysis.analysis.config import ThresholdConfig
from bat_analysis.errors import AnalysisError
from bat_analysis.records import Flag, TubeResult

METHODS = ("percentile", "resting_peak", "median", "manual")
NAN = float("nan")
# the standard normal's probability above 3 SD (stats.norm.sf(3.0), which costs ~20 us of argument checks per call,
# in a fit iterated up to 8 times per control); its quantiles are special.ndtri (stats.norm.ppf's)
_NORMAL_TAIL_3SD = float(special.ndtr(-3.0))


@dataclass
class ThresholdEstimate:
    """A threshold (or, for MFI markers, a reference median) in compensated linear units.

    ``method`` is ``percentile``, ``resting_peak``, ``median`` (MFI reference) or ``manual`` (reviewer);
    ``diagnostics`` holds what was measured (mode, resting SD, fraction above the resting model, peaks).
    """

    value: float
    method: str
    flags: list[Flag] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    marker: str = "CD63"
    n_events: int = 0
    reference_files: tuple[str, ...] = ()
    reference_arm: str | None = None


@dataclass
class ReferenceChoice:
    """The negative-control tubes that serve as reference for one patient and arm."""

    tubes: list[TubeResult]
    arm: str | None
    flags: list[Flag] = field(default_factory=list)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(r.tube.file for r in self.tubes)


def _clean(values: Any, marker: str) -> tuple[np.ndarray, list[Flag]]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(arr)
    flags: list[Flag] = []
    if not finite.all():
        dropped = int((~finite).sum())
        flags.append(Flag("NONFINITE_REFERENCE_VALUES", "warn",
                          f"{dropped} {marker} value(s) of the negative control were not finite and were ignored"))
        arr = arr[finite]
    if arr.size == 0:
        raise AnalysisError("no finite values in the negative control", field=marker,
                            expected="at least one basophil")
    return arr, flags


def _cofactor(values: np.ndarray, config: ThresholdConfig) -> float:
    """The arcsinh cofactor: the configured one, or (0 = auto) one that keeps the resting peak's lower
    tail on a log-like scale while leaving the spread of negative compensated values linear."""
    if config.asinh_cofactor > 0:
        return float(config.asinh_cofactor)
    centre = float(np.median(np.abs(values)))
    negative_spread = float(max(-np.quantile(values, 0.005), 0.0))
    return max(centre / 20.0, 2.0 * negative_spread, 1e-3)


def activated_population(z: np.ndarray, config: ThresholdConfig) -> dict[str, Any]:
    """Does the negative control hold a separate activated population? (values on the arcsinh scale)

    Fits one and two Gaussians (scikit-learn ``GaussianMixture``, deterministic starts) and returns the
    evidence: ``bic_delta`` = BIC(1) − BIC(2), the upper component's ``weight`` and ``mean``/``sd`` of both,
    Ashman's ``separation`` D = √2·|μ₂ − μ₁| / √(σ₁² + σ₂²), the number of ``modes`` of the fitted mixture
    density (with two, ``valley``: the density's lowest point between the components' means), and ``present``
    — True only when the criteria of ``config`` hold and the fitted mixture has two modes (a skewed single
    peak is also fitted better by two overlapping Gaussians, with one mode).
    Controls larger than ``mixture_max_events`` are subsampled (seeded).
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(z, dtype=np.float64)
    if x.size > config.mixture_max_events:
        x = np.random.default_rng(x.size).choice(x, size=config.mixture_max_events, replace=False)
    x = x.reshape(-1, 1)
    one = GaussianMixture(1, random_state=0).fit(x)
    best = None
    for upper_q in (0.99, 0.9):  # starts: the mode and a high quantile, for small and large upper populations
        means = np.quantile(x, [0.5, upper_q]).reshape(-1, 1)
        if means[1, 0] <= means[0, 0]:
            continue
        two = GaussianMixture(2, random_state=0, means_init=means, max_iter=200, reg_covar=1e-6).fit(x)
        if best is None or two.lower_bound_ > best.lower_bound_:
            best = two
    out: dict[str, Any] = {"test": "two-component Gaussian mixture vs one (BIC)", "n": int(x.shape[0])}
    if best is None:
        out.update(present=False, reason="no spread above the median")
        return out
    order = np.argsort(best.means_.ravel())
    mu = best.means_.ravel()[order]
    sd = np.sqrt(best.covariances_.ravel()[order])
    weight = best.weights_[order]
    bic_delta = float(one.bic(x) - best.bic(x))
    separation = float(math.sqrt(2.0) * (mu[1] - mu[0]) / math.sqrt(sd[0] ** 2 + sd[1] ** 2))
    # a skewed single peak is also fitted better by two overlapping Gaussians: the fitted mixture must itself
    # have two modes (a valley between the components), not one peak with a shoulder
    grid = np.linspace(mu[0] - sd[0], mu[1] + sd[1], 1024)
    density = (weight[None, :] * stats.norm.pdf(grid[:, None], mu[None, :], sd[None, :])).sum(axis=1)
    modes = int(np.count_nonzero((density[1:-1] > density[:-2]) & (density[1:-1] >= density[2:])))
    present = (bic_delta >= config.mixture_min_bic_delta and separation >= config.mixture_min_separation
               and modes >= 2 and weight[1] * 100.0 >= config.mixture_min_weight_pct)
    out.update(present=bool(present), bic_delta=bic_delta, separation=separation, modes=modes,
               weight=float(weight[1]), means=[float(v) for v in mu], sds=[float(v) for v in sd])
    if modes >= 2:  # the density's lowest point between the two components' means
        between = (grid >= mu[0]) & (grid <= mu[1])
        out["valley"] = float(grid[between][np.argmin(density[between])])
    return out


def _resting_fit(z: np.ndarray) -> tuple[float, float, float] | str:
    """(mu, sd, activated fraction) of the resting peak on the transformed scale, or the reason it fails.

    A probit regression of the lower quantiles (2%–45% of the resting events) on normal scores, iterated with
    the estimated fraction of events clearly above the resting peak (robust to ~50% activated events).
    """
    if z.size < 20 or float(np.ptp(z)) <= 0:
        return "fewer than 20 distinct negative-control events"
    frac = 0.0
    mu = sd = 0.0
    for _ in range(8):
        levels = np.linspace(0.02, 0.45, 24) * (1.0 - frac)
        quantiles = np.quantile(z, levels)
        scores = special.ndtri(levels / (1.0 - frac))  # the normal quantiles: stats.norm.ppf, without its checks
        sd, mu = (float(v) for v in np.polyfit(scores, quantiles, 1))
        if sd <= 0:
            break
        new = float(np.clip(np.mean(z > mu + 3.0 * sd) - _NORMAL_TAIL_3SD, 0.0, 0.5))
        if abs(new - frac) < 1e-4:
            frac = new
            break
        frac = new
    if sd <= 0:
        return "no spread in the lower part of the negative control"
    return mu, sd, frac


def _resting_percentile(values: np.ndarray, cut: float, percentile: float) -> float:
    """The ``percentile`` of the resting events: those at or below ``cut`` (linear; NaN when there are none)."""
    resting = values[values <= cut]
    return float(np.percentile(resting, percentile)) if resting.size else NAN


def resting_peak_model(values: np.ndarray, config: ThresholdConfig, percentile: float) -> dict[str, Any]:
    """The threshold of a negative control holding activated events: the percentile of its resting events.

    The resting peak is modelled as a Gaussian on an arcsinh scale, fitted to the lower part of the data
    (``_resting_fit``), and the ``activated_population`` test is run. The activated events are those above a
    ``cut``: the valley of the fitted two-component mixture when that test finds a separate activated
    population, else (the model requested for a control without one) 3 SD above the resting Gaussian. The
    threshold ``model_threshold`` is the ``percentile`` of the events at or below the cut — the plain rule
    applied to the resting events, which needs no assumption about the shape of the resting peak's upper tail.

    Returns diagnostics: ``mu``/``sd`` (transformed units), ``cut`` (linear) and ``cut_rule``,
    ``activated_fraction`` (share of events above the cut), ``model_threshold`` (linear), ``pct_above_model``,
    ``gaussian_quantile`` (the resting Gaussian's own quantile, for comparison), and ``mixture`` with
    ``bimodal`` (the test: is there a separate activated population?).
    """
    cof = _cofactor(values, config)
    z = np.arcsinh(values / cof)
    diag: dict[str, Any] = {"scale": f"asinh(x/{cof:.4g})", "cofactor": cof}
    fit = _resting_fit(z)
    if isinstance(fit, str):
        diag.update(usable=False, reason=fit)
        return diag
    mu, sd, _ = fit
    mixture = activated_population(z, config)
    if mixture["present"]:
        z_cut, rule = float(mixture["valley"]), "valley between the resting and activated populations"
    else:
        z_cut, rule = mu + 3.0 * sd, "3 SD above the resting peak"
    cut = float(np.sinh(z_cut) * cof)
    value = _resting_percentile(values, cut, percentile)
    if math.isnan(value):
        diag.update(usable=False, reason="no negative-control event below the activated population")
        return diag
    gaussian = float(np.sinh(mu + float(special.ndtri(percentile / 100.0)) * sd) * cof)
    diag.update(usable=True, mu=mu, sd=sd, mode_linear=float(np.sinh(mu) * cof), cut=cut, cut_rule=rule,
                activated_fraction=float(np.mean(values > cut)), model_threshold=value,
                pct_above_model=float(np.mean(values > value) * 100.0), expected_pct_above=100.0 - percentile,
                gaussian_quantile=gaussian, mixture=mixture, bimodal=bool(mixture["present"]))
    return diag


def rethreshold(estimate: ThresholdEstimate, values: np.ndarray, config: ThresholdConfig) -> float:
    """The threshold ``estimate``'s method gives on other values of the negative control (a bootstrap
    resample): the percentile; the percentile of the events at or below the resting-peak model's cut (the
    model's choice and its cut are kept, not re-estimated); or the reviewer's value unchanged. NaN when no
    event lies below the cut."""
    p = float(estimate.diagnostics.get("percentile", config.percentile))
    if estimate.method == "manual":
        return estimate.value
    if estimate.method == "resting_peak":
        return _resting_percentile(values, float(estimate.diagnostics["resting_model"]["cut"]), p)
    return float(np.percentile(values, p))


def estimate_threshold(negative_values: Any, *, percentile: float | None = None, method: str | None = None,
                       config: ThresholdConfig | None = None, marker: str = "CD63") -> ThresholdEstimate:
    """Threshold above which a basophil counts as activated, from the negative control's values.

    ``negative_values`` are the negative control basophils' values of the activation marker, compensated and
    untransformed (linear; ``TubeResult.basophil_values``); the threshold is returned in the same units.
    ``percentile`` is in percent (97.5 by default: 2.5% of resting basophils above the threshold; see
    docs/method.md, Activation threshold).
    ``method``: ``auto`` (percentile unless ``activated_population`` finds a separate activated population
    in the negative control), ``percentile`` or ``resting_peak``. Defaults come from ``config``.
    Raises ``AnalysisError`` when there is no finite value at all.
    """
    cfg = config or ThresholdConfig()
    p = cfg.percentile if percentile is None else float(percentile)
    how = cfg.method if method is None else method
    if how not in ("auto", "percentile", "resting_peak"):
        raise AnalysisError(f"unknown threshold method {how!r}", field="threshold.method",
                            expected="auto, percentile or resting_peak")
    if not 50.0 < p < 100.0:
        raise AnalysisError(f"percentile {p} out of range", field="threshold.percentile", expected="(50, 100)")
    values, flags = _clean(negative_values, marker)
    n = int(values.size)
    plain = float(np.percentile(values, p))
    diag: dict[str, Any] = {"percentile": p, "percentile_value": plain, "n": n}
    if n < cfg.min_events:
        flags.append(Flag("LOW_REFERENCE_EVENTS", "warn",
                          f"{marker} threshold from only {n} negative-control basophils "
                          f"(fewer than {cfg.min_events}): unreliable"))
    if how == "percentile":
        return ThresholdEstimate(plain, "percentile", flags, diag, marker, n)
    model = resting_peak_model(values, cfg, p)
    diag["resting_model"] = model
    if not model.get("usable"):
        if how == "resting_peak":
            flags.append(Flag("RESTING_PEAK_UNAVAILABLE", "warn",
                              f"{marker}: resting peak could not be modelled ({model.get('reason')}); "
                              f"{p:g}th percentile used"))
        return ThresholdEstimate(plain, "percentile", flags, diag, marker, n)
    if not (how == "resting_peak" or model["bimodal"]):
        return ThresholdEstimate(plain, "percentile", flags, diag, marker, n)
    mix = model["mixture"]
    if model["bimodal"]:
        reason = (f"a separate activated population ({100.0 * mix['weight']:.1f}% of events, Ashman's D "
                  f"{mix['separation']:.1f}, BIC in favour of two populations by {mix['bic_delta']:.0f})")
    else:
        reason = "resting-peak model requested"
    value = model["model_threshold"]
    flags.append(Flag("RESTING_PEAK_THRESHOLD", "warn",
                      f"{marker} negative control: {reason}; threshold {value:.4g}, the {p:g}th percentile of "
                      f"the resting events (the {100.0 * model['activated_fraction']:.1f}% above "
                      f"{model['cut']:.4g} set aside), instead of the plain {p:g}th percentile ({plain:.4g})"))
    return ThresholdEstimate(float(value), "resting_peak", flags, diag, marker, n)


def mfi_reference(negative_values: Any, *, marker: str = "CD203c") -> ThresholdEstimate:
    """The MFI reference of an expression marker: the median of the negative control (compensated linear)."""
    values, flags = _clean(negative_values, marker)
    return ThresholdEstimate(float(np.median(values)), "median", flags, {"n": int(values.size)}, marker,
                             int(values.size))


def manual_threshold(value: float, *, marker: str = "CD63", previous: ThresholdEstimate | None = None
                     ) -> ThresholdEstimate:
    """A reviewer's threshold; keeps the automated estimate it replaces in ``diagnostics``."""
    if not np.isfinite(value):
        raise AnalysisError(f"manual threshold {value!r} is not a finite number", field=marker,
                            expected="a compensated linear value")
    diag: dict[str, Any] = {}
    if previous is not None:
        diag = {"automated_value": previous.value, "automated_method": previous.method}
    est = ThresholdEstimate(float(value), "manual", [], diag, marker,
                            previous.n_events if previous else 0,
                            previous.reference_files if previous else (),
                            previous.reference_arm if previous else None)
    return est


def select_reference(negative_controls: Sequence[TubeResult], arm: str) -> ReferenceChoice:
    """Pick a patient's reference negative control(s) for ``arm``.

    Same arm first; the patient's other arm when this arm has no usable negative control (flagged);
    none at all → a fail flag and no tubes. Several usable tubes in the arm are pooled (noted).
    """
    usable = [r for r in negative_controls if r.ok and r.n_basophils > 0]
    usable.sort(key=lambda r: r.tube.file)
    same = [r for r in usable if r.tube.pretreatment == arm]
    if same:
        flags = []
        if len(same) > 1:
            flags.append(Flag("POOLED_NEGATIVE_CONTROLS", "warn",
                              f"{len(same)} negative controls in arm {arm} pooled: "
                              + ", ".join(r.tube.file for r in same)))
        return ReferenceChoice(same, arm, flags)
    others = sorted({r.tube.pretreatment for r in usable})
    if others:
        other = others[0]
        tubes = [r for r in usable if r.tube.pretreatment == other]
        return ReferenceChoice(tubes, other, [Flag(
            "THRESHOLD_FROM_OTHER_ARM", "warn",
            f"arm {arm} has no usable negative control: threshold taken from the {other} arm's "
            + ", ".join(r.tube.file for r in tubes))])
    return ReferenceChoice([], None, [Flag(
        "NO_NEGATIVE_CONTROL", "fail",
        f"no usable negative control for arm {arm} nor for the patient's other arm: no activation threshold")])


def find_marker(values: dict[str, np.ndarray], marker: str) -> str | None:
    """The key of ``values`` naming ``marker``, case-insensitively (None when absent)."""
    wanted = marker.casefold()
    for key in values:
        if key.casefold() == wanted:
            return key
    return None


def pooled_values(tubes: Sequence[TubeResult], marker: str) -> np.ndarray | None:
    """Concatenated values of ``marker`` over ``tubes`` (None when no tube has the marker)."""
    parts = []
    for r in tubes:
        key = find_marker(r.basophil_values, marker)
        if key is not None:
            parts.append(np.asarray(r.basophil_values[key], dtype=np.float64).ravel())
    if not parts:
        return None
    return np.concatenate(parts)
