"""Gate geometry and vectorised evaluation.

A gate names its dimensions (channel or marker, optional transform, optional compensation reference) and
decides membership of every event. Gates are evaluated on an :class:`EventSource`, which hands out one
column of values per dimension (compensated and transformed as the dimension asks), so that each column
is computed once and shared by every gate that uses it.

Semantics follow Gating-ML 2.0: range limits are half-open (``min <= x < max``), ellipsoids include their
boundary (``d^2 <= distance_square``), polygons use FlowUtils' winding-number test (edges inclusive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ..errors import GatingError


class Transform(Protocol):
    """A monotone scale transform (logicle, asinh, ...) with its inverse."""

    def apply(self, values: np.ndarray) -> np.ndarray: ...

    def inverse(self, values: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class Dimension:
    """One axis of a gate: a channel/marker key, an optional transform and compensation reference."""

    key: str
    transform: Transform | None = None
    compensation: str | None = None

    @property
    def label(self) -> str:
        return self.key


class EventSource(Protocol):
    """Anything that returns the values of all events along a dimension."""

    n_events: int

    def values(self, dim: Dimension) -> np.ndarray: ...


class ArrayEvents:
    """Events held as named columns; transformed columns are cached per (key, transform)."""

    def __init__(self, columns: Mapping[str, np.ndarray]) -> None:
        self.columns = dict(columns)
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise GatingError(f"event columns differ in length: {sorted(lengths)}")
        self.n_events = lengths.pop() if lengths else 0
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def values(self, dim: Dimension) -> np.ndarray:
        try:
            raw = self.columns[dim.key]
        except KeyError:
            raise GatingError(f"no events for dimension {dim.key!r}", field=dim.key,
                              expected=f"one of {sorted(self.columns)}") from None
        if dim.transform is None:
            return raw
        ck = (dim.key, id(dim.transform))
        if ck not in self._cache:
            self._cache[ck] = np.asarray(dim.transform.apply(raw))
        return self._cache[ck]


@dataclass(eq=False)
class Gate:
    """Base of all gates: a unique ``name``, its ``parent`` gate name (None for the root) and dimensions."""

    name: str
    dims: tuple[Dimension, ...]
    parent: str | None = field(default=None, kw_only=True)

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        """Membership by this gate's own geometry, ignoring the parent."""
        raise NotImplementedError

    def _cols(self, events: EventSource) -> list[np.ndarray]:
        return [np.asarray(events.values(d)) for d in self.dims]


@dataclass(eq=False)
class RangeGate(Gate):
    """A rectangle in any number of dimensions; ``None`` leaves a side open. Half-open: min <= x < max."""

    mins: tuple[float | None, ...] = ()
    maxs: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.dims) == len(self.mins) == len(self.maxs)):
            raise GatingError(f"gate {self.name}: mins/maxs must have one entry per dimension")
        for lo, hi in zip(self.mins, self.maxs):
            if lo is None and hi is None:
                raise GatingError(f"gate {self.name}: a range dimension needs a min or a max")

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        mask = np.ones(events.n_events, dtype=bool)
        for col, lo, hi in zip(self._cols(events), self.mins, self.maxs):
            if lo is not None:
                mask &= col >= lo
            if hi is not None:
                mask &= col < hi
        return mask


@dataclass(eq=False)
class PolygonGate(Gate):
    """A closed polygon in two dimensions (vertices in order; the last joins the first)."""

    vertices: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=float)
        if len(self.dims) != 2 or self.vertices.ndim != 2 or self.vertices.shape[1] != 2 \
                or len(self.vertices) < 3:
            raise GatingError(f"gate {self.name}: a polygon needs 2 dimensions and >= 3 vertices")

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        from flowutils.gating import points_in_polygon

        x, y = self._cols(events)
        points = np.column_stack([x, y]).astype(float, copy=False)
        return np.asarray(points_in_polygon(self.vertices, points), dtype=bool)


@dataclass(eq=False)
class EllipsoidGate(Gate):
    """Events whose squared Mahalanobis distance from ``mean`` is at most ``distance_square``."""

    mean: np.ndarray = field(default_factory=lambda: np.zeros(2))
    covariance: np.ndarray = field(default_factory=lambda: np.eye(2))
    distance_square: float = 1.0

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=float)
        self.covariance = np.asarray(self.covariance, dtype=float)
        n = len(self.dims)
        if self.mean.shape != (n,) or self.covariance.shape != (n, n):
            raise GatingError(f"gate {self.name}: mean/covariance must match {n} dimensions")

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        try:
            inv = np.linalg.inv(self.covariance)
        except np.linalg.LinAlgError:
            raise GatingError(f"gate {self.name}: covariance matrix is singular",
                              field="covariance", expected="an invertible matrix") from None
        d = np.column_stack(self._cols(events)).astype(float, copy=False) - self.mean
        dist = np.einsum("ij,jk,ik->i", d, inv, d)
        return dist <= self.distance_square


@dataclass(eq=False)
class BooleanGate(Gate):
    """``and`` / ``or`` / ``not`` of other gates (each operand optionally complemented).

    Operands refer to gates by name and use their full membership (parents applied).
    """

    op: str = "and"
    operands: tuple[tuple[str, bool], ...] = ()  # (gate name, complement)

    def __post_init__(self) -> None:
        if self.op not in ("and", "or", "not"):
            raise GatingError(f"gate {self.name}: boolean op must be and/or/not, got {self.op!r}")
        if self.op == "not" and len(self.operands) != 1:
            raise GatingError(f"gate {self.name}: 'not' takes exactly one operand")
        if self.op != "not" and len(self.operands) < 2:
            raise GatingError(f"gate {self.name}: '{self.op}' takes two or more operands")

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        cols = []
        for ref, complement in self.operands:
            if ref not in masks:
                raise GatingError(f"gate {self.name}: operand {ref!r} has not been evaluated",
                                  field="operands", expected="a gate defined earlier in the hierarchy")
            cols.append(~masks[ref] if complement else masks[ref])
        if self.op == "not":
            return ~cols[0]
        return np.logical_and.reduce(cols) if self.op == "and" else np.logical_or.reduce(cols)


def evaluate(gates: Sequence[Gate], events: EventSource) -> dict[str, np.ndarray]:
    """Evaluate a hierarchy; returns each gate's full membership (its own geometry AND its parent's).

    Gates may be given in any order; parents and boolean operands are evaluated first. Cycles and
    unknown parents are errors naming the gate.
    """
    by_name: dict[str, Gate] = {}
    for g in gates:
        if g.name in by_name:
            raise GatingError(f"gate name {g.name!r} is used twice", field="name", expected="unique names")
        by_name[g.name] = g
    masks: dict[str, np.ndarray] = {}
    visiting: set[str] = set()

    def visit(name: str) -> np.ndarray:
        if name in masks:
            return masks[name]
        if name not in by_name:
            raise GatingError(f"unknown gate {name!r}", field="parent", expected=f"one of {sorted(by_name)}")
        if name in visiting:
            raise GatingError(f"gate {name!r} is its own ancestor", field="parent", expected="no cycles")
        visiting.add(name)
        g = by_name[name]
        deps = [ref for ref, _ in g.operands] if isinstance(g, BooleanGate) else []
        for dep in deps:
            visit(dep)
        mask = g.own_mask(events, masks)
        if g.parent is not None:
            mask = mask & visit(g.parent)
        visiting.discard(name)
        masks[name] = mask
        return mask

    for name in by_name:
        visit(name)
    return masks


def gate_to_dict(gate: Gate) -> dict[str, Any]:
    """JSON-serialisable geometry of a gate (transforms are recorded by name only)."""
    out: dict[str, Any] = {
        "name": gate.name,
        "parent": gate.parent,
        "dims": [d.key for d in gate.dims],
        "transforms": [getattr(d.transform, "name", None) if d.transform is not None else None
                       for d in gate.dims],
    }
    if isinstance(gate, RangeGate):
        out.update(type="range", mins=list(gate.mins), maxs=list(gate.maxs))
    elif isinstance(gate, PolygonGate):
        out.update(type="polygon", vertices=gate.vertices.tolist())
    elif isinstance(gate, EllipsoidGate):
        out.update(type="ellipsoid", mean=gate.mean.tolist(), covariance=gate.covariance.tolist(),
                   distance_square=float(gate.distance_square))
    elif isinstance(gate, BooleanGate):
        out.update(type="boolean", op=gate.op, operands=[[r, c] for r, c in gate.operands])
    else:
        raise GatingError(f"gate {gate.name}: cannot serialise {type(gate).__name__}")
    return out


def gate_from_dict(data: Mapping[str, Any],
                   transforms: Mapping[str, Transform] | None = None) -> Gate:
    """Inverse of :func:`gate_to_dict`; ``transforms`` maps recorded transform names to objects."""
    transforms = transforms or {}
    try:
        tnames = data.get("transforms") or [None] * len(data.get("dims", []))
        dims = []
        for key, tname in zip(data.get("dims", []), tnames):
            if tname is not None and tname not in transforms:
                raise GatingError(f"gate {data.get('name')}: unknown transform {tname!r}",
                                  field="transforms", expected=f"one of {sorted(transforms)}")
            dims.append(Dimension(key, transforms.get(tname) if tname else None))
        dims_t = tuple(dims)
        kind = data["type"]
        name, parent = data["name"], data.get("parent")
        if kind == "range":
            return RangeGate(name, dims_t, mins=tuple(data["mins"]), maxs=tuple(data["maxs"]), parent=parent)
        if kind == "polygon":
            return PolygonGate(name, dims_t, vertices=np.asarray(data["vertices"]), parent=parent)
        if kind == "ellipsoid":
            return EllipsoidGate(name, dims_t, mean=np.asarray(data["mean"]),
                                 covariance=np.asarray(data["covariance"]),
                                 distance_square=float(data["distance_square"]), parent=parent)
        if kind == "boolean":
            return BooleanGate(name, dims_t, op=data["op"],
                               operands=tuple((r, bool(c)) for r, c in data["operands"]), parent=parent)
    except KeyError as exc:
        raise GatingError(f"gate {data.get('name')!r}: missing field {exc.args[0]!r}",
                          field=str(exc.args[0])) from None
    raise GatingError(f"gate {data.get('name')!r}: unknown type {data.get('type')!r}", field="type",
                      expected="range, polygon, ellipsoid or boolean")
