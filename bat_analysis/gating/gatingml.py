"""Gating-ML 2.0 import and export.

Import checks the XML with the hardened parser (:func:`bat_analysis._safe_parse.read_xml`: no DTD or entities,
size and depth limits), parses those checked bytes with FlowKit (``flowkit.parse_gating_xml``; anything it
raises becomes a :class:`GatingError` naming the file) and converts its gating strategy into
this package's gates, transforms and spillover matrices, which are then evaluated with our own engine
(:func:`bat_analysis.gating.gates.evaluate`). Export converts our gates back into a FlowKit
``GatingStrategy`` and writes it with ``flowkit.export_gatingml``.

Conversions (both directions): rectangle <-> :class:`RangeGate`, polygon <-> :class:`PolygonGate`,
ellipsoid <-> :class:`EllipsoidGate`, each quadrant of a quadrant gate <-> :class:`QuadrantGate`,
boolean <-> :class:`BooleanGate`; ``fratio`` dimensions <-> :class:`Ratio`; compensation references are
kept by name (``uncompensated``, ``FCS`` or a spectrum matrix id). Gate names must be unique in our
engine; a FlowKit strategy that reuses a name under different parents (FlowJo allows it) gets
path-qualified names (``parent/child``).
"""

from __future__ import annotations

import copy
import io
import re
from xml.etree import ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import GatingError, InputParseError
from .._fileio import atomic_write_bytes
from .._safe_parse import guarded, read_xml
from .compensation import Spillover, as_spillover
from ._hierarchy import ancestors, topological_order
from .gates import (UNCOMPENSATED, ArrayEvents, BooleanGate, Dimension, EllipsoidGate, Gate, PolygonGate,
                    QuadrantGate, RangeGate, Ratio, evaluate)
from .transforms import (Asinh, FlowJoBiex, FlowJoLog, Hyperlog, Linear, Log, Logicle, ScaleTransform)

__all__ = ["GatingDocument", "read_gatingml", "from_flowkit_strategy", "to_flowkit_strategy",
           "export_gatingml", "transform_from_flowkit"]


@dataclass
class GatingDocument:
    """Gates with the transforms and spillover matrices they reference (by Gating-ML id)."""

    gates: list[Gate]
    transforms: dict[str, ScaleTransform] = field(default_factory=dict)
    spillovers: dict[str, Spillover] = field(default_factory=dict)
    source: str | None = None
    origin: dict[str, str] = field(default_factory=dict)  # the data file the gates were exported for

    def gate(self, name: str) -> Gate:
        for g in self.gates:
            if g.name == name:
                return g
        raise GatingError(f"no gate named {name!r}", source=self.source, field="gate",
                          expected=f"one of {[g.name for g in self.gates]}")

    def events(self, events: np.ndarray, channel_names: Sequence[str],
               fcs_spillover: Any | None = None) -> ArrayEvents:
        """An event source for these gates: the document's matrices plus the file's own as ``"FCS"``."""
        spill: dict[str, Any] = dict(self.spillovers)
        if fcs_spillover is not None:
            spill["FCS"] = as_spillover(fcs_spillover)
        return ArrayEvents.from_matrix(events, channel_names, spill)

    def evaluate(self, events: np.ndarray, channel_names: Sequence[str],
                 fcs_spillover: Any | None = None) -> dict[str, np.ndarray]:
        """Full membership of every gate (parents applied)."""
        return evaluate(self.gates, self.events(events, channel_names, fcs_spillover))


_GML_NS = ("http://www.isac-net.org/std/Gating-ML/v2.0/gating",
           "http://www.isac-net.org/std/Gating-ML/v2.0/transformations",
           "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes")


def read_gatingml(path: str | Path, *, comp_prefix: str | None = None) -> GatingDocument:
    """Read a Gating-ML 2.0 file into our gates (parsing by FlowKit).

    FlowJo's own "Gating-ML 2.0" export does not validate against the schema (it adds display
    attributes such as ``eventsInside`` and names compensated parameters ``Comp-<detector>`` instead of
    using a compensation reference). Such a file is read leniently: attributes and elements outside the
    Gating-ML namespaces are dropped, and a dimension named ``<comp_prefix><detector>`` (default
    ``"Comp-"`` for these files) becomes ``<detector>`` compensated with the file's own matrix (``FCS``).
    Note that FlowJo writes coordinates in data units without the display transform, so its polygons are
    straight in linear space here, whereas FlowJo drew them on its display scale.
    """
    import flowkit as fk

    p = Path(path)
    if not p.is_file():
        raise GatingError("file not found", source=str(p), expected="a Gating-ML 2.0 XML file")
    try:
        checked = read_xml(p, what="Gating-ML document")  # no DTD or entities; size and depth limits
    except InputParseError as exc:
        raise GatingError(exc.problem, source=exc.source, field=exc.where, expected=exc.expected) from None
    root = checked.root
    if root.tag == "Workspace":
        raise GatingError("this is a FlowJo workspace, not a Gating-ML document", source=str(p),
                          expected="Gating-ML 2.0 (read workspaces with bat_analysis.gating.flowjo.read_workspace)")

    def parse() -> tuple[Any, bool]:
        try:  # FlowKit (lxml) gets the checked bytes, never the path
            return fk.parse_gating_xml(io.BytesIO(checked.data)), False
        except ValueError as exc:
            if "neither GatingML" not in str(exc):
                raise
        return _parse_lenient(root, p), True

    what = "Gating-ML 2.0 document"
    strategy, lenient = guarded(parse, source=str(p), what=what, error=GatingError)
    doc = guarded(lambda: from_flowkit_strategy(strategy), source=str(p), what=what, error=GatingError)
    doc.source = str(p)
    _restore_names(doc, root)
    doc.origin = _origin(root)
    prefix = comp_prefix if comp_prefix is not None else ("Comp-" if lenient else None)
    if prefix:
        for g in doc.gates:
            g.dims = tuple(Dimension(d.key[len(prefix):], d.transform, "FCS", d.ratio)
                           if d.key.startswith(prefix) and d.compensation is None else d for d in g.dims)
    return doc


def _parse_lenient(root: ET.Element, p: Path) -> Any:
    """Drop what the Gating-ML 2.0 schema does not allow (FlowJo's display attributes) and parse again."""
    import flowkit as fk

    comp_attr = f"{{{_GML_NS[0]}}}compensation-ref"
    needs_comp = {f"{{{_GML_NS[0]}}}dimension", f"{{{_GML_NS[0]}}}divider"}

    def clean(el: ET.Element) -> None:
        for key in [k for k in el.attrib if not k.startswith("{")]:
            del el.attrib[key]
        if el.tag in needs_comp and comp_attr not in el.attrib:
            el.set(comp_attr, "uncompensated")  # FlowJo omits it; compensation is in the parameter name
        for child in list(el):
            ns = child.tag[1:].split("}")[0] if child.tag.startswith("{") else ""
            if ns not in _GML_NS:
                el.remove(child)
            else:
                clean(child)

    root = copy.deepcopy(root)
    clean(root)  # the root is no dimension or divider: only its attributes and children are cleaned
    data = ET.tostring(root, encoding="utf-8")
    try:
        return fk.parse_gating_xml(io.BytesIO(data))
    except (ValueError, KeyError, TypeError, AttributeError, fk.exceptions.FlowKitException) as exc:
        raise GatingError(f"not a readable Gating-ML 2.0 document, even ignoring non-schema attributes: {exc}",
                          source=str(p)) from exc


# ---------------------------------------------------------------------------------------------- import
def transform_from_flowkit(xf: Any) -> ScaleTransform | Ratio:
    """Our transform (or :class:`Ratio`) equivalent to a ``flowkit.transforms`` object."""
    from flowkit import transforms as t

    if isinstance(xf, t.LinearTransform):
        return Linear(float(xf.param_t), float(xf.param_a))
    if isinstance(xf, t.LogTransform):
        return Log(float(xf.param_t), float(xf.param_m))
    if isinstance(xf, t.AsinhTransform):
        return Asinh(float(xf.param_t), float(xf.param_m), float(xf.param_a))
    if isinstance(xf, t.LogicleTransform):
        return Logicle(float(xf.param_t), float(xf.param_w), float(xf.param_m), float(xf.param_a))
    if isinstance(xf, t.HyperlogTransform):
        return Hyperlog(float(xf.param_t), float(xf.param_w), float(xf.param_m), float(xf.param_a))
    if isinstance(xf, t.RatioTransform):
        return Ratio(str(xf.dimensions[0]), str(xf.dimensions[1]), float(xf.param_a), float(xf.param_b),
                     float(xf.param_c))
    if isinstance(xf, t.WSPBiexTransform):
        return FlowJoBiex(float(xf.negative), float(xf.width), float(xf.positive), float(xf.max_value))
    if isinstance(xf, t.WSPLogTransform):
        return FlowJoLog(float(xf.offset), float(xf.decades))
    raise GatingError(f"unsupported transform {type(xf).__name__}", field="transformation",
                      expected="linear, log, asinh, logicle, hyperlog, ratio, FlowJo biex or log")


def _comp(ref: Any) -> str | None:
    return None if ref in UNCOMPENSATED else str(ref)


def from_flowkit_strategy(strategy: Any, sample_id: str | None = None) -> GatingDocument:
    """Convert a FlowKit ``GatingStrategy`` (template gates, or ``sample_id``'s custom gates) to ours."""
    import flowkit as fk
    from flowkit import exceptions as fk_exc

    converted = {k: transform_from_flowkit(v) for k, v in strategy.transformations.items()}
    transforms = {k: v for k, v in converted.items() if isinstance(v, ScaleTransform)}
    ratios = {k: v for k, v in converted.items() if isinstance(v, Ratio)}
    spillovers = {}
    for mid, m in strategy.comp_matrices.items():
        fl = tuple(str(f) for f in (m.fluorochromes or ()))
        spillovers[mid] = Spillover(tuple(m.detectors), np.asarray(m.matrix), name=mid,
                                    fluorochromes=fl if fl and all(fl) else ())

    ids = list(strategy.get_gate_ids())
    counts: dict[str, int] = {}
    for gid, _ in ids:
        counts[gid] = counts.get(gid, 0) + 1

    def our_name(gid: str, path: Sequence[str]) -> str:
        if counts.get(gid, 0) <= 1:
            return gid
        return "/".join([*[p for p in path if p != "root"], gid])

    def parent_of(path: Sequence[str]) -> str | None:
        if len(path) <= 1:
            return None
        return our_name(path[-1], tuple(path[:-1]))

    def dim(d: Any) -> Dimension:
        tr = transforms.get(d.transformation_ref) if d.transformation_ref else None
        if d.transformation_ref and tr is None:
            raise GatingError(f"unknown transformation {d.transformation_ref!r}", field="transformation-ref")
        if isinstance(d, fk.RatioDimension):
            r = ratios.get(d.ratio_ref)
            if r is None:
                raise GatingError(f"unknown ratio transformation {d.ratio_ref!r}", field="transformation-ref")
            return Dimension(str(d.ratio_ref), tr, _comp(d.compensation_ref), r)
        if isinstance(d, fk.QuadrantDivider):
            return Dimension(str(d.dimension_ref), tr, _comp(d.compensation_ref))
        return Dimension(str(d.id), tr, _comp(d.compensation_ref))

    gates: list[Gate] = []
    for gid, path in ids:
        try:
            g = strategy.get_gate(gid, path, sample_id=sample_id)
        except fk_exc.QuadrantReferenceError:
            continue  # a quadrant: converted with its quadrant gate below
        name, parent = our_name(gid, path), parent_of(path)
        if isinstance(g, fk.gates.QuadrantGate):
            div_by_id = {d.id: d for d in g.dimensions}
            for qid, quad in g.quadrants.items():
                dims, mins, maxs, divs = [], [], [], []
                for ref in quad.divider_refs:
                    d = div_by_id[ref]
                    lo, hi = quad.get_divider_range(ref)
                    if lo is None and hi is None:
                        continue
                    dims.append(dim(d))
                    mins.append(None if lo is None else float(lo))
                    maxs.append(None if hi is None else float(hi))
                    divs.append(tuple(float(v) for v in d.values))
                gates.append(QuadrantGate(our_name(qid, (*path, gid)), tuple(dims), mins=tuple(mins),
                                          maxs=tuple(maxs), group=name, dividers=tuple(divs), parent=parent))
        elif isinstance(g, fk.gates.RectangleGate):
            gates.append(RangeGate(name, tuple(dim(d) for d in g.dimensions),
                                   mins=tuple(_f(getattr(d, "min", None)) for d in g.dimensions),
                                   maxs=tuple(_f(getattr(d, "max", None)) for d in g.dimensions), parent=parent))
        elif isinstance(g, fk.gates.PolygonGate):
            gates.append(PolygonGate(name, tuple(dim(d) for d in g.dimensions),
                                     vertices=np.asarray(g.vertices, dtype=float),
                                     complement=bool(getattr(g, "use_complement", False)), parent=parent))
        elif isinstance(g, fk.gates.EllipsoidGate):
            gates.append(EllipsoidGate(name, tuple(dim(d) for d in g.dimensions),
                                       mean=np.asarray(g.coordinates, dtype=float),
                                       covariance=np.asarray(g.covariance_matrix, dtype=float),
                                       distance_square=float(g.distance_square), parent=parent))
        elif isinstance(g, fk.gates.BooleanGate):
            ops = tuple((our_name(r["ref"], tuple(r["path"])), bool(r["complement"])) for r in g.gate_refs)
            gates.append(BooleanGate(name, (), op=g.type, operands=ops, parent=parent))
        else:
            raise GatingError(f"gate {gid!r}: unsupported gate type {type(g).__name__}", field="gate",
                              expected="rectangle, polygon, ellipsoid, quadrant or boolean")
    return GatingDocument(gates, transforms, spillovers)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


# ---------------------------------------------------------------------------------------------- export
def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _ancestors(gate: Gate, by_name: Mapping[str, Gate]) -> tuple[str, ...]:
    """FlowKit gate path ('root', ..., parent) of a gate; a quadrant's parent path skips no level."""
    chain: list[str] = []
    for p in ancestors(gate.name, {name: g.parent for name, g in by_name.items()}, parent=gate.parent):
        chain.append(str(p))
        pg = by_name[str(p)]
        if isinstance(pg, QuadrantGate):
            chain.append(pg.group)  # FlowKit paths run through the quadrant gate, then the quadrant
    return ("root", *reversed(chain))


def _depends_on(g: Gate) -> list[str]:
    """What a gate needs added first: its parent, then a boolean gate's operands."""
    deps = [g.parent] if g.parent else []
    return deps + ([r for r, _ in g.operands] if isinstance(g, BooleanGate) else [])


def to_flowkit_strategy(gates: Iterable[Gate], spillovers: Mapping[str, Any] | None = None) -> Any:
    """A FlowKit ``GatingStrategy`` holding our gates (transforms and matrices registered by id)."""
    import flowkit as fk
    from flowkit import transforms as fkt

    gate_list = list(gates)
    by_name = {g.name: g for g in gate_list}
    gs = fk.GatingStrategy()
    for ref, sp in (spillovers or {}).items():
        if ref in UNCOMPENSATED or ref == "FCS":
            continue
        gs.add_comp_matrix(ref, as_spillover(sp).to_flowkit())
    xform_ids: dict[Any, str] = {}

    def xform_id(t: Any) -> str | None:
        if t is None:
            return None
        if getattr(t, "kind", None) in ("biex", "flowjo_log"):
            raise GatingError(f"transform {t.name} is FlowJo's own and has no Gating-ML 2.0 equivalent",
                              field="transform", expected="linear, log, asinh, logicle or hyperlog "
                              "(export a FlowJo workspace instead)")
        key = t.name
        if key not in xform_ids:
            tid = _safe_id(key)
            xform_ids[key] = tid
            gs.add_transform(tid, t.to_flowkit())
        return xform_ids[key]

    def comp_ref(d: Dimension) -> str:
        return "uncompensated" if d.compensation in UNCOMPENSATED else str(d.compensation)

    def fk_dim(d: Dimension, lo: float | None = None, hi: float | None = None) -> Any:
        if d.ratio is not None:
            rid = _safe_id(d.key)
            if rid not in gs.transformations:
                r = d.ratio
                gs.add_transform(rid, fkt.RatioTransform([r.numerator, r.denominator], r.A, r.B, r.C))
            return fk.RatioDimension(rid, comp_ref(d), xform_id(d.transform), range_min=lo, range_max=hi)
        return fk.Dimension(d.key, comp_ref(d), xform_id(d.transform), range_min=lo, range_max=hi)

    # parents (and boolean operands) first
    order = topological_order(gate_list, lambda g: g.name, _depends_on)
    added_quads: set[str] = set()
    for g in order:
        path = _ancestors(g, by_name)
        if isinstance(g, QuadrantGate):
            if g.group in added_quads:
                continue
            added_quads.add(g.group)
            members = [q for q in gate_list if isinstance(q, QuadrantGate) and q.group == g.group]
            dividers, div_ids = [], {}
            for q in members:  # the union of the dividers the quadrants are positioned on
                for d, values in zip(q.dims, q.dividers):
                    if d.key in div_ids:
                        continue
                    div_id = _safe_id(f"{g.group}_div{len(div_ids) + 1}")
                    div_ids[d.key] = div_id
                    dividers.append(fk.QuadrantDivider(div_id, d.key, comp_ref(d), list(values),
                                                       transformation_ref=xform_id(d.transform)))
            quads = []
            for q in members:
                refs = [div_ids[d.key] for d in q.dims]
                quads.append(fk.gates.Quadrant(q.name, refs, [[lo, hi] for lo, hi in zip(q.mins, q.maxs)]))
            gs.add_gate(fk.gates.QuadrantGate(g.group, dividers, quads), path)
        elif isinstance(g, RangeGate):
            gs.add_gate(fk.gates.RectangleGate(g.name, [fk_dim(d, lo, hi) for d, lo, hi
                                                        in zip(g.dims, g.mins, g.maxs)]), path)
        elif isinstance(g, PolygonGate):
            gs.add_gate(fk.gates.PolygonGate(g.name, [fk_dim(d) for d in g.dims], g.vertices.tolist(),
                                             use_complement=g.complement), path)
        elif isinstance(g, EllipsoidGate):
            gs.add_gate(fk.gates.EllipsoidGate(g.name, [fk_dim(d) for d in g.dims], g.mean.tolist(),
                                               g.covariance.tolist(), float(g.distance_square)), path)
        elif isinstance(g, BooleanGate):
            refs = []
            for ref, complement in g.operands:
                og = by_name[ref]
                opath = _ancestors(og, by_name)
                if isinstance(og, QuadrantGate):
                    opath = (*opath, og.group)
                refs.append({"ref": ref, "path": opath, "complement": complement})
            gs.add_gate(fk.gates.BooleanGate(g.name, g.op, refs), path)
        else:
            raise GatingError(f"gate {g.name!r}: cannot export {type(g).__name__}")
    return gs


_NAMES_NS = "urn:bat-analysis:gate-names"
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _gml_ids(gates: Sequence[Gate]) -> dict[str, str]:
    """A valid, unique Gating-ML id (an XML NCName) for every gate and quadrant-gate name."""
    names: list[str] = []
    for g in gates:
        names.append(g.name)
        if isinstance(g, QuadrantGate) and g.group not in names:
            names.append(g.group)
    ids: dict[str, str] = {}
    used: set[str] = set()
    for n in names:
        if n in ids:
            continue
        base = n if _NCNAME.match(n) else re.sub(r"[^A-Za-z0-9_.-]", "_", n)
        if not re.match(r"[A-Za-z_]", base):
            base = "g_" + base
        cand, k = base, 1
        while cand in used or (cand != n and cand in names):
            k += 1
            cand = f"{base}_{k}"
        ids[n] = cand
        used.add(cand)
    return ids


def _renamed(gates: Sequence[Gate], ids: Mapping[str, str]) -> list[Gate]:
    import dataclasses

    out = []
    for g in gates:
        changes: dict[str, Any] = {"name": ids[g.name]}
        if g.parent is not None:
            changes["parent"] = ids.get(g.parent, g.parent)
        if isinstance(g, BooleanGate):
            changes["operands"] = tuple((ids.get(r, r), c) for r, c in g.operands)
        if isinstance(g, QuadrantGate):
            changes["group"] = ids[g.group]
        out.append(dataclasses.replace(g, **changes))
    return out


def export_gatingml(gates: Iterable[Gate], path: str | Path, spillovers: Mapping[str, Any] | None = None, *,
                    origin: Mapping[str, str] | None = None) -> Path:
    """Write gates (with their transforms and the named spillover matrices) as Gating-ML 2.0.

    Gate names that are not valid Gating-ML ids (spaces, ``+``, ``:``... as FlowJo population names
    have) are written as sanitised ids; the original names are kept in a document-level
    ``custom_info`` element, from which :func:`read_gatingml` restores them. ``origin`` (``file``: the
    data file's path in its layout, ``sha256``: its checksum) is recorded there too and read back as
    :attr:`GatingDocument.origin`, so that the gates find their file again whatever the document is called.
    """
    import flowkit as fk

    gate_list = list(gates)
    ids = _gml_ids(gate_list)
    gs = to_flowkit_strategy(_renamed(gate_list, ids), spillovers)
    buf = io.BytesIO()
    fk.export_gatingml(gs, buf)
    data = buf.getvalue()
    renamed = {new: old for old, new in ids.items() if new != old}
    if renamed or origin:
        root = ET.fromstring(data)
        info = ET.Element(f"{{{_GML_NS[2]}}}custom_info")
        if origin:
            ET.SubElement(info, f"{{{_NAMES_NS}}}source", {k: str(v) for k, v in origin.items() if v is not None})
        if renamed:
            names = ET.SubElement(info, f"{{{_NAMES_NS}}}names")
            for new, old in renamed.items():
                ET.SubElement(names, f"{{{_NAMES_NS}}}gate", {"id": new, "name": old})
        root.insert(0, info)
        ET.register_namespace("bat", _NAMES_NS)
        data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return atomic_write_bytes(path, data)


def _origin(root: ET.Element) -> dict[str, str]:
    """The data file recorded by :func:`export_gatingml` (empty if none, or if recorded twice)."""
    found = [el for el in root.iter(f"{{{_NAMES_NS}}}source")]
    if len(found) != 1:
        return {}
    return {k: str(v) for k, v in found[0].attrib.items() if k in ("file", "sha256")}


def _restore_names(doc: GatingDocument, root: ET.Element) -> None:
    """Undo the id sanitising of :func:`export_gatingml` (names recorded in the root's custom_info)."""
    import dataclasses

    names = {el.attrib["id"]: el.attrib["name"] for el in root.iter(f"{{{_NAMES_NS}}}gate")
             if "id" in el.attrib and "name" in el.attrib}
    if not names:
        return
    doc.gates = [dataclasses.replace(g, **_name_changes(g, names)) for g in doc.gates]


def _name_changes(g: Gate, names: Mapping[str, str]) -> dict[str, Any]:
    changes: dict[str, Any] = {"name": names.get(g.name, g.name)}
    if g.parent is not None:
        changes["parent"] = names.get(g.parent, g.parent)
    if isinstance(g, BooleanGate):
        changes["operands"] = tuple((names.get(r, r), c) for r, c in g.operands)
    if isinstance(g, QuadrantGate):
        changes["group"] = names.get(g.group, g.group)
    return changes
