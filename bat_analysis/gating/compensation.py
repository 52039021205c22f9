"""Spillover -> compensation, with a precomputed inverse and only the channels asked for.

Semantics are FlowUtils' ``compensate`` (which FlowKit uses): for the detectors named by the spillover
matrix ``S`` (rows: the fluorochrome's primary detector, columns: where it spills), the compensated
values are the solution of ``comp @ S = raw``, i.e. ``comp = raw @ inv(S)``; other channels are unchanged.
Here ``inv(S)`` is computed once per matrix and only the requested columns are produced, in float32 by
default (the precision of the events), so a template that gates on three fluorescence channels does not
pay for twelve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from ..errors import FcsFormatError, GatingError

__all__ = ["Spillover", "as_spillover", "compensate", "parse_spillover_keyword"]


@dataclass(frozen=True, eq=False)
class Spillover:
    """A square spillover matrix over named detectors (``$PnN`` names, in matrix order).

    ``fluorochromes`` optionally names the compensated outputs (Gating-ML's spectrum matrices name them,
    e.g. FITC for FL1-H); a compensated column can then be asked for by either name.
    """

    channels: tuple[str, ...]
    matrix: np.ndarray
    name: str = field(default="FCS", compare=False)
    fluorochromes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        object.__setattr__(self, "fluorochromes", tuple(str(c) for c in self.fluorochromes))
        n = len(self.channels)
        if self.fluorochromes and len(self.fluorochromes) != n:
            raise GatingError(f"spillover {self.name!r}: {len(self.fluorochromes)} fluorochrome names for "
                              f"{n} detectors", field="spillover", expected="one fluorochrome per detector")
        if m.shape != (n, n):
            raise GatingError(f"spillover {self.name!r}: matrix shape {m.shape} does not match "
                              f"{n} channels", field="spillover", expected=f"a {n}x{n} matrix")
        if len(set(self.channels)) != n:
            raise GatingError(f"spillover {self.name!r}: channel names repeat", field="spillover",
                              expected="distinct detector names")
        if not np.all(np.isfinite(m)):
            raise GatingError(f"spillover {self.name!r}: matrix has non-finite values", field="spillover",
                              expected="finite numbers")

    @cached_property
    def inverse(self) -> np.ndarray:
        """``inv(S)`` in float64 (computed once)."""
        try:
            return np.linalg.inv(self.matrix)
        except np.linalg.LinAlgError:
            raise GatingError(f"spillover {self.name!r} is singular", field="spillover",
                              expected="an invertible matrix") from None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Spillover) and self.channels == other.channels
                and np.array_equal(self.matrix, other.matrix))

    def __hash__(self) -> int:
        return hash((self.channels, self.matrix.tobytes()))

    def to_flowkit(self) -> Any:
        """The equivalent ``flowkit.Matrix``."""
        import flowkit
        # Gating-ML needs a name for each compensated output: the detector's own when none was given
        return flowkit.Matrix(self.matrix, list(self.channels),
                              fluorochromes=list(self.fluorochromes or self.channels))


def parse_spillover_keyword(text: str, *, source: str | None = None, keyword: str = "$SPILLOVER") -> Spillover:
    """Parse a ``$SPILLOVER`` / ``$SPILL`` / ``SPILL`` value: ``n, names..., n*n values`` (row major)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        n = int(parts[0])
    except (ValueError, IndexError):
        raise FcsFormatError("does not start with the number of channels", source=source, field=keyword,
                             expected="'n,name_1,...,name_n,v_11,...,v_nn'") from None
    if n < 1 or len(parts) != 1 + n + n * n:
        raise FcsFormatError(f"has {len(parts) - 1} items after n={n}", source=source, field=keyword,
                             expected=f"{n + n * n} items (n names and n*n values)")
    try:
        values = np.array([float(v) for v in parts[1 + n:]], dtype=np.float64).reshape(n, n)
    except ValueError:
        raise FcsFormatError("has a matrix value that is not a number", source=source, field=keyword,
                             expected="numbers after the channel names") from None
    return Spillover(tuple(parts[1:1 + n]), values, name="FCS")


def as_spillover(obj: Any) -> Spillover:
    """Accept a :class:`Spillover`, a ``(channels, matrix)`` pair, an object with ``channels``/``matrix``
    (or ``detectors``/``matrix``, as ``flowkit.Matrix``), or a ``$SPILLOVER`` keyword string."""
    if isinstance(obj, Spillover):
        return obj
    if isinstance(obj, str):
        return parse_spillover_keyword(obj)
    if isinstance(obj, tuple) and len(obj) == 2:
        return Spillover(tuple(obj[0]), np.asarray(obj[1]))
    for names_attr in ("channels", "detectors"):
        if hasattr(obj, names_attr) and hasattr(obj, "matrix"):
            names = getattr(obj, names_attr)
            names = [getattr(c, "pnn", c) for c in names]
            fluoros = tuple(getattr(obj, "fluorochromes", None) or ())
            if not any(fluoros):
                fluoros = ()
            return Spillover(tuple(names), np.asarray(obj.matrix), name=str(getattr(obj, "name", "FCS")),
                             fluorochromes=fluoros)
    raise GatingError(f"cannot use {type(obj).__name__} as a spillover matrix", field="spillover",
                      expected="Spillover, (channels, matrix), flowkit.Matrix or a $SPILLOVER string")


def compensate(events: np.ndarray, channel_names: Sequence[str], spillover: Any,
               channels: Sequence[str] | None = None, *, dtype: Any = np.float32) -> np.ndarray:
    """Compensated values of ``events`` (n x p, columns named ``channel_names``).

    Without ``channels``: a new n x p array in which the spillover's detectors are compensated and the
    other columns copied. With ``channels``: an n x len(channels) array of just those channels, in that
    order (compensated when they are detectors of the spillover matrix, copied otherwise). ``events`` is
    never modified. ``dtype`` is the arithmetic and output precision (float32 unless asked otherwise).
    """
    sp = as_spillover(spillover)
    names = [str(c) for c in channel_names]
    ev = np.asarray(events)
    if ev.ndim != 2 or ev.shape[1] != len(names):
        raise GatingError(f"events have shape {ev.shape} but {len(names)} channel names were given",
                          field="channel_names", expected="one name per event column")
    index = {n: i for i, n in enumerate(names)}
    missing = [c for c in sp.channels if c not in index]
    if missing:
        raise GatingError(f"spillover {sp.name!r} names detectors absent from the events: {missing}",
                          field="spillover", expected=f"detectors among {names}")
    wanted = names if channels is None else [str(c) for c in channels]
    unknown = [c for c in wanted if c not in index]
    if unknown:
        raise GatingError(f"unknown channels requested: {unknown}", field="channels",
                          expected=f"names among {names}")
    det_pos = {c: k for k, c in enumerate(sp.channels)}
    det_cols = [index[c] for c in sp.channels]
    comp_out = [j for j, c in enumerate(wanted) if c in det_pos]
    out = np.empty((ev.shape[0], len(wanted)), dtype=dtype, order="F")
    for j, c in enumerate(wanted):
        if c not in det_pos:
            out[:, j] = ev[:, index[c]]
    if comp_out:
        inv = sp.inverse[:, [det_pos[wanted[j]] for j in comp_out]].astype(dtype)
        comp = _product(ev, det_cols, inv, dtype)
        if len(comp_out) == len(wanted) and comp_out == list(range(len(wanted))):
            return comp
        out[:, comp_out] = comp
    return out


def _product(ev: np.ndarray, det_cols: list[int], inv: np.ndarray, dtype: Any) -> np.ndarray:
    """``ev[:, det_cols] @ inv`` without gathering the detector columns when that is cheaper.

    For a few output channels of a row-major event matrix of the arithmetic type, the whole matrix is
    multiplied by the inverse padded with zero rows (non-detector columns): one pass over the events and
    no copy. A product that is not finite (a NaN or inf in a non-detector column times zero) is redone on
    the gathered detector columns, so the result is always that of the plain product.
    """
    if ev.dtype == dtype and ev.flags.c_contiguous and inv.shape[1] <= 2:
        full = np.zeros((ev.shape[1], inv.shape[1]), dtype=dtype)
        full[det_cols] = inv
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite products are redone below
            comp = ev @ full
        if np.isfinite(comp).all():
            return comp
    raw = ev[:, det_cols]
    if raw.dtype != dtype:
        raw = raw.astype(dtype)
    return raw @ inv


def channel_rows(events: np.ndarray, channel_names: Sequence[str], spillover: Any | None,
                 channels: Sequence[str], *, copied: Sequence[str] = ()) -> np.ndarray:
    """``channels`` of ``events`` as contiguous float32 rows (len(channels) x n), in one pass.

    Channels that are detectors of ``spillover`` are compensated (unless listed in ``copied``), the
    others copied. Copying and
    compensating are one product of the row-major event matrix with a small matrix (a one per copied
    channel, the precomputed inverse's column per compensated one), so the events are read once and
    each channel comes out contiguous. Copied values are exact (x * 1 plus zeros); a product that is not
    finite (a NaN or inf elsewhere in an event, times zero) is redone channel by channel.
    """
    names = [str(c) for c in channel_names]
    ev = np.asarray(events)
    index = {n: i for i, n in enumerate(names)}
    unknown = [c for c in channels if c not in index]
    if unknown or ev.ndim != 2 or ev.shape[1] != len(names):
        raise GatingError(f"unknown channels requested: {unknown}" if unknown else
                          f"events have shape {ev.shape} but {len(names)} channel names were given",
                          field="channels", expected=f"names among {names}")
    sp = None if spillover is None else as_spillover(spillover)
    det = {} if sp is None else {c: k for k, c in enumerate(sp.channels) if c not in set(copied)}
    if sp is not None and any(c not in index for c in sp.channels):
        compensate(ev[:1], names, sp)  # raises the error naming the detectors absent from the events
    weights = np.zeros((len(channels), ev.shape[1]), dtype=np.float32)
    for j, c in enumerate(channels):
        if c in det:
            assert sp is not None
            weights[j, [index[d] for d in sp.channels]] = sp.inverse[:, det[c]]
        else:
            weights[j, index[c]] = 1.0
    if ev.dtype == np.float32 and ev.flags.c_contiguous:
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite products are redone below
            rows = weights @ ev.T
        if np.isfinite(rows).all():
            return rows
    out = np.empty((len(channels), ev.shape[0]), dtype=np.float32)
    for j, c in enumerate(channels):
        if c in det:
            out[j] = compensate(ev, names, sp, [c])[:, 0]
        else:
            out[j] = ev[:, index[c]]
    return out
