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
