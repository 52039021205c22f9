"""Binning raw values on a dimension's scale: the lookup table and the float32 grid lookups against the
binary search among inverse-transformed edges."""

from __future__ import annotations

import numpy as np
import pytest

from bat_analysis.gating._binning import LUT_CELLS, bin_index, from_scale
from bat_analysis.gating.gates import Dimension
from bat_analysis.gating.transforms import from_spec

LOGICLE = from_spec({"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0})


def test_bin_index_lookup_table_equals_binary_search() -> None:
    rng = np.random.default_rng(13)
    values = np.concatenate([rng.lognormal(8, 2.5, 400_000) - 500, rng.normal(0, 50, 100_000)]).astype(np.float32)
    dim = Dimension("x", LOGICLE)
    edges = np.linspace(-0.05, 1.05, 129)
    raw = from_scale(dim, edges)
    values[:129] = raw.astype(np.float32)  # values at the edges themselves
    ref = np.searchsorted(raw, values, side="right") - 1
    assert len(values) >= LUT_CELLS
    assert np.array_equal(bin_index(values, dim, edges), ref)


def test_bin_index_small_lookup_table_equals_binary_search() -> None:
    rng = np.random.default_rng(14)
    values = (rng.lognormal(7, 2.0, 30_000) - 200).astype(np.float32)
    dim = Dimension("x", LOGICLE)
    edges = np.linspace(0.0, 1.0, 129)
    raw = from_scale(dim, edges)
    values[:129] = raw.astype(np.float32)
    assert LUT_CELLS // 4 <= len(values) < LUT_CELLS
    assert np.array_equal(bin_index(values, dim, edges), np.searchsorted(raw, values, side="right") - 1)


@pytest.mark.parametrize("transformed", [False, True])
def test_shifted_float32_bin_index_equals_the_plain_bins(transformed: bool) -> None:
    """Grid lookups bin float32 values in float32 with the shift folded in: same bins up to 1e-3 of a bin."""
    rng = np.random.default_rng(15)
    dim = Dimension("x", LOGICLE if transformed else None)
    values = np.concatenate([rng.lognormal(9, 1.5, 200_000) - 300, rng.uniform(-500, 3e5, 100_000)])
    edges = np.linspace(0.2, 0.9, 65) if transformed else np.linspace(20000.0, 270000.0, 513)
    raw = from_scale(dim, edges)
    values = np.concatenate([values, raw, np.nextafter(raw, -np.inf), np.nextafter(raw, np.inf)]).astype(np.float32)
    plain = bin_index(values, dim, edges)
    shifted = bin_index(values, dim, edges, shift=1)
    assert shifted.dtype == np.int32 and shifted.min() >= 0 and shifted.max() <= len(edges)
    differ = np.flatnonzero(shifted != plain + 1)
    if transformed:  # the lookup table (with its guard cells) resolves every uncertain cell exactly
        assert np.array_equal(shifted, np.searchsorted(raw, values, side="right"))
    else:  # only values within 1e-3 of a bin from an edge may land in the neighbouring bin
        pos = (values[differ].astype(np.float64) - edges[0]) / (edges[1] - edges[0])
        assert np.all(np.abs(pos - np.round(pos)) < 1e-3)
        assert np.all(np.abs(shifted[differ] - (plain[differ] + 1)) == 1)


@pytest.mark.parametrize("shift", [0, 1])
def test_bin_index_of_values_where_bins_are_finer_than_the_table(shift: int) -> None:
    """Values crowded where the scale's bins are narrower than the lookup table's cells (near zero on
    logicle) are binned by binary search throughout: same bins."""
    rng = np.random.default_rng(16)
    dim = Dimension("x", LOGICLE)
    values = rng.normal(0, 30, 70_000).astype(np.float32)
    edges = np.linspace(-0.05, 1.05, 513)
    raw = from_scale(dim, edges)
    got = bin_index(values, dim, edges, shift=shift)
    assert np.array_equal(got, np.searchsorted(raw, values, side="right") - 1 + shift)


@pytest.mark.parametrize("spec", [
    {"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0},
    {"type": "asinh", "T": 262144, "M": 4.5},
    {"type": "linear", "T": 262144},
    {"type": "hyperlog", "T": 262144, "W": 0.5, "M": 4.5, "A": 0},
])
@pytest.mark.parametrize("shift", [0, 1])
def test_guessed_bins_equal_the_binary_search(spec: dict, shift: int) -> None:
    """The bins placed from the transformed value (checked against the raw edges either side) are the binary
    search's for every value: on and beside every edge, below and above the window, +-inf, NaN, float32
    extremes, crowded near zero where the bins are narrow."""
    from bat_analysis.gating._binning import _guessed

    rng = np.random.default_rng(17)
    dim = Dimension("x", from_spec(spec))
    assert dim.transform.cheap_apply
    edges = np.linspace(-0.05, 1.05, 129)
    raw = from_scale(dim, edges)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-30, -1e-30]
    for dtype in (np.float32, np.float64):
        values = np.concatenate([rng.normal(0, 30, 40_000), rng.lognormal(8, 2.5, 40_000) - 500,
                                 raw, np.nextafter(raw, -np.inf), np.nextafter(raw, np.inf), special]).astype(dtype)
        expected = np.searchsorted(raw, values, side="right") - 1 + shift
        assert np.array_equal(_guessed(values, raw, dim, edges, shift), expected)
        finite = np.isfinite(values)  # bin_index is given the events read_fcs accepts: finite ones
        assert np.array_equal(bin_index(values[finite], dim, edges, shift), expected[finite])


def test_guessed_bins_survive_a_wrong_guess() -> None:
    """Whatever the transform answers (here a scale off by many bins, or NaN), the bins are the search's."""
    from bat_analysis.gating._binning import _guessed

    class Off:
        cheap_apply = True

        def __init__(self, exact, offset):
            self.exact, self.offset = exact, offset

        def apply(self, values):
            return self.exact.apply(values) + self.offset

    rng = np.random.default_rng(18)
    edges = np.linspace(-0.05, 1.05, 129)
    values = (rng.lognormal(8, 2.5, 20_000) - 500).astype(np.float32)
    for offset in (0.05, -0.3, np.nan):
        dim = Dimension("x", LOGICLE)
        raw = from_scale(dim, edges)
        dim_off = Dimension("x", Off(LOGICLE, offset))
        assert np.array_equal(_guessed(values, raw, dim_off, edges, 1),
                              np.searchsorted(raw, values, side="right"))


def test_lookup_table_edge_in_the_rounding_gap_between_cells() -> None:
    """An edge lying between one cell's computed end and the next cell's computed start (a rounding gap)
    still makes its cells unsure: values on and beside every edge of a linear transform get the search's bins."""
    dim = Dimension("x", from_spec({"type": "linear", "T": 262144}))
    edges = np.linspace(-0.05, 1.05, 129)
    raw = from_scale(dim, edges)
    rng = np.random.default_rng(19)
    values = np.concatenate([rng.uniform(raw[0], raw[-1], 80_000), raw, np.nextafter(raw, -np.inf),
                             np.nextafter(raw, np.inf)]).astype(np.float32)
    assert len(values) >= LUT_CELLS
    assert np.array_equal(bin_index(values, dim, edges), np.searchsorted(raw, values, side="right") - 1)


def test_table_cells_counted_from_the_edges_equal_the_search_of_every_cell() -> None:
    """The lookup table's cells are placed by counting edges (one search per edge): the same as searching
    every cell start among the edges, with starts on the edges, repeated starts and edges beyond the cells."""
    from bat_analysis.gating._binning import _count_at_or_below

    rng = np.random.default_rng(20)
    edges = np.sort(rng.uniform(-100, 100, 129))
    for points in (np.linspace(-120, 120, 16_384), np.linspace(-50, 50, 1000),
                   np.sort(np.concatenate([edges, rng.uniform(-90, 90, 500), edges[::3]])),
                   np.full(10, edges[5]), np.linspace(200, 300, 7)):
        assert np.array_equal(_count_at_or_below(edges, points), np.searchsorted(edges, points, side="right"))
    raw = from_scale(Dimension("x", LOGICLE), np.linspace(-0.05, 1.05, 129))
    starts = raw[0] + (raw[-1] - raw[0]) / 16_384 * np.arange(16_384)
    assert np.array_equal(_count_at_or_below(raw, starts), np.searchsorted(raw, starts, side="right"))


def test_bin_index_from_values_already_on_the_scale() -> None:
    """Positions the caller already has (right, or wrong) only guide the binning: same bins as the search."""
    rng = np.random.default_rng(22)
    dim = Dimension("x", LOGICLE)
    edges = np.linspace(-0.05, 1.05, 129)
    raw = from_scale(dim, edges)
    values = np.concatenate([rng.normal(0, 30, 30_000), rng.lognormal(8, 2.5, 20_000) - 500, raw]).astype(np.float32)
    expected = np.searchsorted(raw, values, side="right") - 1
    scaled = LOGICLE.apply(values)
    assert np.array_equal(bin_index(values, dim, edges, scaled=scaled), expected)
    assert np.array_equal(bin_index(values, dim, edges, scaled=scaled + 0.02), expected)
    assert np.array_equal(bin_index(values, dim, edges, shift=1, scaled=np.full(len(values), np.nan)), expected + 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transformed", [False, True])
def test_bins_computed_in_one_temporary_equal_the_expression(dtype, transformed: bool) -> None:
    """The linear binning and the lookup table's cell arithmetic, computed in place in one temporary, give
    the bins of the plain expressions (same promotions: float64 edges, Python-float table origin)."""
    from bat_analysis.gating._binning import binner

    rng = np.random.default_rng(21)
    values = np.concatenate([rng.lognormal(8, 2.5, 70_000) - 500, rng.normal(0, 50, 10_000)]).astype(dtype)
    dim = Dimension("x", LOGICLE if transformed else None)
    edges = np.linspace(-0.05, 1.05, 129) if transformed else np.linspace(-1000.0, 270000.0, 129)
    bins = len(edges) - 1
    got = binner(values.dtype, len(values), dim, edges)(values)
    if not transformed:
        width = (edges[-1] - edges[0]) / bins
        expected = np.clip(np.floor((values - edges[0]) * (1.0 / width)), -1, bins).astype(np.int32)
    else:  # the binary search the table answers as
        expected = (np.searchsorted(from_scale(dim, edges), values, side="right") - 1).astype(np.int32)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
