"""Gate geometry: one typed form, both spellings of a range's limits read, one written."""

from __future__ import annotations

import numpy as np
import pytest

from bat_analysis.gating.gates import (Dimension, EllipsoidGate, PolygonGate, QuadrantGate, RangeGate,
                                       gate_from_dict, gate_to_dict)
from bat_analysis.gating._geometry import (EllipsoidGeometry, PolygonGeometry, RangeGeometry, from_gate,
                                          geometry_to_mapping, parse_geometry, to_gate)

X, Y = Dimension("X"), Dimension("Y")


def parsed(geo, n_dims=2):
    problems: list[str] = []
    out = parse_geometry(geo, n_dims, "g", problems)
    return out, problems


def test_both_spellings_of_range_limits_give_one_geometry_written_one_way() -> None:
    template_form, p1 = parsed({"type": "range", "min": [1, None], "max": [5.5, 3]})
    stored_form, p2 = parsed({"type": "range", "mins": [1, None], "maxs": [5.5, 3]})
    assert p1 == p2 == [] and template_form == stored_form == RangeGeometry((1, None), (5.5, 3))
    assert geometry_to_mapping(template_form) == {"type": "range", "mins": [1, None], "maxs": [5.5, 3]}
    one_side, p3 = parsed({"type": "range", "min": [0.5]}, n_dims=1)  # a side left out is open
    assert p3 == [] and one_side == RangeGeometry((0.5,), (None,))


def test_problems_are_located_and_both_spellings_of_one_side_refused() -> None:
    assert parsed({"type": "range", "min": [1, 2], "mins": [1, 2], "max": [3, 4]}) == (
        None, ["g.min: give mins or min, not both"])
    assert parsed({"type": "range", "mins": [1, "x"], "maxs": [0, 4]})[1] == [
        "g.mins[1]: expected a number or null, got 'x'"]
    assert parsed({"type": "range", "min": [10, None], "max": [5, None]})[1] == [
        "g: dimension 1: min 10 must be below max 5", "g: dimension 2 needs a min or a max"]
    assert parsed({"type": "polygon", "vertices": [[0, 0], [1, 0]]})[1] == [
        "g.vertices: expected a list of >= 3 [x, y] pairs, got a list"]
    assert parsed({"type": "ellipsoid", "mean": [0, 0], "covariance": [[1, 0], [0, 1]], "distance_square": 0})[1] \
        == ["g.distance_square: expected a positive number, got 0"]
    assert parsed({"type": "circle"})[1] == ["g.type: expected one of range, polygon, ellipsoid, got 'circle'"]
    assert parsed([1, 2])[1] == ["g: expected a mapping with 'type' (range, polygon, ellipsoid), got a list"]


@pytest.mark.parametrize("gate", [
    RangeGate("r", (X, Y), mins=(1.0, None), maxs=(2.0, 5.0)),
    PolygonGate("p", (X, Y), vertices=np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.25]])),
    EllipsoidGate("e", (X, Y), mean=np.array([1.0, 2.0]), covariance=np.array([[2.0, 0.5], [0.5, 1.0]]),
                  distance_square=3.0),
])
def test_canonical_mapping_is_the_stored_form_and_gates_round_trip(gate) -> None:
    geo = from_gate(gate)
    stored = gate_to_dict(gate)
    assert geometry_to_mapping(geo) == {k: v for k, v in stored.items() if k in geometry_to_mapping(geo)}
    reread = parse_geometry(geometry_to_mapping(geo), 2, "g", [])
    assert reread == geo
    again = to_gate(reread, gate.name, gate.dims)
    assert gate_to_dict(again) == stored == gate_to_dict(gate_from_dict(stored))


def test_quadrant_is_a_range_and_booleans_have_no_geometry() -> None:
    q = QuadrantGate("q1", (X, Y), mins=(None, 1.0), maxs=(2.0, None), group="Q", dividers=((2.0,), (1.0,)))
    assert from_gate(q) == RangeGeometry((None, 1.0), (2.0, None))
    from bat_analysis.gating.gates import BooleanGate

    with pytest.raises(TypeError, match="no range, polygon or ellipsoid geometry"):
        from_gate(BooleanGate("b", (), op="not", operands=(("q1", False),)))
    assert isinstance(parsed({"type": "polygon", "vertices": [[0, 0], [1, 0], [1, 1]]})[0], PolygonGeometry)
    assert isinstance(parsed({"type": "ellipsoid", "mean": [0], "covariance": [[1]], "distance_square": 1}, 1)[0],
                      EllipsoidGeometry)


def test_a_polygon_with_more_vertices_than_a_gate_has_is_a_located_problem() -> None:
    """A polygon of MAX_POLYGON_VERTICES is accepted; one more vertex is refused, located, before any event is
    tested against it or it is drawn (an overrides file or a workspace could hold hundreds of thousands)."""
    from bat_analysis.gating._geometry import MAX_POLYGON_VERTICES, parse_geometry

    angles = np.linspace(0.0, 2 * np.pi, MAX_POLYGON_VERTICES + 1, endpoint=False)
    ring = [[float(np.cos(a)), float(np.sin(a))] for a in angles]
    problems: list[str] = []
    assert isinstance(parse_geometry({"type": "polygon", "vertices": ring[:-1]}, 2, "gates[2].geometry", problems),
                      PolygonGeometry) and problems == []
    assert parse_geometry({"type": "polygon", "vertices": ring}, 2, "gates[2].geometry", problems) is None
    assert problems == [f"gates[2].geometry.vertices: a polygon of {MAX_POLYGON_VERTICES + 1} vertices is too many "
                        f"to be a gate; expected at most {MAX_POLYGON_VERTICES} [x, y] pairs"]
