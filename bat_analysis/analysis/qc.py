"""Per-tube QC rules (docs/method.md, QC rules) → flags with plain-words reasons → pass | warn | fail.

The gating flags already in ``TubeResult.flags`` are combined with these; the worst severity wins.
``event_fractions`` are fractions (0–1) of events removed; limits in the config are percentages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from bat_analysis.analysis.config import AnalysisConfig, QcConfig
from bat_analysis.analysis.metrics import MarkerMetrics
from bat_analysis.records import Flag, TubeResult


def status_of(flags: Iterable[Flag]) -> str:
    """``fail`` if any flag fails, else ``warn`` if any warns, else ``pass``."""
    severities = {f.severity for f in flags}
    return "fail" if "fail" in severities else "warn" if "warn" in severities else "pass"


def unique_flags(flags: Iterable[Flag]) -> list[Flag]:
    """Flags in first-seen order without exact duplicates."""
    seen: set[Flag] = set()
    out = []
    for f in flags:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out


def band(value: float, warn_at: float, fail_above: float) -> str:
    """``pass`` below ``warn_at``, ``warn`` from ``warn_at`` to ``fail_above`` inclusive, ``fail`` above."""
    if value > fail_above:
        return "fail"
    if value >= warn_at:
        return "warn"
    return "pass"


def basophil_count_flags(n: int, qc: QcConfig) -> list[Flag]:
    if n < qc.basophils_fail_below:
        return [Flag("LOW_BASOPHILS", "fail", f"{n} basophils < {qc.basophils_fail_below}")]
    if n < qc.basophils_pass_min:
        return [Flag("LOW_BASOPHILS", "warn",
                     f"{n} basophils ({qc.basophils_fail_below}–{qc.basophils_pass_min - 1})")]
    return []


def basophil_count_words(n: int, qc: QcConfig) -> str:
    """The basophil count against the limits of ``qc``, in a reader's words (the reports show this beside a
    LOW_BASOPHILS flag; the tables keep the flag's short message): "499 basophils: fewer than the 500
    recommended, above the minimum of 200"."""
    low, recommended = qc.basophils_fail_below, qc.basophils_pass_min
    if n < low:
        return f"{n} basophils: fewer than the minimum of {low} (and the {recommended} recommended)"
    if n < recommended:
        where = "at" if n == low else "above"
        return f"{n} basophils: fewer than the {recommended} recommended, {where} the minimum of {low}"
    return f"{n} basophils: at least the {recommended} recommended"


def _fraction_rules(qc: QcConfig) -> tuple[tuple[str, str, str, float, float], ...]:
    """(fraction key, flag code, what is counted, warn at %, fail above %) of each event-fraction rule."""
    return (("acquisition_qc", "ACQUISITION_QC", "events removed by acquisition QC",
             qc.acquisition_qc_warn_pct, qc.acquisition_qc_fail_pct),
            ("margin", "MARGIN_EVENTS", "margin events", qc.margin_warn_pct, qc.margin_fail_pct),
            ("doublets", "DOUBLETS", "doublets", qc.doublets_warn_pct, qc.doublets_fail_pct))


def fraction_words(fractions: Mapping[str, float], qc: QcConfig) -> dict[str, tuple[str, str]]:
    """Flag code -> (severity, the fraction against its limits in a reader's words) for the fractions that
    :func:`fraction_flags` flags: "11.2% events removed by acquisition QC: at or above the warning limit of 10%,
    within the failure limit of 25%" (the reports show this; the tables keep the flag's short message)."""
    out = {}
    for key, code, words, warn_at, fail_above in _fraction_rules(qc):
        pct = 100.0 * float(fractions.get(key, math.nan))
        level = band(pct, warn_at, fail_above) if not math.isnan(pct) else "pass"
        if level == "fail":
            out[code] = ("fail", f"{pct:.1f}% {words}: above the failure limit of {fail_above:g}%")
        elif level == "warn":
            out[code] = ("warn", f"{pct:.1f}% {words}: at or above the warning limit of {warn_at:g}%, within the "
                                 f"failure limit of {fail_above:g}%")
    return out


def fraction_flags(fractions: Mapping[str, float], qc: QcConfig) -> list[Flag]:
    """Acquisition QC, margin and doublet fractions against their limits."""
    out = []
    for key, code, words, warn_at, fail_above in _fraction_rules(qc):
        if key not in fractions:
            continue
        pct = 100.0 * float(fractions[key])
        if math.isnan(pct):
            out.append(Flag(code, "warn", f"{words}: fraction not measured"))
            continue
        level = band(pct, warn_at, fail_above)
        if level == "fail":
            out.append(Flag(code, "fail", f"{words} {pct:.1f}% > {fail_above:g}%"))
        elif level == "warn":
            out.append(Flag(code, "warn", f"{words} {pct:.1f}% ({warn_at:g}–{fail_above:g}%)"))
    return out


def spillover_flags(result: TubeResult, qc: QcConfig) -> list[Flag]:
    if not result.has_spillover and result.n_fluorescent_markers >= qc.spillover_min_markers:
        return [Flag("NO_SPILLOVER", "fail", f"no spillover matrix with {result.n_fluorescent_markers} "
                                             f"fluorescent markers: values are not compensated")]
    return []


def negative_control_flags(m: MarkerMetrics, qc: QcConfig) -> list[Flag]:
    level = band(m.pct, qc.negative_warn_pct, qc.negative_fail_pct)
    if level == "fail":
        return [Flag("HIGH_SPONTANEOUS", "fail", f"negative control {m.pct:.1f}% {m.marker}+ > "
                                                  f"{qc.negative_fail_pct:g}% (spontaneous activation)")]
    if level == "warn":
        return [Flag("HIGH_SPONTANEOUS", "warn", f"negative control {m.pct:.1f}% {m.marker}+ "
                                                  f"({qc.negative_warn_pct:g}–{qc.negative_fail_pct:g}%)")]
    return []


def fmlp_positive(m: MarkerMetrics, qc: QcConfig) -> bool:
    """fMLP net ≥ fmlp_net_min and SI ≥ fmlp_si_min (SI undefined with a 0% negative control counts as met)."""
    si_ok = (m.pct > 0) if math.isnan(m.si) else m.si >= qc.fmlp_si_min
    return m.net_pct >= qc.fmlp_net_min and si_ok


def fmlp_flags(m: MarkerMetrics, qc: QcConfig) -> list[Flag]:
    if fmlp_positive(m, qc):
        return []
    si = "undefined" if math.isnan(m.si) else f"{m.si:.2f}"
    return [Flag("FMLP_NEGATIVE", "fail", f"fMLP net {m.net_pct:.1f}% {m.marker}+ (SI {si}): below net "
                                           f"{qc.fmlp_net_min:g}% and SI {qc.fmlp_si_min:g}; tube uninterpretable")]


def anti_fceri_flags(m: MarkerMetrics, qc: QcConfig, fmlp_ok: bool | None) -> list[Flag]:
    """anti-FcεRI rule; below the fail limit with fMLP positive = non-releaser."""
    if m.net_pct >= qc.anti_fceri_pass_min:
        return []
    if m.net_pct >= qc.anti_fceri_fail_below:
        return [Flag("ANTI_FCERI_LOW", "warn", f"anti-FcεRI net {m.net_pct:.1f}% {m.marker}+ "
                                                f"({qc.anti_fceri_fail_below:g}–{qc.anti_fceri_pass_min:g}%)")]
    if fmlp_ok:
        return [Flag("NON_RELEASER", "fail", f"anti-FcεRI net {m.net_pct:.1f}% {m.marker}+ < "
                                              f"{qc.anti_fceri_fail_below:g}% with fMLP positive: non-releaser")]
    fm = "fMLP negative" if fmlp_ok is False else "no fMLP control"
    return [Flag("ANTI_FCERI_NEGATIVE", "fail", f"anti-FcεRI net {m.net_pct:.1f}% {m.marker}+ < "
                                                 f"{qc.anti_fceri_fail_below:g}% ({fm}): basophils unresponsive")]


def draw_to_assay_flags(extra: Mapping[str, str], qc: QcConfig) -> list[Flag]:
    """Blood draw to assay delay from the layout's extra columns (skipped when absent)."""
    hours: float | None = None
    direct = extra.get(qc.draw_to_assay_hours_column)
    if direct not in (None, ""):
        try:
            hours = float(str(direct))
        except ValueError:
            return [Flag("DRAW_TIME_UNREADABLE", "warn", f"layout column {qc.draw_to_assay_hours_column} "
                                                          f"{direct!r} is not a number of hours")]
    else:
        draw, assay = extra.get(qc.draw_time_column), extra.get(qc.assay_time_column)
        if draw in (None, "") or assay in (None, ""):
            return []
        try:
            delta = pd.Timestamp(str(assay)) - pd.Timestamp(str(draw))
        except ValueError:
            return [Flag("DRAW_TIME_UNREADABLE", "warn", f"layout columns {qc.draw_time_column}/"
                                                          f"{qc.assay_time_column} ({draw!r}, {assay!r}) "
                                                          f"are not date-times")]
        hours = delta.total_seconds() / 3600.0
    if hours is None or math.isnan(hours):
        return [Flag("DRAW_TIME_UNREADABLE", "warn", "blood draw to assay delay could not be read")]
    if hours < 0:
        return [Flag("DRAW_TIME_UNREADABLE", "warn", f"assay {-hours:.1f} h before the blood draw")]
    if hours > qc.draw_to_assay_fail_h:
        return [Flag("DRAW_TO_ASSAY", "fail", f"blood draw to assay {hours:.1f} h > {qc.draw_to_assay_fail_h:g} h")]
    if hours > qc.draw_to_assay_pass_h:
        return [Flag("DRAW_TO_ASSAY", "warn", f"blood draw to assay {hours:.1f} h "
                                               f"({qc.draw_to_assay_pass_h:g}–{qc.draw_to_assay_fail_h:g} h)")]
    return []


@dataclass
class TubeQc:
    """QC outcome of one tube."""

    status: str
    flags: list[Flag]

    @property
    def codes(self) -> str:
        return ";".join(dict.fromkeys(f.code for f in self.flags))

    @property
    def reasons(self) -> str:
        return "; ".join(f"{f.code}: {f.message}" for f in self.flags)

    def reasons_besides(self, error: str | None) -> str:
        """``reasons`` where a flag that only repeats ``error`` (the tube's error, given in its own column of
        the tube's row) is named by its code alone, so that the row says the reason once."""
        return "; ".join(f.code if error and f.message == error else f"{f.code}: {f.message}" for f in self.flags)


def tube_qc(result: TubeResult, activation: MarkerMetrics | None, config: AnalysisConfig, *,
            extra_flags: Iterable[Flag] = (), fmlp_ok: bool | None = None) -> TubeQc:
    """All QC rules (docs/method.md, QC rules) for one tube, combined with its gating flags and ``extra_flags``
    (metrics, threshold)."""
    qc = config.qc
    flags: list[Flag] = list(result.flags)
    if result.error is not None and not any(f.severity == "fail" for f in flags):
        flags.append(Flag("NOT_GATED", "fail", result.error))
    flags.extend(extra_flags)
    if result.ok:
        flags += basophil_count_flags(result.n_basophils, qc)
        flags += fraction_flags(result.event_fractions, qc)
        flags += spillover_flags(result, qc)
    flags += draw_to_assay_flags(result.tube.extra_dict, qc)
    cond = result.tube.condition
    if result.ok and activation is not None and not math.isnan(activation.pct):
        if cond == "negative_control":
            flags += negative_control_flags(activation, qc)
        elif cond == "fmlp":
            flags += fmlp_flags(activation, qc)
        elif cond == "anti_fceri":
            flags += anti_fceri_flags(activation, qc, fmlp_ok)
    flags = unique_flags(flags)
    return TubeQc(status_of(flags), flags)
