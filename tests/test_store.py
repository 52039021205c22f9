"""The SQLite results store: exact round trips, transactions, scored tables, review decisions."""

from __future__ import annotations

import json
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


def _entry(**kw):
    base = {"action": "apply", "kind": "gate", "file": "a.fcs", "gate": "basophils",
            "value": {"type": "range", "mins": [0.5, None], "maxs": [None, 0.4]}, "reviewer": "Jane",
            "reason": "eos", "source": "review.yaml", "version": "0.1.0", "input_sha256": "1" * 64,
            "template_sha256": "t" * 64}
    return {**base, **kw}


def test_corrections_log_is_append_only_and_gives_the_active_corrections(tmp_path):
    gate = _entry()
    thr = _entry(kind="threshold", file=None, gate=None, patient="P1", pretreatment="none", value=1500.0,
                 reviewer="John", reason="bimodal")
    with ResultStore.in_folder(tmp_path) as store:
        ids = store.append_corrections([gate, thr], run_id=1)
        assert [e["id"] for e in store.active_corrections()] == ids
        # a later correction of the same gate replaces it; withdrawing the threshold removes it from the active set
        store.append_corrections([_entry(value={"type": "range", "mins": [0.6, None], "maxs": [None, 0.4]},
                                         before=gate["value"], reason="still eos"),
                                  _entry(action="withdraw", kind="threshold", file=None, gate=None, patient="P1",
                                         pretreatment="none", value=None, before=1500.0, reviewer="John",
                                         reason="automated threshold is fine")], run_id=2)
        active = store.active_corrections()
        log = store.correction_log()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store.conn.execute("UPDATE corrections SET reviewer='Mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            store.conn.execute("DELETE FROM corrections")
        with pytest.raises(BatError, match="reason: missing"):
            store.append_corrections([_entry(reason=" ")])
        assert len(store.correction_log()) == 4  # the refused entry left nothing behind
    assert [(e["action"], e["target"]) for e in log] == [
        ("apply", ("gate", "a.fcs", "basophils")), ("apply", ("threshold", "P1", "none")),
        ("apply", ("gate", "a.fcs", "basophils")), ("withdraw", ("threshold", "P1", "none"))]
    assert all(e["recorded_at"] and e["decided_at"] and e["version"] == "0.1.0" for e in log)
    (only,) = active
    assert only["value"]["mins"] == [0.6, None] and only["before"] == gate["value"] and only["run_id"] == 2
    assert log[3]["before"] == 1500.0 and log[3]["value"] is None


def _scores():
    from bat_analysis.analysis.config import AnalysisConfig
    from bat_analysis.analysis.dose_response import FitResult
    from bat_analysis.analysis.omalizumab import OmalizumabEffect
    from bat_analysis.analysis.score import ExperimentScores
    from bat_analysis.analysis.threshold import ThresholdEstimate

    fit = FitResult("P1", "peanut", "none", unit="ug/mL", concentrations=np.array([0.01, 0.1, 1.0]),
                    x=np.log10([0.01, 0.1, 1.0]), y=np.array([3.0, 40.5, 80.25]), net=np.array([1.0, 38.5, 78.25]),
                    used=np.array([True, True, False]), excluded=[(1.0, "bell-shaped")],
                    params={"bottom": 1.0, "top": 80.0, "log_ec50": -1.3, "hill": np.float64(1.2)}, status="ok",
                    ec50=0.05, ec50_ci=(0.01, float("nan")), flags=[Flag("BELL", "warn", "falls after max")])
    thr = ThresholdEstimate(value=np.float64(812.5), method="percentile", diagnostics={"mode": 1.0, "peaks": [1, 2]},
                            n_events=400, reference_files=("P1_neg.fcs",), reference_arm="none")
    tubes = pd.DataFrame({"file": ["a.fcs", "b.fcs"], "pct_cd63": [12.5, float("nan")], "n_basophils": [500, 0],
                          "positive": [True, False], "allergen": [None, "peanut"]})
    patients = pd.DataFrame({"patient": ["P1"], "ec50_none": [0.05], "class": ["responder"]})
    return ExperimentScores(tubes, patients, {("P1", "peanut", "none"): fit}, {("P1", "none", "CD63"): thr},
                            {("P1", "peanut"): OmalizumabEffect(inhibition_by_concentration={0.1: 55.5})},
                            AnalysisConfig())


def test_patient_scores_are_cached_as_json_exactly_and_keyed(tmp_path):
    scores = _scores()
    with ResultStore.in_folder(tmp_path) as store:
        store.put_patient_scores("P1", "key1", scores)
        back = store.get_patient_scores("P1", "key1")
        assert store.get_patient_scores("P1", "key2") is None
        assert store.get_patient_scores("P2", "key1") is None
        text = store.conn.execute("SELECT data_json FROM patient_scores").fetchone()[0]
    json.loads(text)  # plain JSON text, nothing to unpickle
    pd.testing.assert_frame_equal(back.tubes, scores.tubes, check_exact=True)
    pd.testing.assert_frame_equal(back.patients, scores.patients, check_exact=True)
    fit, orig = back.fits[("P1", "peanut", "none")], scores.fits[("P1", "peanut", "none")]
    assert fit.y.tobytes() == orig.y.tobytes() and fit.used.dtype == bool and fit.excluded == orig.excluded
    assert fit.params == orig.params and type(fit.params["hill"]) is np.float64 and fit.flags == orig.flags
    assert fit.ec50_ci[0] == 0.01 and math.isnan(fit.ec50_ci[1])
    assert repr(back.thresholds) == repr(scores.thresholds) and repr(back.effects) == repr(scores.effects)
    assert back.config == scores.config


def test_patient_scores_read_again_are_new_equal_objects_of_the_stored_text(tmp_path):
    """A run reads a patient's scores back several times: each read gives its own objects, equal to those
    decoded from the stored text (a caller changing one does not change the next), and a text stored since is
    decoded, not the one kept."""
    from bat_analysis import _typed_json as typed_json

    with ResultStore.in_folder(tmp_path) as store:
        store.put_patient_scores("P1", "key1", _scores())
        text = store.conn.execute("SELECT data_json FROM patient_scores").fetchone()[0]
        first = store.get_patient_scores("P1", "key1")
        first.tubes.loc[0, "pct_cd63"] = 99.0  # what a caller may do (the review columns are added in place)
        first.fits.clear()
        again = store.get_patient_scores("P1", "key1")
        assert again is not first and typed_json.encode(again) == text
        assert again.tubes.loc[0, "pct_cd63"] == 12.5 and again.fits
        again.tubes.loc[0, "pct_cd63"] = 77.0
        third = store.get_patient_scores("P1", "key1")
        assert third is not again and third.tubes.loc[0, "pct_cd63"] == 12.5
        changed = _scores()
        changed.patients.loc[0, "class"] = "non_responder"
        store.put_patient_scores("P1", "key1", changed)
        assert store.get_patient_scores("P1", "key1").patients.loc[0, "class"] == "non_responder"
        store.conn.execute("UPDATE patient_scores SET data_json='[1'")  # damaged since it was read: a miss
        assert store.get_patient_scores("P1", "key1") is None and store.warnings


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
