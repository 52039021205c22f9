"""The review decisions bat review keeps in the store's corrections log (kinds ``tube`` and ``patient``):
recorded and read back, never taken for corrections, and checked like every other entry."""

from __future__ import annotations

import pytest

from bat_analysis.errors import BatError
from bat_analysis.store import ResultStore

COMMON = {"reviewer": "Jane Doe", "reason": "looked fine", "version": "0.1.0"}


def test_decisions_are_logged_and_are_not_corrections(tmp_path):
    with ResultStore.in_folder(tmp_path) as store:
        store.append_corrections([{**COMMON, "action": "accept", "kind": "tube", "file": "a.fcs"},
                                  {**COMMON, "action": "exclude", "kind": "tube", "file": "b.fcs"},
                                  {**COMMON, "action": "signoff", "kind": "patient", "patient": "P01"},
                                  {**COMMON, "action": "withdraw", "kind": "tube", "file": "b.fcs"}])
        log = store.correction_log()
        assert [e["target"] for e in log] == [("tube", "a.fcs", ""), ("tube", "b.fcs", ""),
                                              ("patient", "P01", ""), ("tube", "b.fcs", "")]
        assert store.active_corrections() == []


@pytest.mark.parametrize("entry, says", [
    ({"action": "accept", "kind": "gate", "file": "a.fcs", "gate": "basophils"}, "not a decision on a gate"),
    ({"action": "apply", "kind": "tube", "file": "a.fcs", "value": {"type": "polygon"}}, "not a decision on a tube"),
    ({"action": "signoff", "kind": "tube", "file": "a.fcs"}, "not a decision on a tube"),
    ({"action": "accept", "kind": "patient", "patient": "P01"}, "not a decision on a patient"),
    ({"action": "accept", "kind": "tube"}, "file: missing"),
    ({"action": "exclude", "kind": "tube", "file": "a.fcs", "value": 3}, "exclude has no value"),
])
def test_a_decision_that_does_not_fit_its_kind_is_refused(tmp_path, entry, says):
    with ResultStore.in_folder(tmp_path) as store:
        with pytest.raises(BatError, match=says):
            store.append_corrections([{**COMMON, **entry}])
        assert store.correction_log() == []
