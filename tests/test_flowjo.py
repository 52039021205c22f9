"""FlowJo 10 workspaces: FlowJo's counts reproduced, export -> re-import identical, one workspace per batch."""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from bat_analysis.errors import GatingError
from bat_analysis.gating.gates import (BooleanGate, Dimension, EllipsoidGate, PolygonGate, QuadrantGate, RangeGate,
                                       evaluate)

GML = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"
FLOWJO = CORPUS / "flowjo"
pytestmark = pytest.mark.skipif(not FLOWJO.is_dir(), reason=f"FlowJo workspaces not found at {FLOWJO}")
WORKSPACES = sorted(FLOWJO.glob("*/*.wsp")) if FLOWJO.is_dir() else []
# A deliberate binning case of FlowKit's test data: 100 events on one horizontal line that crosses the top
# edge of "poly1" less than one display bin (1/256) away from it. FlowJo's raster puts all 100 on one side
# (count 0), an exact test splits them 50/50: only the emulated raster reproduces it (tests below).
BINNING_CASE = ("simple_poly_and_rect_v2_poly50.wsp", "poly1")


@lru_cache(maxsize=None)
def _workspace(path: Path):
    from bat_analysis.gating.flowjo import read_workspace

    return read_workspace(path)


@lru_cache(maxsize=None)
def _sample_events(path: Path):
    from bat_analysis.io.fcs import read_fcs

    return read_fcs(path)


def _cases():
    for wsp in WORKSPACES:
        for name, sample in _workspace(wsp).items():
            for gate, count in sample.counts.items():
                if (wsp.name, gate) == BINNING_CASE:
                    continue  # asserted by the two binning-case tests below
                yield pytest.param(wsp, name, gate, id=f"{wsp.name}:{gate}")


def _ancestry(doc, name: str) -> list:
    by_name = {g.name: g for g in doc.gates}
    chain, g = [], by_name[name]
    while g is not None:
        chain.append(g)
        g = by_name.get(g.parent) if g.parent else None
    return chain


def test_workspaces_have_flowjo_counts() -> None:
    total = sum(len(s.counts) for wsp in WORKSPACES for s in _workspace(wsp).values())
    assert total >= 25


@lru_cache(maxsize=None)
def _masks(wsp: Path, sample_name: str, emulate: bool):
    sample = _workspace(wsp)[sample_name]
    fcs = _sample_events(wsp.parent / sample_name)
    return sample.evaluate(fcs.events, fcs.pnn, emulate_binning=emulate)


@pytest.mark.parametrize("wsp, sample_name, gate", list(_cases()) if FLOWJO.is_dir() else [])
def test_counts_match_flowjo(wsp: Path, sample_name: str, gate: str) -> None:
    sample = _workspace(wsp)[sample_name]
    exact = int(_masks(wsp, sample_name, False)[gate].sum())
    emulated = int(_masks(wsp, sample_name, True)[gate].sum())
    theirs = sample.counts[gate]
    binned = any(isinstance(g, (PolygonGate, EllipsoidGate)) for g in _ancestry(sample.document, gate))
    if binned:
        assert abs(exact - theirs) <= max(5, 0.01 * theirs), f"{gate}: exact {exact}, FlowJo {theirs}"
        # with FlowJo's raster emulated; the residue is on FlowJo biex axes, which FlowKit approximates
        assert abs(emulated - theirs) <= 2, f"{gate}: emulated {emulated}, FlowJo {theirs}"
    else:
        assert exact == theirs == emulated, f"{gate} (rectangles only): ours {exact}, FlowJo {theirs}"


def test_binning_emulation_reproduces_the_line_case() -> None:
    wsp = FLOWJO / "flowkit_simple" / BINNING_CASE[0]
    name = next(iter(_workspace(wsp)))
    assert int(_masks(wsp, name, True)[BINNING_CASE[1]].sum()) == _workspace(wsp)[name].counts[BINNING_CASE[1]] == 0


def test_binning_case_is_explained() -> None:
    """The events on which FlowJo and the exact test disagree all lie within one display bin of the edge."""
    wsp = FLOWJO / "flowkit_simple" / BINNING_CASE[0]
    sample = next(iter(_workspace(wsp).values()))
    fcs = _sample_events(wsp.parent / sample.name)
    gate = sample.document.gate(BINNING_CASE[1])
    ev = sample.document.events(fcs.events, fcs.pnn)
    x, y = (ev.values(d) for d in gate.dims)
    inside = evaluate([gate], ev)[gate.name]
    assert sample.counts[gate.name] == 0 and inside.sum() == 50
    v = gate.vertices
    dist = np.full(len(x), np.inf)
    for a, b in zip(v, np.roll(v, -1, axis=0)):
        ab = b - a
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / (ab @ ab), 0, 1)
        dist = np.minimum(dist, np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1]))
    assert np.all(dist[inside] < 1 / 256)


@pytest.mark.parametrize("wsp", WORKSPACES, ids=[w.name for w in WORKSPACES])
def test_export_then_reimport_is_identical(wsp: Path, tmp_path: Path) -> None:
    from bat_analysis.gating.flowjo import WorkspaceTube, export_workspace, read_workspace

    for name, sample in _workspace(wsp).items():
        fcs = _sample_events(wsp.parent / name)
        before = sample.document.evaluate(fcs.events, fcs.pnn)
        out = export_workspace([WorkspaceTube(wsp.parent / name, sample.document.gates,
                                              sample.document.spillovers)], tmp_path / wsp.name)
        again = read_workspace(out)[name]
        after = again.document.evaluate(fcs.events, fcs.pnn)
        assert sorted(after) == sorted(before)
        for gate, mask in before.items():
            assert np.array_equal(mask, after[gate]), f"{wsp.name}: {gate} changed on re-import"


FLOWSOM_FCS = FLOWJO / "flowsom" / "68983.fcs"
DIAMOND_FCS = FLOWJO / "flowkit_simple" / "test_data_diamond_01.fcs"


def _bat_like_gates():
    """Automated-style gates: logicle scales on compensated channels, a polygon, a range, quadrants."""
    from bat_analysis.gating.transforms import FastLogicle, Linear

    lin = Linear(262144, 0)
    lg = FastLogicle(262144, 0.5, 4.5, 0)
    fsc, ssc = Dimension("FSC-A", lin), Dimension("SSC-A", lin)
    pe, apc = Dimension("PE-A", lg, "FCS"), Dimension("APC-A", lg, "FCS")
    cells = PolygonGate("cells", (fsc, ssc), vertices=[[0.15, 0.02], [0.6, 0.02], [0.6, 0.35], [0.15, 0.35]])
    high = RangeGate("pe_high", (pe,), mins=(0.45,), maxs=(None,), parent="cells")
    quads = [QuadrantGate(f"q{i}{j}", (pe, apc), mins=(lo_x, lo_y), maxs=(hi_x, hi_y), group="quad",
                          dividers=((0.4,), (0.5,)), parent="cells")
             for i, (lo_x, hi_x) in enumerate([(None, 0.4), (0.4, None)])
             for j, (lo_y, hi_y) in enumerate([(None, 0.5), (0.5, None)])]
    return [cells, high, *quads]


@pytest.mark.skipif(not (FLOWSOM_FCS.exists() and DIAMOND_FCS.exists()), reason="FlowJo corpus FCS files missing")
def test_batch_export_one_workspace_per_experiment(tmp_path: Path) -> None:
    from bat_analysis.gating.flowjo import WorkspaceTube, export_workspace, flowjo_counts, read_workspace
    from bat_analysis.gating.transforms import Linear

    fs = _sample_events(FLOWSOM_FCS)
    dm = _sample_events(DIAMOND_FCS)
    bat = _bat_like_gates()
    a, b = Dimension("channel_A", Linear(262144, 0)), Dimension("channel_B", Linear(262144, 0))
    diamond = [RangeGate("right", (a,), mins=(0.25,), maxs=(None,)),
               PolygonGate("tri", (a, b), vertices=[[0.1, 0.1], [0.5, 0.1], [0.3, 0.45]], parent="right")]
    counts = {name: int(m.sum()) for name, m in evaluate(bat, ArrayEventsFactory(fs, {"FCS": fs.spillover})).items()}
    tubes = [WorkspaceTube(FLOWSOM_FCS, bat, {"FCS": fs.spillover}, counts=counts, n_events=fs.n_events),
             WorkspaceTube(DIAMOND_FCS, diamond)]
    out = export_workspace(tubes, tmp_path / "experiment.wsp")
    back = read_workspace(out)
    assert sorted(back) == sorted([DIAMOND_FCS.name, FLOWSOM_FCS.name])
    written = flowjo_counts(out)
    assert set(written) == {DIAMOND_FCS.name, FLOWSOM_FCS.name} and written[DIAMOND_FCS.name] == {}
    assert back[FLOWSOM_FCS.name].counts == counts
    for tube, fcs in ((tubes[0], fs), (tubes[1], dm)):
        spill = {"FCS": fcs.spillover} if fcs.spillover is not None else {}
        ours = evaluate(list(tube.gates), ArrayEventsFactory(fcs, spill))
        again = back[tube.sample_name].document.evaluate(fcs.events, fcs.pnn)
        for g in tube.gates:
            assert np.array_equal(ours[g.name], again[g.name]), f"{tube.sample_name}: {g.name} differs"
        assert all(ours[g.name].any() for g in tube.gates), "every exported gate should hold events"


def ArrayEventsFactory(fcs, spill):  # noqa: N802 - small helper named like the class it builds
    from bat_analysis.gating.gates import ArrayEvents

    return ArrayEvents.from_matrix(fcs.events, fcs.pnn, spill)


@pytest.mark.skipif(not DIAMOND_FCS.exists(), reason="FlowJo corpus FCS files missing")
def test_export_refusals_and_ellipse(tmp_path: Path) -> None:
    from bat_analysis.gating.flowjo import WorkspaceTube, export_workspace, read_workspace
    from bat_analysis.gating.transforms import Linear

    a, b = Dimension("channel_A", Linear(262144, 0)), Dimension("channel_B", Linear(262144, 0))
    r = RangeGate("r", (a,), mins=(0.2,), maxs=(None,))
    r2 = RangeGate("r2", (b,), mins=(0.3,), maxs=(None,))
    with pytest.raises(GatingError, match="cannot complement an operand"):  # FlowJo's nodes have no complement
        export_workspace([WorkspaceTube(DIAMOND_FCS, [r, r2, BooleanGate("n", (), op="or",
                                                                          operands=(("r", True), ("r2", False)))])],
                         tmp_path / "x.wsp")
    with pytest.raises(GatingError, match="not a gate of this sample"):
        export_workspace([WorkspaceTube(DIAMOND_FCS, [r, BooleanGate("n", (), op="not", operands=(("zz", False),))])],
                         tmp_path / "x.wsp")
    looped = [RangeGate("p", (a,), mins=(0.1,), maxs=(None,), parent="q"),
              RangeGate("q", (a,), mins=(0.2,), maxs=(None,), parent="p")]
    with pytest.raises(GatingError, match=r"\(cycle: p -> q -> p\)"):  # the cycle is named
        export_workspace([WorkspaceTube(DIAMOND_FCS, [r, *looped])], tmp_path / "x.wsp")
    with pytest.raises(GatingError, match=r"gate names \['r'\] are used twice"):
        export_workspace([WorkspaceTube(DIAMOND_FCS, [r, RangeGate("r", (b,), mins=(0.1,), maxs=(None,))])],
                         tmp_path / "x.wsp")
    with pytest.raises(GatingError, match="no spillover matrix"):
        export_workspace([WorkspaceTube(DIAMOND_FCS, [RangeGate("c", (Dimension("channel_A", None, "FCS"),),
                                                                mins=(1.0,), maxs=(None,))])], tmp_path / "x.wsp")
    with pytest.raises(GatingError, match="no tubes"):
        export_workspace([], tmp_path / "x.wsp")
    # ellipses are written as FlowJo writes them (EllipsoidGate: foci and edge points in display channels)
    # and read back as the same ellipse, not as a polygon
    dm = _sample_events(DIAMOND_FCS)
    e = EllipsoidGate("e", (a, b), mean=[0.1, 0.1], covariance=[[0.004, -0.002], [-0.002, 0.003]], distance_square=4.0)
    out = export_workspace([WorkspaceTube(DIAMOND_FCS, [e])], tmp_path / "e.wsp")
    shapes = ET.parse(out).getroot().iter(f"{{{GML}}}EllipsoidGate")
    (shape,) = list(shapes)
    assert len(shape.find(f"{{{GML}}}foci")) == 2 and len(shape.find(f"{{{GML}}}edge")) == 4
    assert not list(ET.parse(out).getroot().iter(f"{{{GML}}}PolygonGate"))
    ours = int(evaluate([e], ArrayEventsFactory(dm, {}))["e"].sum())
    back = read_workspace(out)[DIAMOND_FCS.name].document
    again = back.gate("e")
    assert isinstance(again, EllipsoidGate)
    np.testing.assert_allclose(again.mean, e.mean, rtol=1e-12)
    np.testing.assert_allclose(again.covariance * again.distance_square, e.covariance * 4.0, rtol=1e-9, atol=1e-15)
    assert ours > 1000 and int(back.evaluate(dm.events, dm.pnn)["e"].sum()) == ours


def test_unreadable_workspace_is_a_clear_error(tmp_path: Path) -> None:
    from bat_analysis.gating.flowjo import read_workspace

    bad = tmp_path / "bad.wsp"
    bad.write_text("<Workspace><unclosed></Workspace>")
    with pytest.raises(GatingError, match="not well-formed"):
        read_workspace(bad)
    with pytest.raises(GatingError, match="not found"):
        read_workspace(tmp_path / "missing.wsp")


def test_gatingml_export_per_tube(tmp_path: Path) -> None:
    from bat_analysis.gating.flowjo import export_gatingml
    from bat_analysis.gating.gatingml import read_gatingml

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fs = _sample_events(FLOWSOM_FCS)
    gates = _bat_like_gates()
    path = export_gatingml(gates, tmp_path / "tube.xml", {})
    doc = read_gatingml(path)
    spill = {"FCS": fs.spillover}
    ours = evaluate(gates, ArrayEventsFactory(fs, spill))
    again = doc.evaluate(fs.events, fs.pnn, fcs_spillover=fs.spillover)
    for g in gates:
        assert np.array_equal(ours[g.name], again[g.name]), g.name


FLOWSOM = FLOWJO / "flowsom"


@pytest.mark.skipif(not (FLOWSOM / "gatingResult.csv").exists(), reason="FlowSOM gating labels missing")
def test_event_labels_agree_with_flowsom_gating_result() -> None:
    """gatingResult.csv (FlowSOM's per-event leaf labels for this workspace) agrees event by event."""
    sample = _workspace(FLOWSOM / "gating.wsp")["68983.fcs"]
    fcs = _sample_events(FLOWSOM_FCS)
    masks = sample.document.evaluate(fcs.events, fcs.pnn)
    labels = np.array([ln.strip().strip('"') for ln in (FLOWSOM / "gatingResult.csv").read_text().splitlines()])
    assert len(labels) == fcs.n_events
    leaves = sorted(set(labels) - {"Unlabeled"})
    assert len(leaves) == 6
    for leaf in leaves:
        theirs, ours = labels == leaf, masks[leaf]
        assert not (ours & ~theirs).any(), f"{leaf}: events we gate that FlowSOM's labels do not"
        # the polygons above the leaves (FlowJo biex scale) are evaluated slightly differently there
        assert (theirs & ~ours).sum() <= max(5, 0.001 * theirs.sum()), leaf


@pytest.mark.skipif(not (FLOWSOM / "manualGating.xml").exists(), reason="FlowSOM Gating-ML export missing")
def test_flowjo_flavoured_gatingml_export_is_read() -> None:
    """FlowJo's Gating-ML export (non-schema attributes, Comp- parameter names) is read leniently."""
    from bat_analysis.gating.gatingml import read_gatingml

    doc = read_gatingml(FLOWSOM / "manualGating.xml")
    assert len(doc.gates) == 15
    comp = [d for g in doc.gates for d in g.dims if d.compensation == "FCS"]
    assert comp and all(not d.key.startswith("Comp-") for d in comp)
    fcs = _sample_events(FLOWSOM_FCS)
    ours = doc.evaluate(fcs.events, fcs.pnn, fcs_spillover=fcs.spillover)
    wsp = _workspace(FLOWSOM / "gating.wsp")["68983.fcs"].document.evaluate(fcs.events, fcs.pnn)
    # the scatter gates are the same geometry in both exports
    for gml_id, population in (("ID1152036930", "Lymphocytes"), ("ID1073341880", "Singlets"),
                               ("ID325928510", "Singlets2")):
        assert np.array_equal(ours[gml_id], wsp[population]), population


def test_gatingml_reader_refuses_a_workspace() -> None:
    from bat_analysis.gating.gatingml import read_gatingml

    with pytest.raises(GatingError, match="FlowJo workspace"):
        read_gatingml(FLOWSOM / "gating.wsp")


@pytest.mark.parametrize("wsp", WORKSPACES, ids=[w.name for w in WORKSPACES])
def test_flowjo_gates_through_gatingml(wsp: Path, tmp_path: Path) -> None:
    """FlowJo population names ("Q1: channel_A- , channel_B+") survive a Gating-ML export; FlowJo's own
    biex scale has no Gating-ML equivalent and is refused with a clear error."""
    from bat_analysis.gating.gatingml import export_gatingml, read_gatingml

    for name, sample in _workspace(wsp).items():
        kinds = {getattr(d.transform, "kind", None) for g in sample.document.gates for d in g.dims}
        if kinds & {"biex", "flowjo_log"}:
            with pytest.raises(GatingError, match="no Gating-ML 2.0 equivalent"):
                export_gatingml(sample.document.gates, tmp_path / "x.xml", sample.document.spillovers)
            continue
        path = export_gatingml(sample.document.gates, tmp_path / f"{wsp.stem}.xml", sample.document.spillovers)
        fcs = _sample_events(wsp.parent / name)
        before = sample.document.evaluate(fcs.events, fcs.pnn)
        after = read_gatingml(path).evaluate(fcs.events, fcs.pnn)
        assert sorted(after) == sorted(before)
        for gate, mask in before.items():
            assert np.array_equal(mask, after[gate]), gate


@pytest.mark.skipif(not DIAMOND_FCS.exists(), reason="FlowJo corpus FCS files missing")
def test_boolean_gates_round_trip_as_flowjo_nodes(tmp_path: Path) -> None:
    """And / Or / Not gates are written as FlowJo's AndNode / OrNode / NotNode (dependents named by path),
    with children of their own, and FlowKit's workspace parser gives them back with the same events."""
    from bat_analysis.gating.flowjo import WorkspaceTube, export_workspace, flowjo_counts, read_workspace
    from bat_analysis.gating.transforms import Linear

    dm = _sample_events(DIAMOND_FCS)
    a, b = Dimension("channel_A", Linear(262144, 0)), Dimension("channel_B", Linear(262144, 0))
    gates = [RangeGate("left", (a,), mins=(None,), maxs=(0.1,)),
             RangeGate("right", (a,), mins=(0.25,), maxs=(None,)),
             RangeGate("low", (b,), mins=(None,), maxs=(0.15,), parent="right"),
             BooleanGate("sides", (), op="or", operands=(("left", False), ("right", False))),
             BooleanGate("right_low", (), op="and", operands=(("right", False), ("low_b", False)),
                         parent="right"),
             RangeGate("low_b", (b,), mins=(None,), maxs=(0.2,), parent="right"),
             BooleanGate("not_left", (), op="not", operands=(("left", False),)),
             PolygonGate("tri", (a, b), vertices=[[0.0, 0.0], [0.5, 0.0], [0.25, 0.3]], parent="sides")]
    ours = evaluate(gates, ArrayEventsFactory(dm, {}))
    counts = {name: int(m.sum()) for name, m in ours.items()}
    out = export_workspace([WorkspaceTube(DIAMOND_FCS, gates, counts=counts)], tmp_path / "bool.wsp")
    text = out.read_text()
    assert text.count("<OrNode") == 1 and text.count("<AndNode") == 1 and text.count("<NotNode") == 1
    assert '<Dependent name="right/low_b" />' in text
    again = read_workspace(out)[DIAMOND_FCS.name]
    back = again.document.evaluate(dm.events, dm.pnn)
    assert sorted(back) == sorted(ours)
    for name, mask in ours.items():
        assert np.array_equal(mask, back[name]), f"{name} changed on re-import"
    assert 0 < counts["tri"] < counts["sides"] < dm.n_events and 0 < counts["right_low"] < counts["right"]
    assert flowjo_counts(out)[DIAMOND_FCS.name][("sides", "tri")] == counts["tri"]


def test_gate_resolutions_and_counts_are_found_below_boolean_nodes():
    """Every population walk of a workspace (counts, polygon display resolutions, ellipses) descends into
    And/Or/Not nodes: a polygon below an OR node keeps its gateResolution for FlowJo's binning emulation."""
    from bat_analysis.gating.flowjo import _counts, _gate_resolutions

    g = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
    root = ET.fromstring(f"""<Workspace xmlns:gating="{g}"><SampleList><Sample><SampleNode name="s.fcs">
      <Subpopulations>
        <OrNode name="qc" count="90"><Subpopulations>
          <Population name="cells" count="80"><Gate><gating:PolygonGate gating:id="c" gateResolution="256"/></Gate>
            <Subpopulations><Population name="deep" count="5"><Gate>
              <gating:PolygonGate gating:id="d" gateResolution="128"/></Gate></Population></Subpopulations>
          </Population>
        </Subpopulations></OrNode>
        <Population name="top" count="10"><Gate><gating:PolygonGate gating:id="t" gateResolution="64"/></Gate>
        </Population>
      </Subpopulations></SampleNode></Sample></SampleList></Workspace>""")
    assert _gate_resolutions(root) == {"s.fcs": {("qc", "cells"): 256, ("qc", "cells", "deep"): 128, ("top",): 64}}
    assert _counts(root, "w.wsp") == {"s.fcs": {("qc",): 90, ("qc", "cells"): 80, ("qc", "cells", "deep"): 5,
                                                ("top",): 10}}
