"""Per-tube activation metrics (docs/method.md, Per-tube metrics).

``pct`` = 100 × basophils with value > T / basophils; ``net`` = pct − pct(negative control);
the Wilson 95% interval of ``pct`` on the basophil count (``uncertainty.proportion_interval``);
``SI`` = pct / pct(negative control), undefined (NaN with the flag ``SI_UNDEFINED``) when the negative
control has 0%; MFI = median of compensated linear values, ``SI_MFI`` = MFI / MFI(negative control).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bat_analysis.analysis.config import AnalysisConfig, PositivityConfig
from bat_analysis.analysis.threshold import ThresholdEstimate, find_marker
from bat_analysis.analysis._uncertainty import proportion_interval
from bat_analysis.records import Flag

NAN = float("nan")


def count_above(values: np.ndarray, threshold: float) -> int:
    """How many of ``values`` lie strictly above ``threshold``."""
    # np.float64 keeps the comparison in double precision: a bare float is cast to float32 arrays' type
    return int(np.count_nonzero(np.asarray(values) > np.float64(threshold)))


def pct_above(values: np.ndarray, threshold: float) -> float:
    """100 × fraction of ``values`` strictly above ``threshold`` (NaN for no values: the caller flags it)."""
    arr = np.asarray(values)
    if arr.size == 0:
        return NAN
    return float(count_above(arr, threshold)) * 100.0 / float(arr.size)


def net_pct(pct: float, negative_pct: float) -> float:
    """pct(tube) − pct(negative control of the same patient and arm)."""
    return pct - negative_pct


def ratio(value: float, reference: float) -> float:
    """value / reference; NaN when the reference is 0 or either is NaN (the caller flags it)."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return NAN
    return value / reference


def is_positive(net: float, si: float, pct: float, config: PositivityConfig) -> bool | None:
    """Positivity: net ≥ net_pct_min (and SI ≥ si_min when required). None when net is undefined.

    With SI required and the negative control at 0%, any tube above 0% meets the SI criterion (SI = ∞).
    """
    if math.isnan(net):
        return None
    if net < config.net_pct_min:
        return False
    if not config.require_si:
        return True
    if math.isnan(si):
        return pct > 0
    return si >= config.si_min


@dataclass
class MarkerMetrics:
    """Threshold-based metrics of one scored marker (CD63, CD69, CD107a, avidin ...) in one tube."""

    marker: str
    threshold: float
    pct: float
    net_pct: float
    si: float
    positive: bool | None
    ci_low: float = NAN  # Wilson 95% interval of ``pct`` on the tube's basophil count
    ci_high: float = NAN
    mfi: float = NAN  # median of the marker's compensated linear values
    si_mfi: float = NAN  # mfi / the negative control's median


@dataclass
class ArmReference:
    """What one patient × arm is measured against: thresholds, negative %, MFI reference."""

    thresholds: dict[str, ThresholdEstimate] = field(default_factory=dict)  # scored marker -> estimate
    negative_pct: dict[str, float] = field(default_factory=dict)  # marker -> % of the negative control above T
    negative_mfi: dict[str, float] = field(default_factory=dict)  # marker -> median of the negative control
    mfi: ThresholdEstimate | None = None
    flags: list[Flag] = field(default_factory=list)


@dataclass
class TubeMetrics:
    """All metrics of one tube; ``markers`` keyed by the configured marker name."""

    n_basophils: int
    markers: dict[str, MarkerMetrics] = field(default_factory=dict)
    mfi: float = NAN
    si_mfi: float = NAN
    flags: list[Flag] = field(default_factory=list)

    def get(self, marker: str) -> MarkerMetrics | None:
        return self.markers.get(marker)


def tube_metrics(values: Mapping[str, np.ndarray], n_basophils: int, reference: ArmReference,
                 config: AnalysisConfig) -> TubeMetrics:
    """Metrics of one tube against its arm's reference (thresholds, negative-control %, MFI reference)."""
    out = TubeMetrics(n_basophils=n_basophils)
    act = config.markers.primary_marker
    for marker, est in reference.thresholds.items():
        key = find_marker(dict(values), marker)
        if key is None:
            if marker == act:
                out.flags.append(Flag("MARKER_MISSING", "fail",
                                      f"no {marker} values for this tube's basophils"))
            continue
        arr = np.asarray(values[key])
        pct = pct_above(arr, est.value)
        neg = reference.negative_pct.get(marker, NAN)
        if math.isnan(pct):
            out.flags.append(Flag("NO_BASOPHILS", "fail", f"no basophils: %{marker}+ undefined"))
            out.markers[marker] = MarkerMetrics(marker, est.value, NAN, NAN, NAN, None)
            continue
        net = net_pct(pct, neg)
        si = ratio(pct, neg)
        if math.isnan(si) and not math.isnan(neg):
            out.flags.append(Flag(f"SI_UNDEFINED_{marker.upper()}", "warn",
                                  f"negative control has 0% {marker}+ basophils: SI ({pct:.1f}% / 0%) undefined"))
        low, high = proportion_interval(count_above(arr, est.value), arr.size)
        mfi = float(np.median(arr))
        out.markers[marker] = MarkerMetrics(marker, est.value, pct, net, si,
                                            is_positive(net, si, pct, config.positivity), low, high,
                                            mfi, ratio(mfi, reference.negative_mfi.get(marker, NAN)))
    mfi_marker = config.markers.mfi
    key = find_marker(dict(values), mfi_marker)
    if key is not None:
        arr = np.asarray(values[key])
        if arr.size:
            out.mfi = float(np.median(arr))
            if reference.mfi is not None:
                out.si_mfi = ratio(out.mfi, reference.mfi.value)
                if math.isnan(out.si_mfi):
                    out.flags.append(Flag(f"SI_UNDEFINED_{mfi_marker.upper()}", "warn",
                                          f"negative-control {mfi_marker} MFI is 0: SI undefined"))
                elif reference.mfi.value < 0:
                    out.flags.append(Flag(f"SI_NEGATIVE_REFERENCE_{mfi_marker.upper()}", "warn",
                                          f"negative-control {mfi_marker} MFI is negative "
                                          f"({reference.mfi.value:.4g}): SI not meaningful"))
    return out
