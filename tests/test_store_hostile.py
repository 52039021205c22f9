"""A results store is untrusted input: nothing in it is executed (no pickle), and a damaged or hand-edited
value is refused with an error naming the store, the table and the field (or, for the scores cache,
recomputed with a warning) -- never a traceback."""

from __future__ import annotations

import pickle
import sqlite3
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bat_analysis.cli import app
from bat_analysis.pipeline import RunOptions, load_run, run
from bat_analysis.store import ResultStore, StoreDataError


class _Planted:
    """A pickle payload: unpickling it creates the marker file (as an attacker's would run a command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _payload(marker: Path) -> bytes:
    return pickle.dumps(_Planted(marker))


# basophils as in a real acquisition (~100 or more) in few events: fewer form no population and are not gated
SIMULATION = {"n_patients": 1, "n_events": 3000, "seed": 3, "n_concentrations": 3,  # experiment (conftest.py)
              "basophil_pct": (2.5, 3.0)}


@pytest.fixture(scope="module")
def finished(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile_out")
    _run(experiment, out)
    return out


def _run(experiment, out, **kw):
    return run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=1,
                          quiet=True, reports=False, **kw))


def _copy(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def _sql(out: Path, statement: str, params: tuple = ()) -> None:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        con.execute(statement, params)
        con.commit()
    finally:
        con.close()


def test_a_planted_pickle_in_the_scores_cache_is_never_run(experiment, finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    marker = tmp_path / "pwned"
    con = sqlite3.connect(out / "results.sqlite")
    column = next(c[1] for c in con.execute("PRAGMA table_info(patient_scores)") if c[1].startswith("data"))
    con.execute(f"UPDATE patient_scores SET {column}=?", (_payload(marker),))  # cache key kept: a cache hit
    con.commit()
    con.close()
    summary = _run(experiment, out)
    assert not marker.exists()
    assert summary.rescored == ["P01"]  # the planted cache was not used: the patient was scored again
    assert any("patient_scores[P01].data_json" in n and "recomputed" in n for n in summary.notes)
    for name in ("tubes.csv", "patients.csv"):
        assert (out / name).read_bytes() == (finished / name).read_bytes()
    assert _run(experiment, out).rescored == []  # the cache was rewritten as JSON


def test_a_schema_1_store_with_pickled_scores_is_upgraded_without_unpickling(experiment, finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    marker = tmp_path / "pwned"
    con = sqlite3.connect(out / "results.sqlite")
    (key,) = con.execute("SELECT cache_key FROM patient_scores WHERE patient='P01'").fetchone()
    con.executescript("DROP TABLE patient_scores; DROP TABLE corrections; DROP TABLE run_corrections;"
                      "CREATE TABLE patient_scores (patient TEXT PRIMARY KEY, cache_key TEXT NOT NULL, data BLOB);"
                      "CREATE TABLE reviews (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER, file TEXT, "
                      "patient TEXT, pretreatment TEXT, gate TEXT, kind TEXT NOT NULL, value_json TEXT, "
                      "reviewer TEXT, reason TEXT, decided_at TEXT, source TEXT, fingerprint TEXT, "
                      "active INTEGER NOT NULL DEFAULT 1);"
                      "UPDATE meta SET value='1' WHERE key='schema_version';")
    con.execute("INSERT INTO patient_scores VALUES ('P01', ?, ?)", (key, _payload(marker)))
    con.execute("INSERT INTO reviews (run_id, patient, pretreatment, gate, kind, value_json, reviewer, reason, "
                "decided_at, source, fingerprint, active) VALUES (1, 'P01', 'none', 'CD63', 'threshold', '900.0', "
                "'Jane', 'bimodal', '2026-01-02T10:00:00+00:00', 'review.yaml', 'f1', 1)")
    con.commit()
    con.close()
    with ResultStore.in_folder(out) as store:
        assert store.get_patient_scores("P01", key) is None
        (entry,) = store.active_corrections()
    assert not marker.exists()
    assert (entry["kind"], entry["patient"], entry["value"], entry["reviewer"]) == ("threshold", "P01", 900.0, "Jane")
    summary = _run(experiment, out)  # the old store is usable: the reviewer's threshold is still applied
    assert not marker.exists() and summary.corrections_note.startswith("1 reviewer correction from the store")


_P = "P01_none_negative_control.fcs"


def _first_file(out: Path) -> str:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        return con.execute("SELECT file FROM tubes ORDER BY file LIMIT 1").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize(("statement", "field"), [
    ("UPDATE tubes SET extra_json='[[1, {' WHERE file=:f", "extra_json"),
    ("UPDATE tubes SET fractions_json='[1, 2]' WHERE file=:f", "fractions_json"),
    ("UPDATE tubes SET n_events='many' WHERE file=:f", "n_events"),
    ("UPDATE tube_values SET data=:bomb WHERE file=:f", "tube_values"),
    ("UPDATE tube_values SET data=X'00' WHERE file=:f", "tube_values"),
    ("UPDATE gates SET geometry_json='\"polygon\"' WHERE file=:f", "geometry_json"),
    ("UPDATE gates SET dims_json=:deep WHERE file=:f", "dims_json"),
    ("UPDATE gates SET density_json='{\"dtype\": \"O\", \"shape\": [2], \"edges\": [[0, 1, 2]]}' "
     "WHERE file=:f AND density IS NOT NULL", "density"),
    ("UPDATE gates SET density=:bomb WHERE file=:f AND density IS NOT NULL", "density"),
    ("UPDATE gates SET density_json=json_set(density_json, '$.edges[0][1]', json('true')) "
     "WHERE file=:f AND density IS NOT NULL", "density"),
    ("UPDATE gates SET density_json=json_set(density_json, '$.edges[1][0]', '12') "
     "WHERE file=:f AND density IS NOT NULL", "density"),
    ("UPDATE flags SET severity='boom' WHERE file=:f", "flags"),
    ("UPDATE runs SET info_json='\"not a mapping\"'", "info_json"),
])
def test_a_damaged_store_is_refused_with_the_table_and_field(experiment, finished, tmp_path, statement, field):
    out = _copy(finished, tmp_path / "out")
    if "flags" in statement:  # make sure the tube has a flag to damage
        _sql(out, "INSERT OR REPLACE INTO flags VALUES (:f, 'auto', 99, 'X', 'warn', 'x')".replace(":f", "?"),
             (_first_file(out),))
    bomb = zlib.compress(b"\0" * (64 << 20))  # 64 MB of zeros in 64 kB: must not be inflated
    con = sqlite3.connect(out / "results.sqlite")
    n = con.execute(statement, {"f": _first_file(out), "bomb": bomb, "deep": "[" * 100000 + "]" * 100000}).rowcount
    con.commit()
    con.close()
    assert n >= 1
    with pytest.raises(StoreDataError) as err:
        load_run(out)
    message = str(err.value)
    assert str(out / "results.sqlite") in message and field in message and "edited by hand" in message

    # the command line: exit 2, one clear message, no traceback
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 2
    assert "edited by hand" in result.output and "Traceback" not in result.output


def test_a_corrections_log_entry_edited_by_hand_is_refused(experiment, finished, tmp_path):
    out = _copy(finished, tmp_path / "out")
    with ResultStore.in_folder(out) as store:
        store.append_corrections([{"action": "apply", "kind": "threshold", "patient": "P01", "pretreatment": "none",
                                   "value": 900.0, "reviewer": "Jane", "reason": "bimodal", "version": "x"}])
    # the log refuses UPDATE; someone drops the trigger and edits the value into something else
    _sql(out, "DROP TRIGGER corrections_append_only_update")
    _sql(out, "UPDATE corrections SET value_json='{\"__reduce__\": 1}'")
    with pytest.raises(StoreDataError, match=r"corrections\[1\].*expected a finite threshold"):
        _run(experiment, out)
