"""The SQLite results store: exact round trips, transactions, scored tables, review decisions."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pandas as pd
import pytest

from bat_analysis.errors import BatError
from bat_analysis.records import Flag, GateRecord, Tube, TubeResult
from bat_analysis.store import AUTO, REVIEWED, ResultStore


def _result(file: str = "P01_neg.fcs", seed: int = 0) -> TubeResult:
    rng = np.random.default_rng(seed)
    tube = Tube(file=file, patient="P01", condition="allergen", pretreatment="omalizumab", allergen="peanut",
                concentration=0.1, unit="ug/mL", extra=(("visit", "2"), ("draw_time", "08:00")))
    density = rng.integers(0, 50, size=(16, 12)).astype(np.uint16)
    edges = (np.linspace(0, 1, 17), np.linspace(-0.2, 1.1, 13))
    gates = [
        GateRecord(name="cells", parent=None, dims=("FSC-A", "SSC-A"),
                   geometry={"type": "polygon", "vertices": [[0.1, 0.2], [0.9, 0.2], [0.5, 0.8]]},
                   count=900, parent_count=1000, method="debris_density",
                   diagnostics={"peaks": 2, "separation": 0.123456789012345, "fallback": False,
                                "np_value": np.float32(1.5)},
                   density=density, density_edges=edges),
        GateRecord(name="basophils", parent="cells", dims=("CCR3", "SSC-A"),
                   geometry={"type": "range", "mins": [0.5, None], "maxs": [None, 0.4]},
                   count=310, parent_count=900, method="override"),
    ]
    return TubeResult(tube=tube, n_events=1000, n_basophils=310,
                      basophil_values={"CD63": rng.lognormal(5, 1, 310).astype(np.float32),
                                       "CD203c": rng.normal(1e3, 300, 310).astype(np.float32)},
                      event_fractions={"acquisition_qc": 0.01, "margin": 0.002, "doublets": 0.05},
                      gates=gates, flags=[Flag("LOW_BASOPHILS", "warn", "310 basophils (< 500)")],
                      has_spillover=True, n_fluorescent_markers=5, file_sha256="ab" * 32)


def test_tube_round_trip_is_exact(tmp_path):
    original = _result()
    with ResultStore.in_folder(tmp_path) as store:
        store.put_tube(original, variant=AUTO, cache_key="k1", run_id=None, template_sha256="t", version="v")
    with ResultStore.in_folder(tmp_path, create=False) as store:
        back = store.get_tube("P01_neg.fcs", AUTO)
        assert store.get_tube("P01_neg.fcs", REVIEWED) is None
    assert back.tube == original.tube
    assert (back.n_events, back.n_basophils, back.file_sha256) == (1000, 310, "ab" * 32)
    assert back.has_spillover and back.n_fluorescent_markers == 5 and back.error is None
    for marker, values in original.basophil_values.items():
        assert back.basophil_values[marker].dtype == np.float32
        assert back.basophil_values[marker].tobytes() == values.tobytes()
    assert back.event_fractions == original.event_fractions
    assert back.flags == original.flags
    g0, g1 = back.gates
    assert g0.geometry == original.gates[0].geometry and g1.geometry == original.gates[1].geometry
    assert g0.diagnostics["separation"] == 0.123456789012345 and g0.diagnostics["np_value"] == 1.5
    assert g0.density.dtype == np.uint16 and np.array_equal(g0.density, original.gates[0].density)
    assert all(np.array_equal(a, b) for a, b in zip(g0.density_edges, original.gates[0].density_edges))
    assert g1.density is None and g1.method == "override" and g1.dims == ("CCR3", "SSC-A")


def test_put_replaces_and_variants_live_side_by_side(tmp_path):
    with ResultStore.in_folder(tmp_path) as store:
        store.put_tube(_result(seed=1), variant=AUTO, cache_key="a", run_id=None, template_sha256="t", version="v")
        store.put_tube(_result(seed=2), variant=AUTO, cache_key="b", run_id=None, template_sha256="t", version="v")
        store.put_tube(_result(seed=3), variant=REVIEWED, cache_key="c", run_id=None, template_sha256="t",
                       version="v")
        keys = {k: v.cache_key for k, v in store.stored_tubes().items()}
        assert keys == {("P01_neg.fcs", AUTO): "b", ("P01_neg.fcs", REVIEWED): "c"}
        assert store.current_variant("P01_neg.fcs") == REVIEWED
        auto = store.get_tube("P01_neg.fcs", AUTO)
        assert auto.basophil_values["CD63"].tobytes() == _result(seed=2).basophil_values["CD63"].tobytes()
        assert len(auto.gates) == 2 and len(auto.flags) == 1  # old rows replaced, not appended
        store.delete_variant("P01_neg.fcs", REVIEWED)
        assert store.current_variant("P01_neg.fcs") == AUTO


def test_failed_tube_is_stored_with_its_reason(tmp_path):
    tube = Tube(file="broken.fcs", patient="P02", condition="negative_control")
    bad = TubeResult(tube=tube, error="not an FCS file", flags=[Flag("UNREADABLE", "fail", "not an FCS file")])
    with ResultStore.in_folder(tmp_path) as store:
        store.put_tube(bad, variant=AUTO, cache_key="x", run_id=None, template_sha256="t", version="v")
        back = store.get_tube("broken.fcs")
    assert not back.ok and back.error == "not an FCS file" and back.basophil_values == {} and back.gates == []
    assert back.tube.concentration is None and back.flags[0].code == "UNREADABLE"


def test_transaction_rolls_back_on_error(tmp_path):
    with ResultStore.in_folder(tmp_path) as store:
        with pytest.raises(RuntimeError):
            with store.transaction() as cur:
                cur.execute("INSERT INTO inputs VALUES (1, 'a.fcs', 'x')")
                raise RuntimeError("killed halfway")
        assert store.conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0] == 0
        # a failing put_tube (unserialisable diagnostics) leaves the previous result intact
        store.put_tube(_result(seed=1), variant=AUTO, cache_key="a", run_id=None, template_sha256="t", version="v")
        broken = _result(seed=2)
        broken.gates[0].diagnostics = {"bad": object()}
        with pytest.raises(TypeError):
            store.put_tube(broken, variant=AUTO, cache_key="b", run_id=None, template_sha256="t", version="v")
        assert store.stored_tubes()[("P01_neg.fcs", AUTO)].cache_key == "a"
        assert len(store.get_tube("P01_neg.fcs").gates) == 2


def test_runs_and_inputs(tmp_path):
    with ResultStore.in_folder(tmp_path) as store:
        run_id = store.begin_run(version="0.1.0", template_name="bat_ccr3_cd63", template_sha256="f" * 64,
                                 command="bat run data --layout l.csv --out o", info={"workers": 2})
        store.record_inputs(run_id, {"b.fcs": "2" * 64, "a.fcs": "1" * 64})
        assert store.last_run()["status"] == "running"
        store.end_run(run_id, status="completed", n_tubes=2, n_gated=2, n_reused=0, n_failed=0)
        run = store.last_run()
    assert run["status"] == "completed" and run["template_name"] == "bat_ccr3_cd63" and run["ended_at"]
    assert run["n_tubes"] == 2 and '"workers": 2' in run["info_json"]


def test_tables_keep_order_columns_and_missing_values(tmp_path):
    tubes = pd.DataFrame({"file": ["b.fcs", "a.fcs"], "patient": ["P2", "P1"], "pct_cd63": [12.5, float("nan")],
                          "n_basophils": [500, 0], "allergen": [None, "peanut"], "qc_flags": ["", "A;B"]})
    patients = pd.DataFrame({"patient": ["P1"], "allergen": ["peanut"], "ec50_none": [np.float64(0.3)],
                             "class": ["responder"]})
    with ResultStore.in_folder(tmp_path) as store:
        store.put_tables(1, tubes, patients)
        store.put_tables(2, tubes, patients)  # replaced, not appended
        t2, p2 = store.tables()
    assert list(t2.columns) == list(tubes.columns) and list(t2["file"]) == ["b.fcs", "a.fcs"]
    assert t2["pct_cd63"].iloc[0] == 12.5 and math.isnan(t2["pct_cd63"].iloc[1])
    assert t2["allergen"].iloc[0] is None and list(t2["n_basophils"]) == [500, 0]
    assert p2.to_dict("records") == patients.to_dict("records")


def test_review_decisions_are_kept_with_who_when_why(tmp_path):
    d1 = {"fingerprint": "f1", "kind": "gate", "file": "a.fcs", "gate": "basophils",
          "value": {"type": "range", "mins": [0.5], "maxs": [None]}, "reviewer": "Jane", "reason": "eos"}
    d2 = {"fingerprint": "f2", "kind": "threshold", "patient": "P1", "pretreatment": "none", "value": 1500.0,
          "reviewer": "John", "reason": "bimodal"}
    with ResultStore.in_folder(tmp_path) as store:
        store.sync_reviews(1, [d1, d2])
        first = {r["fingerprint"]: r for r in store.reviews()}
        store.sync_reviews(2, [d1])  # d1 again (kept as first recorded), d2 withdrawn
        active = store.reviews()
        every = store.reviews(active_only=False)
    assert first["f1"]["value"] == d1["value"] and first["f1"]["reviewer"] == "Jane" and first["f1"]["decided_at"]
    assert [r["fingerprint"] for r in active] == ["f1"] and active[0]["run_id"] == 1
    assert {r["fingerprint"]: r["active"] for r in every} == {"f1": 1, "f2": 0}


def test_patient_scores_cache_is_keyed(tmp_path):
    with ResultStore.in_folder(tmp_path) as store:
        store.put_patient_scores("P1", "key1", {"fits": [1, 2, 3]})
        assert store.get_patient_scores("P1", "key1") == {"fits": [1, 2, 3]}
        assert store.get_patient_scores("P1", "key2") is None
        assert store.get_patient_scores("P2", "key1") is None


def test_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(BatError, match="no results store"):
        ResultStore.in_folder(tmp_path / "empty", create=False)
    junk = tmp_path / "junk" / "results.sqlite"
    junk.parent.mkdir()
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BatError, match="cannot open the results store"):
        ResultStore(junk)
    old = tmp_path / "old" / "results.sqlite"
    old.parent.mkdir()
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    con.commit()
    con.close()
    with pytest.raises(BatError, match="schema version 99"):
        ResultStore(old)
