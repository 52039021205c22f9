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
``patient_scores``  per patient, the cached scoring objects (fits, thresholds) and the key they are valid for
``reviews``         reviewer decisions: what was corrected, by whom, when and why, and from which file

Every write is a transaction; the database runs in WAL mode so that a run killed at any moment leaves the
store as it was after the last finished tube.
"""

from __future__ import annotations

import json
import math
import pickle
import sqlite3
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import BatError
from .fileio import is_write_failure, make_dir, refuse_link, write_error
from .records import Flag, GateRecord, Tube, TubeResult

SCHEMA_VERSION = 1
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
CREATE TABLE IF NOT EXISTS patient_scores (patient TEXT PRIMARY KEY, cache_key TEXT NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER, file TEXT, patient TEXT, pretreatment TEXT,
    gate TEXT, kind TEXT NOT NULL, value_json TEXT, reviewer TEXT, reason TEXT, decided_at TEXT,
    source TEXT, fingerprint TEXT, active INTEGER NOT NULL DEFAULT 1
);
"""


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


def _pack_array(arr: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    arr = np.ascontiguousarray(arr)
    meta = {"dtype": arr.dtype.newbyteorder("<").str, "shape": list(arr.shape)}
    return zlib.compress(arr.astype(meta["dtype"], copy=False).tobytes(), 6), meta


def _unpack_array(blob: bytes, meta: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=np.dtype(meta["dtype"])).reshape(meta["shape"]).copy()


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
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            with self.transaction() as cur:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                row = cur.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    cur.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise BatError(f"results store has schema version {row[0]}", source=str(self.path),
                                   field="meta.schema_version", expected=f"version {SCHEMA_VERSION}; "
                                   "use a new --out folder")
        except sqlite3.OperationalError as exc:
            if is_write_failure(exc):
                raise write_error(exc, self.path) from exc
            raise BatError(f"cannot open the results store ({exc})", source=str(self.path),
                           expected="an SQLite database written by bat_analysis") from exc
        except sqlite3.DatabaseError as exc:
            raise BatError(f"cannot open the results store ({exc})", source=str(self.path),
                           expected="an SQLite database written by bat_analysis") from exc

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
        cur = self.conn.execute("SELECT * FROM runs ORDER BY id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def last_run(self) -> dict[str, Any] | None:
        runs = self.runs()
        return runs[-1] if runs else None

    def inputs(self, run_id: int) -> dict[str, str | None]:
        rows = self.conn.execute("SELECT file, sha256 FROM inputs WHERE run_id=? ORDER BY file", (run_id,))
        return {f: s for f, s in rows.fetchall()}

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

    def get_tube(self, file: str, variant: str = AUTO) -> TubeResult | None:
        """The stored result of one tube and variant, exactly as it was stored (float32 values bit for bit)."""
        row = self.conn.execute(
            "SELECT patient, condition, pretreatment, allergen, concentration, unit, extra_json, n_events, "
            "n_basophils, fractions_json, has_spillover, n_fluorescent_markers, file_sha256, error "
            "FROM tubes WHERE file=? AND variant=?", (file, variant)).fetchone()
        if row is None:
            return None
        (patient, condition, pretreatment, allergen, conc, unit, extra_json, n_events, n_baso, fractions,
         has_spill, n_fluor, sha, error) = row
        tube = Tube(file=file, patient=patient, condition=condition, pretreatment=pretreatment,
                    allergen=allergen, concentration=conc, unit=unit,
                    extra=tuple((str(k), str(v)) for k, v in json.loads(extra_json)))
        values = {}
        for marker, n, blob in self.conn.execute(
                "SELECT marker, n, data FROM tube_values WHERE file=? AND variant=? ORDER BY marker",
                (file, variant)).fetchall():
            arr = np.frombuffer(zlib.decompress(blob), dtype="<f4").astype(np.float32)
            if arr.size != n:
                raise BatError(f"stored values of {marker} are damaged ({arr.size} of {n})",
                               source=str(self.path), field=f"tube_values[{file}]",
                               expected="re-run with a new --out folder")
            values[marker] = arr
        gates = []
        for (name, parent, dims_json, geom_json, count, pcount, method, diag_json, density,
             dmeta_json) in self.conn.execute(
                "SELECT name, parent, dims_json, geometry_json, count, parent_count, method, "
                "diagnostics_json, density, density_json FROM gates WHERE file=? AND variant=? "
                "ORDER BY position", (file, variant)).fetchall():
            dens, edges = None, None
            if density is not None:
                dmeta = json.loads(dmeta_json)
                dens = _unpack_array(density, dmeta)
                edges = tuple(np.asarray(e, dtype=np.float64) for e in dmeta["edges"])
            gates.append(GateRecord(name=name, parent=parent, dims=tuple(json.loads(dims_json)),
                                    geometry=json.loads(geom_json), count=int(count), parent_count=int(pcount),
                                    method=method, diagnostics=json.loads(diag_json), density=dens,
                                    density_edges=edges))
        flags = [Flag(code, sev, msg) for code, sev, msg in self.conn.execute(
            "SELECT code, severity, message FROM flags WHERE file=? AND variant=? ORDER BY position",
            (file, variant)).fetchall()]
        return TubeResult(tube=tube, n_events=int(n_events), n_basophils=int(n_baso), basophil_values=values,
                          event_fractions=json.loads(fractions), gates=gates, flags=flags,
                          has_spillover=bool(has_spill), n_fluorescent_markers=int(n_fluor),
                          file_sha256=sha, error=error)

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
            cols = json.loads(row[0]) if row else []
            recs = [json.loads(r[0]) for r in self.conn.execute(
                f"SELECT data_json FROM {table} ORDER BY position").fetchall()]
            out.append(pd.DataFrame.from_records(recs, columns=cols))
        return out[0], out[1]

    def put_patient_scores(self, patient: str, cache_key: str, scores: Any) -> None:
        """Cache one patient's scoring objects (pickled; valid only for the same key and version)."""
        with self.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO patient_scores VALUES (?,?,?)",
                        (patient, cache_key, pickle.dumps(scores, protocol=pickle.HIGHEST_PROTOCOL)))

    def get_patient_scores(self, patient: str, cache_key: str) -> Any | None:
        row = self.conn.execute("SELECT cache_key, data FROM patient_scores WHERE patient=?",
                                (patient,)).fetchone()
        if row is None or row[0] != cache_key:
            return None
        return pickle.loads(row[1])

    # ------------------------------------------------------------------ reviews
    def sync_reviews(self, run_id: int | None, decisions: Sequence[Mapping[str, Any]]) -> None:
        """Record reviewer decisions; a decision already stored (same fingerprint) keeps its first record.

        Decisions no longer given are marked inactive (kept for the audit trail, no longer applied).
        """
        with self.transaction() as cur:
            known = {r[0]: r[1] for r in cur.execute("SELECT fingerprint, id FROM reviews").fetchall()}
            given = set()
            for d in decisions:
                fp = d["fingerprint"]
                given.add(fp)
                if fp in known:
                    cur.execute("UPDATE reviews SET active=1 WHERE fingerprint=?", (fp,))
                    continue
                cur.execute("INSERT INTO reviews (run_id, file, patient, pretreatment, gate, kind, value_json, "
                            "reviewer, reason, decided_at, source, fingerprint, active) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,1)",
                            (run_id, d.get("file"), d.get("patient"), d.get("pretreatment"), d.get("gate"),
                             d["kind"], to_json(d.get("value")), d.get("reviewer"), d.get("reason"),
                             d.get("decided_at") or utc_now(), d.get("source"), fp))
            for fp in known:
                if fp not in given:
                    cur.execute("UPDATE reviews SET active=0 WHERE fingerprint=?", (fp,))

    def reviews(self, *, active_only: bool = True) -> list[dict[str, Any]]:
        sql = "SELECT * FROM reviews" + (" WHERE active=1" if active_only else "") + " ORDER BY id"
        cur = self.conn.execute(sql)
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            rec = dict(zip(cols, row))
            rec["value"] = json.loads(rec.pop("value_json")) if rec.get("value_json") else None
            out.append(rec)
        return out


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
