"""Gate geometry and vectorised evaluation.

A gate names its dimensions (channel or marker, optional transform, optional compensation reference) and
decides membership of every event. Gates are evaluated on an :class:`EventSource`, which hands out one
column of values per dimension (compensated and transformed as the dimension asks), so that each column
is computed once and shared by every gate that uses it.

Semantics follow Gating-ML 2.0: range limits are half-open (``min <= x < max``), ellipsoids include their
boundary (``d^2 <= distance_square``), polygons use FlowUtils' point-in-polygon test (winding count
modulo 2, as FlowKit; edges inclusive), quadrants are half-open ranges between dividers. Events may be
float32; limits and vertices are always compared in float64 (a limit cast to float32 can round onto an
event's value and move it across the boundary). A dimension may name a compensation reference (a
spillover matrix known to the event source, ``"FCS"`` for the file's own, ``None``/``"uncompensated"``
for raw values) and may be a Gating-ML ``fratio`` of two channels (:class:`Ratio`) before its transform.

One implementation decides membership: ranges and polygons are decided by
:mod:`bat_analysis.gating._membership` both here (values on the scales) and in :func:`apply_gate` (a gate's
own membership on raw columns, as a tube is gated), and compensated dimensions are computed by
:func:`bat_analysis.gating.compensation.compensate` (float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ..errors import GatingError
from .compensation import as_spillover, compensate
from ._hierarchy import topological_order
from ._membership import polygon_mask, range_mask


class Transform(Protocol):
    """A monotone scale transform (logicle, asinh, ...) with its inverse."""

    def apply(self, values: np.ndarray) -> np.ndarray: ...

    def inverse(self, values: np.ndarray) -> np.ndarray: ...


UNCOMPENSATED = (None, "uncompensated", "none")


@dataclass(frozen=True)
class Ratio:
    """Gating-ML ``fratio``: ``A * (numerator - B) / (denominator - C)`` of two channels."""

    numerator: str
    denominator: str
    A: float = 1.0
    B: float = 0.0
    C: float = 0.0

    def apply(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.A * ((np.asarray(num, dtype=np.float64) - self.B)
                             / (np.asarray(den, dtype=np.float64) - self.C))


@dataclass(frozen=True, eq=False)
class Dimension:
    """One axis of a gate: a channel/marker key, an optional transform and compensation reference.

    With ``ratio`` set, the dimension's values are that ratio of two channels (``key`` then only names
    the new dimension).
    """

    key: str
    transform: Transform | None = None
    compensation: str | None = None
    ratio: Ratio | None = None

    @property
    def label(self) -> str:
        return self.key


class EventSource(Protocol):
    """Anything that returns the values of all events along a dimension."""

    n_events: int

    def values(self, dim: Dimension) -> np.ndarray: ...


class ArrayEvents:
    """Events held as named columns (raw, i.e. uncompensated and untransformed).

    ``spillovers`` maps compensation references (``"FCS"``, or a matrix id) to spillover matrices
    (:class:`bat_analysis.gating.compensation.Spillover`); a compensated column may be asked for by its
    detector name or by the matrix's fluorochrome name. A reference to ``"FCS"`` with no such matrix means
    uncompensated (Gating-ML 2.0). Compensated, ratio and transformed columns are computed once and cached.
    """

    def __init__(self, columns: Mapping[str, np.ndarray], spillovers: Mapping[str, Any] | None = None) -> None:
        self.columns = dict(columns)
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise GatingError(f"event columns differ in length: {sorted(lengths)}")
        self.n_events = lengths.pop() if lengths else 0
        self.spillovers: dict[str, Any] = {}
        if spillovers:
            self.spillovers = {k: as_spillover(v) for k, v in spillovers.items()}
        self._cache: dict[tuple[Any, ...], np.ndarray] = {}

    @classmethod
    def from_matrix(cls, events: np.ndarray, channel_names: Sequence[str],
                    spillovers: Mapping[str, Any] | None = None) -> "ArrayEvents":
        """Columns as views of an n x p event matrix (no copy)."""
        ev = np.asarray(events)
        if ev.ndim != 2 or ev.shape[1] != len(channel_names):
            raise GatingError(f"events have shape {ev.shape} but {len(channel_names)} channel names were given",
                              field="channel_names", expected="one name per event column")
        return cls({str(n): ev[:, i] for i, n in enumerate(channel_names)}, spillovers)

    def _raw(self, key: str) -> np.ndarray:
        try:
            return self.columns[key]
        except KeyError:
            raise GatingError(f"no events for dimension {key!r}", field=key,
                              expected=f"one of {sorted(self.columns)}") from None

    def _compensated(self, key: str, ref: str | None, rows: np.ndarray | None = None) -> np.ndarray:
        if ref in UNCOMPENSATED or (ref == "FCS" and "FCS" not in self.spillovers):
            raw = self._raw(key)
            return raw if rows is None else raw[rows]
        sp = self.spillovers.get(ref)  # type: ignore[arg-type]
        if sp is None:
            raise GatingError(f"unknown compensation reference {ref!r}", field="compensation",
                              expected=f"'uncompensated', 'FCS' or one of {sorted(self.spillovers)}")
        outputs = getattr(sp, "fluorochromes", ()) or ()
        if key in sp.channels:
            j = sp.channels.index(key)
        elif key in outputs:
            j = list(outputs).index(key)
        else:
            raw = self._raw(key)  # not a detector of this matrix: unchanged, as in FlowUtils
            return raw if rows is None else raw[rows]
        ck = ("comp", ref, j)
        full = self._cache.get(ck)
        if full is not None:
            return full if rows is None else full[rows]
        n = self.n_events if rows is None else len(rows)
        detectors = np.empty((n, len(sp.channels)), dtype=np.float64)
        for i, det in enumerate(sp.channels):
            raw = self._raw(det)
            detectors[:, i] = raw if rows is None else raw[rows]
        out = compensate(detectors, sp.channels, sp, [sp.channels[j]], dtype=np.float64)[:, 0]
        if rows is None:
            self._cache[ck] = out
        return out

    def values(self, dim: Dimension, rows: np.ndarray | None = None, rows_key: Any = None) -> np.ndarray:
        """Values of every event along ``dim``; with ``rows`` (sorted event indices) only those events.

        Subsets are computed from the raw columns (compensating and transforming only those rows) and
        cached under ``rows_key`` when given (the evaluator passes the parent gate's name).
        """
        tkey: Any = None
        if dim.transform is not None:
            try:
                hash(dim.transform)
                # equal transforms share a column; the type keeps a table-based one apart from the exact one
                tkey = (type(dim.transform), dim.transform)
            except TypeError:
                tkey = id(dim.transform)
        if dim.ratio is None and tkey is None:
            return self._compensated(dim.key, dim.compensation, rows)
        ck = ("dim", dim.key if dim.ratio is None else dim.ratio, dim.compensation, tkey)
        full = self._cache.get(ck)
        if full is not None:
            return full if rows is None else full[rows]
        sk = (ck, rows_key) if rows is not None and rows_key is not None else None
        if sk is not None and sk in self._cache:
            return self._cache[sk]
        if dim.ratio is not None:
            r = dim.ratio
            col = r.apply(self._compensated(r.numerator, dim.compensation, rows),
                          self._compensated(r.denominator, dim.compensation, rows))
        else:
            col = self._compensated(dim.key, dim.compensation, rows)
        if dim.transform is not None:
            col = np.asarray(dim.transform.apply(col))
        if rows is None:
            self._cache[ck] = col
        elif sk is not None:
            self._cache[sk] = col
        return col

    supports_rows = True


@dataclass(eq=False)
class Gate:
    """Base of all gates: a unique ``name``, its ``parent`` gate name (None for the root) and dimensions."""

    name: str
    dims: tuple[Dimension, ...]
    parent: str | None = field(default=None, kw_only=True)

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray],
                 rows: np.ndarray | None = None, rows_key: Any = None) -> np.ndarray:
        """Membership by this gate's own geometry, ignoring the parent.

        With ``rows`` (sorted event indices; the event source must support them) the result has one
        entry per row instead of one per event.
        """
        raise NotImplementedError

    def _cols(self, events: EventSource, rows: np.ndarray | None = None, rows_key: Any = None) -> list[np.ndarray]:
        if rows is None:
            return [np.asarray(events.values(d)) for d in self.dims]
        return [np.asarray(events.values(d, rows, rows_key)) for d in self.dims]  # type: ignore[call-arg]

    def _n(self, events: EventSource, rows: np.ndarray | None) -> int:
        return events.n_events if rows is None else len(rows)


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

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray],
                 rows: np.ndarray | None = None, rows_key: Any = None) -> np.ndarray:
        cols = self._cols(events, rows, rows_key)
        if not cols:
            return np.ones(self._n(events, rows), dtype=bool)
        return range_mask(self.dims, self.mins, self.maxs, cols, on_scale=True)


@dataclass(eq=False)
class QuadrantGate(RangeGate):
    """One quadrant of a Gating-ML quadrant gate: a half-open range between neighbouring dividers.

    ``group`` names the quadrant gate it belongs to and ``dividers`` holds that gate's divider values
    per dimension, so that the whole quadrant gate can be written back.
    """

    group: str = ""
    dividers: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.group:
            raise GatingError(f"gate {self.name}: a quadrant needs the name of its quadrant gate", field="group")
        if len(self.dividers) != len(self.dims):
            raise GatingError(f"gate {self.name}: one divider list per dimension expected", field="dividers")


@dataclass(eq=False)
class PolygonGate(Gate):
    """A closed polygon in two dimensions (vertices in order; the last joins the first).

    ``complement`` keeps the events outside instead (FlowJo / FlowKit ``use_complement``).
    """

    vertices: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    complement: bool = False

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=float)
        if len(self.dims) != 2 or self.vertices.ndim != 2 or self.vertices.shape[1] != 2 \
                or len(self.vertices) < 3:
            raise GatingError(f"gate {self.name}: a polygon needs 2 dimensions and >= 3 vertices")

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray],
                 rows: np.ndarray | None = None, rows_key: Any = None) -> np.ndarray:
        inside = polygon_mask(self, self._cols(events, rows, rows_key), on_scale=True)
        return ~inside if self.complement else inside


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

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray],
                 rows: np.ndarray | None = None, rows_key: Any = None) -> np.ndarray:
        try:
            inv = np.linalg.inv(self.covariance)
        except np.linalg.LinAlgError:
            raise GatingError(f"gate {self.name}: covariance matrix is singular",
                              field="covariance", expected="an invertible matrix") from None
        diffs = [np.asarray(c, dtype=np.float64) - m for c, m in zip(self._cols(events, rows, rows_key), self.mean)]
        dist = np.zeros(len(diffs[0]) if diffs else 0)
        for i, di in enumerate(diffs):  # quadratic form, column by column (no n x k temporaries)
            dist += inv[i, i] * di * di
            for j in range(i + 1, len(diffs)):
                dist += (inv[i, j] + inv[j, i]) * di * diffs[j]
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

    def own_mask(self, events: EventSource, masks: Mapping[str, np.ndarray],
                 rows: np.ndarray | None = None, rows_key: Any = None) -> np.ndarray:
        cols = []
        for ref, complement in self.operands:
            if ref not in masks:
                raise GatingError(f"gate {self.name}: operand {ref!r} has not been evaluated",
                                  field="operands", expected="a gate defined earlier in the hierarchy")
            m = masks[ref] if rows is None else masks[ref][rows]
            cols.append(~m if complement else m)
        if self.op == "not":
            return ~cols[0]
        return np.logical_and.reduce(cols) if self.op == "and" else np.logical_or.reduce(cols)


def evaluate(gates: Sequence[Gate], events: EventSource) -> dict[str, np.ndarray]:
    """Evaluate a hierarchy; returns each gate's full membership (its own geometry AND its parent's).

    Gates may be given in any order; parents and boolean operands are evaluated first. Cycles and
    unknown parents are errors naming the gate. When the event source supports row subsets
    (``ArrayEvents``), a child gate is evaluated only on its parent's events (compensating and
    transforming only those), which is what makes deep hierarchies with rare populations cheap.
    """
    subset_ok = bool(getattr(events, "supports_rows", False))
    by_name: dict[str, Gate] = {}
    for g in gates:
        if g.name in by_name:
            raise GatingError(f"gate name {g.name!r} is used twice", field="name", expected="unique names")
        by_name[g.name] = g
    masks: dict[str, np.ndarray] = {}
    for g in topological_order(by_name.values(), lambda g: g.name, _depends_on):
        parent_mask = masks[g.parent] if g.parent is not None else None
        if parent_mask is None:
            mask = g.own_mask(events, masks)
        elif subset_ok:
            rows = np.flatnonzero(parent_mask)
            mask = np.zeros(len(parent_mask), dtype=bool)
            if len(rows):
                mask[rows] = g.own_mask(events, masks, rows, g.parent)
        else:
            mask = g.own_mask(events, masks) & parent_mask
        masks[g.name] = mask
    return masks


def _depends_on(g: Gate) -> list[str]:
    """What a gate needs evaluated first: a boolean gate's operands, then its parent."""
    deps = [ref for ref, _ in g.operands] if isinstance(g, BooleanGate) else []
    return deps + ([g.parent] if g.parent is not None else [])


def apply_gate(gate: Gate, cols: Sequence[np.ndarray], members: Sequence[Gate] = ()) -> np.ndarray:
    """Own membership of a gate for raw event columns (one per dimension, compensated as the gate's
    dimensions ask but not transformed), without parents; ``members`` are a boolean gate's operand gates on
    the same columns.

    The same decision as :func:`evaluate` makes on transformed values, by the same functions of
    :mod:`bat_analysis.gating._membership`: ranges are compared in raw units (limits inverse-transformed
    once), polygons are tested on the scale (the grid path for a convex polygon over many events, the
    exact test within the bounding box otherwise); ellipsoids transform their columns.
    """
    if isinstance(gate, RangeGate):
        return range_mask(gate.dims, gate.mins, gate.maxs, cols)
    if isinstance(gate, PolygonGate):
        inside = polygon_mask(gate, cols)
        return ~inside if gate.complement else inside
    if isinstance(gate, BooleanGate) and members:
        sub = {m.name: apply_gate(m, cols) for m in members}
        return gate.own_mask(_Counted(len(cols[0])), sub)
    events = ArrayEvents({d.key: c for d, c in zip(gate.dims, cols)})
    return gate.own_mask(events, {})


class _Counted:
    """An event source that only knows how many events there are (for boolean gates)."""

    def __init__(self, n: int) -> None:
        self.n_events = n

    def values(self, dim: Dimension) -> np.ndarray:  # pragma: no cover - booleans read no values
        raise KeyError(dim.key)


def _ratio_to_dict(r: Ratio | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"numerator": r.numerator, "denominator": r.denominator, "A": r.A, "B": r.B, "C": r.C}


def gate_to_dict(gate: Gate) -> dict[str, Any]:
    """JSON-serialisable geometry of a gate.

    Transforms are recorded by name and, when they have one, by their template spec (so that
    :func:`gate_from_dict` can rebuild them without a name table).
    """
    out: dict[str, Any] = {
        "name": gate.name,
        "parent": gate.parent,
        "dims": [d.key for d in gate.dims],
        "transforms": [getattr(d.transform, "name", None) if d.transform is not None else None
                       for d in gate.dims],
    }
    specs = [d.transform.spec() if d.transform is not None and hasattr(d.transform, "spec") else None
             for d in gate.dims]
    if any(sp is not None for sp in specs):
        out["transform_specs"] = specs
    if any(d.compensation not in UNCOMPENSATED for d in gate.dims):
        out["compensation"] = [d.compensation for d in gate.dims]
    if any(d.ratio is not None for d in gate.dims):
        out["ratios"] = [_ratio_to_dict(d.ratio) for d in gate.dims]
    if isinstance(gate, QuadrantGate):
        out.update(type="quadrant", mins=list(gate.mins), maxs=list(gate.maxs), group=gate.group,
                   dividers=[list(d) for d in gate.dividers])
    elif isinstance(gate, RangeGate):
        out.update(type="range", mins=list(gate.mins), maxs=list(gate.maxs))
    elif isinstance(gate, PolygonGate):
        out.update(type="polygon", vertices=gate.vertices.tolist())
        if gate.complement:
            out["complement"] = True
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
        keys = list(data.get("dims", []))
        n = len(keys)
        tnames = data.get("transforms") or [None] * n
        specs = data.get("transform_specs") or [None] * n
        comps = data.get("compensation") or [None] * n
        ratios = data.get("ratios") or [None] * n
        dims = []
        for key, tname, spec, comp, ratio in zip(keys, tnames, specs, comps, ratios):
            transform = None
            if tname is not None:
                if tname in transforms:
                    transform = transforms[tname]
                elif spec is not None:
                    from .transforms import from_spec
                    transform = from_spec(spec, where=f"gate {data.get('name')}.transform_specs")
                else:
                    raise GatingError(f"gate {data.get('name')}: unknown transform {tname!r}",
                                      field="transforms", expected=f"one of {sorted(transforms)}")
            r = Ratio(ratio["numerator"], ratio["denominator"], float(ratio["A"]), float(ratio["B"]),
                      float(ratio["C"])) if ratio else None
            dims.append(Dimension(key, transform, comp, r))
        dims_t = tuple(dims)
        kind = data["type"]
        name, parent = data["name"], data.get("parent")
        if kind == "quadrant":
            return QuadrantGate(name, dims_t, mins=tuple(data["mins"]), maxs=tuple(data["maxs"]),
                                group=data["group"], dividers=tuple(tuple(d) for d in data["dividers"]),
                                parent=parent)
        if kind == "range":
            return RangeGate(name, dims_t, mins=tuple(data["mins"]), maxs=tuple(data["maxs"]), parent=parent)
        if kind == "polygon":
            return PolygonGate(name, dims_t, vertices=np.asarray(data["vertices"]),
                               complement=bool(data.get("complement", False)), parent=parent)
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
                      expected="range, quadrant, polygon, ellipsoid or boolean")
