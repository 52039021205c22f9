"""Gate geometry: one typed representation of a gate's shape, read from and written to plain mappings.

A geometry is the shape of a gate without its name, parent or dimensions, in the gate's scales (transformed
values where a dimension has a transform):

- :class:`RangeGeometry`: a rectangle in any number of dimensions, ``mins``/``maxs`` per dimension (None: an
  open side; half-open, min <= x < max);
- :class:`PolygonGeometry`: a closed polygon in two dimensions (``vertices`` in order);
- :class:`EllipsoidGeometry`: squared Mahalanobis distance from ``mean`` at most ``distance_square``.

:func:`parse_geometry` is the one converter from a mapping (a template's ``geometry:``/``fallback:``, a
reviewer's correction): it accepts a range's limits spelled ``min``/``max`` (templates) or ``mins``/``maxs``
(stored and corrected geometry), and returns every problem located (``gates[3].geometry.min[0]: expected a
number or null, got 'x'``). :func:`geometry_to_mapping` writes the one canonical spelling (``mins``/``maxs``:
the form :func:`bat_analysis.gating.gates.gate_to_dict` stores). :func:`to_gate` and :func:`from_gate` go to and
from the gate objects of :mod:`bat_analysis.gating.gates`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .gates import Dimension, EllipsoidGate, Gate, PolygonGate, RangeGate

GEOMETRY_TYPES = ("range", "polygon", "ellipsoid")
#: the most vertices a polygon given as input may have: a gate drawn by hand has tens, an estimated or traced
#: outline a few hundred; the work of testing events against a polygon and of drawing it grows with its vertices
MAX_POLYGON_VERTICES = 10_000
#: the spellings of a range's limits accepted on input (canonical first)
RANGE_KEYS = {"mins": ("mins", "min"), "maxs": ("maxs", "max")}


@dataclass(frozen=True)
class RangeGeometry:
    """A rectangle: ``mins``/``maxs`` per dimension, None for an open side (min <= x < max)."""

    mins: tuple[float | None, ...]
    maxs: tuple[float | None, ...]
    type = "range"


@dataclass(frozen=True)
class PolygonGeometry:
    """A closed polygon in two dimensions, vertices in order (the last joins the first)."""

    vertices: tuple[tuple[float, float], ...]
    type = "polygon"


@dataclass(frozen=True)
class EllipsoidGeometry:
    """Events whose squared Mahalanobis distance from ``mean`` is at most ``distance_square``."""

    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    distance_square: float
    type = "ellipsoid"


Geometry = Union[RangeGeometry, PolygonGeometry, EllipsoidGeometry]


# ---------------------------------------------------------------------------------------------- reading
def value_name(value: Any) -> str:
    """How a value is named in a problem (texts and numbers quoted, shortened)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def is_number(v: Any) -> bool:
    """A finite int or float (not a boolean, not NaN or infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range_limits(where: str, geo: Mapping[str, Any], n_dims: int, problems: list[str]
                  ) -> tuple[list[Any], list[Any]] | None:
    """The mins and maxs of a range, each under either spelling (both spellings of one side: a problem)."""
    out: list[list[Any]] = []
    ok = True
    for canonical, spellings in RANGE_KEYS.items():
        given = [k for k in spellings if k in geo]
        if len(given) > 1:
            problems.append(f"{where}.{given[1]}: give {canonical} or {given[1]}, not both")
            ok = False
            continue
        key = given[0] if given else spellings[1]
        vals = geo.get(key, [None] * n_dims)
        if not isinstance(vals, list) or len(vals) != n_dims:
            problems.append(f"{where}.{key}: expected a list of {n_dims} numbers or nulls, got {value_name(vals)}")
            ok = False
            continue
        for i, v in enumerate(vals):
            if v is not None and not is_number(v):
                problems.append(f"{where}.{key}[{i}]: expected a number or null, got {value_name(v)}")
                ok = False
        out.append(vals)
    if not ok:
        return None
    mins, maxs = out
    for i, (lo, hi) in enumerate(zip(mins, maxs)):
        if lo is None and hi is None:
            problems.append(f"{where}: dimension {i + 1} needs a min or a max")
            ok = False
        elif lo is not None and hi is not None and lo >= hi:
            problems.append(f"{where}: dimension {i + 1}: min {lo:g} must be below max {hi:g}")
            ok = False
    return (mins, maxs) if ok else None


def _polygon_vertices(where: str, geo: Mapping[str, Any], n_dims: int, problems: list[str]) -> list[Any] | None:
    verts = geo.get("vertices")
    ok = True
    if n_dims != 2:
        problems.append(f"{where}: a polygon needs 2 dimensions, the gate has {n_dims}")
        ok = False
    if not isinstance(verts, list) or len(verts) < 3:
        problems.append(f"{where}.vertices: expected a list of >= 3 [x, y] pairs, got {value_name(verts)}")
        return None
    if len(verts) > MAX_POLYGON_VERTICES:
        problems.append(f"{where}.vertices: a polygon of {len(verts)} vertices is too many to be a gate; expected at "
                        f"most {MAX_POLYGON_VERTICES} [x, y] pairs")
        return None
    for i, v in enumerate(verts):
        if not (isinstance(v, list) and len(v) == 2 and all(is_number(c) for c in v)):
            problems.append(f"{where}.vertices[{i}]: expected [x, y] numbers, got {value_name(v)}")
            ok = False
    return verts if ok else None


def _ellipsoid(where: str, geo: Mapping[str, Any], n_dims: int, problems: list[str]) -> EllipsoidGeometry | None:
    mean, cov, d2 = geo.get("mean"), geo.get("covariance"), geo.get("distance_square")
    ok = True
    if not (isinstance(mean, list) and len(mean) == n_dims and all(is_number(c) for c in mean)):
        problems.append(f"{where}.mean: expected {n_dims} numbers, got {value_name(mean)}")
        ok = False
    if not (isinstance(cov, list) and len(cov) == n_dims and all(
            isinstance(r, list) and len(r) == n_dims and all(is_number(c) for c in r) for r in cov)):
        problems.append(f"{where}.covariance: expected a {n_dims}x{n_dims} matrix of numbers")
        ok = False
    if not (is_number(d2) and d2 > 0):
        problems.append(f"{where}.distance_square: expected a positive number, got {value_name(d2)}")
        ok = False
    if not ok:
        return None
    return EllipsoidGeometry(tuple(float(c) for c in mean), tuple(tuple(float(c) for c in r) for r in cov),
                             float(d2))


def parse_geometry(geo: Any, n_dims: int, where: str, problems: list[str]) -> Geometry | None:
    """The typed geometry of a mapping for a gate of ``n_dims`` dimensions, or None (problems appended).

    A range's limits may be spelled ``min``/``max`` or ``mins``/``maxs``; a side left out is open.
    Numbers are kept as given (ints stay ints until a gate is built from them).
    """
    if not isinstance(geo, Mapping):
        problems.append(f"{where}: expected a mapping with 'type' ({', '.join(GEOMETRY_TYPES)}), got {value_name(geo)}")
        return None
    kind = geo.get("type")
    if kind not in GEOMETRY_TYPES:
        problems.append(f"{where}.type: expected one of {', '.join(GEOMETRY_TYPES)}, got {value_name(kind)}")
        return None
    if kind == "range":
        limits = _range_limits(where, geo, n_dims, problems)
        return None if limits is None else RangeGeometry(tuple(limits[0]), tuple(limits[1]))
    if kind == "polygon":
        verts = _polygon_vertices(where, geo, n_dims, problems)
        return None if verts is None else PolygonGeometry(tuple((v[0], v[1]) for v in verts))
    return _ellipsoid(where, geo, n_dims, problems)


# ---------------------------------------------------------------------------------------------- writing
def geometry_to_mapping(geo: Geometry) -> dict[str, Any]:
    """The canonical mapping of a geometry (``mins``/``maxs`` for a range), as stored with a gate."""
    if isinstance(geo, RangeGeometry):
        return {"type": "range", "mins": list(geo.mins), "maxs": list(geo.maxs)}
    if isinstance(geo, PolygonGeometry):
        return {"type": "polygon", "vertices": [list(v) for v in geo.vertices]}
    return {"type": "ellipsoid", "mean": list(geo.mean), "covariance": [list(r) for r in geo.covariance],
            "distance_square": geo.distance_square}


def to_gate(geo: Geometry, name: str, dims: Sequence[Dimension], parent: str | None = None) -> Gate:
    """A gate of :mod:`bat_analysis.gating.gates` with this geometry on ``dims``."""
    dims = tuple(dims)
    if isinstance(geo, RangeGeometry):
        return RangeGate(name, dims, mins=geo.mins, maxs=geo.maxs, parent=parent)
    if isinstance(geo, PolygonGeometry):
        return PolygonGate(name, dims, vertices=np.asarray(geo.vertices, dtype=float), parent=parent)
    return EllipsoidGate(name, dims, mean=np.asarray(geo.mean, dtype=float),
                         covariance=np.asarray(geo.covariance, dtype=float),
                         distance_square=float(geo.distance_square), parent=parent)


def from_gate(gate: Gate) -> Geometry:
    """The geometry of a range, polygon or ellipsoid gate (a quadrant is a range); TypeError otherwise."""
    if isinstance(gate, RangeGate):
        return RangeGeometry(tuple(gate.mins), tuple(gate.maxs))
    if isinstance(gate, PolygonGate):
        return PolygonGeometry(tuple((float(x), float(y)) for x, y in gate.vertices))
    if isinstance(gate, EllipsoidGate):
        return EllipsoidGeometry(tuple(float(v) for v in gate.mean),
                                 tuple(tuple(float(v) for v in r) for r in gate.covariance),
                                 float(gate.distance_square))
    raise TypeError(f"gate {gate.name}: a {type(gate).__name__} has no range, polygon or ellipsoid geometry")
