"""gating/_peaks.py against scipy.signal.find_peaks / peak_prominences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import find_peaks, peak_prominences

from bat_analysis.gating._peaks import local_maxima, prominences, prominent_peaks


def _profiles(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(0, 300))
        kind = rng.integers(0, 4)
        if kind == 0:  # small integers: many ties and plateaus
            yield rng.integers(0, 4, n).astype(float)
        elif kind == 1:  # a smoothed histogram, as the gating makes them
            from scipy import ndimage
            counts = np.histogram(rng.normal(size=int(rng.integers(10, 5000))), bins=max(n, 1))[0]
            yield ndimage.gaussian_filter1d(counts.astype(float), 2.0)
        elif kind == 2:  # plateaus at the ends and in the middle
            x = rng.normal(size=n).round(1)
            if n > 4:
                x[: n // 4] = x[0]
                x[-(n // 5):] = x[-1]
            yield x
        else:
            yield rng.normal(size=n)


@pytest.mark.parametrize("seed", range(4))
def test_local_maxima_are_scipys(seed):
    for x in _profiles(seed, 500):
        assert np.array_equal(local_maxima(x), find_peaks(x)[0]), x


@pytest.mark.parametrize("seed", range(4))
def test_prominences_and_prominent_peaks_are_scipys(seed):
    rng = np.random.default_rng(100 + seed)
    for x in _profiles(seed, 500):
        peaks = find_peaks(x)[0]
        assert np.array_equal(prominences(x, peaks), peak_prominences(x, peaks)[0])
        if len(x):
            for level in (0.0, 0.01, 0.02, float(rng.uniform(0, 0.5))):
                threshold = level * float(np.max(x))
                assert np.array_equal(prominent_peaks(x, threshold), find_peaks(x, prominence=threshold)[0])


def test_small_and_flat_profiles():
    for x in ([], [1.0], [1.0, 2.0], [2.0, 2.0, 2.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]):
        assert np.array_equal(local_maxima(np.array(x)), find_peaks(np.array(x))[0]), x
    with pytest.raises(ValueError):
        local_maxima(np.zeros((2, 2)))
