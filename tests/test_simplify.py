"""gating/_simplify.py against skimage.measure.approximate_polygon."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import approximate_polygon, find_contours

from bat_analysis.gating._simplify import simplify_chain


def _chains(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        kind = rng.integers(0, 4)
        n = int(rng.integers(1, 400))
        if kind == 0:  # a random walk
            yield np.cumsum(rng.normal(size=(n, 2)), axis=0)
        elif kind == 1:  # on a grid: ties in distance, collinear runs
            yield np.cumsum(rng.integers(-1, 2, size=(n, 2)), axis=0).astype(float)
        elif kind == 2:  # a closed contour of a blob, as the outlines are traced
            image = np.zeros((64, 64))
            for _ in range(int(rng.integers(1, 6))):
                cy, cx, r = rng.uniform(10, 54), rng.uniform(10, 54), rng.uniform(3, 12)
                yy, xx = np.mgrid[:64, :64]
                image[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = 1.0
            contours = find_contours(np.pad(image, 1), 0.5)
            yield max(contours, key=len) - 1.0
        else:  # a closed convex polygon with many vertices, as a hull is simplified
            t = np.sort(rng.uniform(0, 2 * np.pi, n))
            ring = np.column_stack([30 * np.cos(t), 12 * np.sin(t)])
            yield np.vstack([ring, ring[:1]])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tolerance", [0.5, 0.1, 2.0])
def test_the_kept_points_are_scikit_images(seed, tolerance):
    for coords in _chains(seed, 150):
        expected = approximate_polygon(coords, tolerance)
        got = simplify_chain(coords, tolerance)
        assert got.shape == expected.shape and np.array_equal(got, expected), (coords, tolerance)


def test_no_tolerance_keeps_the_chain():
    coords = np.arange(10.0).reshape(5, 2)
    assert simplify_chain(coords, 0) is coords and np.array_equal(approximate_polygon(coords, 0), coords)


def test_a_chain_of_two_points_or_a_repeated_point():
    for coords in (np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 3.0], [2.0, 3.0], [2.0, 3.0]])):
        assert np.array_equal(simplify_chain(coords, 0.5), approximate_polygon(coords, 0.5))
