"""Spillover -> compensation: the one spillover type, its ``$SPILLOVER`` parser and the one compensation.

Semantics are FlowUtils' ``compensate`` (which FlowKit uses): for the detectors named by the spillover
matrix ``S`` (rows: the fluorochrome's primary detector, columns: where it spills), the compensated
values are the solution of ``comp @ S = raw``, i.e. ``comp = raw @ inv(S)``; other channels are unchanged.
Here ``inv(S)`` is computed once per matrix and only the requested columns are produced, in float32 by
default (the precision of the events), so a template that gates on three fluorescence channels does not
pay for twelve.

* :class:`Spillover` is the matrix wherever it comes from: an FCS file (``FcsSample.spillover``, read by
  :func:`parse_spillover`), a template, a Gating-ML or FlowJo document (:func:`as_spillover`).
* :func:`parse_spillover` is the one reader of the ``$SPILLOVER`` / ``$SPILL`` keyword text.
* :func:`compensate` is the one computation, for the per-tube gating (float32, channel-major rows, scatter
  copied in the same pass), the basophils' marker values and the gate engine's compensated dimensions
  (float64). Its fast path (one product of the event matrix with a small weight matrix) and its general
  path (the gathered detector columns times the inverse) stand side by side; they are tested against each
  other and against FlowUtils and FlowKit in ``tests/test_compensation.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from ..errors import FcsFormatError, GatingError

__all__ = ["Spillover", "as_spillover", "compensate", "parse_spillover"]


@dataclass(frozen=True, eq=False)
class Spillover:
    """A square spillover matrix over named detectors (``$PnN`` names, in matrix order).

    ``matrix[i, j]`` is the spill of ``channels[i]``'s dye into ``channels[j]``. ``name`` is the
    compensation reference gates use (``"FCS"``: the file's own). ``fluorochromes`` optionally names the
    compensated outputs (Gating-ML's spectrum matrices name them, e.g. FITC for FL1-H); a compensated
    column can then be asked for by either name. ``keyword`` is the FCS keyword the matrix was read from
    (``$SPILLOVER``, ``$SPILL``, ...), None when it did not come from a file.
    """

    channels: tuple[str, ...]
    matrix: np.ndarray
    name: str = field(default="FCS", compare=False)
    fluorochromes: tuple[str, ...] = field(default=(), compare=False)
    keyword: str | None = field(default=None, compare=False)

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


def parse_spillover(text: str, channels: Sequence[Any] | None = None, *, keyword: str = "$SPILLOVER",
                    source: str | None = None) -> Spillover | None:
    """Parse a ``$SPILLOVER`` / ``$SPILL`` / ``SPILL`` value: ``n, names..., n*n values`` (row major).

    With ``channels`` (a file's channels: ``pnn``/``pns`` attributes, in column order) every name is
    resolved to a ``$PnN``: by ``$PnN``, by ``$PnS``, by ``$PnN`` ignoring case, or, when every name is a
    number 1..p that is no channel's name, by parameter number. Without ``channels`` the names are taken
    as written. ``n = 0`` (a file declaring no matrix) gives None. A malformed value raises
    ``FcsFormatError`` naming ``keyword`` and what was expected.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        n = int(float(parts[0]))
    except ValueError:
        raise FcsFormatError(f"matrix size {parts[0]!r} is not an integer", source=source, field=keyword,
                             expected="n,name1,...,namen,value11,...") from None
    if n == 0:
        return None
    if n < 0 or len(parts) != 1 + n + n * n:
        raise FcsFormatError(f"{len(parts) - 1} fields for a {n}x{n} matrix", source=source, field=keyword,
                             expected=f"{n} names and {n * n} values")
    names = parts[1: 1 + n]
    resolved = names if channels is None else _resolve_detectors(names, list(channels), keyword, source)
    if len(set(resolved)) != n:
        raise FcsFormatError("names a channel twice", source=source, field=keyword, expected="distinct channels")
    try:
        matrix = np.array([float(v) for v in parts[1 + n:]], dtype=np.float64).reshape(n, n)
    except ValueError:
        raise FcsFormatError("non-numeric matrix value", source=source, field=keyword,
                             expected="numbers") from None
    if not np.isfinite(matrix).all():
        raise FcsFormatError("non-finite matrix value", source=source, field=keyword, expected="finite numbers")
    cond = np.linalg.cond(matrix)
    if not np.isfinite(cond) or cond > 1e12:
        raise FcsFormatError(f"matrix is singular (condition number {cond:.3g})", source=source, field=keyword,
                             expected="an invertible spillover matrix")
    return Spillover(tuple(resolved), matrix, keyword=keyword)


def _resolve_detectors(names: list[str], channels: list[Any], keyword: str, source: str | None) -> list[str]:
    """The ``$PnN`` of each detector a spillover keyword names (see :func:`parse_spillover`)."""
    by_pnn = {c.pnn: c.pnn for c in channels}
    by_pns = {c.pns: c.pnn for c in channels if c.pns}
    by_fold = {c.pnn.casefold(): c.pnn for c in channels}
    numeric = all(nm.isascii() and nm.isdigit() and 1 <= int(nm) <= len(channels) for nm in names) and \
        not any(nm in by_pnn for nm in names)
    if numeric:
        return [channels[int(name) - 1].pnn for name in names]
    resolved: list[str] = []
    unknown: list[str] = []
    for name in names:
        hit = by_pnn.get(name) or by_pns.get(name) or by_fold.get(name.casefold())
        if hit is None:
            unknown.append(name)
        else:
            resolved.append(hit)
    if unknown:
        raise FcsFormatError(f"names unknown channels {', '.join(map(repr, unknown))}; the file has "
                             f"{', '.join(c.pnn for c in channels)}", source=source, field=keyword,
                             expected="channel names ($PnN) of this file")
    return resolved


def as_spillover(obj: Any) -> Spillover:
    """Accept a :class:`Spillover`, a ``(channels, matrix)`` pair, an object with ``channels``/``matrix``
    (or ``detectors``/``matrix``, as ``flowkit.Matrix``), or a ``$SPILLOVER`` keyword string."""
    if isinstance(obj, Spillover):
        return obj
    if isinstance(obj, str):
        sp = parse_spillover(obj)
        if sp is None:
            raise FcsFormatError("declares an empty matrix (n = 0)", field="$SPILLOVER",
                                 expected="a spillover matrix of at least one channel")
        return sp
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


def compensate(events: np.ndarray, channel_names: Sequence[str], spillover: Any | None,
               channels: Sequence[str] | None = None, *, dtype: Any = np.float32, copied: Sequence[str] = (),
               channel_major: bool = False) -> np.ndarray:
    """Compensated values of ``events`` (n x p raw values, columns named ``channel_names``).

    Without ``channels``: a new n x p array in which the spillover's detectors are compensated and the
    other columns copied. With ``channels``: an n x len(channels) array of just those channels, in that
    order (compensated when they are detectors of the spillover matrix, copied otherwise). Detectors listed
    in ``copied`` are copied, not compensated; ``spillover=None`` copies every channel. ``events`` is never
    modified. ``dtype`` is the arithmetic and output precision (float32 unless asked otherwise).

    ``channel_major=True`` returns the transposed layout, len(channels) x n with each channel a contiguous
    float32 row (gating reads a channel many times; a row is cache-friendly).

    Every layout has a fast path -- one product of the row-major event matrix with a small weight matrix
    (:func:`_one_product`: no gather of the detector columns, copies exact as ``x * 1`` plus zeros) -- taken
    when the events are C-contiguous in the arithmetic type and, for the n x k layout, at most two channels
    are compensated; and the general path, the product of the gathered detector columns with the inverse's
    columns (:func:`_gathered`). A fast product that is not finite (a NaN or inf elsewhere in an event,
    times zero) is redone by the general path, so the result is always the general path's up to rounding
    (``tests/test_compensation.py`` checks the two against each other).
    """
    ev, names, sp, wanted = _checked(events, channel_names, spillover, channels)
    index = {n: i for i, n in enumerate(names)}
    det = {} if sp is None else {c: k for k, c in enumerate(sp.channels) if c not in set(copied)}
    if channel_major:
        return _channel_major(ev, names, sp, wanted, det)
    comp_out = [j for j, c in enumerate(wanted) if c in det]
    out = np.empty((ev.shape[0], len(wanted)), dtype=dtype, order="F")
    for j, c in enumerate(wanted):
        if c not in det:
            out[:, j] = ev[:, index[c]]
    if comp_out:
        assert sp is not None
        comp_names = [wanted[j] for j in comp_out]
        comp = None
        if ev.dtype == dtype and ev.flags.c_contiguous and len(comp_out) <= 2:
            comp = _one_product(ev, np.ascontiguousarray(_weights(sp, names, comp_names, det, dtype).T))
        if comp is None:
            comp = _gathered(ev, index, sp, comp_names, dtype)
        if len(comp_out) == len(wanted) and comp_out == list(range(len(wanted))):
            return comp
        out[:, comp_out] = comp
    return out


def _checked(events: np.ndarray, channel_names: Sequence[str], spillover: Any | None,
             channels: Sequence[str] | None) -> tuple[np.ndarray, list[str], Spillover | None, list[str]]:
    """The arguments of :func:`compensate` checked: events, names, spillover and the channels wanted."""
    sp = None if spillover is None else as_spillover(spillover)
    names = [str(c) for c in channel_names]
    ev = np.asarray(events)
    if ev.ndim != 2 or ev.shape[1] != len(names):
        raise GatingError(f"events have shape {ev.shape} but {len(names)} channel names were given",
                          field="channel_names", expected="one name per event column")
    index = set(names)
    missing = [] if sp is None else [c for c in sp.channels if c not in index]
    if missing:
        assert sp is not None
        raise GatingError(f"spillover {sp.name!r} names detectors absent from the events: {missing}",
                          field="spillover", expected=f"detectors among {names}")
    wanted = names if channels is None else [str(c) for c in channels]
    unknown = [c for c in wanted if c not in index]
    if unknown:
        raise GatingError(f"unknown channels requested: {unknown}", field="channels",
                          expected=f"names among {names}")
    return ev, names, sp, wanted


def _weights(sp: Spillover | None, names: list[str], wanted: Sequence[str], det: dict[str, int],
             dtype: Any) -> np.ndarray:
    """len(wanted) x p weights of the event columns: the inverse's column (spread over the detectors'
    columns) for a compensated channel, a one in its own column for a copied one."""
    index = {n: i for i, n in enumerate(names)}
    weights = np.zeros((len(wanted), len(names)), dtype=dtype)
    for j, c in enumerate(wanted):
        if c in det:
            assert sp is not None
            weights[j, [index[d] for d in sp.channels]] = sp.inverse[:, det[c]].astype(dtype)
        else:
            weights[j, index[c]] = 1
    return weights


def _one_product(ev: np.ndarray, weights: np.ndarray, channel_major: bool = False) -> np.ndarray | None:
    """The fast path: ``ev @ weights`` (p x k; or ``weights @ ev.T`` for k x p channel-major weights) in one
    pass over the events; None when the product is not finite (the general path then decides)."""
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite products are redone by the caller
        out = weights @ ev.T if channel_major else ev @ weights
    return out if np.isfinite(out).all() else None


def _gathered(ev: np.ndarray, index: dict[str, int], sp: Spillover, wanted: Sequence[str], dtype: Any
              ) -> np.ndarray:
    """The general path: ``ev[:, detectors] @ inv(S)[:, wanted]`` (n x len(wanted), in ``dtype``)."""
    pos = {c: k for k, c in enumerate(sp.channels)}
    inv = sp.inverse[:, [pos[c] for c in wanted]].astype(dtype)
    raw = ev[:, [index[c] for c in sp.channels]]
    if raw.dtype != dtype:
        raw = raw.astype(dtype)
    return raw @ inv


def _channel_major(ev: np.ndarray, names: list[str], sp: Spillover | None, wanted: list[str],
                   det: dict[str, int]) -> np.ndarray:
    """:func:`compensate` with ``channel_major``: float32 rows, copies and compensation in one product."""
    if ev.dtype == np.float32 and ev.flags.c_contiguous:
        rows = _one_product(ev, _weights(sp, names, wanted, det, np.float32), channel_major=True)
        if rows is not None:
            return rows
    index = {n: i for i, n in enumerate(names)}
    out = np.empty((len(wanted), ev.shape[0]), dtype=np.float32)
    for j, c in enumerate(wanted):
        if c in det:  # channel by channel, as the n x 1 layout computes it
            assert sp is not None
            out[j] = compensate(ev, names, sp, [c])[:, 0]
        else:
            out[j] = ev[:, index[c]]
    return out
