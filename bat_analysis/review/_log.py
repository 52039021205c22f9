"""The results store's corrections log, as a run reads and extends it.

Corrections live in the results store's corrections log (:meth:`bat_analysis.store.ResultStore.append_corrections`):
the corrections given to a run (:mod:`bat_analysis.review._load`) add entries to it
(:func:`plan_log_entries`), and every run applies the active corrections of the store, whether or not a file
is given (:func:`from_store`). A correction given again unchanged is not logged twice; a different geometry or
threshold for a corrected gate replaces it (logged, with the value before). A correction made on a tube file
or template that has changed since is *stale*: reported, not applied, kept in the log; its tubes are flagged
``CORRECTION_STALE`` (:func:`mark_stale`). What a gate is before a new correction -- the active correction,
else the automated gate -- is :func:`geometry_in_force`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..records import Flag, Tube, TubeResult
from ..store import AUTO, ResultStore, StoreDataError
from .corrections import (Corrections, GateCorrection, OverridesError, ThresholdCorrection, canonical_json,
                          check_geometry, describe_target)

STALE_FLAG = "CORRECTION_STALE"


def correction_basis(kind: str, target: Sequence[str], tubes: Sequence[Tube],
                     checksums: Mapping[str, str | None]) -> str | None:
    """The checksum of what a correction was made on: the tube's FCS file (a gate correction), or the
    negative controls of the patient and arm (a threshold; every tube of the arm when it has none).
    None when a file could not be read."""
    if kind == "gate":
        return checksums.get(target[1])
    _, patient, arm = target
    arm_tubes = [t for t in tubes if t.patient == patient and t.pretreatment == arm]
    files = sorted(t.file for t in arm_tubes if t.condition == "negative_control") or sorted(t.file for t in arm_tubes)
    sums = [checksums.get(f) for f in files]
    if not files or any(s is None for s in sums):
        return None
    return hashlib.sha256(canonical_json([[f, s] for f, s in zip(files, sums)]).encode("utf-8")).hexdigest()


def plan_log_entries(given: Corrections, log: Sequence[Mapping[str, Any]], *, tubes: Sequence[Tube],
                     checksums: Mapping[str, str | None], template_sha256: str, version: str,
                     automated: Callable[[str, str], dict[str, Any] | None] | None = None,
                     source: str | None = None) -> list[dict[str, Any]]:
    """The corrections log entries that the corrections ``given`` to a run add to the store's ``log``.

    A correction already in force with the same value, reviewer, reason and checksums is not logged again
    (re-running with the same overrides file changes nothing); a withdrawal of a correction already
    withdrawn is not logged again; a withdrawal of a gate or threshold that was never corrected is a
    problem (OverridesError naming it).
    """
    latest: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for e in log:
        latest[tuple(e["target"])] = e
    entries: list[dict[str, Any]] = []
    problems: list[str] = []

    def add(action: str, kind: str, target: tuple[str, str, str], value: Any, before: Any, c: Any) -> None:
        basis = correction_basis(kind, target, tubes, checksums)
        cur = latest.get(target)
        if (action == "apply" and cur is not None and cur["action"] == "apply"
                and canonical_json(cur["value"]) == canonical_json(value)
                and (cur["reviewer"], cur["reason"]) == (c.reviewer, c.reason)
                and (cur["input_sha256"], cur["template_sha256"]) == (basis, template_sha256)):
            return  # already in force, unchanged
        entry = {"action": action, "kind": kind, "value": value, "before": before, "reviewer": c.reviewer,
                 "reason": c.reason, "decided_at": c.decided_at, "source": c.source, "version": version,
                 "input_sha256": basis, "template_sha256": template_sha256}
        if kind == "gate":
            entry.update(file=target[1], gate=target[2])
        else:
            entry.update(patient=target[1], pretreatment=target[2])
        entries.append(entry)

    for c in given.gates:
        target = ("gate", c.file, c.gate)
        cur = latest.get(target)
        before = cur["value"] if cur is not None and cur["action"] == "apply" else (
            automated(c.file, c.gate) if automated is not None else None)
        add("apply", "gate", target, c.geometry, before, c)
    for t in given.threshold_list:
        target = ("threshold", t.patient, t.pretreatment)
        cur = latest.get(target)
        add("apply", "threshold", target, t.value, cur["value"] if cur is not None and cur["action"] == "apply"
            else None, t)
    for w in given.withdrawals:
        cur = latest.get(w.target)
        if cur is None:
            problems.append(f"{describe_target(w.target)}: there is no correction in the results store to withdraw")
        elif cur["action"] == "apply":
            add("withdraw", w.kind, w.target, None, cur["value"], w)
    if problems:
        raise OverridesError("the overrides file withdraws corrections that were never made; nothing was run",
                             source=source or (given.withdrawals[0].source if given.withdrawals else None),
                             problems=problems)
    return entries


@dataclass
class StoredCorrections:
    """The store's active corrections sorted for one run: those applied (as ``corrections``), and those not
    applied, with why (``stale``: entry and plain-words note). ``statuses`` is (entry id, status, note)."""

    corrections: Corrections
    stale: list[tuple[Mapping[str, Any], str]]
    statuses: list[tuple[int, str, str | None]]


def from_store(active: Sequence[Mapping[str, Any]], template: Any, tubes: Sequence[Tube],
               checksums: Mapping[str, str | None], *, store_path: str = "results.sqlite") -> StoredCorrections:
    """Which of the store's active corrections apply to this run.

    A correction whose tube (or arm) is not in the layout is not applied (status ``not_in_run``); one whose
    recorded tube checksum or template sha256 differs from the current one is ``stale``: not applied, kept
    in the store, reported. A geometry that does not fit the (unchanged) template is a damaged store entry
    (StoreDataError naming it).
    """

    by_file = {t.file for t in tubes}
    arms = {(t.patient, t.pretreatment) for t in tubes}
    out = Corrections()
    stale: list[tuple[Mapping[str, Any], str]] = []
    statuses: list[tuple[int, str, str | None]] = []
    for e in active:
        kind, a, b = e["target"]
        what = describe_target(e["target"])
        made = f"corrected by {e['reviewer']} on {e['decided_at']}"
        if (kind == "gate" and a not in by_file) or (kind == "threshold" and (a, b) not in arms):
            statuses.append((e["id"], "not_in_run", f"{what}: not in this run's layout"))
            continue
        why = None
        if e.get("template_sha256") and e["template_sha256"] != template.sha256:
            why = "the gating template changed since"
        elif e.get("input_sha256") and e["input_sha256"] != correction_basis(kind, e["target"], tubes, checksums):
            why = ("the FCS file changed since" if kind == "gate"
                   else "the negative-control FCS file(s) changed since")
        if why is not None:
            note = (f"{what} ({made}: {e['reason']}) is stale and was not applied: {why}; check it and correct "
                    "it again, or withdraw it")
            stale.append((e, note))
            statuses.append((e["id"], "stale", note))
            continue
        if kind == "gate":
            problems: list[str] = []
            try:
                n_dims = len(template.gate(b).dims)
            except KeyError:
                n_dims = None
                problems.append(f"gate {b!r} is not a gate of template {template.name}")
            geo = check_geometry("value", e["value"], n_dims, problems) if n_dims is not None else None
            if geo is None:
                raise StoreDataError(f"damaged or edited by hand: {'; '.join(problems)}", source=store_path,
                                     field=f"corrections[{e['id']}].value_json",
                                     expected="a gate geometry that fits the template")
            out.gates.append(GateCorrection(a, b, geo, e["reviewer"], e["reason"], e.get("source") or "",
                                            e["decided_at"]))
        else:
            out.threshold_list.append(ThresholdCorrection(a, b, float(e["value"]), e["reviewer"], e["reason"],
                                                          e.get("source") or "", e["decided_at"]))
        statuses.append((e["id"], "applied", None))
    return StoredCorrections(out, stale, statuses)


def mark_stale(results: Sequence[TubeResult], stale: Sequence[tuple[Any, str]]) -> None:
    """Flag the tubes a stale correction concerns (the tube of a gate, every tube of a threshold's arm)."""
    for entry, note in stale:
        kind, a, b = entry["target"]
        for r in results:
            t = r.tube
            if (kind == "gate" and t.file == a) or (kind == "threshold" and (t.patient, t.pretreatment) == (a, b)):
                r.flags.append(Flag(STALE_FLAG, "warn", note))


def geometry_in_force(store: ResultStore) -> Callable[[str, str], dict[str, Any] | None]:
    """``automated(file, gate)``: the geometry in force for a stored tube's gate -- the store's active
    correction, else the automated gate (an edited gate given back equal to it is no new correction)."""
    in_store = {e["target"]: e["value"] for e in store.active_corrections() if e["kind"] == "gate"}

    def automated(file: str, gate: str) -> dict[str, Any] | None:
        if ("gate", file, gate) in in_store:
            return in_store[("gate", file, gate)]
        res = store.get_tube(file, AUTO)
        rec = next((g for g in res.gates if g.name == gate), None) if res is not None else None
        return rec.geometry if rec is not None else None

    return automated
