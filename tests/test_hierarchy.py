"""One ordering and cycle check for every gate hierarchy (templates, gates, Gating-ML, FlowJo)."""

from __future__ import annotations

import numpy as np
import pytest

from bat_analysis.errors import GatingError
from bat_analysis.gating.gates import ArrayEvents, BooleanGate, Dimension, RangeGate, evaluate
from bat_analysis.gating._hierarchy import HierarchyError, ancestors, topological_order

PARENTS = {"all": None, "cells": "all", "singlets": "cells", "basophils": "singlets", "eos": "singlets"}


def order(names, parents=PARENTS, **kw):
    return topological_order(names, lambda n: n, lambda n: [parents[n]] if parents.get(n) else [], **kw)


def test_parents_first_list_comes_back_unchanged_and_others_are_reordered_stably() -> None:
    names = list(PARENTS)
    assert order(names) == names
    assert order(["eos", "basophils", "singlets", "cells", "all"]) == ["all", "cells", "singlets", "eos",
                                                                      "basophils"]
    assert order(["basophils", "all", "eos", "cells", "singlets"]) == ["all", "cells", "singlets", "basophils",
                                                                      "eos"]


def test_a_cycle_is_named() -> None:
    parents = {"a": "c", "b": "a", "c": "b", "d": None}
    with pytest.raises(HierarchyError) as err:
        order(["d", "b", "a", "c"], parents)
    assert err.value.cycle == ("b", "a", "c", "b")
    assert "gate 'b' is its own ancestor (cycle: b -> a -> c -> b)" in str(err.value)
    assert isinstance(err.value, GatingError) and err.value.field == "parent"
    with pytest.raises(HierarchyError, match=r"cycle: x -> x"):
        order(["x"], {"x": "x"})


def test_unknown_dependency_raises_or_is_ignored() -> None:
    parents = {"a": None, "b": "nope"}
    with pytest.raises(HierarchyError, match="gate 'b': unknown gate 'nope'") as err:
        order(["a", "b"], parents)
    assert (err.value.node, err.value.unknown) == ("b", "nope")
    assert order(["b", "a"], parents, unknown="ignore") == ["b", "a"]


def test_ancestors() -> None:
    assert ancestors("basophils", PARENTS) == ["singlets", "cells", "all"]
    assert ancestors("all", PARENTS) == []
    with pytest.raises(HierarchyError) as err:  # a gate below a cycle: the chain walked is named
        ancestors("d", {"d": "a", "a": "b", "b": "a"})
    assert err.value.cycle == ("d", "a", "b", "a") and "descends from a cycle" in str(err.value)
    with pytest.raises(HierarchyError, match="unknown parent 'zz'"):
        ancestors("x", {"x": "zz"})
    assert ancestors("x", {"x": "zz"}, unknown="ignore") == []
    assert ancestors("x", {"x": None, "p": None}, parent="p") == ["p"]  # a node's own parent given


def test_deep_hierarchy_is_ordered_and_evaluated_without_recursion() -> None:
    """A hierarchy deeper than Python's recursion limit (a hostile workspace) is evaluated, not a crash."""
    n = 3000
    x = Dimension("X")
    gates = [RangeGate(f"g{i}", (x,), mins=(float(i),), maxs=(None,), parent=f"g{i - 1}" if i else None)
             for i in range(n)]
    masks = evaluate(gates[::-1], ArrayEvents({"X": np.arange(5000, dtype=np.float64)}))
    assert int(masks[f"g{n - 1}"].sum()) == 5000 - (n - 1)


def test_boolean_operands_come_first() -> None:
    x = Dimension("X")
    a = RangeGate("a", (x,), mins=(1.0,), maxs=(None,))
    b = RangeGate("b", (x,), mins=(None,), maxs=(3.0,))
    both = BooleanGate("both", (), op="and", operands=(("a", False), ("b", False)))
    masks = evaluate([both, b, a], ArrayEvents({"X": np.arange(5, dtype=np.float64)}))
    assert list(masks) == ["a", "b", "both"] and masks["both"].tolist() == [False, True, True, False, False]


def test_gatingml_export_puts_parents_first_and_names_a_cycle(tmp_path) -> None:
    from bat_analysis.gating.gatingml import export_gatingml, read_gatingml
    from bat_analysis.gating.transforms import Linear

    x = Dimension("FSC-A", Linear(262144, 0))
    child = RangeGate("child", (x,), mins=(0.5,), maxs=(None,), parent="root_gate")
    root = RangeGate("root_gate", (x,), mins=(0.1,), maxs=(None,))
    back = read_gatingml(export_gatingml([child, root], tmp_path / "g.xml"))
    assert back.gate("child").parent == "root_gate" and back.gate("root_gate").parent is None
    looped = [RangeGate("p", (x,), mins=(0.1,), maxs=(None,), parent="q"),
              RangeGate("q", (x,), mins=(0.2,), maxs=(None,), parent="p")]
    with pytest.raises(HierarchyError, match=r"cycle: p -> q -> p"):
        export_gatingml([root, *looped], tmp_path / "c.xml")


def test_parent_cycles_lists_each_cycle_once_in_linear_time() -> None:
    from bat_analysis.gating._hierarchy import cycle_text, parent_cycles

    parents = {"r": None, "a": "b", "b": "c", "c": "a", "d": "a", "s": "s", "u": "unknown"}
    assert parent_cycles(["r", "d", "s", "u", "a"], parents) == [("a", "b", "c", "a"), ("s", "s")]
    n = 200_000  # one long cycle and one long chain: each node is walked once
    ring = {f"n{i}": f"n{(i + 1) % n}" for i in range(n)}
    chain = {f"m{i}": (f"m{i - 1}" if i else None) for i in range(n)}
    assert parent_cycles(list(ring), ring) == [(*ring, "n0")]
    assert parent_cycles(list(chain)[::-1], chain) == []
    assert ancestors(f"m{n - 1}", chain)[-1] == "m0"
    long = cycle_text([*ring, "n0"])
    assert long.startswith("n0 -> n1 -> ") and long.endswith(" -> n0") and "199991 more" in long and len(long) < 120
