"""Peaks of a 1-D profile (a smoothed histogram), as ``scipy.signal.find_peaks`` finds them.

Contract, for a 1-D array of finite numbers ``x`` (converted to float64):

* :func:`local_maxima` is ``scipy.signal.find_peaks(x)[0]``: every local maximum, a flat top (a plateau of
  equal values) counted once at its middle (``(first + last) // 2``); the first and last values are never
  peaks, nor is a plateau that reaches either end;
* :func:`prominences` is ``scipy.signal.peak_prominences(x, peaks)[0]``: how far a peak stands above the
  higher of its two bases, each base being the lowest value between the peak and the nearest value higher
  than the peak on that side (or the end of ``x``);
* :func:`prominent_peaks` is ``scipy.signal.find_peaks(x, prominence=min_prominence)[0]``: the local maxima
  with a prominence of at least ``min_prominence``.

Same indices, element for element (``tests/test_peaks.py`` compares them with SciPy's on random profiles with
ties and plateaus, and on the profiles the gating makes).

Why not SciPy's: these are the only names the gating takes from ``scipy.signal``, whose import costs ~0.4 s
of CPU in every run before its gating workers can start (SciPy loads the whole package for one function); a
profile here has a few hundred values and a few peaks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["local_maxima", "prominences", "prominent_peaks"]


def _as_profile(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D profile, got shape {x.shape}")
    return x


def local_maxima(x: np.ndarray) -> np.ndarray:
    """Indices of the local maxima of ``x`` (plateaus at their middle), ascending: ``find_peaks(x)[0]``."""
    x = _as_profile(x)
    n = len(x)
    if n < 3:
        return np.empty(0, dtype=np.intp)
    # runs of equal values: [first, last] inclusive
    starts = np.flatnonzero(np.concatenate([[True], x[1:] != x[:-1]]))
    ends = np.concatenate([starts[1:] - 1, [n - 1]])
    inside = (starts >= 1) & (ends <= n - 2)
    s, e = starts[inside], ends[inside]
    peak = (x[s - 1] < x[s]) & (x[e + 1] < x[s])
    return ((s[peak] + e[peak]) // 2).astype(np.intp)


#: peaks x values judged at once by :func:`prominences` (a few hundred values: every peak at once)
_CELLS = 1 << 18


def prominences(x: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Each peak's prominence: its value less the higher of its two bases (see the module's contract), every
    peak judged at once against every value of ``x`` (in chunks of peaks for a long profile)."""
    x = _as_profile(x)
    peaks = np.asarray(peaks, dtype=np.intp)
    out = np.empty(len(peaks), dtype=np.float64)
    n = len(x)
    j = np.arange(n)
    step = max(1, _CELLS // max(n, 1))
    for a in range(0, len(peaks), step):
        p = peaks[a:a + step, None]
        top = x[p]
        higher = x > top
        left, right = higher & (j < p), higher & (j > p)
        # the nearest value higher than the peak on each side (the ends of x when there is none)
        lo = np.where(left.any(axis=1), n - np.argmax(left[:, ::-1], axis=1), 0)[:, None]
        hi = np.where(right.any(axis=1), np.argmax(right, axis=1), n)[:, None]
        left_min = np.where((j >= lo) & (j <= p), x, np.inf).min(axis=1)
        right_min = np.where((j >= p) & (j < hi), x, np.inf).min(axis=1)
        out[a:a + step] = top[:, 0] - np.maximum(left_min, right_min)
    return out


def prominent_peaks(x: np.ndarray, min_prominence: float) -> np.ndarray:
    """The local maxima of ``x`` whose prominence is at least ``min_prominence``:
    ``find_peaks(x, prominence=min_prominence)[0]``."""
    x = _as_profile(x)
    peaks = local_maxima(x)
    return peaks[min_prominence <= prominences(x, peaks)]
