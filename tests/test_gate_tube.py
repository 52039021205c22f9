"""gate_tube: one FCS file to a small TubeResult; never raises for bad data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bat_analysis.gating.gates import ArrayEvents, RangeGate, evaluate, gate_from_dict
from bat_analysis.gating.templates import load_template, parse_template
from bat_analysis.gating.tube import gate_tube, template_dimension
from bat_analysis.io.fcs_write import write_fcs
from bat_analysis.records import Tube
from bat_analysis.simulate import BASOPHIL, simulate_tube

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"
TUBE = Tube("t.fcs", "P01", "negative_control")


@pytest.fixture(scope="module")
def template():
    return load_template("bat_ccr3_cd63")


@pytest.fixture(scope="module")
def sim():
    return simulate_tube(n_events=30_000, seed=21, pct_activated=30.0, scenario="clog")


@pytest.fixture(scope="module")
def fcs(sim, tmp_path_factory) -> Path:
    return write_fcs(tmp_path_factory.mktemp("t") / "t.fcs", sim.events, sim.pnn, sim.pns, spillover=sim.spillover)


@pytest.fixture(scope="module")
def result(fcs, template):
    return gate_tube(fcs, TUBE, template)


def test_result_fields(result, sim, fcs: Path) -> None:
    assert result.error is None and result.ok
    assert result.n_events == sim.events.shape[0]
    assert abs(result.n_basophils - sim.n_basophils) <= 0.08 * sim.n_basophils
    assert set(result.basophil_values) == {"CCR3", "CD63", "CD203c", "CD123", "HLA-DR"}
    assert all(v.dtype == np.float32 and v.size == result.n_basophils for v in result.basophil_values.values())
    assert result.has_spillover and result.n_fluorescent_markers == 5
    assert result.file_sha256 == hashlib.sha256(fcs.read_bytes()).hexdigest()
    assert set(result.event_fractions) == {"acquisition_qc", "margin", "doublets"}
    assert 0.03 < result.event_fractions["acquisition_qc"] < 0.2  # the clog
    assert 0.01 < result.event_fractions["doublets"] < 0.1
    assert any(f.code == "FLOW_RATE_ANOMALY" for f in result.flags)


def test_basophil_values_are_compensated_linear(result, sim) -> None:
    cd63 = result.basophil_values["CD63"]
    truth = sim.marker_values("CD63")[sim.basophil]
    assert np.median(cd63) == pytest.approx(np.median(truth), rel=0.05)
    pct = 100 * (cd63 > np.percentile(truth, 80)).mean()
    assert pct == pytest.approx(100 * (truth > np.percentile(truth, 80)).mean(), abs=3)


def test_gate_records_can_be_drawn_and_reapplied(result, template, fcs: Path) -> None:
    from bat_analysis.gating.compensation import compensate
    from bat_analysis.io.fcs import read_fcs

    names = [g.name for g in result.gates]
    assert names == ["acquisition_qc", "margin", "cells", "singlets", "basophils"]
    for g in result.gates:
        assert g.method == template.gate(g.name).method
        assert g.density is not None and g.density.dtype in (np.uint16, np.uint32)
        assert g.count <= g.parent_count
        assert g.geometry["name"] == g.name and g.geometry["parent"] == g.parent
        json.dumps(g.geometry, allow_nan=False)  # stored as JSON by the results store
        json.dumps(g.diagnostics, allow_nan=False)
    b = result.gates[-1]
    assert b.density.shape == (128, 128) and len(b.density_edges) == 2
    assert b.diagnostics["n_populations"] >= 3 and b.diagnostics["chosen"]["events"] > 0
    # the recorded geometry, re-imported and evaluated with the gate engine, gives the same counts
    sample = read_fcs(fcs)
    pnn = [c.pnn for c in sample.channels]
    comp = compensate(sample.events, pnn, (list(sample.spillover.channels), sample.spillover.matrix))
    cols = {"FSC-A": comp[:, pnn.index("FSC-A")], "FSC-H": comp[:, pnn.index("FSC-H")],
            "SSC-A": comp[:, pnn.index("SSC-A")], "Time": comp[:, pnn.index("Time")],
            "CCR3": comp[:, pnn.index(next(c.pnn for c in sample.channels if c.pns == "CCR3"))]}
    transforms = {}
    for dim in cols:
        tf = template_dimension(template, dim).transform
        if tf is not None:
            transforms[tf.name] = tf
    gates = []
    for g in result.gates:
        gates.append(gate_from_dict(g.geometry, transforms))
        gates.extend(gate_from_dict(m, transforms) for m in g.geometry.get("members", []))
    masks = evaluate(gates, ArrayEvents(cols))
    for g in result.gates:
        assert int(masks[g.name].sum()) == g.count, g.name


def test_override_replaces_the_estimate(fcs: Path, template, result) -> None:
    dims = tuple(template_dimension(template, d) for d in ("CCR3", "SSC-A"))
    override = RangeGate("basophils", dims, mins=(0.5, None), maxs=(None, 2.0))  # eosinophils too
    r = gate_tube(fcs, TUBE, template, overrides={"basophils": override})
    b = r.gates[-1]
    assert b.method == "override" and b.geometry["type"] == "range"
    assert r.n_basophils == b.count and r.n_basophils > 2 * result.n_basophils
    assert r.gates[-2].count == result.gates[-2].count  # earlier gates untouched
    bad = RangeGate("basophils", (template_dimension(template, "CD63"),), mins=(1.0,), maxs=(None,))
    r = gate_tube(fcs, TUBE, template, overrides={"basophils": bad})
    assert r.error is not None and "override" in r.error and r.flags[-1].severity == "fail"


def test_a_1d_override_is_recorded_over_a_histogram_of_its_parent(fcs: Path, template, result) -> None:
    # a reviewer's time window replaces the acquisition-QC estimate: the gate is drawn (report, review) over a
    # histogram of every event of its parent, as the estimate was over its own events per time bin
    auto = result.gates[0]
    kept = auto.geometry.get("members") or [auto.geometry]  # this tube's clog: a union of kept segments
    lo, hi = kept[0]["mins"][0], kept[-1]["maxs"][0]
    window = RangeGate("acquisition_qc", (template_dimension(template, "Time"),), mins=(lo,),
                       maxs=(lo + 0.5 * (hi - lo),))
    r = gate_tube(fcs, TUBE, template, overrides={"acquisition_qc": window})
    g = r.gates[0]
    assert g.name == "acquisition_qc" and g.method == "override" and 0 < g.count < 0.7 * auto.count
    counts, (edges,) = np.asarray(g.density), g.density_edges
    assert counts.ndim == 1 and len(edges) == len(counts) + 1 and np.all(np.diff(edges) > 0)
    assert int(counts.sum()) == g.parent_count == r.n_events


def test_missing_file_and_broken_file_give_an_error_not_an_exception(tmp_path: Path, template) -> None:
    r = gate_tube(tmp_path / "absent.fcs", TUBE, template)
    assert r.error and r.flags[0].code == "TUBE_NOT_GATED" and r.flags[0].severity == "fail"
    junk = tmp_path / "junk.fcs"
    junk.write_bytes(b"FCS3.1   not really")
    r = gate_tube(junk, TUBE, template)
    assert r.error and "junk.fcs" in r.error and r.n_basophils == 0


def test_missing_marker_names_the_file_and_channels(tmp_path: Path, template, sim) -> None:
    keep = [i for i, s in enumerate(sim.pns) if s != "CCR3"]
    p = write_fcs(tmp_path / "noccr3.fcs", sim.events[:, keep], [sim.pnn[i] for i in keep],
                  [sim.pns[i] for i in keep])
    r = gate_tube(p, TUBE, template)
    assert r.error and "CCR3" in r.error and "noccr3.fcs" in r.error


def test_no_spillover_no_time_and_few_events_are_flagged(tmp_path: Path, template) -> None:
    small = simulate_tube(n_events=400, seed=5)
    keep = [i for i, n in enumerate(small.pnn) if n != "Time"]
    p = write_fcs(tmp_path / "small.fcs", small.events[:, keep], [small.pnn[i] for i in keep],
                  [small.pns[i] for i in keep])
    r = gate_tube(p, TUBE, template)
    codes = {f.code for f in r.flags}
    assert r.error is None and not r.has_spillover
    assert {"NO_SPILLOVER", "NO_TIME_CHANNEL", "BASOPHILS_NOT_GATED"} <= codes
    assert r.n_basophils == 0 and r.basophil_values == {}
    assert r.gates[-1].method == "not_gated" and r.gates[-1].diagnostics["failure"]


def test_fallback_geometry_is_used_and_flagged(fcs: Path, template) -> None:
    text = template.source_text.replace("params: {bins: 128, smooth: 1.5, level: 0.002, pad: 2.0}\n    min_events: 200",
                                        "params: {bins: 128, smooth: 1.5, level: 0.002, pad: 2.0}\n    "
                                        "min_events: 10000000")
    assert text != template.source_text
    r = gate_tube(fcs, TUBE, parse_template(text))
    cells = next(g for g in r.gates if g.name == "cells")
    assert cells.method == "fallback" and cells.diagnostics["fallback_used"]
    assert any(f.code == "GATE_FALLBACK" for f in r.flags)
    assert r.error is None and r.n_basophils > 0


def test_panels_and_naming_styles(tmp_path: Path) -> None:
    for naming, name in (("beckman", "bat_cd203c_cd63"), ("aliases", "bat_cd123_hladr_cd63")):
        s = simulate_tube(n_events=20_000, naming=naming, seed=8)
        p = write_fcs(tmp_path / f"{naming}.fcs", s.events, s.pnn, s.pns, spillover=s.spillover)
        r = gate_tube(p, TUBE, load_template(name))
        assert r.error is None, r.error
        assert abs(r.n_basophils - s.n_basophils) <= 0.05 * s.n_basophils, (naming, r.n_basophils, s.n_basophils)


@pytest.mark.corpus
@pytest.mark.slow
def test_real_files_from_other_labs_never_raise(template) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"FCS corpus not found at {CORPUS}")
    files = sorted(p for p in (CORPUS / "instruments").rglob("*") if p.suffix.lower() in (".fcs", ".lmd"))
    assert files
    for p in files:
        r = gate_tube(p, Tube(p.name, "X", "negative_control"), template)
        # these are not BAT tubes: either a clear refusal or a result whose flags say what was missing
        assert r.error or r.flags, p
        if r.error:
            assert p.name in r.error or "marker" in r.error.lower() or "channel" in r.error.lower(), r.error


MOUSE_TEMPLATE = """
schema_version: 1
name: mouse_b_cells
description: B cells (CD19+ CD3-) of a mouse sample gated in FlowJo by another lab.
panel:
  CD19: []
  CD3: []
compensation: {source: file}
transforms:
  scatter: {type: none}
  fluorescence: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
  SSC-A: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
gates:
  - {name: acquisition_qc, parent: null, dims: [Time], method: flow_rate}
  - {name: margin, parent: acquisition_qc, dims: [FSC-A, SSC-A], method: margin}
  - {name: cells, parent: margin, dims: [FSC-A, SSC-A], method: debris_density}
  - {name: singlets, parent: cells, dims: [FSC-A, FSC-H], method: singlet_band}
  - name: b_cells
    parent: singlets
    dims: [CD19, CD3]
    method: cluster_2d
    params: {x_side: high, y_side: low, extend_x: false}
"""


@pytest.mark.corpus
def test_estimators_on_real_data_agree_with_flowjo_manual_gating() -> None:
    """FlowSOM's 68983.fcs with FlowJo's per-event labels: a user template finds the B cells."""
    import csv

    from bat_analysis.gating.tube import gate_sample_indices
    from bat_analysis.io.fcs import read_fcs

    folder = CORPUS / "flowjo" / "flowsom"
    if not (folder / "68983.fcs").is_file():
        pytest.skip(f"FCS corpus not found at {folder}")
    sample = read_fcs(folder / "68983.fcs")
    with open(folder / "gatingResult.csv", newline="", encoding="utf-8") as fh:
        labels = np.array([row[0] for row in csv.reader(fh)])
    assert labels.size == sample.n_events
    result, idx = gate_sample_indices(sample, Tube("68983.fcs", "M1", "negative_control"),
                                      parse_template(MOUSE_TEMPLATE))
    assert result.error is None and idx["b_cells"] is not None
    got = np.zeros(sample.n_events, dtype=bool)
    got[idx["b_cells"]] = True
    truth = labels == "B cells"
    tp = int((got & truth).sum())
    assert tp / got.sum() >= 0.95 and tp / truth.sum() >= 0.95


@pytest.mark.slow
def test_large_tube_with_rare_basophils(tmp_path: Path, template) -> None:
    """Above DENSITY_MAX_EVENTS the densities are estimated on thinned events; rare cells are kept whole."""
    from bat_analysis.gating.estimators import DENSITY_MAX_EVENTS
    from bat_analysis.gating.tube import gate_sample_indices
    from bat_analysis.io.fcs import read_fcs

    n = 3 * DENSITY_MAX_EVENTS
    s = simulate_tube(n_events=n, seed=31, scenario=("low_basophils", "clog"), pct_activated=20.0)
    p = write_fcs(tmp_path / "big.fcs", s.events, s.pnn, s.pns, spillover=s.spillover)
    result, idx = gate_sample_indices(read_fcs(p), TUBE, template)
    assert result.error is None and s.n_basophils < 200
    got = np.zeros(n, dtype=bool)
    got[idx["basophils"]] = True
    kept = np.zeros(n, dtype=bool)
    kept[idx["acquisition_qc"]] = True
    truth = (s.population == BASOPHIL) & kept
    tp = int((got & truth).sum())
    assert tp / got.sum() >= 0.95 and tp / truth.sum() >= 0.95


@pytest.mark.parametrize("name", ["bat_ccr3_cd63", "bat_cd123_hladr_cd63", "bat_cd203c_cd63"])
def test_a_tube_without_basophils_enough_is_not_gated_never_gated_on_another_population(tmp_path: Path,
                                                                                        name: str) -> None:
    """With too few basophils to form a population (0.02-0.05% of leukocytes: 7-25 in 50k events) each panel
    either finds them or says it found none; it never gates the eosinophils, nor any other population, as
    basophils with a passing count (it did, 716-2496 events, with no flag)."""
    from bat_analysis.gating.tube import gate_sample_indices
    from bat_analysis.io.fcs import read_fcs
    from bat_analysis.simulate import make_patient

    template = load_template(name)
    for pct, seed in ((0.02, 0), (0.05, 1), (0.05, 2)):
        patient = make_patient("P01", "responder", np.random.default_rng(seed), basophil_pct=(pct, pct))
        s = simulate_tube(n_events=50_000, patient=patient, seed=200 + seed)
        p = write_fcs(tmp_path / f"{name}_{seed}.fcs", s.events, s.pnn, s.pns, spillover=s.spillover)
        result, idx = gate_sample_indices(read_fcs(p), TUBE, template)
        assert result.error is None
        members = idx["basophils"]
        if members is None or len(members) == 0:
            assert {"BASOPHILS_NOT_GATED", "CLUSTER_GATE_FAILED"} <= {f.code for f in result.flags}
            continue
        assert (s.population[members] == BASOPHIL).mean() >= 0.9, (name, pct, seed, result.n_basophils)


def test_file_sha256_of_empty_and_small_files(tmp_path: Path) -> None:
    import hashlib

    from bat_analysis._checksums import file_sha256

    empty = tmp_path / "empty.fcs"
    empty.write_bytes(b"")
    small = tmp_path / "small.fcs"
    small.write_bytes(bytes(range(256)) * 3)
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()
    assert file_sha256(small) == hashlib.sha256(small.read_bytes()).hexdigest()


@pytest.mark.parametrize("start,length", [(0, 0), (0, 100), (58, 5000), (70_000, 65_536), (199_990, 10),
                                          (199_990, 50), (250_000, 10)])
def test_sha256_reading_stores_a_segment_and_hashes_every_byte(tmp_path: Path, start: int, length: int) -> None:
    """sha256_reading gives file_sha256's digest while storing the segment asked for (bytes short when the
    file ends first: a segment past its end, or one crossing it)."""
    from bat_analysis._checksums import file_sha256, sha256_reading
    from bat_analysis.io._paths import open_regular_file

    data = np.random.default_rng(start).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    into = bytearray(length)
    with open_regular_file(path) as fh:
        fh.read(10)  # wherever the file stands, it is hashed from its beginning
        stored, digest = sha256_reading(fh, start, memoryview(into))
    assert digest == file_sha256(path) == hashlib.sha256(data).hexdigest()
    expected = data[start: start + length]
    assert stored == len(expected) and bytes(into[:stored]) == expected


def test_marker_identification_is_remembered_per_panel(tmp_path: Path) -> None:
    """Files read with different panels keep their own identification of the same labels."""
    from bat_analysis.io.fcs import read_fcs
    from bat_analysis.io.markers import Panel

    path = tmp_path / "labels.fcs"
    events = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_fcs(path, events, ["FSC-A", "BV421-A", "PE-A"], [None, "CD193", "LAMP-3"])
    default = [c.marker for c in read_fcs(path).channels]
    custom = [c.marker for c in read_fcs(path, panel=Panel({"Eotaxin-R": ("CD193",)})).channels]
    assert default == [None, "CCR3", "CD63"]
    assert custom == [None, "Eotaxin-R", None]
    assert [c.marker for c in read_fcs(path).channels] == default


def test_a_known_checksum_is_recorded_without_hashing_again(tmp_path: Path, monkeypatch) -> None:
    """A batch hashes every file once when it checks them; gate_tube records that checksum as given."""
    import bat_analysis.gating.tube as tube_module
    from bat_analysis.gating.templates import load_template
    from bat_analysis.io.fcs import read_fcs
    from bat_analysis.records import Tube

    sample = Path(__file__).resolve().parents[1] / "sample_fcs" / "P01_none_fmlp.fcs"
    calls = []
    monkeypatch.setattr(tube_module, "file_sha256", lambda p: calls.append(p) or "hashed-here")
    template = load_template("bat_ccr3_cd63")
    given = tube_module.gate_tube(sample, Tube(sample.name, "P01", "fmlp"), template, sha256="known")
    assert given.file_sha256 == "known" and calls == []
    hashed = tube_module.gate_tube(sample, Tube(sample.name, "P01", "fmlp"), template, reader=read_fcs)
    assert hashed.file_sha256 == "hashed-here" and len(calls) == 1
    assert given.n_basophils == hashed.n_basophils > 0
    # without a checksum and with the default reader, the file is hashed in the pass that reads it
    one_pass = tube_module.gate_tube(sample, Tube(sample.name, "P01", "fmlp"), template)
    assert one_pass.file_sha256 == hashlib.sha256(sample.read_bytes()).hexdigest() and len(calls) == 1
    assert one_pass.n_basophils == given.n_basophils


def test_one_pass_read_and_hash_gates_as_the_separate_ones(fcs: Path, template) -> None:
    """gate_tube without a checksum (the file read once, hashed as it is read, events decoded in place)
    gives, value for value, the result of hashing the file and reading it separately."""
    from bat_analysis._checksums import file_sha256
    from bat_analysis.io.fcs import read_fcs

    one = gate_tube(fcs, TUBE, template)
    two = gate_tube(fcs, TUBE, template, reader=read_fcs, sha256=file_sha256(fcs))
    assert one.file_sha256 == two.file_sha256 and one.error is None
    assert (one.n_events, one.n_basophils, one.flags, one.event_fractions) == \
        (two.n_events, two.n_basophils, two.flags, two.event_fractions)
    assert [(g.name, g.count, g.geometry, g.diagnostics) for g in one.gates] == \
        [(g.name, g.count, g.geometry, g.diagnostics) for g in two.gates]
    for a, b in zip(one.gates, two.gates):
        assert (a.density is None) == (b.density is None)
        if a.density is not None:
            np.testing.assert_array_equal(a.density, b.density)
    for m, v in one.basophil_values.items():
        np.testing.assert_array_equal(v.view(np.uint32), two.basophil_values[m].view(np.uint32))



def test_members_of_a_gate_whose_parent_kept_every_event_are_indices_of_all_events(tmp_path) -> None:
    """Under a parent that kept every event (acquisition QC of a clean tube) a gate's members are the
    indices, among all events, of the events it keeps: here the margin's, recomputed from its rule."""
    import numpy as np

    from bat_analysis.gating.templates import load_template
    from bat_analysis.gating.tube import gate_sample_indices
    from bat_analysis.io.fcs import read_fcs
    from bat_analysis.io.fcs_write import write_fcs
    from bat_analysis.records import Tube
    from bat_analysis.simulate import simulate_tube

    sim = simulate_tube(n_events=20_000, condition="anti_fceri", kind="responder", seed=5)
    path = write_fcs(tmp_path / "t.fcs", sim.events, sim.pnn, sim.pns, version="3.1", datatype="F",
                     spillover=sim.spillover)
    sample = read_fcs(path)
    template = load_template("bat_ccr3_cd63")
    _result, idx = gate_sample_indices(sample, Tube(file="t.fcs", patient="P", condition="negative_control"),
                                       template)
    n = sample.events.shape[0]
    assert len(idx["acquisition_qc"]) == n  # a clean tube: every event kept
    tol = next(g for g in template.gates if g.name == "margin").params["tolerance"]
    keep = np.ones(n, dtype=bool)
    for name in ("FSC-A", "SSC-A"):
        channel = next(c for c in sample.channels if c.pnn == name)
        keep &= ~(sample.events[:, channel.index] >= float(channel.range) * (1.0 - tol))
    assert np.array_equal(idx["margin"], np.flatnonzero(keep))


def test_gates_keeping_every_event_give_every_index_and_every_value(tmp_path: Path, template) -> None:
    """A gate that kept every event (acquisition QC of a clean tube; a gate not applied under the root) is
    recorded without building its indices: gate_sample_indices still gives 0..n-1 for it, its children are
    gated on every event, and as the population it gives every event's compensated marker values."""
    from bat_analysis.gating.compensation import compensate
    from bat_analysis.gating.tube import gate_sample_indices
    from bat_analysis.io.fcs import read_fcs

    s = simulate_tube(n_events=12_000, seed=3)
    path = write_fcs(tmp_path / "clean.fcs", s.events, s.pnn, s.pns, spillover=s.spillover)
    sample = read_fcs(path)
    n = sample.n_events
    as_population = parse_template(template.source_text.replace("population: basophils",
                                                                "population: acquisition_qc"))
    result, idx = gate_sample_indices(sample, TUBE, as_population)
    assert result.gates[0].count == n and result.n_basophils == n
    assert np.array_equal(idx["acquisition_qc"], np.arange(n)) and len(idx["margin"]) < n
    pnn = [c.pnn for c in sample.channels]
    for marker, values in result.basophil_values.items():
        channel = next(c for c in sample.channels if c.marker == marker)
        expected = compensate(sample.events, pnn, sample.spillover, [channel.pnn])[:, 0]
        assert values.shape == (n,) and values.dtype == np.float32
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-3)
    # acquisition QC not applied (too few bins asked): every event kept, the margin gated on all of them
    skipped = parse_template(template.source_text.replace("min_bins: 20", "min_bins: 100000"))
    result, idx = gate_sample_indices(sample, TUBE, skipped)
    assert any(f.code == "GATE_NOT_APPLIED" for f in result.flags)
    assert np.array_equal(idx["acquisition_qc"], np.arange(n))
    margin = next(g for g in result.gates if g.name == "margin")
    assert margin.parent_count == n and len(idx["margin"]) == margin.count
    assert result.n_basophils == len(idx["basophils"]) > 0
