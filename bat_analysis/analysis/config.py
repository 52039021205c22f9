"""Every number the analysis uses (docs/method.md), with its default and its source.

``AnalysisConfig.from_mapping`` reads the ``analysis:`` section of a gating template or a config file::

    threshold: {percentile: 97.5, method: auto}
    positivity: {net_pct_min: 5, require_si: false}
    qc: {basophils_fail_below: 200}
    classes: {responder_min: 80}

Unknown keys and wrong types raise ``AnalysisError`` naming the key (``analysis.qc.basophils_fail_below``).
Defaults marked ``[suggested]`` were chosen by this project where no published number was found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from bat_analysis.errors import AnalysisError


@dataclass(frozen=True)
class MarkerConfig:
    """Which ``TubeResult.basophil_values`` keys are which marker (matched case-insensitively).

    ``activation`` is the gating template's ``activation:`` list (set by ``Template.analysis_mapping``; a
    template does not write it under ``analysis:``). Every activation marker, and every ``degranulation``
    marker present in the data, is scored against its own negative-control threshold; the primary marker
    (``primary``, else the first activation marker) drives the dose response, the controls and the class.
    """

    activation: tuple[str, ...] = ("CD63",)  # the template's activation: list, each thresholded on the negative
    #                                           control (docs/method.md, Per-tube metrics)
    primary: str = ""  # the marker of the dose response and the class; empty = the first activation marker
    mfi: str = "CD203c"  # median fluorescence reported as MFI and SI (docs/method.md, Per-tube metrics)
    degranulation: tuple[str, ...] = ("CD107a", "avidin")  # also scored when present (docs/method.md,
    #                                                         Per-tube metrics)

    @property
    def primary_marker(self) -> str:
        """The marker the dose response, the positive controls and the class rest on."""
        return self.primary or (self.activation[0] if self.activation else "CD63")

    @property
    def scored(self) -> tuple[str, ...]:
        """Every marker scored against a threshold: the primary first, then the other activation markers,
        then the degranulation markers (each name once, compared case-insensitively)."""
        out: dict[str, str] = {}
        for m in (self.primary_marker, *self.activation, *self.degranulation):
            out.setdefault(m.casefold(), m)
        return tuple(out.values())


@dataclass(frozen=True)
class ThresholdConfig:
    """The activation threshold on the negative control (docs/method.md, Activation threshold)."""

    percentile: float = 97.5  # EAACI consensus: 2.5% of resting basophils above T
    method: str = "auto"  # auto | percentile | resting_peak
    asinh_cofactor: float = 0.0  # [suggested] arcsinh cofactor of the resting-peak model; 0 = chosen from the data
    # The resting-peak model replaces the percentile only when a two-component Gaussian mixture on the arcsinh
    # scale is clearly better than one Gaussian AND its upper component is a separate, sizeable population
    # (docs/method.md, "Activation threshold"):
    mixture_min_bic_delta: float = 10.0  # BIC(1) - BIC(2) at least this: "very strong" evidence (Kass & Raftery
    #                                       1995, J Am Stat Assoc 90:773)
    mixture_min_separation: float = 2.0  # Ashman's D of the two components at least this: a clean separation
    #                                       (Ashman et al. 1994, Auk 111:337)
    mixture_min_weight_pct: float = 2.5  # [suggested] upper component at least this % of the events: a smaller
    #                                       one leaves the 97.5th percentile in the resting tail, where it belongs
    mixture_max_events: int = 20000  # [suggested] larger controls are subsampled (seeded) for the mixture test
    min_events: int = 50  # [suggested] fewer negative-control basophils: threshold flagged as unreliable


@dataclass(frozen=True)
class PositivityConfig:
    """Positivity of a tube (docs/method.md, Positivity)."""

    net_pct_min: float = 5.0  # EAACI: net %CD63+ >= 5
    require_si: bool = False  # optionally also SI >= si_min
    si_min: float = 2.0


@dataclass(frozen=True)
class QcConfig:
    """The QC table of docs/method.md, QC rules (PASS / WARN / FAIL limits)."""

    basophils_pass_min: int = 500  # BAT studies: median 500, range 200-1000
    basophils_fail_below: int = 200
    acquisition_qc_warn_pct: float = 10.0  # [suggested]
    acquisition_qc_fail_pct: float = 25.0  # [suggested]
    margin_warn_pct: float = 2.0  # [suggested]
    margin_fail_pct: float = 5.0  # [suggested]
    doublets_warn_pct: float = 10.0  # [suggested]
    doublets_fail_pct: float = 20.0  # [suggested]
    spillover_min_markers: int = 2  # [suggested] no spillover matrix with >= this many fluorescent markers: fail
    negative_warn_pct: float = 10.0  # [suggested] spontaneous %CD63+ of the negative control
    negative_fail_pct: float = 20.0  # [suggested]
    fmlp_net_min: float = 5.0  # [suggested] fMLP net %CD63+ >= 5 ...
    fmlp_si_min: float = 2.0  # [suggested] ... and SI >= 2, else the tube is uninterpretable
    anti_fceri_pass_min: float = 10.0  # [suggested]
    anti_fceri_fail_below: float = 5.0  # [suggested] below this with fMLP positive: non-releaser
    low_count_policy: str = "keep"  # [suggested] keep | exclude: an allergen tube that fails only the basophil
    #                                  count stays in the dose response with its wider interval ("keep")
    replicate_cv_max_pct: float = 20.0  # [suggested] replicate tubes' CV of %positive above this: flagged
    replicate_cv_min_mean_pct: float = 10.0  # [suggested] CV judged only where their mean %positive reaches this
    fit_r2_pass_min: float = 0.9  # [suggested]
    fit_r2_warn_min: float = 0.8  # [suggested] below: poor fit, EC50 not accepted
    draw_to_assay_pass_h: float = 4.0  # Santos 2021
    draw_to_assay_fail_h: float = 24.0  # Santos 2021
    draw_time_column: str = "draw_time"  # layout extra columns read for the draw-to-assay rule
    assay_time_column: str = "assay_time"
    draw_to_assay_hours_column: str = "draw_to_assay_h"  # or the delay itself, in hours


@dataclass(frozen=True)
class FitConfig:
    """Constrained four-parameter logistic on log10(concentration) (docs/method.md, Dose response)."""

    bottom_min: float = 0.0  # AutoBAT (Patil 2018): 0 <= bottom <= 25
    bottom_max: float = 25.0
    top_min: float = 0.0  # 0 <= top <= 100
    top_max: float = 100.0
    hill_min: float = 0.1  # [suggested] h > 0
    hill_max: float = 10.0  # [suggested]
    log_ec50_margin: float = 2.0  # [suggested] log10 units beyond the tested range the optimiser may explore
    min_points: int = 4  # [suggested] four parameters need at least four concentrations
    min_amplitude: float = 5.0  # [suggested] top - bottom below this: no dose response, EC50 not estimable
    bell_drop_pct: float = 10.0  # [suggested] fall after the maximum that makes a series bell-shaped (points)
    bootstrap_n: int = 100  # [suggested] residual bootstrap replicates for the EC50 95% CI
    bootstrap_seed: int = 20240  # [suggested]
    ci_level: float = 95.0  # [suggested]
    max_ci_width_log10: float = 2.0  # [suggested] EC50 whose CI spans more decades is not estimable (0 = no limit)
    auc_clip_negative: bool = True  # [suggested] negative net %CD63+ counts as 0 in the AUC
    inhibition_bootstrap_n: int = 200  # [suggested] replicates of the AUC-inhibition interval (resampling each
    #                                     tube's basophils and the negative controls; 0 = no interval)


@dataclass(frozen=True)
class ClassConfig:
    """Responder classes (docs/method.md, Responder classes)."""

    responder_min: float = 80.0  # [suggested] Savage JACI 2012: suppression to < 20% of baseline
    partial_min: float = 20.0  # [suggested]
    min_concentrations_confident: int = 4  # [suggested] a class resting on fewer concentrations in either arm
    #                                         is at most borderline (four parameters of the 4PL)
    cohort_mode: str = "none"  # none | median | tertiles (research use)


@dataclass(frozen=True)
class AnalysisConfig:
    """All analysis settings; build with ``AnalysisConfig()`` or ``AnalysisConfig.from_mapping(dict)``."""

    markers: MarkerConfig = field(default_factory=MarkerConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    positivity: PositivityConfig = field(default_factory=PositivityConfig)
    qc: QcConfig = field(default_factory=QcConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    classes: ClassConfig = field(default_factory=ClassConfig)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, source: str | None = None,
                     prefix: str = "analysis") -> AnalysisConfig:
        """Build from a nested mapping; every problem names its key, all problems in one error."""
        if data is not None and not isinstance(data, Mapping):
            raise AnalysisError("expected a mapping of sections", source=source, field=prefix)
        config, problems = cls.checked(data, prefix=prefix)
        if problems:
            raise AnalysisError("invalid analysis settings:\n" + "\n".join(f"  - {p}" for p in problems),
                                source=source, field=prefix)
        return config

    @classmethod
    def checked(cls, data: Mapping[str, Any] | None, *, prefix: str = "analysis"
                ) -> tuple[AnalysisConfig, list[str]]:
        """The configuration of a nested mapping and every problem found, each located by its key path.

        Problems read ``{prefix}.{section}.{key}: what was expected`` (with an empty ``prefix``:
        ``{section}.{key}: ...``); the configuration holds the valid settings (defaults for the others).
        """
        if data is None:
            return cls(), []
        at = _at(prefix)
        if not isinstance(data, Mapping):
            return cls(), [f"{prefix or '(top level)'}: expected a mapping of sections, got {type(data).__name__}"]
        problems: list[str] = []
        sections: dict[str, Any] = {}
        hints = get_type_hints(cls)
        for key, value in data.items():
            if key not in hints:
                problems.append(f"{at}{key}: unknown section (expected one of {', '.join(hints)})")
                continue
            section_cls = hints[key]
            sections[key] = _build_section(section_cls, value, f"{at}{key}", problems)
        config = cls(**{k: v for k, v in sections.items() if v is not None})
        problems.extend(config.problems(prefix))
        return config, problems

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable), the inverse of ``from_mapping``."""
        out = dataclasses.asdict(self)
        out["markers"]["degranulation"] = list(self.markers.degranulation)
        out["markers"]["activation"] = list(self.markers.activation)
        return out

    def problems(self, prefix: str = "analysis") -> list[str]:
        """Cross-field checks (ranges and orderings), each naming its key."""
        p: list[str] = []
        at = _at(prefix)
        t, q, f, c = self.threshold, self.qc, self.fit, self.classes
        m = self.markers
        if not m.activation:
            p.append(f"{prefix}.markers.activation: expected at least one activation marker")
        elif m.primary and m.primary.casefold() not in {a.casefold() for a in m.activation}:
            p.append(f"{prefix}.markers.primary: expected one of the activation markers "
                     f"({', '.join(m.activation)}), got {m.primary!r}")
        if not 50.0 < t.percentile < 100.0:
            p.append(f"{at}threshold.percentile: expected a number in (50, 100), got {t.percentile}")
        if t.method not in ("auto", "percentile", "resting_peak"):
            p.append(f"{at}threshold.method: expected auto, percentile or resting_peak, got {t.method!r}")
        if t.asinh_cofactor < 0:
            p.append(f"{at}threshold.asinh_cofactor: expected >= 0 (0 = automatic), got {t.asinh_cofactor}")
        if t.mixture_min_bic_delta < 0:
            p.append(f"{at}threshold.mixture_min_bic_delta: expected >= 0, got {t.mixture_min_bic_delta}")
        if t.mixture_min_separation < 0:
            p.append(f"{at}threshold.mixture_min_separation: expected >= 0, got {t.mixture_min_separation}")
        if not 0.0 <= t.mixture_min_weight_pct < 50.0:
            p.append(f"{at}threshold.mixture_min_weight_pct: expected a number in [0, 50), "
                     f"got {t.mixture_min_weight_pct}")
        if t.mixture_max_events < 200:
            p.append(f"{at}threshold.mixture_max_events: expected >= 200, got {t.mixture_max_events}")
        pairs = [
            ("qc.basophils_fail_below", q.basophils_fail_below, "qc.basophils_pass_min", q.basophils_pass_min),
            ("qc.acquisition_qc_warn_pct", q.acquisition_qc_warn_pct, "qc.acquisition_qc_fail_pct",
             q.acquisition_qc_fail_pct),
            ("qc.margin_warn_pct", q.margin_warn_pct, "qc.margin_fail_pct", q.margin_fail_pct),
            ("qc.doublets_warn_pct", q.doublets_warn_pct, "qc.doublets_fail_pct", q.doublets_fail_pct),
            ("qc.negative_warn_pct", q.negative_warn_pct, "qc.negative_fail_pct", q.negative_fail_pct),
            ("qc.anti_fceri_fail_below", q.anti_fceri_fail_below, "qc.anti_fceri_pass_min", q.anti_fceri_pass_min),
            ("qc.fit_r2_warn_min", q.fit_r2_warn_min, "qc.fit_r2_pass_min", q.fit_r2_pass_min),
            ("qc.draw_to_assay_pass_h", q.draw_to_assay_pass_h, "qc.draw_to_assay_fail_h", q.draw_to_assay_fail_h),
            ("fit.bottom_min", f.bottom_min, "fit.bottom_max", f.bottom_max),
            ("fit.top_min", f.top_min, "fit.top_max", f.top_max),
            ("fit.hill_min", f.hill_min, "fit.hill_max", f.hill_max),
            ("classes.partial_min", c.partial_min, "classes.responder_min", c.responder_min),
        ]
        for low_key, low, high_key, high in pairs:
            if low > high:
                p.append(f"{at}{low_key}: {low} must not exceed {at}{high_key} ({high})")
        if f.hill_min <= 0:
            p.append(f"{at}fit.hill_min: expected > 0 (h > 0), got {f.hill_min}")
        if f.min_points < 4:
            p.append(f"{at}fit.min_points: expected >= 4 (four parameters), got {f.min_points}")
        if f.inhibition_bootstrap_n < 0:
            p.append(f"{at}fit.inhibition_bootstrap_n: expected >= 0, got {f.inhibition_bootstrap_n}")
        if c.min_concentrations_confident < 2:
            p.append(f"{at}classes.min_concentrations_confident: expected >= 2, "
                     f"got {c.min_concentrations_confident}")
        if q.replicate_cv_max_pct <= 0:
            p.append(f"{prefix}.qc.replicate_cv_max_pct: expected > 0, got {q.replicate_cv_max_pct}")
        if q.replicate_cv_min_mean_pct < 0:
            p.append(f"{prefix}.qc.replicate_cv_min_mean_pct: expected >= 0, got {q.replicate_cv_min_mean_pct}")
        if q.low_count_policy not in ("keep", "exclude"):
            p.append(f"{at}qc.low_count_policy: expected keep or exclude, got {q.low_count_policy!r}")
        if f.bootstrap_n < 0:
            p.append(f"{at}fit.bootstrap_n: expected >= 0, got {f.bootstrap_n}")
        if f.max_ci_width_log10 < 0:
            p.append(f"{at}fit.max_ci_width_log10: expected >= 0 (0 = no limit), got {f.max_ci_width_log10}")
        if not 0.0 < f.ci_level < 100.0:
            p.append(f"{at}fit.ci_level: expected a number in (0, 100), got {f.ci_level}")
        if c.cohort_mode not in ("none", "median", "tertiles"):
            p.append(f"{at}classes.cohort_mode: expected none, median or tertiles, got {c.cohort_mode!r}")
        return p


def _at(prefix: str) -> str:
    """The start of a key's path: ``analysis.`` (nothing when the prefix is empty)."""
    return f"{prefix}." if prefix else ""


def _build_section(section_cls: type, value: Any, where: str, problems: list[str]) -> Any:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
        return None
    hints = get_type_hints(section_cls)
    kwargs: dict[str, Any] = {}
    for key, raw in value.items():
        if key not in hints:
            problems.append(f"{where}.{key}: unknown key (expected one of {', '.join(hints)})")
            continue
        if raw == "" and _field_default(section_cls, key) == "":  # an optional name left empty: its default
            kwargs[key] = ""
            continue
        converted = _convert(raw, hints[key], f"{where}.{key}", problems)
        if converted is not _INVALID:
            kwargs[key] = converted
    return section_cls(**kwargs)


_INVALID = object()


def _field_default(section_cls: type, key: str) -> Any:
    return next((f.default for f in dataclasses.fields(section_cls) if f.name == key), _INVALID)


def _convert(raw: Any, hint: Any, where: str, problems: list[str]) -> Any:
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        problems.append(f"{where}: expected true or false, got {raw!r}")
        return _INVALID
    if hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        problems.append(f"{where}: expected a whole number, got {raw!r}")
        return _INVALID
    if hint is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                problems.append(f"{where}: expected a finite number, got {raw!r}")
                return _INVALID
            return value
        problems.append(f"{where}: expected a number, got {raw!r}")
        return _INVALID
    if hint is str:
        if isinstance(raw, str) and raw.strip():
            return raw.strip()
        problems.append(f"{where}: expected a non-empty text, got {raw!r}")
        return _INVALID
    if hint == tuple[str, ...]:
        if isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, (list, tuple)) and all(isinstance(x, str) and x.strip() for x in raw):
            return tuple(x.strip() for x in raw)
        problems.append(f"{where}: expected a list of marker names, got {raw!r}")
        return _INVALID
    raise AnalysisError(f"unsupported setting type {hint!r}", field=where)  # programming error, not user input
