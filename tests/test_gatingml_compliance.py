"""ISAC Gating-ML 2.0 compliance suite: every gate with a truth file agrees event by event.

Gates are imported from the suite's XML, evaluated with our engine on data1.fcs scaled as the standard
says ($PnG, $PnE) in float64, and compared with ``truth/Results_<id>.txt`` without tolerance. Every XML
file of the suite that defines the gate is checked. Export -> re-import must give identical memberships.
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
    import flowkit as fk

    sample = fk.Sample(str(SUITE / "data1.fcs"))  # FlowIO preprocessing: $PnG and $PnE applied, float64
    return sample.get_events(source="raw"), list(sample.pnn_labels)


@lru_cache(maxsize=1)
def _results() -> dict[str, dict[str, np.ndarray]]:
    from bat_analysis.gating.gatingml import read_gatingml

    events, names = _events()
    out = {}
    for xml in sorted((SUITE / "gml").glob("*.xml")):
        if xml.name in NOT_GATINGML:
            continue
        out[xml.name] = read_gatingml(xml).evaluate(events, names)
    return out


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


def test_float32_events_differ_only_at_gate_boundaries() -> None:
    """With the package's float32 events (bat_analysis.io.fcs.read_fcs) a value rounded onto a quadrant
    divider moves across it: the differences from the truth must all be such events, nothing else."""
    from bat_analysis.io.fcs import read_fcs

    sample = read_fcs(SUITE / "data1.fcs")
    ev64, names = _events()
    assert sample.pnn == names
    np.testing.assert_allclose(sample.events, ev64, rtol=1e-6)
    from bat_analysis.gating.gatingml import read_gatingml

    doc = read_gatingml(SUITE / "gml" / "gml_all_gates.xml")
    masks = doc.evaluate(sample.events, sample.pnn)
    limits: list[float] = []
    for g in doc.gates:
        for lo, hi in zip(getattr(g, "mins", ()), getattr(g, "maxs", ())):
            limits += [v for v in (lo, hi) if v is not None]
    limits_arr = np.asarray(limits)
    for truth_id in TRUTH_IDS:
        gate = ALIASES.get(truth_id, truth_id)
        if gate not in masks:
            continue
        for i in np.flatnonzero(masks[gate] != _truth(truth_id)):
            row32 = sample.events[i].astype(np.float64)
            # some raw value of this event sits within float32 rounding of one of the gate limits
            near = np.abs(row32[:, None] - limits_arr[None, :]) <= 2 * np.spacing(np.float32(np.abs(row32) + 1))[:, None]
            assert near.any(), f"gate {gate}: event {i} differs from the truth away from any boundary"
