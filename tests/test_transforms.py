"""Transforms: FlowUtils/FlowKit equivalence, fast tables equal to the exact scales, inverses, specs."""

from __future__ import annotations

import numpy as np
import pytest

from bat_analysis.errors import TemplateError
from bat_analysis.gating.transforms import (Asinh, FastHyperlog, FastLogicle, FlowJoBiex, Hyperlog, Linear, Log,
                                            Logicle, from_spec)

PARAMS = [(262144, 0.5, 4.5, 0), (10000, 0.5, 4.5, 0), (1000, 1, 4, 1), (262144, 2, 4.5, 0),
          (262144, 0.25, 5.4, 0.3)]


def _probe() -> np.ndarray:
    """Data values across the whole range: both signs over ten decades and dense near zero."""
    return np.concatenate([-np.logspace(-3, 7, 40001), np.logspace(-3, 7, 40001),
                           np.linspace(-3000, 3000, 60001), [0.0, 262144.0, -262144.0]])


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("fast_cls, exact_cls", [(FastLogicle, Logicle), (FastHyperlog, Hyperlog)])
def test_fast_equals_exact_to_1e6_relative(fast_cls, exact_cls, params) -> None:
    x = _probe()
    fast = fast_cls(*params).apply(x)
    exact = exact_cls(*params).to_flowkit().apply(x)  # FlowKit's own transform object
    # relative agreement; the absolute floor (1e-10 of the display scale) only matters where the scale
    # crosses zero and a relative error is undefined
    np.testing.assert_allclose(fast, exact, rtol=1e-6, atol=1e-10)


def test_fast_logicle_outside_table_is_exact_and_float32_input_works() -> None:
    f = FastLogicle(262144, 0.5, 4.5, 0, x_span=1e5)
    x = np.array([-5e6, -2e5, 0.5, 2e5, 9e6], dtype=np.float32)
    np.testing.assert_allclose(f.apply(x), Logicle().apply(x.astype(float)), rtol=1e-9)


def test_fast_detects_a_wrong_table() -> None:
    # the same table used with other parameters must not pass the tolerance: the test can fail
    x = _probe()
    wrong = FastLogicle(262144, 0.5, 4.5, 0).apply(x)
    exact = Logicle(262144, 0.6, 4.5, 0).apply(x)
    assert np.max(np.abs(wrong - exact)) > 1e-3


@pytest.mark.parametrize("t", [Linear(262144, 10), Log(10000, 5), Asinh(262144, 4.5, 0.5),
                               Logicle(262144, 0.5, 4.5, 0), Hyperlog(262144, 0.5, 4.5, 0.2),
                               FastLogicle(262144, 0.5, 4.5, 0), FastHyperlog(10000, 1, 4.5, 0)])
def test_inverse_round_trip(t) -> None:
    x = np.concatenate([np.logspace(0, 5.4, 500), -np.logspace(0, 3, 100) if t.kind != "log" else []])
    np.testing.assert_allclose(t.inverse(t.apply(x)), x, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("t", [Linear(262144, 10), Log(10000, 5), Asinh(262144, 4.5, 0.5),
                               Logicle(10000, 0.5, 4.5, 0), Hyperlog(10000, 0.5, 4.5, 0)])
def test_matches_flowkit_objects(t) -> None:
    x = np.linspace(1, 10000, 1000)
    np.testing.assert_allclose(t.apply(x), t.to_flowkit().apply(x), rtol=1e-12)
    y = np.linspace(0.05, 0.95, 100)
    np.testing.assert_allclose(t.inverse(y), t.to_flowkit().inverse(y), rtol=1e-12)


def test_known_values() -> None:
    # Gating-ML definitions evaluated by hand
    assert Linear(1000, 0).apply(np.array([500.0]))[0] == pytest.approx(0.5)
    assert Log(10000, 4).apply(np.array([100.0]))[0] == pytest.approx(0.5)
    assert Logicle(262144, 0.5, 4.5, 0).apply(np.array([262144.0]))[0] == pytest.approx(1.0)
    assert Logicle(262144, 0.5, 4.5, 0).apply(np.array([0.0]))[0] == pytest.approx(0.5 / 4.5)
    assert Asinh(262144, 4.5, 0).apply(np.array([262144.0]))[0] == pytest.approx(1.0)


def test_biex_is_flowkits() -> None:
    t = FlowJoBiex(negative=0, width=-10, positive=4.418540, max_value=262144.000029)
    x = np.array([-100.0, 0.0, 100.0, 10000.0])
    np.testing.assert_allclose(t.apply(x), t.to_flowkit().apply(x))


def test_from_spec_builds_each_type_and_round_trips() -> None:
    t = from_spec({"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0})
    assert isinstance(t, FastLogicle) and t == Logicle(262144, 0.5, 4.5, 0)
    assert isinstance(from_spec({"type": "logicle", "t": 1e4, "w": 0.5, "m": 4.5, "fast": False}), Logicle)
    for t in (Linear(1000, 5), Log(1e4, 4), Asinh(1e4, 4, 1), Hyperlog(1e4, 0.5, 4.5, 0), FlowJoBiex()):
        again = from_spec(t.spec())
        assert again.name == t.name
        np.testing.assert_allclose(again.apply(np.array([10.0, 1000.0])), t.apply(np.array([10.0, 1000.0])),
                                   rtol=1e-6)


def test_from_spec_reports_every_problem() -> None:
    with pytest.raises(TemplateError) as err:
        from_spec({"type": "logicle", "T": -1, "M": "x", "Q": 3}, where="transforms.CD63")
    text = str(err.value)
    assert "transforms.CD63.T" in text and "transforms.CD63.M" in text and "transforms.CD63.Q" in text
    assert "transforms.CD63.W: missing" in text
    with pytest.raises(TemplateError, match="expected one of"):
        from_spec({"type": "cubic"})


def test_from_spec_shares_fast_tables_and_checks_hyperlog_width() -> None:
    a = from_spec({"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5})
    b = from_spec({"type": "logicle", "T": 262144.0, "W": 0.5, "M": 4.5, "A": 0})
    assert a is b
    with pytest.raises(TemplateError, match="expected > 0 for hyperlog"):
        from_spec({"type": "hyperlog", "T": 262144, "W": 0, "M": 4.5})


def test_fast_tables_pass_non_finite_values_through() -> None:
    out = FastLogicle().apply(np.array([np.nan, np.inf, -np.inf, 1e30, 0.0]))
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf
    assert out[3] == pytest.approx(Logicle().apply(np.array([1e30]))[0])
