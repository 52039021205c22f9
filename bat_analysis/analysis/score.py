"""The reduce step: tube results of one experiment → per-tube metrics, fits, omalizumab effect, classes.

``score_experiment(results, config, threshold_overrides)`` returns ``ExperimentScores`` with ``.tubes`` and
``.patients`` (DataFrames whose first columns are DESIGN.md's tubes.csv / patients.csv columns), ``.fits``
((patient, allergen, arm) → FitResult), ``.thresholds`` ((patient, arm, marker) → ThresholdEstimate) and
``.references`` ((patient, arm) → the negative-control files the arm is measured against).
Same inputs → same numbers; rows sorted by patient, arm, condition, concentration, file.

Words: an **arm** is the part of a patient's tubes that had one pretreatment (``none`` or ``omalizumab``).
"arm" is the word for this concept in the analysis code; "pretreatment" is only the name of the layout and
table column (``pretreatment``, what users see) and of the ``TubeSpec`` field that holds a tube's arm.

A tube a reviewer excluded carries the fail flag ``EXCLUDED_BY_REVIEWER`` (:data:`EXCLUDED_FLAG`, set by
:func:`bat_analysis.review._status.mark_excluded`): it keeps its row and numbers in the tubes table (QC status
fail) but is used for nothing else -- not as a negative-control reference, not in a dose response, not as a
positive control.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bat_analysis.analysis.classify import classify, cohort_classes
from bat_analysis.analysis.config import AnalysisConfig
from bat_analysis.analysis.dose_response import FitResult, analyse_series
from bat_analysis.analysis.metrics import ArmReference, TubeMetrics, pct_above, tube_metrics
from bat_analysis.analysis.omalizumab import OmalizumabEffect, omalizumab_effect
from bat_analysis.analysis.qc import TubeQc, fmlp_positive, status_of, tube_qc, unique_flags
from bat_analysis.analysis.threshold import (ThresholdEstimate, estimate_threshold, find_marker,
                                             manual_threshold, mfi_reference, pooled_values,
                                             select_reference)
from bat_analysis.analysis._uncertainty import (CLASS_BANDS, ArmSample, auc_inhibition_interval,
                                               class_confidence)
from bat_analysis.analysis._units import UnitProblem, canonical, convert, reference_units
from bat_analysis.errors import AnalysisError
from bat_analysis.records import CONDITIONS, PRETREATMENTS, Flag, TubeResult

NAN = float("nan")
EXCLUDED_FLAG = "EXCLUDED_BY_REVIEWER"


def excluded_by_reviewer(r: TubeResult) -> bool:
    """Whether a reviewer excluded the tube from scoring (it carries :data:`EXCLUDED_FLAG`)."""
    return any(f.code == EXCLUDED_FLAG for f in r.flags)

TUBE_COLUMNS = ("file", "patient", "condition", "allergen", "concentration", "pretreatment", "n_events",
                "n_basophils", "cd63_threshold", "pct_cd63", "net_pct_cd63", "si_cd63", "cd203c_mfi",
                "si_cd203c", "qc_status", "qc_flags")
TUBE_MARKER_COLUMNS = ("file", "patient", "condition", "allergen", "concentration", "pretreatment", "marker",
                       "primary", "threshold", "threshold_method", "pct_positive", "pct_positive_ci_low",
                       "pct_positive_ci_high", "net_pct_positive", "si", "positive", "mfi", "si_mfi")
PATIENT_COLUMNS = ("patient", "allergen", "ec50_none", "ec50_omalizumab", "cd_sens_none", "cd_sens_omalizumab",
                   "cd_max_none", "cd_max_omalizumab", "auc_none", "auc_omalizumab", "auc_inhibition_pct",
                   "ec50_shift_log10", "class", "class_reason", "qc_status")


@dataclass
class ExperimentScores:
    """Everything the reduce step computed for one experiment.

    ``tubes``: one row per tube (``tubes.csv``: counts, %CD63+ of basophils 0-100 with its Wilson interval,
    the threshold in compensated linear units, QC); ``patients``: one row per patient × allergen
    (``patients.csv``: EC50 in the row's concentration ``unit``, AUC over log10 concentration, the
    omalizumab effect, class and reason); ``fits``: the 4PL fit per (patient, arm, allergen); ``thresholds``:
    per (patient, arm, marker); ``effects``: the omalizumab effect per (patient, allergen); ``config``: the
    settings used (see ``docs/method.md``).
    """

    tubes: pd.DataFrame
    patients: pd.DataFrame
    fits: dict[tuple[str, str, str], FitResult] = field(default_factory=dict)
    thresholds: dict[tuple[str, str, str], ThresholdEstimate] = field(default_factory=dict)
    effects: dict[tuple[str, str], OmalizumabEffect] = field(default_factory=dict)
    config: AnalysisConfig = field(default_factory=AnalysisConfig)
    # (patient, arm) -> the negative-control files its thresholds are set on (empty when it has none usable);
    # also for an arm whose threshold could not be set, so reports can still show its negative control
    references: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # one row per tube × scored marker (tube_markers.csv): each marker against its own threshold
    tube_markers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(TUBE_MARKER_COLUMNS)))

    def for_patient(self, patient: str) -> "ExperimentScores":
        """The scores of one patient: its rows of the tables and its fits, thresholds, effects and references
        (patients are scored independently, so these are what scoring that patient alone gives)."""
        def rows(df: pd.DataFrame) -> pd.DataFrame:
            if "patient" not in df.columns:
                return df.iloc[0:0]
            return df[df["patient"].astype(str) == str(patient)].reset_index(drop=True)

        return ExperimentScores(tubes=rows(self.tubes), patients=rows(self.patients),
                                fits={k: v for k, v in self.fits.items() if k[0] == patient},
                                thresholds={k: v for k, v in self.thresholds.items() if k[0] == patient},
                                effects={k: v for k, v in self.effects.items() if k[0] == patient},
                                config=self.config,
                                references={k: v for k, v in self.references.items() if k[0] == patient},
                                tube_markers=rows(self.tube_markers))

    def thresholds_table(self) -> pd.DataFrame:
        """One row per patient × arm × marker: value, method, reference files and flags."""
        rows = [{"patient": p, "arm": a, "marker": m, "value": t.value, "method": t.method,
                 "n_events": t.n_events, "reference_arm": t.reference_arm,
                 "reference_files": ";".join(t.reference_files),
                 "flags": ";".join(f.code for f in t.flags)}
                for (p, a, m), t in sorted(self.thresholds.items())]
        return pd.DataFrame(rows, columns=["patient", "arm", "marker", "value", "method", "n_events",
                                           "reference_arm", "reference_files", "flags"])


def _arm_order(arm: str) -> int:
    return PRETREATMENTS.index(arm) if arm in PRETREATMENTS else len(PRETREATMENTS)


def _cond_order(cond: str) -> int:
    return CONDITIONS.index(cond) if cond in CONDITIONS else len(CONDITIONS)


def _sort_key(r: TubeResult) -> tuple[Any, ...]:
    t = r.tube
    conc = t.concentration if t.concentration is not None and not math.isnan(t.concentration) else -math.inf
    if t.unit and math.isfinite(conc):
        try:  # mixed units of one allergen sort by the concentration itself (1 µg/mL after 10 ng/mL)
            conc = canonical(conc, t.unit)[1]
        except UnitProblem:
            pass  # not a unit the analysis knows: its own number (the fit reports the tube)
    return (t.patient, _arm_order(t.pretreatment), t.pretreatment, _cond_order(t.condition), t.condition,
            t.allergen or "", conc, t.file)


@dataclass
class _ArmState:
    reference: ArmReference
    ref_files: tuple[str, ...] = ()
    fail_reasons: list[str] = field(default_factory=list)


def _arm_reference(patient: str, arm: str, negatives: Sequence[TubeResult], config: AnalysisConfig,
                   override: float | None, thresholds: dict[tuple[str, str, str], ThresholdEstimate]
                   ) -> _ArmState:
    choice = select_reference(negatives, arm)
    ref = ArmReference(flags=list(choice.flags))
    state = _ArmState(ref, choice.files)
    if not choice.tubes:
        state.fail_reasons.append(f"arm {arm}: no usable negative control")
        return state
    primary = config.markers.primary_marker
    for marker in config.markers.scored:
        values = pooled_values(choice.tubes, marker)
        if values is None:
            if marker == primary:
                ref.flags.append(Flag("MARKER_MISSING", "fail", f"negative control has no {marker} values"))
                state.fail_reasons.append(f"arm {arm}: negative control has no {marker} values")
            continue
        try:
            est = estimate_threshold(values, config=config.threshold, marker=marker)
        except AnalysisError as exc:
            ref.flags.append(Flag("NO_THRESHOLD", "fail", f"{marker} threshold: {exc}"))
            state.fail_reasons.append(f"arm {arm}: no {marker} threshold ({exc})")
            continue
        if marker == primary and override is not None:
            est = manual_threshold(override, marker=marker, previous=est)
            ref.flags.append(Flag("MANUAL_THRESHOLD", "warn",
                                  f"{marker} threshold set by a reviewer to {override:.4g} "
                                  f"(automated: {est.diagnostics['automated_value']:.4g})"))
        est.reference_files = choice.files
        est.reference_arm = choice.arm
        ref.flags.extend(est.flags)
        ref.thresholds[marker] = est
        ref.negative_pct[marker] = pct_above(values, est.value)
        ref.negative_mfi[marker] = float(np.median(values)) if values.size else NAN
        thresholds[(patient, arm, marker)] = est
    mfi_values = pooled_values(choice.tubes, config.markers.mfi)
    if mfi_values is not None:
        try:
            ref.mfi = mfi_reference(mfi_values, marker=config.markers.mfi)
        except AnalysisError as exc:
            ref.flags.append(Flag("NO_MFI_REFERENCE", "warn", f"{config.markers.mfi} reference: {exc}"))
        else:
            ref.mfi.reference_files = choice.files
            ref.mfi.reference_arm = choice.arm
            thresholds[(patient, arm, config.markers.mfi)] = ref.mfi
    return state


def _num(value: float | None) -> float:
    return NAN if value is None else float(value)


def score_experiment(results: Sequence[TubeResult], config: AnalysisConfig | None = None, *,
                     threshold_overrides: Mapping[tuple[str, str], float] | None = None) -> ExperimentScores:
    """Score every tube, fit every series, compare arms and classify every patient × allergen.

    ``results`` are gated tubes (``gate_tube``) whose ``basophil_values`` are compensated, untransformed (linear)
    marker values; ``config`` defaults to ``AnalysisConfig()`` (docs/method.md). ``threshold_overrides`` maps
    (patient, pretreatment) to a reviewer's activation threshold in those same linear units. Percentages in the
    tables are of basophils (0-100); EC50 is in the layout's concentration unit.
    """
    cfg = config or AnalysisConfig()
    overrides = dict(threshold_overrides or {})
    ordered = sorted(results, key=_sort_key)
    act = cfg.markers.primary_marker
    by_patient: dict[str, list[TubeResult]] = {}
    for r in ordered:
        by_patient.setdefault(r.tube.patient, []).append(r)
    unknown = sorted(set(overrides) - {(r.tube.patient, r.tube.pretreatment) for r in ordered})
    if unknown:
        raise AnalysisError("threshold override for an unknown patient/arm: "
                            + ", ".join(f"{p}/{a}" for p, a in unknown), field="threshold_overrides",
                            expected="(patient, pretreatment) pairs present in the experiment")

    thresholds: dict[tuple[str, str, str], ThresholdEstimate] = {}
    metrics: dict[str, TubeMetrics] = {}
    qcs: dict[str, TubeQc] = {}
    arm_states: dict[tuple[str, str], _ArmState] = {}
    for patient, tubes in by_patient.items():
        negatives = [r for r in tubes if r.tube.condition == "negative_control" and not excluded_by_reviewer(r)]
        for arm in sorted({r.tube.pretreatment for r in tubes}, key=lambda a: (_arm_order(a), a)):
            state = _arm_reference(patient, arm, negatives, cfg, overrides.get((patient, arm)), thresholds)
            arm_states[(patient, arm)] = state
            arm_tubes = [r for r in tubes if r.tube.pretreatment == arm]
            for r in arm_tubes:
                if r.ok and state.reference.thresholds:
                    metrics[r.tube.file] = tube_metrics(r.basophil_values, r.n_basophils, state.reference, cfg)
            fmlp = [metrics[r.tube.file].get(act) for r in arm_tubes
                    if r.tube.condition == "fmlp" and r.tube.file in metrics and not excluded_by_reviewer(r)]
            fmlp = [m for m in fmlp if m is not None and not math.isnan(m.pct)]
            fmlp_ok = any(fmlp_positive(m, cfg.qc) for m in fmlp) if fmlp else None
            for r in arm_tubes:
                m = metrics.get(r.tube.file)
                extra = list(m.flags) if m else []
                if r.tube.condition == "negative_control" or r.tube.file in state.ref_files:
                    extra = list(state.reference.flags) + extra
                elif not state.reference.thresholds and r.ok:
                    extra += [f for f in state.reference.flags if f.severity == "fail"]
                else:
                    extra += [f for f in state.reference.flags if f.code == "THRESHOLD_FROM_OTHER_ARM"]
                qcs[r.tube.file] = tube_qc(r, m.get(act) if m else None, cfg, extra_flags=extra,
                                           fmlp_ok=fmlp_ok)

    ref_units = reference_units(r.tube for r in ordered)
    replicates = _replicate_groups(ordered, metrics, qcs, ref_units, cfg)
    tubes_df = _tubes_table(ordered, metrics, qcs, arm_states, cfg)
    _add_converted_columns(tubes_df, ordered, ref_units)
    _add_replicate_columns(tubes_df, ordered, replicates)
    fits: dict[tuple[str, str, str], FitResult] = {}
    effects: dict[tuple[str, str], OmalizumabEffect] = {}
    patient_rows = []
    for patient, tubes in by_patient.items():
        allergens = sorted({r.tube.allergen or "" for r in tubes if r.tube.condition == "allergen"})
        arms = sorted({r.tube.pretreatment for r in tubes}, key=lambda a: (_arm_order(a), a))
        for allergen in allergens or [""]:
            for arm in arms:
                series = [r for r in tubes if r.tube.condition == "allergen" and (r.tube.allergen or "") == allergen
                          and r.tube.pretreatment == arm]
                if not series:
                    continue
                fits[(patient, allergen, arm)] = _fit_series(patient, allergen, arm, series, metrics, qcs, cfg,
                                                             ref_units.get((patient, allergen)))
            row, effect = _patient_row(patient, allergen, tubes, fits, metrics, qcs, arm_states, cfg,
                                       ref_units.get((patient, allergen)))
            patient_rows.append(row)
            if effect is not None:
                effects[(patient, allergen)] = effect
    patients_df = pd.DataFrame(patient_rows)
    if patients_df.empty:
        patients_df = pd.DataFrame(columns=list(PATIENT_COLUMNS))
    else:
        add_cohort_classes(patients_df, cfg)
        rest = [c for c in patients_df.columns if c not in PATIENT_COLUMNS]
        patients_df = patients_df[list(PATIENT_COLUMNS) + rest].reset_index(drop=True)
    references = {key: state.ref_files for key, state in arm_states.items()}
    return ExperimentScores(tubes_df, patients_df, fits, thresholds, effects, cfg, references,
                            _tube_markers_table(ordered, metrics, arm_states, cfg))


def _count_only_failure(q: TubeQc) -> bool:
    """The tube fails QC on its basophil count alone (it keeps its numbers, with a wider interval)."""
    fails = [f for f in q.flags if f.severity == "fail"]
    return bool(fails) and all(f.code == "LOW_BASOPHILS" for f in fails)


def _fit_series(patient: str, allergen: str, arm: str, series: Sequence[TubeResult],
                metrics: Mapping[str, TubeMetrics], qcs: Mapping[str, TubeQc], cfg: AnalysisConfig,
                unit: str | None) -> FitResult:
    """One arm's dose response, its concentrations converted to ``unit`` (the allergen's reference unit)."""
    act = cfg.markers.primary_marker
    conc, pct, net, files, invalid, kept_low = [], [], [], [], [], []
    for r in series:
        c = _num(r.tube.concentration)
        try:
            c = convert(c, r.tube.unit, unit)
        except UnitProblem as exc:  # a layout refuses it; Tubes made by other means may still carry one
            invalid.append((c, f"{r.tube.file}: {exc}"))
            continue
        q = qcs[r.tube.file]
        m = metrics.get(r.tube.file)
        mm = m.get(act) if m else None
        low_count_kept = (q.status == "fail" and cfg.qc.low_count_policy == "keep" and _count_only_failure(q)
                          and mm is not None and not math.isnan(mm.pct))
        if (q.status == "fail" and not low_count_kept) or mm is None:
            reasons = "; ".join(f.message for f in q.flags if f.severity == "fail") or "no metrics"
            invalid.append((c, f"{r.tube.file}: QC fail ({reasons})"))
            continue
        if low_count_kept:
            kept_low.append(f"{r.tube.file} ({r.n_basophils} basophils, %{act}+ {mm.pct:.1f}, 95% CI "
                            f"{mm.ci_low:.1f}–{mm.ci_high:.1f})")
        conc.append(c)
        pct.append(mm.pct)
        net.append(mm.net_pct)
        files.append(r.tube.file)
    fit = analyse_series(patient, allergen, arm, conc, pct, net, unit=unit, invalid=invalid, config=cfg,
                         files=files)
    if kept_low:
        fit.flags.append(Flag("LOW_COUNT_KEPT", "warn",
                              f"{allergen} ({arm}): tubes below the basophil minimum kept in the dose response "
                              f"with their wider intervals (qc.low_count_policy: keep): " + "; ".join(kept_low)))
    return fit


def _control_metric(tubes: Sequence[TubeResult], condition: str, arm: str, metrics: Mapping[str, TubeMetrics],
                    act: str) -> list[Any]:
    out = []
    for r in tubes:
        if (r.tube.condition == condition and r.tube.pretreatment == arm and r.tube.file in metrics
                and not excluded_by_reviewer(r)):
            m = metrics[r.tube.file].get(act)
            if m is not None and not math.isnan(m.pct):
                out.append(m)
    return out


def _ige_pathway_control(tubes: Sequence[TubeResult], arm: str, metrics: Mapping[str, TubeMetrics],
                         act: str) -> tuple[str, list[Any]]:
    """The IgE-pathway positive control of an arm: anti-FcεRI, else anti-IgE in the untreated arm only
    (omalizumab removes IgE, so anti-IgE is not valid there: docs/method.md, Omalizumab effect)."""
    fceri = _control_metric(tubes, "anti_fceri", arm, metrics, act)
    if fceri or arm != "none":
        return "anti-FcεRI", fceri
    return "anti-IgE", _control_metric(tubes, "anti_ige", arm, metrics, act)


def _judged_controls(tubes: Sequence[TubeResult], arms: Sequence[str], metrics: Mapping[str, TubeMetrics],
                     act: str) -> tuple[str, list[Any], str, list[Any]] | None:
    """(arm, fMLP metrics, IgE-pathway control name, its metrics) of the first arm, untreated first, that has
    both positive controls; None when no arm has them."""
    for arm in sorted(arms, key=lambda a: (_arm_order(a), a)):
        fmlp = _control_metric(tubes, "fmlp", arm, metrics, act)
        name, fceri = _ige_pathway_control(tubes, arm, metrics, act)
        if fmlp and fceri:
            return arm, fmlp, name, fceri
    return None


def _non_releaser(tubes: Sequence[TubeResult], arms: Sequence[str], metrics: Mapping[str, TubeMetrics],
                  cfg: AnalysisConfig) -> str | None:
    """fMLP positive but anti-FcεRI negative, judged on the untreated arm (other arms when it lacks controls)."""
    qc = cfg.qc
    judged = _judged_controls(tubes, arms, metrics, cfg.markers.primary_marker)
    if judged is None:
        return None
    arm, fmlp, name, fceri = judged
    f_ok = [m for m in fmlp if fmlp_positive(m, qc)]
    if f_ok and all(m.net_pct < qc.anti_fceri_fail_below for m in fceri):
        return (f"arm {arm}: fMLP net {f_ok[0].net_pct:.1f}% (positive) but {name} net "
                f"{max(m.net_pct for m in fceri):.1f}% < {qc.anti_fceri_fail_below:g}%")
    return None


def _unresponsive(tubes: Sequence[TubeResult], arms: Sequence[str], metrics: Mapping[str, TubeMetrics],
                  cfg: AnalysisConfig) -> str | None:
    """Both positive controls negative (fMLP and anti-FcεRI), judged like ``_non_releaser``."""
    qc = cfg.qc
    judged = _judged_controls(tubes, arms, metrics, cfg.markers.primary_marker)
    if judged is None:
        return None
    arm, fmlp, name, fceri = judged
    if not any(fmlp_positive(m, qc) for m in fmlp) and all(m.net_pct < qc.anti_fceri_fail_below for m in fceri):
        return (f"no positive control responded in arm {arm} (fMLP net "
                f"{max(m.net_pct for m in fmlp):.1f}%, {name} net {max(m.net_pct for m in fceri):.1f}%): "
                f"basophils unresponsive")
    return None


@dataclass
class _PatientFindings:
    """What the QC of one patient × allergen found: failures (each one makes the class not evaluable), the
    non-releaser finding (also a failure) and warnings (they lower the QC status to warn)."""

    fail_reasons: list[str] = field(default_factory=list)
    warn_flags: list[Flag] = field(default_factory=list)
    non_releaser: str | None = None

    @property
    def qc_status(self) -> str:
        return "fail" if self.fail_reasons or self.non_releaser else status_of(self.warn_flags)


def _fit_columns(row: dict[str, Any], fit_n: FitResult | None, fit_o: FitResult | None) -> None:
    """The headline numbers of both arms' fits (EC50, CD-sens, CD-max, AUC)."""
    for arm, fit in (("none", fit_n), ("omalizumab", fit_o)):
        row[f"ec50_{arm}"] = fit.ec50 if fit else NAN
        row[f"cd_sens_{arm}"] = fit.cd_sens if fit else NAN
        row[f"cd_max_{arm}"] = fit.cd_max if fit else NAN
        row[f"auc_{arm}"] = fit.auc if fit else NAN


def _fit_details(row: dict[str, Any], fit_n: FitResult | None, fit_o: FitResult | None) -> None:
    """The fits' intervals, quality and reasons, after the contract's columns."""
    for arm, fit in (("none", fit_n), ("omalizumab", fit_o)):
        row[f"ec50_ci_low_{arm}"] = fit.ec50_ci[0] if fit else NAN
        row[f"ec50_ci_high_{arm}"] = fit.ec50_ci[1] if fit else NAN
        row[f"r2_{arm}"] = fit.r2 if fit else NAN
        row[f"fit_status_{arm}"] = fit.status if fit else "no_series"
        row[f"ec50_reason_{arm}"] = fit.ec50_reason if fit else "no series"
        row[f"bell_shaped_{arm}"] = fit.bell_shaped if fit else False


def _patient_findings(patient: str, allergen: str, tubes: Sequence[TubeResult], arms: Sequence[str],
                      fits: Sequence[FitResult | None], metrics: Mapping[str, TubeMetrics],
                      qcs: Mapping[str, TubeQc], arm_states: Mapping[tuple[str, str], _ArmState],
                      cfg: AnalysisConfig) -> _PatientFindings:
    """Failures of the arms' references and negative controls, the tubes' and fits' flags, the controls."""
    found = _PatientFindings()
    for arm in arms:
        state = arm_states[(patient, arm)]
        found.fail_reasons += state.fail_reasons
        for f in state.ref_files:
            q = qcs[f]
            if q.status == "fail":
                found.fail_reasons.append(f"negative control {f} ({arm}): "
                                          + "; ".join(x.message for x in q.flags if x.severity == "fail"))
    for r in tubes:
        q = qcs[r.tube.file]
        if r.tube.condition == "allergen" and (r.tube.allergen or "") != allergen:
            continue
        found.warn_flags += [Flag(f.code, "warn", f"{r.tube.file}: {f.message}") for f in q.flags]
    for fit in fits:
        if fit is not None:
            found.warn_flags += [Flag(f.code, "warn", f.message) for f in fit.flags]
    found.non_releaser = _non_releaser(tubes, arms, metrics, cfg)
    unresponsive = _unresponsive(tubes, arms, metrics, cfg)
    if unresponsive:
        found.fail_reasons.append(unresponsive)
    return found


def _untreated_positive(allergen: str, fit_n: FitResult | None, metrics: Mapping[str, TubeMetrics],
                        cfg: AnalysisConfig) -> tuple[bool | None, str]:
    """Whether any tube of the untreated dose response is positive (None when there is no untreated series),
    with the reason shown when it is not. The tubes are those the fit rests on (``fit_n.files``: tubes failing
    only the basophil count included under ``qc.low_count_policy: keep``), so the decision and the maximum net
    %positive its reason quotes come from the same tubes."""
    if fit_n is None:
        return None, "no allergen tube without pretreatment" if allergen else "no allergen tube"
    if fit_n.x.size == 0:
        return None, fit_n.ec50_reason
    act = cfg.markers.primary_marker
    pos = [metrics[f].get(act).positive for f in fit_n.files if f in metrics and metrics[f].get(act) is not None]
    reason = f"maximum net {np.max(fit_n.net):.1f}% < {cfg.positivity.net_pct_min:g}%" + (
        f" or SI < {cfg.positivity.si_min:g}" if cfg.positivity.require_si else "")
    return any(p is True for p in pos), reason


def _arms_effect(allergen: str, fit_n: FitResult | None, fit_o: FitResult | None,
                 cfg: AnalysisConfig) -> OmalizumabEffect:
    """The omalizumab effect of the two arms' fits; without both arms, an empty effect saying which is missing."""
    if fit_n is not None and fit_o is not None:
        return omalizumab_effect(fit_n, fit_o, clip_negative=cfg.fit.auc_clip_negative)
    effect = OmalizumabEffect()
    missing = "none" if fit_n is None else "omalizumab"
    effect.auc_inhibition_reason = f"no {missing} arm for {allergen or 'any allergen'}"
    effect.ec50_shift_reason = effect.auc_inhibition_reason
    return effect


def _class_columns(row: dict[str, Any], patient: str, allergen: str, tubes: Sequence[TubeResult],
                   found: _PatientFindings, untreated: tuple[bool | None, str], effect: OmalizumabEffect,
                   fit_n: FitResult | None, fit_o: FitResult | None,
                   arm_states: Mapping[tuple[str, str], _ArmState], cfg: AnalysisConfig) -> None:
    """The class, its reason and, for a class decided on the AUC inhibition, its interval and confidence."""
    decision = classify(qc_failures=found.fail_reasons, non_releaser=found.non_releaser,
                        untreated_positive=untreated[0], untreated_reason=untreated[1],
                        auc_inhibition_pct=effect.auc_inhibition_pct,
                        inhibition_reason=effect.auc_inhibition_reason, config=cfg.classes)
    ci_low, ci_high, confidence, reason = NAN, NAN, "", decision.reason
    if decision.label in CLASS_BANDS and fit_n is not None and fit_o is not None:
        samples = [_arm_sample(patient, arm, fit, tubes, arm_states, cfg)
                   for arm, fit in (("none", fit_n), ("omalizumab", fit_o))]
        if samples[0] is not None and samples[1] is not None:
            ci_low, ci_high, _ = auc_inhibition_interval(samples[0], samples[1], cfg, f"{patient}\x1f{allergen}")
        n_conc = [np.unique(fit_n.x).size, np.unique(fit_o.x).size, len(effect.concentrations)]
        confidence, why = class_confidence(ci_low, ci_high, n_conc, cfg.classes, level=cfg.fit.ci_level)
        reason = f"{decision.reason}; {why} ({confidence})"
    row["auc_inhibition_pct"] = effect.auc_inhibition_pct
    row["ec50_shift_log10"] = effect.ec50_shift_log10
    row["class"] = decision.label
    row["class_reason"] = reason
    row["class_confidence"] = confidence
    row["auc_inhibition_ci_low"] = ci_low
    row["auc_inhibition_ci_high"] = ci_high


def _patient_row(patient: str, allergen: str, tubes: Sequence[TubeResult],
                 fits: Mapping[tuple[str, str, str], FitResult], metrics: Mapping[str, TubeMetrics],
                 qcs: Mapping[str, TubeQc], arm_states: Mapping[tuple[str, str], _ArmState],
                 cfg: AnalysisConfig, unit: str | None) -> tuple[dict[str, Any], OmalizumabEffect | None]:
    """One row of the patients table, and the omalizumab effect when both arms were fitted (else None);
    concentrations and EC50s are in ``unit``, the allergen's reference unit (column ``unit``)."""
    arms = sorted({r.tube.pretreatment for r in tubes}, key=lambda a: (_arm_order(a), a))
    row: dict[str, Any] = {"patient": patient, "allergen": allergen}
    fit_n = fits.get((patient, allergen, "none"))
    fit_o = fits.get((patient, allergen, "omalizumab"))
    _fit_columns(row, fit_n, fit_o)
    found = _patient_findings(patient, allergen, tubes, arms, (fit_n, fit_o), metrics, qcs, arm_states, cfg)
    untreated = _untreated_positive(allergen, fit_n, metrics, cfg)
    effect = _arms_effect(allergen, fit_n, fit_o, cfg)
    both_arms = fit_n is not None and fit_o is not None
    if both_arms:
        found.warn_flags += effect.flags
    _class_columns(row, patient, allergen, tubes, found, untreated, effect, fit_n, fit_o, arm_states, cfg)
    row["qc_status"] = found.qc_status
    flags = unique_flags(found.warn_flags)
    row["qc_flags"] = ";".join(dict.fromkeys(f.code for f in flags))
    row["qc_reasons"] = "; ".join(found.fail_reasons + [f.message for f in flags])
    row["unit"] = unit or ""
    _fit_details(row, fit_n, fit_o)
    row["auc_inhibition_reason"] = effect.auc_inhibition_reason
    row["ec50_shift_reason"] = effect.ec50_shift_reason
    row["inhibition_by_concentration"] = "; ".join(
        f"{c:g}: {'undefined (no untreated response)' if math.isnan(v) else f'{v:.1f}%'}"
        for c, v in effect.inhibition_by_concentration.items())
    return row, effect if both_arms else None


def _arm_sample(patient: str, arm: str, fit: FitResult, tubes: Sequence[TubeResult],
                arm_states: Mapping[tuple[str, str], _ArmState], cfg: AnalysisConfig) -> ArmSample | None:
    """The values one arm's AUC rests on, for the AUC-inhibition bootstrap (None when incomplete)."""
    act = cfg.markers.primary_marker
    state = arm_states.get((patient, arm))
    est = state.reference.thresholds.get(act) if state else None
    if est is None or not fit.files:
        return None
    by_file = {r.tube.file: r for r in tubes}
    reference = pooled_values([by_file[f] for f in state.ref_files if f in by_file], act)
    if reference is None or reference.size == 0:
        return None
    sample = ArmSample(reference, est)
    for c, f in zip(fit.concentrations, fit.files):
        key = find_marker(by_file[f].basophil_values, act)
        if key is None:
            return None
        sample.tubes.append((float(c), np.asarray(by_file[f].basophil_values[key])))
    return sample


@dataclass
class _ReplicateGroup:
    """Replicate tubes of one patient, arm, condition, allergen and concentration (in the reference unit)."""

    files: list[str]
    n: int = 0  # tubes with an activation %positive
    mean_pct: float = NAN
    cv_pct: float = NAN


def _replicate_groups(ordered: Sequence[TubeResult], metrics: Mapping[str, TubeMetrics],
                      qcs: dict[str, TubeQc], ref_units: Mapping[tuple[str, str], str | None],
                      cfg: AnalysisConfig) -> dict[str, _ReplicateGroup]:
    """file → its replicate group, for tubes that have replicates. Each group's mean and CV (sample SD / mean)
    of %positive (activation marker) over its tubes with a value; a CV above ``qc.replicate_cv_max_pct`` where
    the mean reaches ``qc.replicate_cv_min_mean_pct`` adds the warn flag ``REPLICATE_CV_HIGH`` to each of its
    tubes. Every replicate stays a tube of its own (its row, its point in the fit)."""
    act = cfg.markers.primary_marker
    groups: dict[tuple[Any, ...], _ReplicateGroup] = {}
    for r in ordered:
        if excluded_by_reviewer(r):  # a reviewer's exclusion is no replicate of the others
            continue
        t = r.tube
        conc: Any = None
        if t.condition == "allergen" and t.concentration is not None:
            try:
                conc = convert(t.concentration, t.unit, ref_units.get((t.patient, t.allergen or "")))
            except UnitProblem:
                conc = (t.concentration, t.unit)
        key = (t.patient, t.pretreatment, t.condition, t.allergen or "", conc)
        groups.setdefault(key, _ReplicateGroup([])).files.append(t.file)
    out: dict[str, _ReplicateGroup] = {}
    for g in groups.values():
        if len(g.files) < 2:
            continue
        pcts = [m.pct for m in (metrics[f].get(act) if f in metrics else None for f in g.files)
                if m is not None and not math.isnan(m.pct)]
        g.n = len(pcts)
        if pcts:
            g.mean_pct = float(np.mean(pcts))
        if len(pcts) >= 2 and g.mean_pct > 0:
            g.cv_pct = float(100.0 * np.std(pcts, ddof=1) / g.mean_pct)
        q = cfg.qc
        if g.cv_pct > q.replicate_cv_max_pct and g.mean_pct >= q.replicate_cv_min_mean_pct:
            flag = Flag("REPLICATE_CV_HIGH", "warn",
                        f"replicates {', '.join(g.files)}: %{act}+ mean {g.mean_pct:.1f}, CV {g.cv_pct:.0f}% > "
                        f"{q.replicate_cv_max_pct:g}%")
            for f in g.files:
                qcs[f].flags.append(flag)
                qcs[f].status = status_of(qcs[f].flags)
        out.update({f: g for f in g.files})
    return out


def _add_replicate_columns(df: pd.DataFrame, ordered: Sequence[TubeResult],
                           groups: Mapping[str, _ReplicateGroup]) -> None:
    """When the experiment has replicate tubes, ``replicate_n``, ``replicate_mean_pct`` and
    ``replicate_cv_pct`` (activation marker, over the tube's replicate group; 1/NaN for a tube without
    replicates); a table without replicates is left as it is."""
    if df.empty or not groups:
        return
    df["replicate_n"] = [groups[r.tube.file].n if r.tube.file in groups else 1 for r in ordered]
    df["replicate_mean_pct"] = [groups[r.tube.file].mean_pct if r.tube.file in groups else NAN for r in ordered]
    df["replicate_cv_pct"] = [groups[r.tube.file].cv_pct if r.tube.file in groups else NAN for r in ordered]


def _add_converted_columns(df: pd.DataFrame, ordered: Sequence[TubeResult],
                           ref_units: Mapping[tuple[str, str], str | None]) -> None:
    """When a tube's unit differs from its allergen's reference unit, add ``concentration_converted`` and
    ``unit_converted`` (every allergen tube's concentration in the reference unit) beside the layout's own
    ``concentration`` and ``unit``; a single-unit experiment's table is left as it is."""
    if df.empty:
        return
    converted, units, differ = [], [], False
    for r in ordered:
        t = r.tube
        ref = ref_units.get((t.patient, t.allergen or ""))
        if t.condition != "allergen" or t.concentration is None:
            converted.append(NAN)
            units.append("")
            continue
        differ = differ or (t.unit or "").strip() != (ref or "")
        try:
            converted.append(convert(t.concentration, t.unit, ref))
        except UnitProblem:
            converted.append(NAN)
        units.append(ref or "")
    if differ:
        at = list(df.columns).index("unit") + 1 if "unit" in df.columns else len(df.columns)
        df.insert(at, "concentration_converted", converted)
        df.insert(at + 1, "unit_converted", units)


def add_cohort_classes(df: pd.DataFrame, cfg: AnalysisConfig) -> None:
    """Add (or recompute) ``cohort_class``/``cohort_reason`` over every row of ``df`` in place, when the
    config asks for a cohort mode. Call it again after concatenating per-patient tables: the cut points
    depend on the whole cohort."""
    mode = cfg.classes.cohort_mode
    if mode == "none":
        return
    values = [v if c != "not_evaluable" else NAN for v, c in zip(df["auc_inhibition_pct"], df["class"])]
    decisions = cohort_classes(values, mode)
    df["cohort_class"] = [d.label if d else "not_evaluable" for d in decisions]
    df["cohort_reason"] = [d.reason if d else "not evaluable" for d in decisions]


def _tubes_table(ordered: Sequence[TubeResult], metrics: Mapping[str, TubeMetrics], qcs: Mapping[str, TubeQc],
                 arm_states: Mapping[tuple[str, str], _ArmState], cfg: AnalysisConfig) -> pd.DataFrame:
    act = cfg.markers.primary_marker
    # the other scored markers get their own columns; CD63, when it is not the primary marker, has none (the
    # cd63_* columns hold the primary marker's numbers): its numbers are in tube_markers.csv
    extra_markers = [m for m in cfg.markers.scored[1:] if m.casefold() != "cd63"]
    rows = []
    for r in ordered:
        t = r.tube
        m = metrics.get(t.file)
        mm = m.get(act) if m else None
        state = arm_states.get((t.patient, t.pretreatment))
        est = state.reference.thresholds.get(act) if state else None
        q = qcs[t.file]
        row: dict[str, Any] = {
            "file": t.file, "patient": t.patient, "condition": t.condition, "allergen": t.allergen or "",
            "concentration": _num(t.concentration), "pretreatment": t.pretreatment, "n_events": r.n_events,
            "n_basophils": r.n_basophils, "cd63_threshold": est.value if est else NAN,
            "pct_cd63": mm.pct if mm else NAN, "net_pct_cd63": mm.net_pct if mm else NAN,
            "pct_cd63_ci_low": mm.ci_low if mm else NAN, "pct_cd63_ci_high": mm.ci_high if mm else NAN,
            "si_cd63": mm.si if mm else NAN, "cd203c_mfi": m.mfi if m else NAN,
            "si_cd203c": m.si_mfi if m else NAN, "qc_status": q.status, "qc_flags": q.codes,
            "qc_reasons": q.reasons_besides(r.error), "positive": (mm.positive if mm and mm.positive is not None else pd.NA),
            "unit": t.unit or "",
            "threshold_method": est.method if est else "",
            "threshold_reference": ";".join(est.reference_files) if est else "",
            "error": r.error or "",
        }
        if act.casefold() != "cd63":  # the cd63_* columns hold another marker's numbers: say which
            row["activation_marker"] = act
        for marker in extra_markers:
            em = m.get(marker) if m else None
            if em is None and not any(marker in s.reference.thresholds for s in arm_states.values()):
                continue
            low = marker.lower()
            row[f"{low}_threshold"] = em.threshold if em else NAN
            row[f"pct_{low}"] = em.pct if em else NAN
            row[f"net_pct_{low}"] = em.net_pct if em else NAN
            row[f"si_{low}"] = em.si if em else NAN
        for key, value in t.extra:
            row[key if key not in row else f"layout_{key}"] = value
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(TUBE_COLUMNS))
    rest = [c for c in df.columns if c not in TUBE_COLUMNS]
    return df[list(TUBE_COLUMNS) + rest].reset_index(drop=True)


def _tube_markers_table(ordered: Sequence[TubeResult], metrics: Mapping[str, TubeMetrics],
                        arm_states: Mapping[tuple[str, str], _ArmState], cfg: AnalysisConfig) -> pd.DataFrame:
    """tube_markers.csv: one row per tube × marker with a threshold in the tube's arm (primary first)."""
    primary = cfg.markers.primary_marker
    rows = []
    for r in ordered:
        t = r.tube
        state = arm_states.get((t.patient, t.pretreatment))
        if state is None:
            continue
        m = metrics.get(t.file)
        for marker in cfg.markers.scored:
            est = state.reference.thresholds.get(marker)
            if est is None:
                continue
            mm = m.get(marker) if m else None
            rows.append({
                "file": t.file, "patient": t.patient, "condition": t.condition, "allergen": t.allergen or "",
                "concentration": _num(t.concentration), "pretreatment": t.pretreatment, "marker": marker,
                "primary": marker == primary, "threshold": est.value, "threshold_method": est.method,
                "pct_positive": mm.pct if mm else NAN,
                "pct_positive_ci_low": mm.ci_low if mm else NAN, "pct_positive_ci_high": mm.ci_high if mm else NAN,
                "net_pct_positive": mm.net_pct if mm else NAN, "si": mm.si if mm else NAN,
                "positive": mm.positive if mm and mm.positive is not None else pd.NA,
                "mfi": mm.mfi if mm else NAN, "si_mfi": mm.si_mfi if mm else NAN,
            })
    return pd.DataFrame(rows, columns=list(TUBE_MARKER_COLUMNS))
