"""The review state of a run's tubes and patients, derived from the results store's corrections log.

The log (:meth:`bat_analysis.store.ResultStore.correction_log`) is the record; everything here is derived
from it, the latest entry per target winning:

* :func:`review_state` -- per tube file, its decision (accept | exclude) and its gate corrections in force
  (:class:`TubeState`; what ``bat review`` shows);
* :func:`signoffs` -- per patient signed off (not withdrawn, and no decision on its tubes since), its sign-off
  entry;
* :func:`mark_excluded` -- an excluded tube carries the fail flag ``EXCLUDED_BY_REVIEWER``
  (:data:`bat_analysis.analysis.score.EXCLUDED_FLAG`), which drops it from scoring;
* :func:`add_review_columns` -- the review-status columns of ``tubes.csv`` (``review_status``,
  ``reviewed_by``, ``reviewed_at``) and ``patients.csv`` (``signed_off_by``, ``signed_off_at``).

A tube's ``review_status`` is, first that applies: ``excluded`` (its latest decision is an exclusion);
``corrected`` (a gate correction of it is in force and the run applied it); ``correction_pending`` (a gate
correction is in the log but the results were gated before it: the next ``bat run`` applies it);
``accepted``; ``automated`` (no decision). ``reviewed_by`` / ``reviewed_at`` are the reviewer and time of
the entry that gives that status. A threshold correction changes no tube's status (it is in
``review_note``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Mapping, Sequence

from ..records import Flag, TubeResult

TUBE_COLUMNS = ("review_status", "reviewed_by", "reviewed_at")
PATIENT_COLUMNS = ("signed_off_by", "signed_off_at")


@dataclass
class TubeState:
    """The review state of one tube derived from the corrections log."""

    decision: str | None = None  # accept | exclude | None
    decision_entry: dict[str, Any] | None = None
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)  # gate -> the active correction entry

    @property
    def status(self) -> str:
        """What ``bat review``'s queue shows: excluded, reviewed or unreviewed."""
        if self.decision == "exclude":
            return "excluded"
        return "reviewed" if self.decision or self.gates else "unreviewed"


def _latest(log: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    latest: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for e in log:
        latest[e["target"]] = e
    return latest


def review_state(log: Iterable[Mapping[str, Any]]) -> dict[str, TubeState]:
    """Per tube file, its state after every entry of the log (the latest entry per target wins)."""
    out: dict[str, TubeState] = {}
    for (kind, a, b), e in _latest(log).items():
        if kind in ("threshold", "patient"):
            continue
        st = out.setdefault(a, TubeState())
        if kind == "tube" and e["action"] in ("accept", "exclude"):
            st.decision, st.decision_entry = e["action"], dict(e)
        elif kind == "gate" and e["action"] == "apply":
            st.gates[b] = dict(e)
    return out


def signoffs(log: Iterable[Mapping[str, Any]], patient_of: Mapping[str, str] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Per patient signed off, its sign-off entry: not withdrawn since, and -- with ``patient_of`` (tube file ->
    patient) -- no decision on one of its tubes, gates or thresholds logged after it. A sign-off approves the
    results as they were; a later change to them needs a new sign-off."""
    log = list(log)
    signed = {a: dict(e) for (kind, a, _), e in _latest(log).items()
              if kind == "patient" and e["action"] == "signoff"}
    if patient_of is None or not signed:
        return signed
    for e in log:
        kind, a, _ = e["target"]
        patient = a if kind == "threshold" else patient_of.get(a) if kind in ("tube", "gate") else None
        if patient in signed and e["id"] > signed[patient]["id"]:
            del signed[patient]
    return signed


def exclusion_message(entry: Mapping[str, Any]) -> str:
    return f"excluded by {entry['reviewer']} on {entry['decided_at']}: {entry['reason']}"


def mark_excluded(results: Sequence[TubeResult], log: Iterable[Mapping[str, Any]]) -> None:
    """Flag each tube whose latest decision is an exclusion ``EXCLUDED_BY_REVIEWER`` (fail): scoring then
    uses it for nothing (:mod:`bat_analysis.analysis.score`). A tube already flagged is left as it is."""
    from ..analysis.score import EXCLUDED_FLAG, excluded_by_reviewer

    states = review_state(log)
    for r in results:
        st = states.get(r.tube.file)
        if st is not None and st.decision == "exclude" and not excluded_by_reviewer(r):
            r.flags.append(Flag(EXCLUDED_FLAG, "fail", exclusion_message(st.decision_entry or {})))


def tube_status(st: TubeState | None, applied: Collection[int] | None = None) -> tuple[str, Mapping[str, Any] | None]:
    """(review_status, the entry that gives it) of one tube; ``applied`` are the ids of the corrections the
    results were gated with (None: every gate correction in force counts as applied)."""
    if st is None:
        return "automated", None
    if st.decision == "exclude":
        return "excluded", st.decision_entry
    if st.gates:
        entry = max(st.gates.values(), key=lambda e: e["id"])
        done = applied is None or all(e["id"] in applied for e in st.gates.values())
        return ("corrected" if done else "correction_pending"), entry
    if st.decision == "accept":
        return "accepted", st.decision_entry
    return "automated", None


def add_review_columns(tubes: Any, patients: Any, log: Sequence[Mapping[str, Any]],
                       applied: Collection[int] | None = None) -> tuple[Any, Any]:
    """Copies of the tubes and patients tables with the review-status columns (replaced when present),
    after every other column."""
    states = review_state(log)
    patient_of = dict(zip(tubes["file"].astype(str), tubes["patient"].astype(str))) \
        if {"file", "patient"} <= set(tubes.columns) else None
    signed = signoffs(log, patient_of)
    t = tubes.drop(columns=[c for c in TUBE_COLUMNS if c in tubes.columns])
    status, by, at = [], [], []
    for file in t["file"] if "file" in t.columns else []:
        s, e = tube_status(states.get(str(file)), applied)
        status.append(s)
        by.append(e["reviewer"] if e else "")
        at.append(e["decided_at"] if e else "")
    t["review_status"], t["reviewed_by"], t["reviewed_at"] = status, by, at
    p = patients.drop(columns=[c for c in PATIENT_COLUMNS if c in patients.columns])
    who = [signed.get(str(x)) for x in (p["patient"] if "patient" in p.columns else [])]
    p["signed_off_by"] = [e["reviewer"] if e else "" for e in who]
    p["signed_off_at"] = [e["decided_at"] if e else "" for e in who]
    return t, p


def with_review_status(scored: Any, table: Any) -> Any:
    """A copy of a scored tubes table (its rows in the order of ``table``) with ``table``'s review-status
    columns."""
    out = scored.copy()
    for col in TUBE_COLUMNS:
        out[col] = list(table[col])
    return out


def applied_ids(store: Any, run_id: int) -> set[int]:
    """The ids of the corrections a run applied (its results were gated and scored with them)."""
    return {int(e["id"]) for e in store.run_corrections(run_id) if e["status"] == "applied"}


def review_tables(store: Any, run_id: int, tubes: Any, patients: Any) -> tuple[Any, Any]:
    """The run's tables with the review-status columns as the store's log has them now."""
    return add_review_columns(tubes, patients, store.correction_log(), applied_ids(store, run_id))


def write_review_tables(out: Any, store: Any, stored: Any, about: Mapping[str, Any]) -> list[Any]:
    """Write a finished run's tables again (``bat report``) from its scores read back by
    :func:`bat_analysis.pipeline.load_run` (exclusions applied), with the run's ``manually_adjusted`` and
    ``review_note`` columns and the review-status columns as the log has them now; the store's tables are
    replaced with them; ``about`` is results.xlsx's about sheet. Parquet files are written when the folder
    has them."""
    from pathlib import Path

    from .._outputs import write_tables

    out = Path(out)
    tubes, patients = stored.scores.tubes.copy(), stored.scores.patients
    before, _ = store.tables()
    for col in ("manually_adjusted", "review_note"):
        if col in before.columns and "file" in before.columns:
            by_file = dict(zip(before["file"], before[col]))
            tubes[col] = [by_file.get(f, False if col == "manually_adjusted" else "") for f in tubes["file"]]
    tubes, patients = review_tables(store, stored.run_id, tubes, patients)
    store.put_tables(stored.run_id, tubes, patients)
    stored.scores.tubes = with_review_status(stored.scores.tubes, tubes)  # for the review gallery
    return write_tables(out, tubes, patients, about, parquet=(out / "tubes.parquet").is_file(),
                        tube_markers=stored.scores.tube_markers)
