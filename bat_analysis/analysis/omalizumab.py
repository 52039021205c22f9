"""Omalizumab effect: arm ``omalizumab`` against arm ``none`` for one patient and allergen (docs/method.md,
Omalizumab effect).

``auc_inhibition_pct`` = 100 × (1 − AUC(omalizumab) / AUC(none)), both AUCs over the concentrations the two
arms share; ``ec50_shift_log10`` = log10(EC50(omalizumab) / EC50(none)) when both EC50s are estimable;
inhibition at each shared concentration = 100 × (1 − net(omalizumab) / net(none)), undefined where the
untreated net %CD63+ is ≤ 0. Every undefined number carries its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bat_analysis.analysis.dose_response import FitResult, trapezoid_auc
from bat_analysis.records import Flag

NAN = float("nan")


@dataclass
class OmalizumabEffect:
    """The omalizumab effect with the reasons of anything undefined."""

    auc_none: float = NAN
    auc_omalizumab: float = NAN
    auc_inhibition_pct: float = NAN
    auc_inhibition_reason: str = ""
    ec50_shift_log10: float = NAN
    ec50_shift_reason: str = ""
    inhibition_by_concentration: dict[float, float] = field(default_factory=dict)
    concentrations: tuple[float, ...] = ()
    flags: list[Flag] = field(default_factory=list)


def mean_by_x(concentrations: np.ndarray, net: np.ndarray) -> dict[float, float]:
    """Mean net %CD63+ per log10 concentration (replicate tubes of one concentration averaged)."""
    out: dict[float, list[float]] = {}
    for c, v in zip(concentrations, net):
        out.setdefault(round(float(math.log10(c)), 9), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in out.items()}


def shared_aucs(a: dict[float, float], b: dict[float, float], *, clip_negative: bool = True
                ) -> tuple[list[float], float, float]:
    """(shared log10 concentrations, AUC of ``a``, AUC of ``b``) over the concentrations both series hold;
    NaN AUCs when fewer than two are shared."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return shared, NAN, NAN
    xs = np.array(shared)
    return (shared, trapezoid_auc(xs, np.array([a[x] for x in shared]), clip_negative=clip_negative),
            trapezoid_auc(xs, np.array([b[x] for x in shared]), clip_negative=clip_negative))


def inhibition_pct(treated: float, untreated: float) -> float:
    """100 × (1 − treated / untreated); NaN when untreated ≤ 0 (the caller states why)."""
    if not (untreated > 0) or math.isnan(treated):
        return NAN
    return 100.0 * (1.0 - treated / untreated)


def omalizumab_effect(none: FitResult, omalizumab: FitResult, *, clip_negative: bool = True
                      ) -> OmalizumabEffect:
    """Compare the two arms of one patient × allergen."""
    eff = OmalizumabEffect()
    a, b = mean_by_x(none.concentrations, none.net), mean_by_x(omalizumab.concentrations, omalizumab.net)
    shared, auc_a, auc_b = shared_aucs(a, b, clip_negative=clip_negative)
    if set(a) != set(b):
        only = sorted((set(a) | set(b)) - set(shared))
        eff.flags.append(Flag("CONCENTRATIONS_DIFFER", "warn",
                              f"{none.allergen}: the arms were not tested at the same concentrations; AUCs over "
                              f"the {len(shared)} shared ones (left out: "
                              + ", ".join(f"{10 ** x:g}" for x in only) + ")"))
    eff.concentrations = tuple(float(10 ** x) for x in shared)
    if len(shared) < 2:
        eff.auc_inhibition_reason = f"{len(shared)} concentration(s) shared by both arms: no AUC"
    else:
        eff.auc_none, eff.auc_omalizumab = auc_a, auc_b
        if eff.auc_none > 0:
            eff.auc_inhibition_pct = inhibition_pct(eff.auc_omalizumab, eff.auc_none)
        else:
            eff.auc_inhibition_reason = f"untreated AUC is {eff.auc_none:g}: no response to inhibit"
    for x in shared:
        eff.inhibition_by_concentration[float(10 ** x)] = inhibition_pct(b[x], a[x])
    if none.estimable and omalizumab.estimable:
        eff.ec50_shift_log10 = math.log10(omalizumab.ec50 / none.ec50)
    else:
        parts = []
        if not none.estimable:
            parts.append(f"EC50 (none) not estimable: {none.ec50_reason}")
        if not omalizumab.estimable:
            parts.append(f"EC50 (omalizumab) not estimable: {omalizumab.ec50_reason}")
        eff.ec50_shift_reason = "; ".join(parts)
    return eff
