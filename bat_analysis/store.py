"""The results store: one SQLite file (``OUT/results.sqlite``) holding everything a run produced.

Tables
------
``runs``            one row per ``bat run``: version, template and its sha256, command, start/end, status, counts
``inputs``          per run, each input file with its sha256 (the audit trail of what was analysed)
``tubes``           one gated tube per (file, variant): the TubeResult's counts, fractions, annotations and the
                    cache key (file sha256 + template sha256 + package version + corrections) used for resume;
                    ``variant`` is ``auto`` (the automated result) or ``reviewed`` (re-gated with a reviewer's
                    corrections; the automated result stays beside it)
``tube_values``     the basophils' marker values, float32, zlib-compressed, one blob per marker
``gates``           per tube and variant, each gate: geometry JSON, counts, method, diagnostics, density image
``flags``           per tube and variant, the QC flags
``metrics``         the scored per-tube table (``tubes.csv`` is an export of it)
``patients``        the scored per-patient × allergen table (``patients.csv`` is an export of it)
``patient_scores``  per patient, the cached scoring objects (fits, thresholds) as typed JSON
                    (:mod:`bat_analysis._typed_json`) and the key they are valid for
``corrections``     the reviewer corrections log, append-only (triggers refuse UPDATE and DELETE): each entry
                    applies or withdraws one correction (a gate of a tube, or the CD63 threshold of a patient
                    and arm) with who, when, why, the value before and after, the source file, the software
                    version, and the checksums of the tube file(s) and template it was made on. The active
                    corrections are derived from it (:meth:`ResultStore.active_corrections`). It also keeps
                    the review decisions on whole tubes (kind ``tube``, action ``accept`` or ``exclude``)
                    and patients (kind ``patient``, action ``signoff``), ``withdraw`` reverting each; no run
                    applies them (``bat review``)
``run_corrections`` per run, each active correction and whether it was ``applied``, ``stale`` (made on a
                    tube file or template that has changed since; kept, not applied) or ``not_in_run`` (its
                    tube or arm is not in that run's layout)

Every write is a transaction; the database runs in WAL mode so that a run killed at any moment leaves the
store as it was after the last finished tube.

Nothing read from the store is executed or trusted: every JSON column and blob is checked on reading (type,
shape, size) and a damaged or hand-edited value is refused with a :class:`StoreDataError` naming the store
file, the table and the field. A damaged cache (``patient_scores``) is not an error: it is recomputed, and
the reason is kept in :attr:`ResultStore.warnings`. A store of schema version 1 (which cached scores as
pickles) is upgraded on opening: its cached scores are dropped unread, and its active review decisions are
copied into the corrections log.
"""

from __future__ import annotations

import copy
import json
import math
import sqlite3
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from . import _typed_json as typed_json
from .errors import BatError
from ._fileio import is_write_failure, make_dir, refuse_link, write_error
from .records import Flag, GateRecord, Tube, TubeResult

SCHEMA_VERSION = 2
STORE_NAME = "results.sqlite"
AUTO, REVIEWED = "auto", "reviewed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL, template_name TEXT, template_sha256 TEXT, command TEXT,
    started_at TEXT NOT NULL, ended_at TEXT, status TEXT NOT NULL,
    n_tubes INTEGER, n_gated INTEGER, n_reused INTEGER, n_failed INTEGER, info_json TEXT
);
CREATE TABLE IF NOT EXISTS inputs (
    run_id INTEGER NOT NULL, file TEXT NOT NULL, sha256 TEXT, PRIMARY KEY (run_id, file)
);
CREATE TABLE IF NOT EXISTS tubes (
    file TEXT NOT NULL, variant TEXT NOT NULL, run_id INTEGER, cache_key TEXT NOT NULL,
    file_sha256 TEXT, template_sha256 TEXT, version TEXT, corrections_sha256 TEXT,
    patient TEXT, condition TEXT, pretreatment TEXT, allergen TEXT, concentration REAL, unit TEXT,
    extra_json TEXT, n_events INTEGER, n_basophils INTEGER, fractions_json TEXT,
    has_spillover INTEGER, n_fluorescent_markers INTEGER, error TEXT, finished_at TEXT,
    PRIMARY KEY (file, variant)
);
CREATE TABLE IF NOT EXISTS tube_values (
    file TEXT NOT NULL, variant TEXT NOT NULL, marker TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (file, variant, marker)
);
CREATE TABLE IF NOT EXISTS gates (
    file TEXT NOT NULL, variant TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL, parent TEXT,
    dims_json TEXT, geometry_json TEXT, count INTEGER, parent_count INTEGER, method TEXT,
    diagnostics_json TEXT, density BLOB, density_json TEXT,
    PRIMARY KEY (file, variant, position)
);
CREATE TABLE IF NOT EXISTS flags (
    file TEXT NOT NULL, variant TEXT NOT NULL, position INTEGER NOT NULL,
    code TEXT NOT NULL, severity TEXT NOT NULL, message TEXT,
    PRIMARY KEY (file, variant, position)
);
CREATE TABLE IF NOT EXISTS metrics (position INTEGER PRIMARY KEY, file TEXT, run_id INTEGER, data_json TEXT);
CREATE TABLE IF NOT EXISTS patients (
    position INTEGER PRIMARY KEY, patient TEXT, allergen TEXT, run_id INTEGER, data_json TEXT
);
CREATE TABLE IF NOT EXISTS patient_scores (patient TEXT PRIMARY KEY, cache_key TEXT NOT NULL, data_json TEXT);
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER, action TEXT NOT NULL, kind TEXT NOT NULL,
    file TEXT, gate TEXT, patient TEXT, pretreatment TEXT, before_json TEXT, value_json TEXT,
    reviewer TEXT NOT NULL, reason TEXT NOT NULL, decided_at TEXT NOT NULL, recorded_at TEXT NOT NULL,
    source TEXT, version TEXT NOT NULL, input_sha256 TEXT, template_sha256 TEXT
);
CREATE TRIGGER IF NOT EXISTS corrections_append_only_update BEFORE UPDATE ON corrections
BEGIN SELECT RAISE(ABORT, 'the corrections log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS corrections_append_only_delete BEFORE DELETE ON corrections
BEGIN SELECT RAISE(ABORT, 'the corrections log is append-only'); END;
CREATE TABLE IF NOT EXISTS run_corrections (
    run_id INTEGER NOT NULL, correction_id INTEGER NOT NULL, status TEXT NOT NULL, note TEXT,
    PRIMARY KEY (run_id, correction_id)
);
"""

CORRECTION_ACTIONS = ("apply", "withdraw", "accept", "exclude", "signoff")
CORRECTION_KINDS = ("gate", "threshold", "tube", "patient")
# review decisions, by kind: a whole tube accepted as it stands or excluded; a patient signed off ("reviewed
# and approved"); each withdrawn by a ``withdraw`` entry. Corrections (gate, threshold) are applied instead.
DECISIONS = {"tube": ("accept", "exclude"), "patient": ("signoff",)}


class StoreDataError(BatError):
    """A value in the results store that is not what bat_analysis writes there (damaged or edited by hand)."""


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a script (a trigger's body keeps its inner semicolons)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (second resolution)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON")


def to_json(value: Any) -> str:
    """JSON text for the store; numpy scalars/arrays become plain numbers/lists, NaN stays NaN."""
    return json.dumps(value, default=_json_default, sort_keys=False)


ARRAY_COMPRESSION = 1  # zlib level of stored arrays: a plate's 16 MB of arrays in 0.10 s of CPU to 2.3 MB (level 6:
#                       0.20 s to 2.1 MB), in the run's own process, which stores every tube as it is gated


def _pack_array(arr: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    arr = np.ascontiguousarray(arr)
    meta = {"dtype": arr.dtype.newbyteorder("<").str, "shape": list(arr.shape)}
    return zlib.compress(arr.astype(meta["dtype"], copy=False).tobytes(), ARRAY_COMPRESSION), meta


_REMEDY = ("a results store as bat_analysis writes it; it was damaged or edited by hand: restore the folder "
           "from a backup, or run again into a new --out folder (or with --replace)")


def _inflate(blob: Any, n_bytes: int) -> bytes | None:
    """``blob`` decompressed when it holds exactly ``n_bytes`` bytes (never more are inflated), else None."""
    if not isinstance(blob, bytes):
        return None
    try:
        d = zlib.decompressobj()
        raw = d.decompress(blob, n_bytes + 1)
    except zlib.error:
        return None
    return raw if len(raw) == n_bytes and d.eof else None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_NUMBER_TYPES = frozenset({int, float})


def _all_numbers(values: list[Any]) -> bool:
    """Whether every item of a decoded JSON list is a number (an int or float, not a boolean): as
    ``all(_number(v) for v in values)``, by the items' types in one pass (a plate's density edges hold ~180,000
    numbers)."""
    return set(map(type, values)) <= _NUMBER_TYPES


@dataclass(frozen=True)
class StoredTube:
    """What the store knows about one gated tube without loading it: its key, run and when."""

    file: str
    variant: str
    cache_key: str
    run_id: int | None
    finished_at: str | None
    error: str | None


class ResultStore:
    """The SQLite results store of one output folder. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: Path | str, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise BatError("no results store here", source=str(self.path),
                           expected=f"an output folder written by 'bat run' (containing {STORE_NAME})")
        make_dir(self.path.parent)
        for suffix in ("", "-wal", "-shm", "-journal"):  # SQLite opens these by name: never through a link
            refuse_link(f"{self.path}{suffix}")
        self.warnings: list[str] = []  # damaged caches found while reading (recomputed), in plain words
        self._decoded_scores: dict[str, tuple[str, Any]] = {}  # patient -> (stored text, its decoded scores)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and is_write_failure(exc):
                raise write_error(exc, self.path) from exc
            raise BatError(f"cannot open the results store ({exc})", source=str(self.path),
                           expected="an SQLite database written by bat_analysis") from exc
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            with self.transaction() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                row = cur.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = None if row is None else str(row[0])
                if version not in (None, "1", str(SCHEMA_VERSION)):
                    raise BatError(f"results store has schema version {row[0]}", source=str(self.path),
                                   field="meta.schema_version", expected=f"version {SCHEMA_VERSION} (or 1, "
                                   "which is upgraded); use a new --out folder")
                if version == "1":  # scores cached as pickles: dropped unread, recomputed on the next run
                    cur.execute("DROP TABLE IF EXISTS patient_scores")
                for stmt in _statements(_SCHEMA):
                    cur.execute(stmt)
                if version == "1":
                    self._upgrade_reviews(cur)
                cur.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.OperationalError as exc:
            self.conn.close()
            if is_write_failure(exc):
                raise write_error(exc, self.path) from exc
            raise BatError(f"cannot open the results store ({exc})", source=str(self.path),
                           expected="an SQLite database written by bat_analysis") from exc
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise BatError(f"cannot open the results store ({exc})", source=str(self.path),
                           expected="an SQLite database written by bat_analysis") from exc
        except BaseException:
            self.conn.close()
            raise

    def _upgrade_reviews(self, cur: sqlite3.Cursor) -> None:
        """Copy the active decisions of a schema-1 ``reviews`` table into the corrections log (as applied
        corrections whose tube and template checksums were not recorded)."""
        if cur.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='reviews'").fetchone() is None:
            return
        now = utc_now()
        cur.execute(
            "INSERT INTO corrections (run_id, action, kind, file, gate, patient, pretreatment, before_json, "
            "value_json, reviewer, reason, decided_at, recorded_at, source, version, input_sha256, "
            "template_sha256) SELECT run_id, 'apply', kind, file, CASE WHEN kind='gate' THEN gate END, patient, "
            "pretreatment, NULL, value_json, COALESCE(reviewer, 'unknown reviewer'), COALESCE(reason, ''), "
            "COALESCE(decided_at, ?), ?, source, 'schema 1 store', NULL, NULL FROM reviews WHERE active=1 "
            "ORDER BY id", (now, now))

    @classmethod
    def in_folder(cls, out_dir: Path | str, *, create: bool = True) -> "ResultStore":
        """The store of an output folder (``OUT/results.sqlite``)."""
        return cls(Path(out_dir) / STORE_NAME, create=create)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One atomic unit of writes: committed entirely, or (on any error) not at all. A write the disk
        refuses (full, read-only) is a ``WriteError`` naming the store, the cause and what to do."""
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                if self.conn.in_transaction:  # SQLite may already have rolled back (e.g. on a full disk)
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if is_write_failure(exc):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise write_error(exc, self.path) from exc
            raise
        finally:
            cur.close()

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ runs
    def begin_run(self, *, version: str, template_name: str | None, template_sha256: str | None,
                  command: str, info: Mapping[str, Any] | None = None) -> int:
        with self.transaction() as cur:
            cur.execute("INSERT INTO runs (version, template_name, template_sha256, command, started_at, "
                        "status, info_json) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                        (version, template_name, template_sha256, command, utc_now(), to_json(info or {})))
            return int(cur.lastrowid)

    def record_inputs(self, run_id: int, checksums: Mapping[str, str | None]) -> None:
        with self.transaction() as cur:
            cur.executemany("INSERT OR REPLACE INTO inputs VALUES (?, ?, ?)",
                            [(run_id, f, s) for f, s in sorted(checksums.items())])

    def end_run(self, run_id: int, *, status: str, n_tubes: int, n_gated: int, n_reused: int,
                n_failed: int) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET ended_at=?, status=?, n_tubes=?, n_gated=?, n_reused=?, n_failed=? "
                        "WHERE id=?", (utc_now(), status, n_tubes, n_gated, n_reused, n_failed, run_id))

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first; ``info`` is the run's details (``info_json`` decoded and checked)."""
        cur = self.conn.execute("SELECT * FROM runs ORDER BY id")
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            run = dict(zip(cols, row))
            at = f"runs[{run.get('id')}]"
            self._check(isinstance(run.get("id"), int) and isinstance(run.get("status"), str),
                        "expected a run id and status", at)
            for name in ("version", "template_name", "template_sha256", "command", "started_at", "ended_at"):
                self._check(run.get(name) is None or isinstance(run[name], str), "expected text", f"{at}.{name}")
            run["info"] = self._json(run["info_json"], f"{at}.info_json", dict, nullable=True) or {}
            for name in ("data_dir", "layout", "template_text", "template_source", "data_dir_resolved",
                         "layout_resolved", "layout_sha256"):
                self._check(run["info"].get(name) is None or isinstance(run["info"][name], str),
                            "expected text", f"{at}.info_json.{name}")
            out.append(run)
        return out

    def last_run(self) -> dict[str, Any] | None:
        runs = self.runs()
        return runs[-1] if runs else None

    def inputs(self, run_id: int) -> dict[str, str | None]:
        rows = self.conn.execute("SELECT file, sha256 FROM inputs WHERE run_id=? ORDER BY file", (run_id,))
        out = {}
        for f, sha in rows.fetchall():
            self._check(isinstance(f, str) and (sha is None or isinstance(sha, str)), "expected a file name and "
                        "its sha256", f"inputs[{run_id}]")
            out[f] = sha
        return out

    # ------------------------------------------------------------------ tubes
    def stored_tubes(self) -> dict[tuple[str, str], StoredTube]:
        """Every stored (file, variant) with its cache key, without loading values."""
        rows = self.conn.execute("SELECT file, variant, cache_key, run_id, finished_at, error FROM tubes")
        return {(r[0], r[1]): StoredTube(*r) for r in rows.fetchall()}

    def put_tube(self, result: TubeResult, *, variant: str, cache_key: str, run_id: int | None,
                 template_sha256: str | None, version: str, corrections_sha256: str | None = None) -> None:
        """Store one tube's result (replacing an older one of the same file and variant) atomically."""
        t = result.tube
        with self.transaction() as cur:
            for table in ("tubes", "tube_values", "gates", "flags"):
                cur.execute(f"DELETE FROM {table} WHERE file=? AND variant=?", (t.file, variant))
            cur.execute(
                "INSERT INTO tubes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (t.file, variant, run_id, cache_key, result.file_sha256, template_sha256, version,
                 corrections_sha256, t.patient, t.condition, t.pretreatment, t.allergen,
                 None if t.concentration is None else float(t.concentration), t.unit,
                 to_json([list(p) for p in t.extra]), int(result.n_events), int(result.n_basophils),
                 to_json(result.event_fractions), int(bool(result.has_spillover)),
                 int(result.n_fluorescent_markers), result.error, utc_now()))
            for marker in sorted(result.basophil_values):
                values = np.asarray(result.basophil_values[marker], dtype=np.float32)
                blob = zlib.compress(values.astype("<f4", copy=False).tobytes(), 6)
                cur.execute("INSERT INTO tube_values VALUES (?,?,?,?,?)",
                            (t.file, variant, marker, int(values.size), blob))
            for i, g in enumerate(result.gates):
                density, dmeta = None, None
                if g.density is not None:
                    density, meta = _pack_array(np.asarray(g.density))
                    edges = [np.asarray(e, dtype=np.float64).tolist() for e in (g.density_edges or ())]
                    dmeta = to_json({**meta, "edges": edges})
                cur.execute("INSERT INTO gates VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (t.file, variant, i, g.name, g.parent, to_json(list(g.dims)), to_json(g.geometry),
                             int(g.count), int(g.parent_count), g.method, to_json(g.diagnostics),
                             density, dmeta))
            for i, f in enumerate(result.flags):
                cur.execute("INSERT INTO flags VALUES (?,?,?,?,?,?)",
                            (t.file, variant, i, f.code, f.severity, f.message))

    def _bad(self, what: str, field: str) -> StoreDataError:
        return StoreDataError(f"damaged or edited by hand: {what}", source=str(self.path), field=field,
                              expected=_REMEDY)

    def _json(self, text: Any, field: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
        """A JSON column's value, checked to be of ``kind``; StoreDataError naming ``field`` otherwise."""
        if text is None and nullable:
            return None
        if not isinstance(text, str):
            raise self._bad(f"expected JSON text, found {type(text).__name__}", field)
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise self._bad(f"not valid JSON ({str(exc)[:80]})", field) from None
        if not isinstance(value, kind):
            raise self._bad(f"expected a JSON {_kind_name(kind)}, found {type(value).__name__}", field)
        return value

    def _check(self, ok: bool, what: str, field: str) -> None:
        if not ok:
            raise self._bad(what, field)

    def get_tube(self, file: str, variant: str = AUTO) -> TubeResult | None:
        """The stored result of one tube and variant, exactly as it was stored (float32 values bit for bit).

        Every column is checked; a damaged or hand-edited value raises StoreDataError naming the table,
        the field and the tube."""
        row = self.conn.execute(
            "SELECT patient, condition, pretreatment, allergen, concentration, unit, extra_json, n_events, "
            "n_basophils, fractions_json, has_spillover, n_fluorescent_markers, file_sha256, error "
            "FROM tubes WHERE file=? AND variant=?", (file, variant)).fetchone()
        if row is None:
            return None
        (patient, condition, pretreatment, allergen, conc, unit, extra_json, n_events, n_baso, fractions,
         has_spill, n_fluor, sha, error) = row
        at = f"tubes[{file}, {variant}]"
        for name, value, nullable in (("patient", patient, False), ("condition", condition, False),
                                      ("pretreatment", pretreatment, False), ("allergen", allergen, True),
                                      ("unit", unit, True), ("file_sha256", sha, True), ("error", error, True)):
            self._check(isinstance(value, str) or (nullable and value is None), f"expected text, found {value!r:.40}",
                        f"{at}.{name}")
        self._check(conc is None or _number(conc), f"expected a number, found {conc!r:.40}", f"{at}.concentration")
        for name, value in (("n_events", n_events), ("n_basophils", n_baso), ("has_spillover", has_spill),
                            ("n_fluorescent_markers", n_fluor)):
            self._check(isinstance(value, int) and value >= 0, f"expected a count, found {value!r:.40}",
                        f"{at}.{name}")
        extra = self._json(extra_json, f"{at}.extra_json", list)
        self._check(all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in extra),
                    "expected [column, value] pairs of text", f"{at}.extra_json")
        fracs = self._json(fractions, f"{at}.fractions_json", dict)
        self._check(all(_number(v) for v in fracs.values()), "expected numbers", f"{at}.fractions_json")
        try:
            tube = Tube(file=file, patient=patient, condition=condition, pretreatment=pretreatment,
                        allergen=allergen, concentration=conc, unit=unit, extra=tuple((k, v) for k, v in extra))
        except (TypeError, ValueError) as exc:
            raise self._bad(f"not a valid tube ({exc})", at) from None
        values = {}
        for marker, n, blob in self.conn.execute(
                "SELECT marker, n, data FROM tube_values WHERE file=? AND variant=? ORDER BY marker",
                (file, variant)).fetchall():
            where = f"tube_values[{file}, {variant}, {marker}]"
            self._check(isinstance(marker, str) and isinstance(n, int) and 0 <= n <= 2**31,
                        "expected a marker name and a count", where)
            raw = _inflate(blob, 4 * n)
            self._check(raw is not None, f"the stored values are not {n} compressed float32 numbers", f"{where}.data")
            values[marker] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        gates = []
        for i, (name, parent, dims_json, geom_json, count, pcount, method, diag_json, density,
                dmeta_json) in enumerate(self.conn.execute(
                "SELECT name, parent, dims_json, geometry_json, count, parent_count, method, "
                "diagnostics_json, density, density_json FROM gates WHERE file=? AND variant=? "
                "ORDER BY position", (file, variant)).fetchall()):
            where = f"gates[{file}, {variant}, {i}]"
            self._check(isinstance(name, str) and (parent is None or isinstance(parent, str))
                        and (method is None or isinstance(method, str)), "expected text for name, parent, method",
                        where)
            self._check(isinstance(count, int) and isinstance(pcount, int) and count >= 0 and pcount >= 0,
                        "expected event counts", f"{where}.count")
            dims = self._json(dims_json, f"{where}.dims_json", list)
            self._check(all(isinstance(d, str) for d in dims), "expected dimension names", f"{where}.dims_json")
            geometry = self._json(geom_json, f"{where}.geometry_json", dict)
            diagnostics = self._json(diag_json, f"{where}.diagnostics_json", dict)
            dens, edges = None, None
            if density is not None:
                dmeta = self._json(dmeta_json, f"{where}.density_json", dict)
                dens, edges = self._density(density, dmeta, f"{where}.density")
            gates.append(GateRecord(name=name, parent=parent, dims=tuple(dims), geometry=geometry, count=count,
                                    parent_count=pcount, method=method, diagnostics=diagnostics, density=dens,
                                    density_edges=edges))
        flags = []
        for i, (code, sev, msg) in enumerate(self.conn.execute(
                "SELECT code, severity, message FROM flags WHERE file=? AND variant=? ORDER BY position",
                (file, variant)).fetchall()):
            self._check(isinstance(code, str) and sev in ("warn", "fail") and (msg is None or isinstance(msg, str)),
                        "expected a flag code, a severity (warn or fail) and a message",
                        f"flags[{file}, {variant}, {i}]")
            flags.append(Flag(code, sev, msg))
        return TubeResult(tube=tube, n_events=n_events, n_basophils=n_baso, basophil_values=values,
                          event_fractions=fracs, gates=gates, flags=flags, has_spillover=bool(has_spill),
                          n_fluorescent_markers=n_fluor, file_sha256=sha, error=error)

    def _density(self, blob: Any, meta: dict[str, Any], field: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """A gate's stored density image and bin edges, checked against their metadata."""
        dtype_name, shape, edges = meta.get("dtype"), meta.get("shape"), meta.get("edges")
        try:
            dtype = np.dtype(dtype_name) if isinstance(dtype_name, str) else None
        except TypeError:
            dtype = None
        self._check(dtype is not None and dtype.kind in "biuf" and not dtype.hasobject,
                    f"unsupported density dtype {dtype_name!r:.40}", field)
        self._check(isinstance(shape, list) and 0 < len(shape) <= 3
                    and all(isinstance(n, int) and 0 <= n <= 4096 for n in shape), "bad density shape", field)
        self._check(isinstance(edges, list) and len(edges) == len(shape)
                    and all(isinstance(e, list) and len(e) == n + 1 and _all_numbers(e)
                            for e, n in zip(edges, shape)), "bad density bin edges", field)
        raw = _inflate(blob, int(np.prod(shape)) * dtype.itemsize)
        self._check(raw is not None, "the density image does not match its shape and dtype", field)
        arr = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        return arr, tuple(np.asarray(e, dtype=np.float64) for e in edges)

    def current_variant(self, file: str) -> str | None:
        """``reviewed`` when a reviewed result is stored for the file, else ``auto``, else None."""
        rows = {r[0] for r in self.conn.execute("SELECT variant FROM tubes WHERE file=?", (file,)).fetchall()}
        if REVIEWED in rows:
            return REVIEWED
        return AUTO if AUTO in rows else None

    def delete_variant(self, file: str, variant: str) -> None:
        with self.transaction() as cur:
            for table in ("tubes", "tube_values", "gates", "flags"):
                cur.execute(f"DELETE FROM {table} WHERE file=? AND variant=?", (file, variant))

    def files(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT file FROM tubes ORDER BY file").fetchall()]

    # ------------------------------------------------------------------ scored tables
    def put_tables(self, run_id: int | None, tubes: "Any", patients: "Any") -> None:
        """Replace the scored tables (pandas DataFrames) in one transaction; column order is kept."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM metrics")
            cur.execute("DELETE FROM patients")
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('metrics_columns', ?)", (to_json(list(tubes.columns)),))
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('patients_columns', ?)",
                        (to_json(list(patients.columns)),))
            for i, rec in enumerate(_records(tubes)):
                cur.execute("INSERT INTO metrics VALUES (?,?,?,?)", (i, rec.get("file"), run_id, to_json(rec)))
            for i, rec in enumerate(_records(patients)):
                cur.execute("INSERT INTO patients VALUES (?,?,?,?,?)",
                            (i, rec.get("patient"), rec.get("allergen"), run_id, to_json(rec)))

    def tables(self) -> tuple["Any", "Any"]:
        """The scored tubes and patients tables as pandas DataFrames, in stored order."""
        import pandas as pd

        out = []
        for table, key in (("metrics", "metrics_columns"), ("patients", "patients_columns")):
            row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            cols = self._json(row[0], f"meta.{key}", list) if row else []
            self._check(all(isinstance(c, str) for c in cols), "expected column names", f"meta.{key}")
            recs = []
            for pos, text in self.conn.execute(f"SELECT position, data_json FROM {table} ORDER BY position"):
                rec = self._json(text, f"{table}[{pos}].data_json", dict)
                self._check(all(v is None or isinstance(v, (str, int, float, bool)) for v in rec.values()),
                            "expected plain values", f"{table}[{pos}].data_json")
                recs.append(rec)
            out.append(pd.DataFrame.from_records(recs, columns=cols))
        return out[0], out[1]

    def put_patient_scores(self, patient: str, cache_key: str, scores: Any) -> None:
        """Cache one patient's scoring objects as typed JSON (valid only for the same key and version).
        Objects that typed JSON cannot hold are not cached (the patient is scored again next time); the
        reason goes to ``warnings``."""
        try:
            text = typed_json.encode(scores)
        except TypeError as exc:
            self.warnings.append(f"the scores of patient {patient} were not cached ({exc}); they are recomputed "
                                 "on every run")
            text = None
        with self.transaction() as cur:
            if text is None:
                cur.execute("DELETE FROM patient_scores WHERE patient=?", (patient,))
            else:
                cur.execute("INSERT OR REPLACE INTO patient_scores VALUES (?,?,?)", (patient, cache_key, text))

    def get_patient_scores(self, patient: str, cache_key: str) -> Any | None:
        """The cached scoring objects of a patient for this key, else None. A damaged or hand-edited cache
        is never trusted: it is a miss (recomputed by the caller) and the reason goes to ``warnings``.

        Each call returns new objects (the caller may change them). A run reads a patient's scores back
        several times (as each patient is scored during the gating, then for the run's tables): the text
        decoded last is kept beside its decoded objects, and while the stored text is that text, a copy of
        them is returned (``copy.deepcopy``, ~0.2 ms) instead of decoding it again (~8 ms)."""
        row = self.conn.execute("SELECT cache_key, data_json FROM patient_scores WHERE patient=?",
                                (patient,)).fetchone()
        if row is None or row[0] != cache_key:
            return None
        kept = self._decoded_scores.get(patient)
        if kept is not None and kept[0] == row[1]:
            return copy.deepcopy(kept[1])
        classes = _scores_classes()
        try:
            if not isinstance(row[1], str):
                raise typed_json.TypedJsonError(f"expected JSON text, found {type(row[1]).__name__}")
            decoded = typed_json.decode(row[1], classes, classes["ExperimentScores"])
        except typed_json.TypedJsonError as exc:
            self.warnings.append(f"{self.path}: patient_scores[{patient}].data_json: the cached scores are damaged "
                                 f"or were edited by hand ({str(exc)[:200]}); they were not used and are "
                                 "recomputed")
            return None
        self._decoded_scores[patient] = (row[1], decoded)
        return copy.deepcopy(decoded)

    # ------------------------------------------------------------------ corrections
    def append_corrections(self, entries: Sequence[Mapping[str, Any]], run_id: int | None = None) -> list[int]:
        """Append entries to the corrections log (one transaction); returns their ids.

        Each entry: ``action`` (apply | withdraw), ``kind`` (gate: ``file`` and ``gate``; threshold: ``patient``
        and ``pretreatment``), ``value`` (the geometry mapping or threshold number applied; None for a
        withdrawal), ``before`` (what it replaces: the previous correction or the automated value; None when
        unknown), ``reviewer``, ``reason``, ``decided_at`` (default now), ``source`` (the file or tool it came
        from), ``version`` (the software's), ``input_sha256`` and ``template_sha256`` (what it was made on).
        """
        rows = []
        for i, e in enumerate(entries):
            problems = _entry_problems(e)
            if problems:
                raise BatError(f"correction {i + 1} cannot be recorded: {'; '.join(problems)}",
                               source=str(self.path), field="corrections",
                               expected="action apply|withdraw, kind gate (file, gate) or threshold (patient, "
                                        "pretreatment), reviewer and reason")
            rows.append((run_id, e["action"], e["kind"], e.get("file"), e.get("gate"), e.get("patient"),
                         e.get("pretreatment"), None if e.get("before") is None else to_json(e["before"]),
                         None if e.get("value") is None else to_json(e["value"]), e["reviewer"].strip(),
                         e["reason"].strip(), e.get("decided_at") or utc_now(), utc_now(), e.get("source"),
                         e["version"], e.get("input_sha256"), e.get("template_sha256")))
        ids = []
        with self.transaction() as cur:
            for r in rows:
                cur.execute("INSERT INTO corrections (run_id, action, kind, file, gate, patient, pretreatment, "
                            "before_json, value_json, reviewer, reason, decided_at, recorded_at, source, version, "
                            "input_sha256, template_sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", r)
                ids.append(int(cur.lastrowid))
        return ids

    def correction_log(self) -> list[dict[str, Any]]:
        """Every entry of the corrections log, oldest first, checked (StoreDataError for a damaged entry).

        Each entry is a dict with the columns of the ``corrections`` table, ``value`` and ``before`` decoded
        from JSON, and ``target`` = ``("gate", file, gate)`` or ``("threshold", patient, pretreatment)``."""
        cur = self.conn.execute("SELECT * FROM corrections ORDER BY id")
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            e = dict(zip(cols, row))
            at = f"corrections[{e.get('id')}]"
            e["value"] = self._json(e.pop("value_json"), f"{at}.value_json", (dict, int, float), nullable=True)
            e["before"] = self._json(e.pop("before_json"), f"{at}.before_json", (dict, int, float), nullable=True)
            problems = _entry_problems(e)
            for name in ("decided_at", "recorded_at", "source", "input_sha256", "template_sha256"):
                if e.get(name) is not None and not isinstance(e[name], str):
                    problems.append(f"{name}: expected text")
            if problems:
                raise self._bad("; ".join(problems), at)
            e["target"] = correction_target(e)
            out.append(e)
        return out

    def active_corrections(self) -> list[dict[str, Any]]:
        """The corrections in force: per target, its latest log entry when that entry applies (not withdraws)."""
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for e in self.correction_log():
            latest[e["target"]] = e
        return sorted((e for e in latest.values() if e["action"] == "apply"), key=lambda e: e["id"])

    def record_run_corrections(self, run_id: int, statuses: Sequence[tuple[int, str, str | None]]) -> None:
        """Which active corrections a run applied and which it found stale: (correction id, status, note)."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM run_corrections WHERE run_id=?", (run_id,))
            cur.executemany("INSERT INTO run_corrections VALUES (?,?,?,?)",
                            [(run_id, cid, status, note) for cid, status, note in statuses])

    def run_corrections(self, run_id: int) -> list[dict[str, Any]]:
        """The corrections log entries a run considered, each with ``status`` (applied | stale | not_in_run)
        and ``note``."""
        by_id = {e["id"]: e for e in self.correction_log()}
        out = []
        for cid, status, note in self.conn.execute(
                "SELECT correction_id, status, note FROM run_corrections WHERE run_id=? ORDER BY correction_id",
                (run_id,)).fetchall():
            self._check(cid in by_id and status in ("applied", "stale", "not_in_run")
                        and (note is None or isinstance(note, str)),
                        "expected a logged correction and a status (applied, stale or not_in_run)",
                        f"run_corrections[{run_id}]")
            out.append({**by_id[cid], "status": status, "note": note})
        return out


def correction_target(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    """What a correction is about: ``("gate", file, gate)``, ``("threshold", patient, pretreatment)`` or
    ``("tube", file, "")`` / ``("patient", patient, "")`` (a review decision on a whole tube or patient)."""
    if entry["kind"] == "gate":
        return ("gate", entry["file"], entry["gate"])
    if entry["kind"] == "tube":
        return ("tube", entry["file"], "")
    if entry["kind"] == "patient":
        return ("patient", entry["patient"], "")
    return ("threshold", entry["patient"], entry["pretreatment"])


def _entry_problems(e: Mapping[str, Any]) -> list[str]:
    problems = []
    if e.get("action") not in CORRECTION_ACTIONS:
        problems.append(f"action: expected apply, withdraw, accept or exclude, got {e.get('action')!r:.40}")
    kind = e.get("kind")
    needs = {"gate": ("file", "gate"), "threshold": ("patient", "pretreatment"), "tube": ("file",),
             "patient": ("patient",)}.get(kind)
    if needs is None:
        problems.append(f"kind: expected gate, threshold or tube, got {kind!r:.40}")
    else:
        problems += [f"{k}: missing" for k in needs if not isinstance(e.get(k), str) or not e.get(k)]
        allowed = DECISIONS.get(kind, ("apply",)) + ("withdraw",)
        if e.get("action") in CORRECTION_ACTIONS and e.get("action") not in allowed:
            problems.append(f"action: {e.get('action')!r:.40} is not a decision on a {kind}")
    for k in ("reviewer", "reason", "version"):
        if not isinstance(e.get(k), str) or not e[k].strip():
            problems.append(f"{k}: missing")
    value = e.get("value")
    if e.get("action") == "apply":
        if kind == "gate" and not (isinstance(value, Mapping) and isinstance(value.get("type"), str)):
            problems.append("value: expected a gate geometry (a mapping with 'type')")
        if kind == "threshold" and not (_number(value) and math.isfinite(float(value))):
            problems.append("value: expected a finite threshold")
    elif value is not None:
        problems.append(f"value: {e.get('action')} has no value")
    return problems


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "object", list: "array", int: "number", float: "number", str: "string"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _scores_classes() -> dict[str, type]:
    """The classes a cached ExperimentScores may be built of (nothing else is ever instantiated)."""
    from .analysis import config
    from .analysis.dose_response import FitResult
    from .analysis.omalizumab import OmalizumabEffect
    from .analysis.score import ExperimentScores
    from .analysis.threshold import ThresholdEstimate

    classes = [ExperimentScores, FitResult, ThresholdEstimate, OmalizumabEffect, Flag, config.AnalysisConfig,
               config.MarkerConfig, config.ThresholdConfig, config.PositivityConfig, config.QcConfig,
               config.FitConfig, config.ClassConfig]
    return {c.__name__: c for c in classes}


def _records(df: "Any") -> list[dict[str, Any]]:
    """DataFrame rows as plain dicts: numpy scalars unwrapped, pandas NA/NaT -> None, NaN kept as NaN."""
    import pandas as pd

    out = []
    for rec in df.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if v is None or v is pd.NA or v is pd.NaT:
                clean[str(k)] = None
            elif isinstance(v, float) and math.isnan(v):
                clean[str(k)] = float("nan")
            elif isinstance(v, (pd.Timestamp,)):
                clean[str(k)] = v.isoformat()
            else:
                clean[str(k)] = v
        out.append(clean)
    return out
