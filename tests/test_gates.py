"""Gate engine: geometry edges, parents, booleans, quadrants, ratios, compensation refs, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bat_analysis.errors import GatingError
from bat_analysis.gating.compensation import Spillover
from bat_analysis.gating.gates import (ArrayEvents, BooleanGate, Dimension, EllipsoidGate, PolygonGate,
                                       QuadrantGate, RangeGate, Ratio, evaluate, gate_from_dict, gate_to_dict)
from bat_analysis.gating.transforms import FastLogicle, Linear, Logicle

X, Y = Dimension("x"), Dimension("y")


@pytest.fixture
def events() -> ArrayEvents:
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    y = np.array([0.0, 1.0, 4.0, 9.0, 16.0, 25.0], dtype=np.float32)
    return ArrayEvents({"x": x, "y": y})


def test_range_is_half_open_and_open_sides(events) -> None:
    m = evaluate([RangeGate("r", (X,), mins=(1.0,), maxs=(4.0,)),
                  RangeGate("lo", (X,), mins=(None,), maxs=(2.0,)),
                  RangeGate("hi", (X,), mins=(4.0,), maxs=(None,))], events)
    assert m["r"].tolist() == [False, True, True, True, False, False]
    assert m["lo"].tolist() == [True, True, False, False, False, False]
    assert m["hi"].tolist() == [False, False, False, False, True, True]
    with pytest.raises(GatingError, match="min or a max"):
        RangeGate("bad", (X,), mins=(None,), maxs=(None,))


def test_parent_applies(events) -> None:
    gates = [RangeGate("child", (Y,), mins=(0.5,), maxs=(None,), parent="root_gate"),
             RangeGate("root_gate", (X,), mins=(None,), maxs=(3.0,))]
    m = evaluate(gates, events)
    assert m["child"].tolist() == [False, True, True, False, False, False]


def test_polygon_edges_and_complement() -> None:
    ev = ArrayEvents({"x": np.array([0.5, 1.0, 1.5, 0.0, -0.1]), "y": np.array([0.5, 0.5, 0.5, 0.0, 0.5])})
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    m = evaluate([PolygonGate("p", (X, Y), vertices=square),
                  PolygonGate("q", (X, Y), vertices=square, complement=True)], ev)
    assert m["p"][0] and not m["p"][2] and not m["p"][4]
    assert np.array_equal(m["q"], ~m["p"])
    with pytest.raises(GatingError, match="3 vertices"):
        PolygonGate("bad", (X, Y), vertices=np.zeros((2, 2)))


def test_ellipsoid_includes_boundary() -> None:
    ev = ArrayEvents({"x": np.array([0.0, 2.0, 2.0001, 0.0]), "y": np.array([0.0, 0.0, 0.0, 1.0])})
    g = EllipsoidGate("e", (X, Y), mean=[0, 0], covariance=[[4, 0], [0, 1]], distance_square=1.0)
    assert evaluate([g], ev)["e"].tolist() == [True, True, False, True]
    with pytest.raises(GatingError, match="singular"):
        evaluate([EllipsoidGate("s", (X, Y), mean=[0, 0], covariance=[[1, 1], [1, 1]])], ev)


def test_boolean_ops_use_full_membership(events) -> None:
    gates = [RangeGate("a", (X,), mins=(1.0,), maxs=(None,)),
             RangeGate("b", (Y,), mins=(None,), maxs=(10.0,)),
             RangeGate("a_child", (Y,), mins=(0.0,), maxs=(None,), parent="a"),
             BooleanGate("and", (), op="and", operands=(("a", False), ("b", False))),
             BooleanGate("or", (), op="or", operands=(("a", False), ("b", True))),
             BooleanGate("not", (), op="not", operands=(("a_child", False),)),
             BooleanGate("and_in_b", (), op="and", operands=(("a", False), ("a", False)), parent="b")]
    m = evaluate(gates, events)
    a = np.array([False, True, True, True, True, True])
    b = np.array([True, True, True, True, False, False])
    assert m["and"].tolist() == (a & b).tolist()
    assert m["or"].tolist() == (a | ~b).tolist()
    assert m["not"].tolist() == (~a).tolist()  # complement of the child's FULL membership
    assert m["and_in_b"].tolist() == (a & b).tolist()
    with pytest.raises(GatingError):
        BooleanGate("bad", (), op="xor", operands=(("a", False), ("b", False)))
    with pytest.raises(GatingError):
        BooleanGate("bad", (), op="not", operands=(("a", False), ("b", False)))


def test_cycles_unknown_and_duplicates_are_errors(events) -> None:
    with pytest.raises(GatingError, match="own ancestor"):
        evaluate([RangeGate("a", (X,), mins=(0.0,), maxs=(None,), parent="b"),
                  RangeGate("b", (X,), mins=(0.0,), maxs=(None,), parent="a")], events)
    with pytest.raises(GatingError, match="own ancestor"):
        evaluate([BooleanGate("a", (), op="not", operands=(("a", False),))], events)
    with pytest.raises(GatingError, match="unknown gate"):
        evaluate([RangeGate("a", (X,), mins=(0.0,), maxs=(None,), parent="nope")], events)
    with pytest.raises(GatingError, match="used twice"):
        evaluate([RangeGate("a", (X,), mins=(0.0,), maxs=(None,)),
                  RangeGate("a", (X,), mins=(1.0,), maxs=(None,))], events)
    with pytest.raises(GatingError, match="no events for dimension"):
        evaluate([RangeGate("a", (Dimension("zz"),), mins=(0.0,), maxs=(None,))], events)


def test_quadrants_partition_the_plane(events) -> None:
    divs = ((2.0,), (9.0,))
    quads = [QuadrantGate(f"q{i}{j}", (X, Y), mins=(lo_x, lo_y), maxs=(hi_x, hi_y), group="Q", dividers=divs)
             for i, (lo_x, hi_x) in enumerate([(None, 2.0), (2.0, None)])
             for j, (lo_y, hi_y) in enumerate([(None, 9.0), (9.0, None)])]
    m = evaluate(quads, events)
    total = sum(m[q.name].astype(int) for q in quads)
    assert total.tolist() == [1] * 6
    assert m["q11"].tolist() == [False, False, False, True, True, True]  # x >= 2 and y >= 9


def test_ratio_dimension_with_transform() -> None:
    ev = ArrayEvents({"a": np.array([10.0, 20.0, 30.0]), "b": np.array([5.0, 5.0, 10.0])})
    r = Dimension("a_over_b", Linear(10, 0), ratio=Ratio("a", "b", A=2.0, B=0.0, C=0.0))
    np.testing.assert_allclose(ev.values(r), [0.4, 0.8, 0.6])
    m = evaluate([RangeGate("r", (r,), mins=(0.5,), maxs=(None,))], ev)
    assert m["r"].tolist() == [False, True, True]


def test_compensation_reference_and_fluorochrome_names() -> None:
    sp = Spillover(("FL1", "FL2"), np.array([[1.0, 0.5], [0.0, 1.0]]), name="M", fluorochromes=("FITC", "PE"))
    true = np.array([[100.0, 10.0], [0.0, 50.0]])
    raw = true @ sp.matrix
    ev = ArrayEvents({"FL1": raw[:, 0], "FL2": raw[:, 1], "FSC": np.array([1.0, 2.0])}, {"M": sp})
    np.testing.assert_allclose(ev.values(Dimension("PE", compensation="M")), true[:, 1])
    np.testing.assert_allclose(ev.values(Dimension("FL2", compensation="M")), true[:, 1])
    np.testing.assert_allclose(ev.values(Dimension("FL2")), raw[:, 1])
    np.testing.assert_allclose(ev.values(Dimension("FSC", compensation="M")), [1.0, 2.0])
    np.testing.assert_allclose(ev.values(Dimension("FL2", compensation="FCS")), raw[:, 1])  # no FCS matrix
    with pytest.raises(GatingError, match="unknown compensation reference"):
        ev.values(Dimension("FL2", compensation="other"))


def test_transformed_columns_are_cached_and_shared() -> None:
    calls = []

    class Counting:
        name = "counting"

        def apply(self, v):
            calls.append(1)
            return v * 2

        def inverse(self, v):
            return v / 2

    t = Counting()
    ev = ArrayEvents({"x": np.arange(5.0)})
    gates = [RangeGate("a", (Dimension("x", t),), mins=(2.0,), maxs=(None,)),
             RangeGate("b", (Dimension("x", t),), mins=(None,), maxs=(6.0,))]
    m = evaluate(gates, ev)
    assert len(calls) == 1
    assert m["a"].tolist() == [False, True, True, True, True]


def test_from_matrix_uses_views() -> None:
    mat = np.arange(12, dtype=np.float32).reshape(4, 3)
    ev = ArrayEvents.from_matrix(mat, ["a", "b", "c"])
    assert np.shares_memory(ev.columns["b"], mat)
    with pytest.raises(GatingError, match="channel names"):
        ArrayEvents.from_matrix(mat, ["a", "b"])


def test_serialisation_round_trip_every_type(events) -> None:
    lg = FastLogicle(262144, 0.5, 4.5, 0)
    dx = Dimension("x", lg, "M")
    gates = [
        RangeGate("r", (dx, Y), mins=(0.1, None), maxs=(0.9, 20.0)),
        QuadrantGate("q", (X,), mins=(2.0,), maxs=(None,), group="Q", dividers=((2.0,),), parent="r"),
        PolygonGate("p", (X, Y), vertices=[[0, 0], [5, 0], [5, 5]], complement=True),
        EllipsoidGate("e", (X, Y), mean=[1, 1], covariance=[[2, 0.5], [0.5, 1]], distance_square=3.0),
        BooleanGate("b", (), op="or", operands=(("p", True), ("e", False))),
        RangeGate("ratio", (Dimension("xy", None, None, Ratio("x", "y", 2, 1, 0.5)),), mins=(0.0,), maxs=(None,)),
    ]
    for g in gates:
        d = json.loads(json.dumps(gate_to_dict(g)))
        back = gate_from_dict(d)
        assert type(back) is type(g) and gate_to_dict(back) == gate_to_dict(g)
    assert gate_from_dict(gate_to_dict(gates[0])).dims[0].transform == Logicle(262144, 0.5, 4.5, 0)
    named = gate_from_dict({"name": "n", "type": "range", "dims": ["x"], "transforms": ["L"], "mins": [1],
                            "maxs": [None]}, transforms={"L": lg})
    assert named.dims[0].transform is lg
    with pytest.raises(GatingError, match="unknown transform"):
        gate_from_dict({"name": "n", "type": "range", "dims": ["x"], "transforms": ["L"], "mins": [1],
                        "maxs": [None]})
    with pytest.raises(GatingError, match="unknown type"):
        gate_from_dict({"name": "n", "type": "blob", "dims": []})
    with pytest.raises(GatingError, match="missing field"):
        gate_from_dict({"name": "n", "type": "polygon", "dims": ["x", "y"]})


class _FullColumnsOnly:
    """An event source without row subsets: the evaluator must then gate on whole columns."""

    def __init__(self, inner: ArrayEvents) -> None:
        self.inner = inner
        self.n_events = inner.n_events

    def values(self, dim):
        return self.inner.values(dim)


def test_subset_evaluation_equals_whole_column_evaluation() -> None:
    rng = np.random.default_rng(3)
    n = 20000
    sp = Spillover(("FL1", "FL2"), np.array([[1.0, 0.3], [0.05, 1.0]]), name="M")
    cols = {"FSC": rng.uniform(0, 262144, n), "SSC": rng.uniform(0, 262144, n),
            "FL1": rng.normal(2000, 3000, n), "FL2": rng.normal(3000, 5000, n)}
    lg = FastLogicle(262144, 0.5, 4.5, 0)
    fsc, ssc = Dimension("FSC", Linear(262144, 0)), Dimension("SSC", Linear(262144, 0))
    fl1, fl2 = Dimension("FL1", lg, "M"), Dimension("FL2", lg, "M")
    gates = [PolygonGate("cells", (fsc, ssc), vertices=[[0.1, 0.1], [0.8, 0.2], [0.7, 0.9], [0.2, 0.6]]),
             EllipsoidGate("core", (fsc, ssc), mean=[0.4, 0.4], covariance=[[0.02, 0.005], [0.005, 0.03]],
                           distance_square=2.0, parent="cells"),
             RangeGate("fl1_pos", (fl1,), mins=(0.35,), maxs=(None,), parent="core"),
             PolygonGate("fl_pop", (fl1, fl2), vertices=[[0.3, 0.3], [0.9, 0.3], [0.9, 0.9]], parent="fl1_pos"),
             QuadrantGate("q", (fl1, fl2), mins=(0.4, None), maxs=(None, 0.5), group="Q",
                          dividers=((0.4,), (0.5,)), parent="core"),
             BooleanGate("either", (), op="or", operands=(("fl_pop", False), ("q", False)), parent="cells")]
    fast = evaluate(gates, ArrayEvents(cols, {"M": sp}))
    full = evaluate(gates, _FullColumnsOnly(ArrayEvents(cols, {"M": sp})))
    for g in gates:
        assert np.array_equal(fast[g.name], full[g.name]), g.name
    assert 0 < fast["fl_pop"].sum() < fast["fl1_pos"].sum() < fast["core"].sum() < fast["cells"].sum() < n
    ev = ArrayEvents(cols, {"M": sp})
    rows = np.flatnonzero(fast["core"])
    np.testing.assert_array_equal(ev.values(fl2, rows, "core"), ev.values(fl2)[rows])


def test_limits_are_not_cast_to_float32() -> None:
    """A limit just above a float32 event value: the event is below it (ISAC quadrant FSCD-FL1P case)."""
    x = np.array([6.43566975], dtype=np.float32)  # float32 rounds it to 6.4356699 < 6.43567
    assert np.float32(6.43567) == x[0]             # ... but a float32 limit would equal it
    g = RangeGate("r", (Dimension("x"),), mins=(None,), maxs=(6.43567,))
    assert evaluate([g], ArrayEvents({"x": x}))["r"].tolist() == [True]
