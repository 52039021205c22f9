"""Reviewer corrections: what a correction is (gate geometry, activation threshold, withdrawal), and the overrides
YAML file that gives them to a run.

An overrides file lists corrections, each with who made it and why::

    # bat run ... --overrides review.yaml
    reviewer: Jane Doe                  # default reviewer of every correction below
    corrections:
      - tube: P01_none_allergen_3.fcs   # a file of the layout
        gate: basophils                 # a gate of the template
        geometry:                       # in the gate's displayed (transformed) coordinates, as in the report
          type: polygon                 # polygon (vertices) | range (mins, maxs) | ellipsoid (mean, covariance,
          vertices: [[0.1, 0.5], [0.3, 0.5], [0.3, 0.9], [0.1, 0.9]]   #  distance_square)
        reason: eosinophils were included
      - patient: P01                    # an activation threshold for one patient and arm
                                        # (or: tube: <its negative control>)
        pretreatment: none
        threshold: 1500                 # compensated linear value of the primary activation marker (CD63)
        reviewer: John Roe
        reason: bimodal negative control

A correction is withdrawn by an entry naming the same gate of the same tube (or the same patient and arm)
with ``withdraw: true`` instead of a geometry or threshold, and a reason::

      - tube: P01_none_allergen_3.fcs
        gate: basophils
        withdraw: true
        reason: the automated gate was right after all

Corrections live in the results store's corrections log: an overrides file (or ``--gates-from``, read by
:mod:`bat_analysis.review._exchange`) adds entries to it, and every run applies the active corrections of the
store, whether or not a file is given (:mod:`bat_analysis.review._log`). A correction given again unchanged is
not logged twice; a correction made on a tube file or template that has changed since is *stale*: reported,
not applied, kept in the log.

A tube with a gate correction is gated again with the corrected geometry (the automated result stays in the
store beside it); a threshold correction re-scores its patient only. Every problem of the file is reported
at once, each with its location (``corrections[2].geometry.vertices: ...``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ProblemsError
from ..gating._geometry import geometry_to_mapping, is_number, parse_geometry
from ..records import Tube



class OverridesError(ProblemsError):
    """A reviewer overrides file (or edited gates file) with problems; ``problems`` lists each, located."""


@dataclass(frozen=True)
class GateCorrection:
    """A reviewer's geometry for one gate of one tube."""

    file: str
    gate: str
    geometry: dict[str, Any]
    reviewer: str
    reason: str
    source: str
    decided_at: str | None = None


@dataclass(frozen=True)
class Withdrawal:
    """A reviewer's withdrawal of the correction of a gate of a tube (kind ``gate``) or of the threshold of a
    patient and arm (kind ``threshold``)."""

    kind: str
    file: str | None
    gate: str | None
    patient: str | None
    pretreatment: str | None
    reviewer: str
    reason: str
    source: str
    decided_at: str | None = None

    @property
    def target(self) -> tuple[str, str, str]:
        return (("gate", self.file, self.gate) if self.kind == "gate"  # type: ignore[return-value]
                else ("threshold", self.patient, self.pretreatment))


@dataclass(frozen=True)
class ThresholdCorrection:
    """A reviewer's threshold of the primary activation marker (the template's first, CD63 by default) for one
    patient and arm."""

    patient: str
    pretreatment: str
    value: float
    reviewer: str
    reason: str
    source: str
    decided_at: str | None = None


def canonical_json(value: Any) -> str:
    """The one JSON text of a value (sorted keys, no spaces): what fingerprints and comparisons of
    corrections are made on."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class Corrections:
    """All corrections that apply to a run."""

    gates: list[GateCorrection] = field(default_factory=list)
    threshold_list: list[ThresholdCorrection] = field(default_factory=list)
    withdrawals: list[Withdrawal] = field(default_factory=list)

    def gates_for(self, file: str) -> dict[str, GateCorrection]:
        return {c.gate: c for c in self.gates if c.file == file}

    def sha256_for(self, file: str) -> str | None:
        """Fingerprint of the geometry corrections of one tube (part of its cache key)."""
        items = sorted((c.gate, canonical_json(c.geometry)) for c in self.gates if c.file == file)
        if not items:
            return None
        return hashlib.sha256(canonical_json(items).encode("utf-8")).hexdigest()

    def thresholds(self) -> dict[tuple[str, str], float]:
        return {(t.patient, t.pretreatment): t.value for t in self.threshold_list}

    def gate_overrides(self, template: Any, file: str) -> dict[str, Any]:
        """The corrected gates of one tube as gate objects for ``gate_tube(..., overrides=...)``."""
        return {name: build_gate(template, name, c.geometry) for name, c in self.gates_for(file).items()}

    def note_for(self, file: str, patient: str, pretreatment: str) -> str:
        """Plain-words note of the corrections affecting a tube ('' when none)."""
        notes = [f"gate {c.gate} adjusted by {c.reviewer}: {c.reason}" for c in self.gates if c.file == file]
        notes += [f"activation threshold set to {t.value:g} by {t.reviewer}: {t.reason}" for t in self.threshold_list
                  if t.patient == patient and t.pretreatment == pretreatment]
        return "; ".join(notes)

    def __bool__(self) -> bool:
        return bool(self.gates or self.threshold_list or self.withdrawals)


# ------------------------------------------------------------------------------------------------ gates
def build_gate(template: Any, gate_name: str, geometry: Mapping[str, Any]) -> Any:
    """A gate object for the template's gate ``gate_name`` (its dims and parent) with new geometry.

    The geometry is in the gate's template scales; ``gate_tube`` puts the gate on the template's
    dimensions (with their transforms), so the dimensions here carry only their keys.
    """
    from ..gating.gates import gate_from_dict

    spec = template.gate(gate_name)
    data = {k: v for k, v in geometry.items() if k not in ("dims", "name", "parent", "transforms")}
    data.update(name=spec.name, parent=spec.parent, dims=list(spec.dims), transforms=[None] * len(spec.dims))
    return gate_from_dict(data)


def check_geometry(where: str, geo: Any, n_dims: int, problems: list[str]) -> dict[str, Any] | None:
    """Validate a correction's geometry for a gate of ``n_dims`` dimensions (the one reader of gate geometry,
    :func:`bat_analysis.gating._geometry.parse_geometry`: a range's limits spelled ``min``/``max`` or
    ``mins``/``maxs``); returns its canonical mapping with every number a float, or None (problems appended)."""
    parsed = parse_geometry(geo, n_dims, where, problems)
    return None if parsed is None else _as_floats(geometry_to_mapping(parsed))


def _as_floats(value: Any) -> Any:
    """Numbers of a geometry mapping as floats (the stored form), None kept."""
    if isinstance(value, dict):
        return {k: (v if k == "type" else _as_floats(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_floats(v) for v in value]
    return None if value is None else float(value)


def parse_overrides(data: Any, template: Any, tubes: Sequence[Tube], *, source: str,
                    default_reviewer: str | None = None) -> Corrections:
    """Validate a parsed overrides document; raises OverridesError listing every problem."""
    problems: list[str] = []
    by_file = {t.file: t for t in tubes}
    by_name = {Path(t.file).name: t for t in tubes}
    arms = {(t.patient, t.pretreatment) for t in tubes}
    gate_names = [g.name for g in template.gates]
    if not isinstance(data, Mapping):
        raise OverridesError("an overrides file must be a mapping with a 'corrections' list", source=source,
                             problems=[f"(top level): got {type(data).__name__}"])
    unknown = sorted(str(k) for k in set(data) - {"reviewer", "corrections", "date"})
    problems += [f"{k}: unknown key (expected reviewer, corrections)" for k in unknown]
    top_reviewer = data.get("reviewer", default_reviewer)
    items = data.get("corrections")
    if not isinstance(items, list) or not items:
        problems.append("corrections: expected a non-empty list of corrections")
        items = []
    out = Corrections()
    seen: dict[tuple[str, ...], str] = {}
    for i, item in enumerate(items):
        where = f"corrections[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: expected a mapping, got {type(item).__name__}")
            continue
        extra = sorted(str(k) for k in set(item) - {"tube", "patient", "pretreatment", "gate", "geometry",
                                                    "threshold", "reviewer", "reason", "date", "withdraw"})
        problems += [f"{where}.{k}: unknown key" for k in extra]
        reviewer = item.get("reviewer", top_reviewer)
        reason = item.get("reason")
        if not isinstance(reviewer, str) or not reviewer.strip():
            problems.append(f"{where}.reviewer: missing (give 'reviewer:' here or at the top of the file)")
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"{where}.reason: missing (say why the automated result was corrected)")
        date = str(item["date"]) if item.get("date") is not None else None
        tube = None
        if "tube" in item:
            name = str(item["tube"])
            tube = by_file.get(name) or by_name.get(Path(name).name)
            if tube is None:
                problems.append(f"{where}.tube: {name!r} is not a file of the layout")
        has_geo, has_thr = "geometry" in item, "threshold" in item
        if "withdraw" in item:
            if item["withdraw"] is not True:
                problems.append(f"{where}.withdraw: expected true (or leave it out), got {item['withdraw']!r:.40}")
                continue
            if has_geo or has_thr:
                problems.append(f"{where}: a withdrawal has no 'geometry' or 'threshold'; name the corrected gate "
                                "(tube and gate) or arm (patient and pretreatment)")
                continue
            withdrawal = _withdrawal(item, where, tube, gate_names, template, arms, problems)
            if withdrawal is None or not isinstance(reviewer, str) or not isinstance(reason, str):
                continue
            key = withdrawal.target
            if key in seen:
                problems.append(f"{where}: {describe_target(key)} is already named by {seen[key]}")
                continue
            seen[key] = where
            out.withdrawals.append(Withdrawal(withdrawal.kind, withdrawal.file, withdrawal.gate, withdrawal.patient,
                                              withdrawal.pretreatment, reviewer.strip(), reason.strip(), source,
                                              date))
            continue
        if has_geo == has_thr:
            problems.append(f"{where}: give either 'geometry' (with 'gate') or 'threshold'")
            continue
        if has_geo:
            if "tube" not in item:
                problems.append(f"{where}.tube: missing (a gate correction applies to one tube)")
            gate = item.get("gate")
            if gate not in gate_names:
                problems.append(f"{where}.gate: {gate!r} is not a gate of template {template.name} "
                                f"(expected one of {', '.join(gate_names)})")
                continue
            geo = check_geometry(f"{where}.geometry", item["geometry"], len(template.gate(gate).dims), problems)
            if geo is None or tube is None or not isinstance(reviewer, str) or not isinstance(reason, str):
                continue
            key = ("gate", tube.file, gate)
            if key in seen:
                problems.append(f"{where}: gate {gate} of {tube.file} is already corrected by {seen[key]}")
                continue
            seen[key] = where
            out.gates.append(GateCorrection(tube.file, gate, geo, reviewer.strip(), reason.strip(), source, date))
        else:
            value = item["threshold"]
            if not is_number(value):
                problems.append(f"{where}.threshold: expected a number (compensated linear value of the "
                                f"activation marker), got {value!r}")
                continue
            if tube is not None:
                patient, arm = tube.patient, tube.pretreatment
            else:
                patient, arm = item.get("patient"), item.get("pretreatment", "none")
                if patient is None:
                    problems.append(f"{where}: a threshold needs 'tube' or 'patient' (+ 'pretreatment')")
                    continue
                patient, arm = str(patient), str(arm)
                if (patient, arm) not in arms:
                    problems.append(f"{where}: patient {patient!r} with pretreatment {arm!r} is not in the layout")
                    continue
            if not isinstance(reviewer, str) or not isinstance(reason, str):
                continue
            key = ("threshold", patient, arm)
            if key in seen:
                problems.append(f"{where}: the threshold of {patient}/{arm} is already corrected by {seen[key]}")
                continue
            seen[key] = where
            out.threshold_list.append(ThresholdCorrection(patient, arm, float(value), reviewer.strip(),
                                                          reason.strip(), source, date))
    if problems:
        raise OverridesError("the overrides file has problems; nothing was run", source=source,
                             problems=problems)
    return out


def _withdrawal(item: Mapping[str, Any], where: str, tube: Tube | None, gate_names: list[str], template: Any,
                arms: set[tuple[str, str]], problems: list[str]) -> Withdrawal | None:
    """The target of a ``withdraw: true`` entry (reviewer and reason filled in by the caller)."""
    if "gate" in item:
        if "tube" not in item:
            problems.append(f"{where}.tube: missing (a gate correction applies to one tube)")
            return None
        gate = item.get("gate")
        if gate not in gate_names:
            problems.append(f"{where}.gate: {gate!r} is not a gate of template {template.name} "
                            f"(expected one of {', '.join(gate_names)})")
            return None
        if tube is None:
            return None
        return Withdrawal("gate", tube.file, str(gate), None, None, "", "", "")
    if tube is not None:
        return Withdrawal("threshold", None, None, tube.patient, tube.pretreatment, "", "", "")
    if "tube" in item:
        return None
    patient = item.get("patient")
    if patient is None:
        problems.append(f"{where}: a withdrawal needs 'tube' and 'gate' (a gate correction) or 'patient' "
                        "(+ 'pretreatment', a threshold correction)")
        return None
    patient, arm = str(patient), str(item.get("pretreatment", "none"))
    if (patient, arm) not in arms:
        problems.append(f"{where}: patient {patient!r} with pretreatment {arm!r} is not in the layout")
        return None
    return Withdrawal("threshold", None, None, patient, arm, "", "", "")


def describe_target(target: Sequence[str]) -> str:
    """A correction's target in words: ``('gate', file, gate)`` or ``('threshold', patient, arm)``."""
    kind, a, b = target
    return f"gate {b} of {a}" if kind == "gate" else f"the threshold of {a}/{b}"


def read_overrides(path: Path | str, template: Any, tubes: Sequence[Tube], *,
                   default_reviewer: str | None = None) -> Corrections:
    """Read and validate an overrides YAML file (parsed behind the limits of :mod:`bat_analysis._safe_parse`)."""
    from ..errors import InputParseError
    from .._safe_parse import load_yaml

    path = Path(path)
    try:
        data = load_yaml(path, what="overrides file")
    except InputParseError as exc:
        raise OverridesError(exc.located, source=str(path)) from None  # one line: FILE: line L, column C: ...
    return parse_overrides(data, template, tubes, source=str(path), default_reviewer=default_reviewer)
