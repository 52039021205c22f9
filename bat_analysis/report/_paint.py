"""Painting plots straight into 8-bit palette pixels, and writing them as palette PNGs (no matplotlib here).

The report's per-tube plots are a cached frame (axes, ticks, labels, drawn once by matplotlib, see
``plots.PngRenderer``) with the tube's marks painted over a copy of its pixels. Pixels are indices into one
fixed :class:`Palette` of 256 colours: greys for the frames' text and lines, the marks' colours, and the density
colour map in :data:`DENSITY_LEVELS` steps. Painting an index is one byte per pixel, and so is compressing it:
:func:`encode_palette_png` writes a standard PNG of colour type 3 (``PLTE`` chunk) that any reader opens.

Coordinates are a buffer's continuous pixel coordinates: column ``x`` and row ``y`` with pixel ``(r, c)`` covering
``[c, c + 1) x [r, r + 1)`` (rows from the top), so a pixel's centre is at ``c + 0.5, r + 0.5``. Every drawing is
clipped to a :class:`Box` (the axes' interior) and never paints where a ``keep`` mask is set.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

N_GREYS = 48  # grey levels for the frames' anti-aliased text and lines (white and black exact)
DENSITY_LEVELS = 200  # steps of the density colour map
PNG_COMPRESSION = 1  # zlib level of the palette PNGs (see encode_palette_png)


def _rgb255(colour: str) -> tuple[int, int, int]:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


class Palette:
    """256 colours: :data:`N_GREYS` greys, the marks' colours (``marks``, in order) and the colour map
    ``cmap`` in :data:`DENSITY_LEVELS` steps (level ``k`` is the map's colour at ``(k + 0.5) / DENSITY_LEVELS``,
    matplotlib's 256-entry table read as matplotlib reads it)."""

    def __init__(self, marks: tuple[str, ...], cmap: str) -> None:
        from matplotlib import colormaps

        greys = np.round(np.linspace(0, 255, N_GREYS)).astype(np.uint8)
        rows = [np.repeat(greys[:, None], 3, axis=1)]
        self.marks = {c: N_GREYS + i for i, c in enumerate(marks)}
        rows.append(np.array([_rgb255(c) for c in marks], dtype=np.uint8).reshape(-1, 3))
        self.density_start = N_GREYS + len(marks)
        lut = colormaps[cmap].resampled(256)
        centres = ((np.arange(DENSITY_LEVELS) + 0.5) / DENSITY_LEVELS * 256).astype(int)
        rows.append(lut(centres, bytes=True)[:, :3])  # the bytes matplotlib's images use
        self.rgb = np.vstack(rows)
        if len(self.rgb) > 256:
            raise ValueError(f"{len(self.rgb)} palette colours: at most 256")
        self.white = N_GREYS - 1

    def index(self, colour: str) -> int:
        """The palette index of one of the marks' colours."""
        return self.marks[colour]

    def density(self, t: np.ndarray) -> np.ndarray:
        """Indices of normalised values ``t`` (0..1) on the colour map, as matplotlib picks its colours
        (``int(t * N)``, the top value in the last step)."""
        level = np.clip((np.asarray(t, dtype=float) * DENSITY_LEVELS).astype(int), 0, DENSITY_LEVELS - 1)
        return (self.density_start + level).astype(np.uint8)

    def nearest(self, values: np.ndarray) -> np.ndarray:
        """The index of the nearest palette colour (least squared RGB distance, the first of equals) of each
        colour of ``values`` (``N x 3``)."""
        values = np.asarray(values, dtype=int).reshape(-1, 3)
        distance = ((values[:, None, :] - self.rgb[None, :, :].astype(int)) ** 2).sum(axis=-1)
        return distance.argmin(axis=1).astype(np.uint8)

    @functools.cached_property
    def _greys(self) -> np.ndarray:
        """:meth:`nearest` of each grey ``(v, v, v)``, by ``v``."""
        return self.nearest(np.repeat(np.arange(256)[:, None], 3, axis=1))

    def quantise(self, rgb: np.ndarray) -> np.ndarray:
        """Each pixel of an ``H x W x 3`` image (or ``x 4``: alpha ignored) as the index of its nearest palette
        colour (:meth:`nearest`; white stays white). For a cached frame, whose pixels are nearly all greys (its
        text, lines and white): greys are looked up in a table, other colours found per distinct colour."""
        rgb = np.asarray(rgb)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        out = self._greys[g]
        other = (r != g) | (g != b)
        if other.any():
            colours, inverse = np.unique(rgb[other][:, :3], axis=0, return_inverse=True)
            out[other] = self.nearest(colours)[inverse.reshape(-1)]
        return out

    def colours(self, indices: np.ndarray) -> np.ndarray:
        """The RGB image of palette indices (what a PNG reader shows)."""
        return self.rgb[indices]


@dataclass(frozen=True)
class Box:
    """The paintable rectangle of a buffer: rows ``r0:r1``, columns ``c0:c1``; ``keep`` (its shape, or None)
    marks pixels no mark may cover (a legend)."""

    r0: int
    r1: int
    c0: int
    c1: int
    keep: np.ndarray | None = None

    def view(self, pixels: np.ndarray) -> np.ndarray:
        return pixels[self.r0:self.r1, self.c0:self.c1]


def fill_below(pixels: np.ndarray, box: Box, tops: np.ndarray, colour: int, where: np.ndarray) -> None:
    """Fill each column of ``box`` from the bottom up to its row ``tops[c]`` (a continuous row: pixels whose
    centre lies below it are filled; ``+inf`` or more than the box's height: nothing), on the pixels ``where``
    is True (a mask of the box's shape)."""
    rows = np.arange(box.r0, box.r1, dtype=float)[:, None] + 0.5
    mask = (rows >= np.asarray(tops, dtype=float)[None, :]) & where
    if box.keep is not None:
        mask &= ~box.keep
    box.view(pixels)[mask] = colour


@functools.lru_cache(maxsize=16)
def _disk(width_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets of a round pen ``width_px`` across (at least one pixel)."""
    r = max(width_px, 1.0) / 2.0
    k = int(math.floor(r))
    dr, dc = np.mgrid[-k:k + 1, -k:k + 1]
    inside = dr ** 2 + dc ** 2 <= r * r + 1e-9
    return dr[inside].astype(np.intp), dc[inside].astype(np.intp)


def _clip_segments(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Liang-Barsky: the parameters ``t0 <= t1`` of each segment ``a -> b`` inside the rectangle ``lo..hi``
    and whether any part is inside."""
    d = b - a
    t0 = np.zeros(len(a))
    t1 = np.ones(len(a))
    ok = np.ones(len(a), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in (0, 1):
            for p, q in ((-d[:, axis], a[:, axis] - lo[axis]), (d[:, axis], hi[axis] - a[:, axis])):
                parallel = p == 0
                ok &= ~(parallel & (q < 0))
                r = q / p
                entering = (p < 0) & ~parallel
                leaving = (p > 0) & ~parallel
                t0 = np.where(entering, np.maximum(t0, r), t0)
                t1 = np.where(leaving, np.minimum(t1, r), t1)
    return t0, t1, ok & (t0 <= t1)


def stroke(pixels: np.ndarray, box: Box, points: np.ndarray, colour: int, width_px: float, *,
           closed: bool = False, dashes: tuple[float, float] | None = None) -> None:
    """A polyline through ``points`` (``N x 2``: column, row, continuous) with a round pen ``width_px`` across,
    solid or ``dashes`` (dash and gap lengths in pixels as they look, from its start: the pen's round ends are
    taken from the dash), clipped to ``box``. Segments with a non-finite end are left out; a segment far outside
    the box costs nothing (clipped before it is sampled)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if closed and len(pts) > 1:
        pts = np.vstack([pts, pts[:1]])
    if len(pts) < 2:
        return
    a, b = pts[:-1], pts[1:]
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    length = np.where(finite, np.hypot(*(b - a).T), 0.0)
    start = np.concatenate([[0.0], np.cumsum(length)[:-1]])  # arc length at each segment's start
    pad = width_px
    lo = np.array([box.c0 - pad, box.r0 - pad])
    hi = np.array([box.c1 + pad, box.r1 + pad])
    a, b, length, start = a[finite], b[finite], length[finite], start[finite]
    t0, t1, inside = _clip_segments(a, b, lo, hi)
    a, b, length, start, t0, t1 = a[inside], b[inside], length[inside], start[inside], t0[inside], t1[inside]
    if not len(a):
        return
    p, q = a + t0[:, None] * (b - a), a + t1[:, None] * (b - a)
    n = np.ceil(np.abs(q - p).max(axis=1)).astype(np.intp) + 1  # one sample per pixel step
    seg = np.repeat(np.arange(len(p)), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    t = k / np.maximum(n - 1, 1)[seg]
    xy = p[seg] + t[:, None] * (q - p)[seg]
    if dashes is not None:
        on = max(dashes[0] - width_px, 1.0)
        off = dashes[1] + (dashes[0] - on)
        s = start[seg] + (t0[seg] + t * (t1 - t0)[seg]) * length[seg]
        on_dash = np.mod(s, on + off) < on
        xy = xy[on_dash]
    cols = np.floor(xy[:, 0]).astype(np.intp)
    rows = np.floor(xy[:, 1]).astype(np.intp)
    dr, dc = _disk(width_px)
    rr = (rows[:, None] + dr[None, :]).reshape(-1)
    cc = (cols[:, None] + dc[None, :]).reshape(-1)
    ok = (rr >= box.r0) & (rr < box.r1) & (cc >= box.c0) & (cc < box.c1)
    rr, cc = rr[ok], cc[ok]
    if box.keep is not None:
        free = ~box.keep[rr - box.r0, cc - box.c0]
        rr, cc = rr[free], cc[free]
    pixels[rr, cc] = colour


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">L", len(data)) + kind + data + struct.pack(">L", zlib.crc32(kind + data))


def encode_palette_png(indices: np.ndarray, palette: np.ndarray, level: int = PNG_COMPRESSION) -> bytes:
    """Palette indices (``H x W``, uint8) and their colours (``N x 3``, uint8, N <= 256) as an 8-bit palette
    PNG (colour type 3, ``PLTE`` chunk): rows filtered "Up" (type 2: a row as its difference from the one above,
    zeros where the plot repeats row after row), zlib ``level``. A standard PNG that any reader opens."""
    h, w = indices.shape
    rows = np.empty((h, w + 1), dtype=np.uint8)
    rows[:, 0] = 2  # filter type Up on every row (the first row's "above" is zeros: itself)
    rows[0, 1:] = indices[0]
    np.subtract(indices[1:], indices[:-1], out=rows[1:, 1:])  # modulo 256, as PNG's filters are
    header = struct.pack(">LLBBBBB", w, h, 8, 3, 0, 0, 0)  # 8-bit palette, deflate, no interlace
    plte = np.ascontiguousarray(palette, dtype=np.uint8).reshape(-1, 3)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"PLTE", plte.tobytes())
            + png_chunk(b"IDAT", zlib.compress(rows, level)) + png_chunk(b"IEND", b""))
