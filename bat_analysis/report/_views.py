"""View models of the reports: what the HTML and PDF writers show, built once from typed results and scores.

:func:`tube_views` joins every tube's ``TubeResult`` with its row of the tubes table, the threshold and
the negative-control files of its arm (``ExperimentScores.thresholds`` and ``.references``: the reports
never re-derive analysis) and the percentages above the threshold that its histogram prints (the stored
``pct_cd63`` of tubes.csv). :func:`patient_views` groups them per patient with the patient's rows and fits.
:class:`RunView` holds the run's identity and audit trail. The tables' columns (:data:`TUBE_COLUMNS`,
:data:`PATIENT_COLUMNS`, :data:`QC_HEADERS`), their headers for people (:func:`column_label`) and the cell
formatting (:func:`fmt_value`) are defined here,
for both writers (``html.py``, ``pdf.py``), which import this module and never each other; so are the flag
groups both show (:func:`flag_groups`: failures, then warnings, then information; a finding shared by many tubes
once, with what its numbers mean: a LOW_BASOPHILS flag's severity and words come from ``analysis.qc``'s own
rule and the configured limits).
This module draws nothing; it imports no scipy at load (drawing workers import it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..records import CONDITIONS, Flag, TubeResult
from .._textsafe import safe_filename
from .plots import Png, is_manual, manual_reason

if TYPE_CHECKING:
    from ..analysis.dose_response import FitResult
    from ..analysis.score import ExperimentScores


# ----------------------------------------------------------------------------------------------- views
SEVERITY_ORDER = {"fail": 0, "warn": 1, "info": 2, "pass": 3}
CONDITION_ORDER = {c: i for i, c in enumerate(CONDITIONS)}


def severity_rank(status: str | None) -> int:
    """fail < warn < info < pass (unknown statuses sort with fail: they need a look)."""
    return SEVERITY_ORDER.get(status or "fail", 0)


def fmt_value(value: Any) -> str:
    """A cell as text: empty for missing values, 4 significant digits for floats, 'yes'/'no' for booleans."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return ""
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def report_filename(patient: str) -> str:
    """A valid, unique-per-patient stem for ``reports/<patient>.html`` whatever the patient ID (its length,
    path separators, odd characters): ``textsafe.safe_filename``."""
    return safe_filename(patient, fallback="patient")


@dataclass
class TubeView:
    """One tube as the reports show it: result, table row, threshold and reference, flags, images."""

    result: TubeResult
    order: int
    row: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    threshold_method: str | None = None
    negative_values: np.ndarray | None = None
    negative_files: tuple[str, ...] = ()
    qc_status: str = "pass"
    flags: list[Any] = field(default_factory=list)  # Flag or Notice
    adjusted: dict[str, str] = field(default_factory=dict)  # gate name -> reviewer and reason
    images: list[Png] = field(default_factory=list)
    marker: str = "CD63"
    pct: float | None = None  # % of the tube's basophils above the threshold, as in tubes.csv
    negative_pct: float | None = None  # the same % of the pooled negative control

    @property
    def anchor(self) -> str:
        """The tube's HTML id and the stem of its gallery images: unique per file, a valid file name."""
        return "tube-" + safe_filename(self.result.tube.file, fallback="tube")


@dataclass
class PatientView:
    """A patient's tubes, table rows, fits and dose-response drawings."""

    patient: str
    tubes: list[TubeView]
    tube_rows: list[dict[str, Any]] = field(default_factory=list)
    patient_rows: list[dict[str, Any]] = field(default_factory=list)
    fits: dict[tuple[str, str], FitResult] = field(default_factory=dict)  # (allergen, arm) -> fit
    curves: list[Png] = field(default_factory=list)
    fit_notes: list[str] = field(default_factory=list)
    patient_flags: list[Flag] = field(default_factory=list)

    @property
    def allergens(self) -> list[str]:
        return sorted({t.result.tube.allergen for t in self.tubes if t.result.tube.allergen})


@dataclass
class RunView:
    """The run's identity for reports and the audit trail (from ``run_info``)."""

    info: dict[str, Any]

    def get(self, key: str) -> Any:
        return self.info.get(key)

    def summary_items(self) -> list[tuple[str, Any]]:
        keys = ("version", "template", "date", "command", "run_id")
        return [(f"software {k}" if k == "version" else k, self.info[k]) for k in keys
                if self.info.get(k) not in (None, "")]

    def one_line(self) -> str:
        parts = [f"bat_analysis {self.info.get('version') or '?'}"]
        if self.info.get("template"):
            parts.append(f"template {self.info['template']}")
        if self.info.get("date"):
            parts.append(str(self.info["date"]))
        return " · ".join(parts)

    @property
    def marker(self) -> str:
        """The primary activation marker, as the gating template names it (``run_info["marker"]``)."""
        return str(self.info.get("marker") or "CD63")

    @property
    def population(self) -> str:
        """The gated population, as the gating template names it (``run_info["population"]``)."""
        return str(self.info.get("population") or "basophils")

    def label(self, column: str, unit: str | None = None) -> str:
        """A table column's header for people, in the template's words (see :func:`column_label`)."""
        return column_label(column, self.marker, self.population, unit)

    def inhibition_text(self, row: Mapping[str, Any]) -> str:
        """The AUC inhibition of a patients-table row with its interval and the class's confidence, for
        beside the class (``" · AUC inhibition 94.9% (95% CI 90.1–97.3%), confidence high"``); for a patient
        who is not evaluable the value is marked as not used; empty without an AUC inhibition."""
        value = _finite(row.get("auc_inhibition_pct"))
        if value is None:
            return ""
        if (row.get("class") or "not_evaluable") == "not_evaluable":  # a number that decided nothing
            return f" · AUC inhibition {value:.1f}%, not used: the patient is not evaluable"
        text = f" · AUC inhibition {value:.1f}%"
        low, high = _finite(row.get("auc_inhibition_ci_low")), _finite(row.get("auc_inhibition_ci_high"))
        if low is not None and high is not None:
            text += f" ({fmt_value(self.info.get('ci_level') or 95.0)}% CI {low:.1f}–{high:.1f}%)"
        if row.get("class_confidence"):
            text += f", confidence {row['class_confidence']}"
        return text

    def adjustments(self) -> list[Mapping[str, Any]]:
        items = self.info.get("manual_adjustments") or []
        return [a for a in items if isinstance(a, Mapping)]

    def audit_items(self, view: PatientView) -> list[tuple[str, Any]]:
        files = {t.result.tube.file for t in view.tubes}
        items: list[tuple[str, Any]] = [("software version", self.info.get("version")),
                                        ("template", self.info.get("template")),
                                        ("template sha256", self.info.get("template_sha256")),
                                        ("command", self.info.get("command")),
                                        ("date", self.info.get("date"))]
        known = {"version", "template", "template_sha256", "command", "date", "checksums",
                 "manual_adjustments"}
        items += [(k, v) for k, v in self.info.items() if k not in known and not isinstance(v, (Mapping, list))]
        sums = self.info.get("checksums") or {}
        checks = {t.result.tube.file: (sums.get(t.result.tube.file) if isinstance(sums, Mapping) else None)
                  or t.result.file_sha256 or "unknown" for t in view.tubes}
        items.append(("input files (sha256)", checks))
        if isinstance(sums, Mapping):
            others = {k: v for k, v in sums.items() if k not in files and not _is_other_tube(k, view)}
            if others:
                items.append(("other inputs (sha256)", others))
        mine = [_adjustment_row(a, self.marker) for a in self.adjustments()
                if a.get("file") in files or a.get("patient") == view.patient]
        gate_marks = [{"file": t.result.tube.file, "gate": g, "note": r} for t in view.tubes
                      for g, r in t.adjusted.items()]
        items.append(("manual adjustments", mine or gate_marks or "none"))
        return [(k, v) for k, v in items if v not in (None, "")]


def _is_other_tube(key: str, view: PatientView) -> bool:
    """Checksums of other patients' tubes are not listed in this patient's audit trail."""
    return key.lower().endswith((".fcs", ".lmd")) and key not in {t.result.tube.file for t in view.tubes}


def _adjustment_row(a: Mapping[str, Any], marker: str = "CD63") -> dict[str, Any]:
    value = a.get("value")
    what = a.get("gate") or (f"{marker} threshold" if a.get("kind") == "threshold" else a.get("kind"))
    if a.get("kind") == "threshold" and value is not None:
        what = f"{marker} threshold = {fmt_value(value if not isinstance(value, Mapping) else value.get('value'))}"
    return {"tube / arm": a.get("file") or f"{a.get('patient', '')} {a.get('pretreatment', '')}".strip(),
            "what": what, "reviewer": a.get("reviewer"), "reason": a.get("reason"),
            "when": a.get("decided_at"), "source": a.get("source")}


def _frame_rows(frame: Any) -> list[dict[str, Any]]:
    """DataFrame rows as dicts (an absent table gives no rows)."""
    if frame is None or len(frame) == 0:
        return []
    return [dict(r) for r in frame.to_dict(orient="records")]


@dataclass(frozen=True)
class Notice:
    """A finding shown to the reader; ``severity`` is fail, warn or info; ``rule`` marks a QC rule of the
    tubes table (qc_flags) rather than a gating flag."""

    code: str
    severity: str
    message: str
    rule: bool = False


@dataclass
class FlagGroup:
    """The same finding (severity and code) on several tubes or series: ``entries`` are (where, what)."""

    severity: str
    code: str
    entries: list[tuple[str, str]] = field(default_factory=list)
    noun: str = "tube"  # what an entry is: a tube, or a dose-response "series" (the patient's fit flags)

    @property
    def places(self) -> int:
        """Tubes flagged (a tube counts once), or series flagged."""
        return len({where for where, _ in self.entries}) if self.noun == "tube" else len(self.entries)

    @property
    def shared_reason(self) -> str | None:
        """The part after "subject: " that every entry's message shares ("fewer than the 500 recommended,
        above the minimum of 200"), or None when they differ."""
        reasons = {what.partition(": ")[2] for _, what in self.entries}
        return reasons.pop() if len(reasons) == 1 and "" not in reasons else None

    def heading(self) -> str:
        """"LOW_BASOPHILS on 43 tubes: fewer than the 500 recommended, above the minimum of 200"."""
        n = self.places
        text = f"{self.code} on {n} {self.noun}{'s' if n != 1 and self.noun == 'tube' else ''}"
        reason = self.shared_reason
        return f"{text}: {reason}" if reason else text

    def lines(self) -> list[tuple[str, str]]:
        """(where, what) with what shortened to its subject ("499 basophils") when the heading holds the
        shared reason."""
        if self.shared_reason is None:
            return list(self.entries)
        return [(where, what.partition(": ")[0]) for where, what in self.entries]


def flag_groups(tubes: Sequence[TubeView], patient_flags: Sequence[Any] = (), *,
                patient_place: str = "dose–response") -> list[FlagGroup]:
    """Every flag of ``tubes`` (and the patient's fit flags) grouped by severity and code: failures first,
    then warnings, then information; within a severity by code. Identical findings on 43 tubes make one group."""
    groups: dict[tuple[str, str], FlagGroup] = {}
    for t in tubes:
        for f in t.flags:
            groups.setdefault((f.severity, f.code), FlagGroup(f.severity, f.code)).entries.append(
                (t.result.tube.file, f.message))
    for f in patient_flags:
        groups.setdefault((f.severity, f.code + " "), FlagGroup(f.severity, f.code, noun="series")).entries.append(
            (patient_place, f.message))
    return sorted(groups.values(), key=lambda g: (severity_rank(g.severity), g.code))


def by_severity(flags: Sequence[Any]) -> list[Any]:
    """A tube's flags, failures first, then warnings, then information (stable within a severity)."""
    return sorted(flags, key=lambda f: severity_rank(f.severity))


def _parse_reasons(text: str, codes: Sequence[str]) -> dict[str, str]:
    """``"CODE: message; CODE2: message"`` (the tables' qc_reasons) as {code: message}."""
    if not text or not codes:
        return {}
    pattern = "(?:^|; )(" + "|".join(re.escape(c) for c in sorted(set(codes), key=len, reverse=True)) + "): "
    parts = re.split(pattern, text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _qc_notes(row: Mapping[str, Any], known: set[str], status: str) -> list[Notice]:
    """QC findings of the tubes table not already among the gating flags, with their reasons. The table keeps no
    severity per finding: each takes the tube's QC status (fail or warn); :func:`_for_reader` refines the
    basophil count's."""
    codes = [c.strip() for c in str(row.get("qc_flags") or "").split(";") if c.strip()]
    reasons = _parse_reasons(str(row.get("qc_reasons") or ""), codes)
    severity = status if status in ("fail", "warn") else "warn"
    return [Notice(c, severity, reasons.get(c, c.replace("_", " ").lower()), rule=True)
            for c in dict.fromkeys(codes) if c not in known]


def _for_reader(flag: Any, result: TubeResult, qc: Any) -> Any:
    """A flag as the reports show it: a LOW_BASOPHILS flag, or one of an event fraction (ACQUISITION_QC,
    MARGIN_EVENTS, DOUBLETS), says what its number means against the configured limits
    (``analysis.qc.basophil_count_words``, ``fraction_words``) with the severity those limits give."""
    if qc is None:
        return flag
    from ..analysis.qc import basophil_count_flags, basophil_count_words, fraction_words

    if flag.code != "LOW_BASOPHILS":
        rated_fraction = fraction_words(result.event_fractions, qc).get(flag.code)
        if rated_fraction is None:
            return flag
        return Notice(flag.code, rated_fraction[0], rated_fraction[1], rule=getattr(flag, "rule", False))

    rated = basophil_count_flags(int(result.n_basophils), qc)
    if not rated:  # the count meets the limits here: keep the flag as it was raised
        return flag
    return Notice(flag.code, rated[0].severity, basophil_count_words(int(result.n_basophils), qc),
                  rule=getattr(flag, "rule", False))


def _manual_gates(run: RunView) -> dict[str, dict[str, str]]:
    """file -> gate name -> "reviewer — reason", from the run's applied gate corrections."""
    adjust: dict[str, dict[str, str]] = {}
    for a in run.adjustments():
        if a.get("file") and a.get("gate"):
            note = " — ".join(str(a[k]) for k in ("reviewer", "reason") if a.get(k))
            adjust.setdefault(str(a["file"]), {})[str(a["gate"])] = note
    return adjust


def _report_order(r: TubeResult) -> tuple[Any, ...]:
    """Patient, untreated arm first, condition, allergen, concentration, file."""
    t = r.tube
    return (t.patient, t.pretreatment != "none", t.pretreatment, CONDITION_ORDER.get(t.condition, 99),
            t.allergen or "", t.concentration if t.concentration is not None else -1.0, t.file)


def _finite(value: Any) -> float | None:
    """A stored number as float; None when missing, NaN or not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def tube_views(results: Sequence[TubeResult], scores: ExperimentScores, run: RunView) -> list[TubeView]:
    """Join every tube's result with its row of the tubes table, its arm's threshold and negative control.

    Threshold and negative-control files come from ``scores`` (``thresholds`` and ``references``); the
    tube's % above the threshold is the stored ``pct_cd63`` of the tubes table (tubes.csv), computed with
    :func:`bat_analysis.analysis.metrics.pct_above` only where the table has none (a tube that was not scored).
    """
    # imported here, not at module level: drawing workers import this module and need none of scipy
    from ..analysis.metrics import pct_above
    from ..analysis.threshold import pooled_values

    rows = {str(r.get("file")): r for r in _frame_rows(scores.tubes)}
    by_file = {r.tube.file: r for r in results}
    marker = activation_marker(scores)
    adjust = _manual_gates(run)
    views = []
    for i, res in enumerate(sorted(results, key=_report_order)):
        t = res.tube
        row = rows.get(t.file, {})
        est = scores.thresholds.get((t.patient, t.pretreatment, marker))
        thr = float(est.value) if est is not None else None
        refs = scores.references.get((t.patient, t.pretreatment), ())
        ref_tubes = [by_file[f] for f in refs if f in by_file]
        neg = pooled_values(ref_tubes, marker) if ref_tubes else None
        pct = neg_pct = None
        if thr is not None:
            pct = _finite(row.get("pct_cd63"))
            values = pooled_values([res], marker) if pct is None else None
            if values is not None:
                pct = _finite(pct_above(values, thr))
            neg_pct = _finite(pct_above(neg, thr)) if neg is not None else None
        status = str(row.get("qc_status") or ("fail" if not res.ok else "warn" if res.flags else "pass"))
        flags: list[Any] = list(res.flags)
        if not res.ok and not any(f.severity == "fail" for f in flags):
            flags.append(Flag("NOT_GATED", "fail", res.error or "the tube could not be gated"))
        flags += _qc_notes(row, {f.code for f in flags}, status)
        qc_config = getattr(getattr(scores, "config", None), "qc", None)
        flags = by_severity([_for_reader(f, res, qc_config) for f in flags])
        adjusted = dict(adjust.get(t.file, {}))
        for g in res.gates:
            if is_manual(g) and g.name not in adjusted:
                adjusted[g.name] = manual_reason(g) or ""
        views.append(TubeView(res, i, row, thr, est.method if est is not None else None, neg, refs, status,
                              flags, adjusted, marker=marker, pct=pct, negative_pct=neg_pct))
    return views


def activation_marker(scores: ExperimentScores) -> str:
    """The primary activation marker: the one whose threshold, dose response and class the report shows
    (the template's first ``activation:`` marker unless ``analysis.markers.primary`` names another)."""
    return scores.config.markers.primary_marker


def patient_views(tubes: Sequence[TubeView], scores: ExperimentScores) -> dict[str, PatientView]:
    """Group tube views by patient, with the patient's rows of the tables and its fits."""
    out: dict[str, PatientView] = {}
    for t in tubes:
        out.setdefault(t.result.tube.patient, PatientView(t.result.tube.patient, [])).tubes.append(t)
    prow = _frame_rows(scores.patients)
    for patient, view in out.items():
        view.tube_rows = [t.row or {"file": t.result.tube.file, "condition": t.result.tube.condition,
                                    "pretreatment": t.result.tube.pretreatment, "qc_status": t.qc_status}
                          for t in view.tubes]
        view.patient_rows = [r for r in prow if str(r.get("patient")) == patient]
        view.fits = {(k[1], k[2]): f for k, f in scores.fits.items() if k[0] == patient}
        seen: set[tuple[str, str]] = set()
        for (allergen, arm), fit in sorted(view.fits.items()):
            for f in fit.flags:
                if (f.code, f.message) not in seen:
                    seen.add((f.code, f.message))
                    view.patient_flags.append(f)
    return out


# ------------------------------------------------------------------------------------- table columns
QC_HEADERS = ("file", "condition", "arm", "events", "basophils", "acq. QC removed %", "margin %",
              "doublets %", "spillover", "QC", "flags")
PATIENT_COLUMNS = ("allergen", "ec50_none", "ec50_omalizumab", "cd_sens_none", "cd_sens_omalizumab",
                   "cd_max_none", "cd_max_omalizumab", "auc_none", "auc_omalizumab", "auc_inhibition_pct",
                   "ec50_shift_log10", "class", "qc_status")
TUBE_COLUMNS = ("file", "condition", "allergen", "concentration", "pretreatment", "n_basophils",
                "cd63_threshold", "pct_cd63", "net_pct_cd63", "si_cd63", "cd203c_mfi", "si_cd203c",
                "qc_status")


# Headers of the report tables, for people: what the number is and its unit. {marker} and {population} are the
# gating template's names, {unit} the layout's concentration unit; an ``_<arm>`` suffix (``ec50_omalizumab``) adds
# the arm. The CSV tables keep their column names; only the reports show these.
COLUMN_LABELS = {
    "file": "File", "patient": "Patient", "condition": "Condition", "allergen": "Allergen",
    "concentration": "Concentration ({unit})", "pretreatment": "Arm", "arm": "Arm",
    "n_events": "Events (n)", "events": "Events (n)", "n_basophils": "{Population} (n)",
    "basophils": "{Population} (n)",
    "cd63_threshold": "{marker} threshold", "pct_cd63": "{marker}+ (% of {population})",
    "net_pct_cd63": "Net {marker}+ (% points)", "si_cd63": "{marker} SI",
    "cd203c_mfi": "CD203c MFI", "si_cd203c": "CD203c SI", "qc_status": "QC", "qc": "QC", "flags": "Flags",
    "acq. QC removed %": "Removed by acquisition QC (%)", "margin %": "Margin events (%)",
    "doublets %": "Doublets (%)", "spillover": "Spillover matrix",
    "ec50": "EC50 ({unit})", "cd_sens": "CD-sens (100/EC50)", "cd_max": "CD-max (% {marker}+)",
    "auc": "AUC (net % × log10 {unit})", "auc_inhibition_pct": "AUC inhibition by omalizumab (%)",
    "ec50_shift_log10": "EC50 shift (log10)", "class": "Class",
}
ARM_WORDS = {"none": "no pretreatment"}


def tube_table_note(marker: str) -> str:
    """What the tube table's derived columns mean (shown under it in both reports)."""
    return (f"Net {marker}+: the tube's % above the threshold minus its negative control's, in percentage points; "
            "concentrations in the layout's unit.")


def column_label(column: str, marker: str = "CD63", population: str = "basophils", unit: str | None = None) -> str:
    """A table column or header for people, with its unit (:data:`COLUMN_LABELS`): ``pct_cd63`` becomes
    "CD63+ (% of basophils)" in the gating template's marker and population, ``ec50_omalizumab`` "EC50, omalizumab
    (ng/mL)" in the layout's ``unit``. A column not listed is shown as written."""
    base, arm = column, None
    if column not in COLUMN_LABELS and "_" in column:
        head, tail = column.rsplit("_", 1)
        if head in COLUMN_LABELS:
            base, arm = head, tail
    template = COLUMN_LABELS.get(base)
    if template is None:
        return column
    label = template.format(marker=marker, population=population, Population=population[:1].upper()
                            + population[1:], unit=unit or "layout's unit")
    if arm is not None:
        name, _, rest = label.partition(" (")
        label = f"{name}, {ARM_WORDS.get(arm, arm)}" + (f" ({rest}" if rest else "")
    return label


def concentration_unit(tubes: Sequence[TubeView]) -> str | None:
    """The layout's concentration unit of these tubes (None when none or several are given)."""
    units = {t.result.tube.unit for t in tubes if t.result.tube.unit}
    return units.pop() if len(units) == 1 else None


def point_intervals(tube_rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """Each tube's 95% interval of its % positive (tubes.csv ``pct_cd63_ci_low``/``_high``), by file, for
    the dose-response error bars; tubes without one are left out."""
    out = {}
    for r in tube_rows:
        low, high = _finite(r.get("pct_cd63_ci_low")), _finite(r.get("pct_cd63_ci_high"))
        if low is not None and high is not None:
            out[str(r.get("file"))] = (low, high)
    return out


def qc_rows(tubes: Sequence[TubeView]) -> list[list[Any]]:
    rows = []
    for v in tubes:
        r, fr = v.result, v.result.event_fractions
        pct = [100.0 * fr[k] if k in fr else None for k in ("acquisition_qc", "margin", "doublets")]
        rows.append([r.tube.file, r.tube.condition, r.tube.pretreatment, r.n_events, r.n_basophils, *pct,
                     "present" if r.has_spillover else "absent", v.qc_status,
                     "; ".join(sorted({f.code for f in v.flags}))])
    return rows


def present_columns(frame_rows: Sequence[Mapping[str, Any]], wanted: Sequence[str]) -> list[str]:
    present = set().union(*(r.keys() for r in frame_rows)) if frame_rows else set(wanted)
    return [c for c in wanted if c in present]


