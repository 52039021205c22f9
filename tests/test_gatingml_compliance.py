"""ISAC Gating-ML 2.0 compliance suite: every gate with a truth file agrees event by event.

Gates are imported from the suite's XML, evaluated with our engine on data1.fcs read by the package's
reader (float32 events scaled as the standard says: $PnG, $PnE), and compared with
``truth/Results_<id>.txt`` without tolerance. Every XML file of the suite that defines the gate is
checked. FlowIO's float64 events give the same memberships; export -> re-import is identical.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"
SUITE = CORPUS / "gatingml2"
pytestmark = pytest.mark.skipif(not SUITE.is_dir(), reason=f"Gating-ML compliance suite not found at {SUITE}")

# truth files whose gate id differs from the file's name
ALIASES = {"ParQuadRect": "ParRectangle1"}
# an attribute-parsing exercise of the suite, not a Gating-ML document
NOT_GATINGML = {"gml_range_gate_attr_testing.xml"}
TRUTH_IDS = sorted(p.stem.removeprefix("Results_") for p in (SUITE / "truth").glob("Results_*.txt")) \
    if SUITE.is_dir() else []


@lru_cache(maxsize=1)
def _events() -> tuple[np.ndarray, list[str]]:
    """data1.fcs through the package's reader: float32 events, $PnG and $PnE applied."""
    from bat_analysis.io.fcs import read_fcs

    sample = read_fcs(SUITE / "data1.fcs")
    return sample.events, sample.pnn


@lru_cache(maxsize=1)
def _events_flowio() -> tuple[np.ndarray, list[str]]:
    """The same through FlowKit/FlowIO's preprocessing, in float64."""
    import flowkit as fk

    sample = fk.Sample(str(SUITE / "data1.fcs"))
    return sample.get_events(source="raw"), list(sample.pnn_labels)


def _evaluate_suite(events: np.ndarray, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    from bat_analysis.gating.gatingml import read_gatingml

    out = {}
    for xml in sorted((SUITE / "gml").glob("*.xml")):
        if xml.name in NOT_GATINGML:
            continue
        out[xml.name] = read_gatingml(xml).evaluate(events, names)
    return out


@lru_cache(maxsize=1)
def _results() -> dict[str, dict[str, np.ndarray]]:
    return _evaluate_suite(*_events())


def _truth(truth_id: str) -> np.ndarray:
    return np.loadtxt(SUITE / "truth" / f"Results_{truth_id}.txt", dtype=np.int8).astype(bool)


def test_suite_has_51_truth_files() -> None:
    assert len(TRUTH_IDS) == 51


@pytest.mark.parametrize("truth_id", TRUTH_IDS)
def test_gate_matches_truth(truth_id: str) -> None:
    gate = ALIASES.get(truth_id, truth_id)
    truth = _truth(truth_id)
    files = {name: res[gate] for name, res in _results().items() if gate in res}
    assert files, f"no Gating-ML file of the suite defines gate {gate!r}"
    for name, mask in files.items():
        assert mask.shape == truth.shape
        wrong = np.flatnonzero(mask != truth)
        assert wrong.size == 0, f"{name}: gate {gate} differs from the truth at {wrong.size} events " \
                                f"(first: {wrong[:10].tolist()})"


def test_export_then_import_is_identical(tmp_path: Path) -> None:
    from bat_analysis.gating.gatingml import export_gatingml, read_gatingml

    events, names = _events()
    for xml in (SUITE / "gml" / "gml_all_gates.xml", SUITE / "gml" / "gml_ellipsoid3d_gate.xml",
                SUITE / "gml" / "gml_parent_quadrant_rect_gate.xml"):
        doc = read_gatingml(xml)
        before = doc.evaluate(events, names)
        again = read_gatingml(export_gatingml(doc.gates, tmp_path / xml.name, doc.spillovers))
        after = again.evaluate(events, names)
        assert set(after) == set(before)
        for name, mask in before.items():
            assert np.array_equal(mask, after[name]), f"{xml.name}: gate {name} changed on re-import"
        assert any(m.any() for m in after.values())


def test_float32_and_float64_events_give_the_same_memberships() -> None:
    """The package's float32 events and FlowIO's float64 ones agree on every gate of every file."""
    ev64, names64 = _events_flowio()
    ev32, names32 = _events()
    assert names32 == names64
    np.testing.assert_allclose(ev32, ev64, rtol=1e-6)
    res64 = _evaluate_suite(ev64, names64)
    for name, masks in _results().items():
        for gate, mask in masks.items():
            assert np.array_equal(mask, res64[name][gate]), f"{name}: gate {gate} depends on the precision"



def test_exports_validate_against_the_gatingml_schema(tmp_path: Path) -> None:
    from lxml import etree

    schema_mod = pytest.importorskip("flowkit._resources", reason="FlowKit's bundled Gating-ML 2.0 XSD")
    from bat_analysis.gating.gatingml import export_gatingml, read_gatingml
    from bat_analysis.gating.gates import Dimension, PolygonGate, RangeGate

    docs = [read_gatingml(x) for x in sorted((SUITE / "gml").glob("*.xml")) if x.name not in NOT_GATINGML]
    awkward = [RangeGate("Q1: A- , B+", (Dimension("FL1-H"),), mins=(1.0,), maxs=(None,)),
               PolygonGate("2nd gate", (Dimension("FL1-H"), Dimension("FL2-H")),
                           vertices=[[0, 0], [50, 0], [50, 50]], parent="Q1: A- , B+")]
    for k, gates in enumerate([d.gates for d in docs] + [awkward]):
        spill = docs[k].spillovers if k < len(docs) else {}
        path = export_gatingml(gates, tmp_path / f"{k}.xml", spill)
        tree = etree.parse(str(path))
        assert schema_mod.gml_schema.validate(tree), str(schema_mod.gml_schema.error_log.last_error)
    again = read_gatingml(tmp_path / f"{len(docs)}.xml")
    assert [g.name for g in again.gates] == ["Q1: A- , B+", "2nd gate"] and again.gates[1].parent == "Q1: A- , B+"
