"""FlowJo 10 workspaces (.wsp): import gates and FlowJo's counts, export one workspace per experiment.

Import parses the workspace with FlowKit's ``Workspace`` and converts each sample's gating strategy to
our gates (:func:`bat_analysis.gating.gatingml.from_flowkit_strategy`); FlowJo's own population counts
are read from the XML (``Population@count``) so that our evaluation can be checked against them.
The file is first read by the hardened parser (:func:`bat_analysis._safe_parse.read_xml`: no DTD or
entities, size and depth limits) and FlowKit is given those checked bytes, never the path; anything FlowKit
raises becomes a :class:`GatingError` naming the file. A ``transforms:linear`` without ``minRange`` /
``maxRange`` (FlowKit cannot read it) gets FlowJo's defaults (0, 262144) with a :class:`WorkspaceWarning`.

Why polygons and ellipses differ slightly from FlowJo's counts (rectangles do not): FlowJo evaluates a
polygon or ellipse on its *display* raster -- each event is binned to the plot's grid
(``gateResolution``, 256 or 1024 channels per axis of the transformed scale) and the gate is tested on
the bin, not on the exact value; ellipses are, moreover, turned into polygons first. Events within about
one bin of a polygon's edge can therefore fall on the other side than an exact point-in-polygon test puts
them. The difference is a handful of events along the boundary (issue 3 accepts 1% or 5 events).
Rectangles and ranges are tested on exact values and agree exactly. :meth:`FlowJoSample.evaluate` can
emulate the raster (``emulate_binning=True``): display coordinates of events and vertices are rounded to
the polygon's ``gateResolution`` grid before the test; on the corpus this reproduces FlowJo's counts
exactly except for a few events on FlowJo "biex" axes, whose display scale FlowKit only approximates.

Export writes, for a batch of tubes, ONE workspace with one ``Sample`` per tube (named
:attr:`WorkspaceTube.name`, which must be unique; ``DataSet uri`` is the file), each with its own gates
(automated gates differ from tube to tube), its own transforms and spillover matrix, so that a reviewer
can open the experiment in FlowJo. Gate coordinates are stored in data units, as FlowJo does (inverse of
the dimension's transform), and a transform element is written for every gated parameter. Ranges and
quadrants become rectangles, polygons polygons, and ellipses ``EllipsoidGate`` as FlowJo 10 writes them:
two foci and four edge points (major axis ends, then minor) in display channels, 0-256 across each
transformed axis (:func:`ellipse_foci_edges`). FlowKit reads such an ellipse as a 128-vertex polygon, as
FlowJo evaluates it; :func:`read_workspace` puts the exact ellipse back (:func:`ellipse_from_foci_edges`),
so that an exported ellipse re-imports as itself. Boolean gates become FlowJo's ``AndNode`` /
``OrNode`` / ``NotNode`` under their parent, naming their operands by population path
(``Dependent name="A/B"``) and carrying a copy of the first operand's gate for display, which is how FlowJo
10 writes them and how FlowKit's workspace parser reads them back. FlowJo has no per-operand complement, so
an operand complemented inside an and/or is refused (write it as a NOT gate of its own).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence
from xml.etree import ElementTree as ET

import numpy as np

from ..errors import GatingError, InputParseError
from .._fileio import atomic_path
from .._safe_parse import XmlDocument, guarded, read_xml
from .compensation import Spillover, as_spillover
from .gatingml import GatingDocument, export_gatingml, from_flowkit_strategy
from ._hierarchy import HierarchyError, ancestors, topological_order
from .gates import UNCOMPENSATED, BooleanGate, Dimension, EllipsoidGate, Gate, PolygonGate, RangeGate, evaluate
from .transforms import Asinh, FlowJoBiex, FlowJoLog, Linear, Logicle, ScaleTransform

__all__ = ["FlowJoSample", "BinnedPolygonGate", "read_workspace", "flowjo_counts", "WorkspaceTube", "export_workspace",
           "export_gatingml", "ACQUISITION_DEFINED"]

ACQUISITION_DEFINED = "Acquisition-defined"
NS = {
    "gating": "http://www.isac-net.org/std/Gating-ML/v2.0/gating",
    "transforms": "http://www.isac-net.org/std/Gating-ML/v2.0/transformations",
    "data-type": "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


def _q(prefix: str, tag: str) -> str:
    return f"{{{NS[prefix]}}}{tag}"


@dataclass(eq=False)
class BinnedPolygonGate(PolygonGate):
    """A polygon tested the way FlowJo does: on display coordinates rounded to a ``resolution`` grid.

    The dimensions' transforms must map the display range to [0, 1] (FlowJo's display scales do).
    """

    resolution: int = 256

    def own_mask(self, events: Any, masks: Mapping[str, np.ndarray],
                 rows: np.ndarray | None = None, rows_key: Any = None) -> np.ndarray:
        from flowutils.gating import points_in_polygon

        r = float(self.resolution)
        x, y = self._cols(events, rows, rows_key)
        pts = np.column_stack([np.round(np.asarray(x, dtype=np.float64) * r) / r,
                               np.round(np.asarray(y, dtype=np.float64) * r) / r])
        inside = np.asarray(points_in_polygon(np.round(self.vertices * r) / r, pts), dtype=bool)
        return ~inside if self.complement else inside


@dataclass
class FlowJoSample:
    """One sample of a workspace: its gates (ours), FlowJo's counts per gate, and where its FCS file is.

    ``resolutions`` holds each polygon's ``gateResolution`` (FlowJo's display raster); ``keywords`` the
    sample's keywords stored in the workspace (``BAT_FILE`` / ``BAT_SHA256`` name the tube an export of
    ``bat export-gates`` was made for).
    """

    sample_id: str
    name: str
    document: GatingDocument
    counts: dict[str, int]
    uri: str | None = None
    resolutions: dict[str, int] = field(default_factory=dict)
    keywords: dict[str, str] = field(default_factory=dict)

    def gate_names(self) -> list[str]:
        return [g.name for g in self.document.gates]

    def flowjo_gates(self) -> list[Gate]:
        """The gates with each polygon that has a ``gateResolution`` tested on FlowJo's raster."""
        out: list[Gate] = []
        for g in self.document.gates:
            res = self.resolutions.get(g.name)
            if isinstance(g, PolygonGate) and res:
                out.append(BinnedPolygonGate(g.name, g.dims, vertices=g.vertices, complement=g.complement,
                                             resolution=int(res), parent=g.parent))
            else:
                out.append(g)
        return out

    def evaluate(self, events: np.ndarray, channel_names: Sequence[str], fcs_spillover: Any | None = None,
                 *, emulate_binning: bool = False) -> dict[str, np.ndarray]:
        """Membership of every gate; exact, or with FlowJo's polygon raster emulated."""
        gates = self.flowjo_gates() if emulate_binning else self.document.gates
        return evaluate(gates, self.document.events(events, channel_names, fcs_spillover))


def flowjo_counts(path: str | Path) -> dict[str, dict[tuple[str, ...], int]]:
    """FlowJo's population counts per sample name: ``{sample: {(gate, path...): count}}``.

    Keys are population paths from the sample's root (``("Lymphocytes", "Singlets")``); a count of -1
    (not computed by FlowJo) is left out.
    """
    return _counts(_read(path).root, str(path))


_POPULATION_NODES = ("Population", "AndNode", "OrNode", "NotNode")


def _populations(node: ET.Element) -> Iterator[tuple[tuple[str, ...], ET.Element]]:
    """(population path, element) of every population node below a ``SampleNode``, boolean nodes included,
    parents before children (an explicit stack: no recursion limit on deep hierarchies)."""
    def children(el: ET.Element) -> list[ET.Element]:
        subs = el.find("Subpopulations")
        return [] if subs is None else [p for p in subs if p.tag in _POPULATION_NODES]

    stack: list[tuple[tuple[str, ...], ET.Element]] = [((pop.attrib.get("name", ""),), pop)
                                                        for pop in reversed(children(node))]
    while stack:
        key, pop = stack.pop()
        yield key, pop
        stack.extend(((*key, c.attrib.get("name", "")), c) for c in reversed(children(pop)))


def _counts(root: ET.Element, source: str) -> dict[str, dict[tuple[str, ...], int]]:
    out: dict[str, dict[tuple[str, ...], int]] = {}
    for sample in root.iter("Sample"):
        node = sample.find("SampleNode")
        if node is None:
            continue
        counts: dict[tuple[str, ...], int] = {}
        for key, pop in _populations(node):
            text = pop.attrib.get("count", "-1")
            try:
                c = int(float(text))
            except (ValueError, OverflowError):
                raise GatingError(f"population {'/'.join(key)}: count {text[:40]!r} is not a number",
                                  source=source, field="count", expected="an event count") from None
            if c >= 0:
                counts[key] = c
        out[node.attrib.get("name", "")] = counts
    return out


def _gate_resolutions(root: ET.Element) -> dict[str, dict[tuple[str, ...], int]]:
    """``gateResolution`` of every polygon, per sample name and population path."""
    out: dict[str, dict[tuple[str, ...], int]] = {}
    for sample in root.iter("Sample"):
        node = sample.find("SampleNode")
        if node is None:
            continue
        res: dict[tuple[str, ...], int] = {}
        for key, pop in _populations(node):
            gate = pop.find("Gate") if pop.tag == "Population" else None  # a boolean node's is for display
            for shape in gate if gate is not None else ():
                value = shape.attrib.get("gateResolution")
                if shape.tag == _q("gating", "PolygonGate") and value and value.isdigit():
                    res[key] = int(value)
        out[node.attrib.get("name", "")] = res
    return out


def _ellipses(root: ET.Element) -> dict[str, dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]]:
    """Foci and edge points (display channels) of every ``EllipsoidGate``, per sample name and population
    path; an ellipse whose points are not 2 foci and 4 edge points of 2 numbers each is left to FlowKit."""
    out: dict[str, dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]] = {}

    def points(el: ET.Element | None) -> np.ndarray | None:
        if el is None:
            return None
        rows = []
        for v in el.findall(_q("gating", "vertex")):
            try:
                rows.append([float(c.attrib[_q("data-type", "value")]) for c in v.findall(_q("gating", "coordinate"))])
            except (KeyError, ValueError):
                return None
        arr = np.array(rows, dtype=float) if rows and all(len(r) == 2 for r in rows) else None
        return arr if arr is not None and np.isfinite(arr).all() else None

    for sample in root.iter("Sample"):
        node = sample.find("SampleNode")
        if node is None:
            continue
        found: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        for key, pop in _populations(node):
            gate = pop.find("Gate") if pop.tag == "Population" else None  # a boolean node's is for display
            shape = gate.find(_q("gating", "EllipsoidGate")) if gate is not None else None
            if shape is not None:
                foci, edges = points(shape.find(_q("gating", "foci"))), points(shape.find(_q("gating", "edge")))
                if foci is not None and edges is not None and len(foci) == 2 and len(edges) == 4:
                    found[key] = (foci, edges)
        out[node.attrib.get("name", "")] = found
    return out


def _as_ellipse(g: Gate, foci: np.ndarray, edges: np.ndarray) -> Gate:
    """FlowKit's polygon for a FlowJo ellipse replaced by the ellipse itself, on the same (transformed) axes."""
    if not isinstance(g, PolygonGate) or len(g.dims) != 2:
        return g
    per_unit = np.array([_display_scale(d.transform, 1.0) for d in g.dims])  # FlowKit's reading of channels
    mean, cov = ellipse_from_foci_edges(foci, edges)
    return EllipsoidGate(g.name, g.dims, mean=mean / per_unit, covariance=cov / np.outer(per_unit, per_unit),
                         distance_square=1.0, parent=g.parent)


def _read(path: str | Path) -> XmlDocument:
    """The workspace parsed by the hardened parser (no DTD or entities, size and depth limits)."""
    p = Path(path)
    if not p.is_file():
        raise GatingError("file not found", source=str(p), expected="a FlowJo 10 workspace (.wsp)")
    try:
        return read_xml(p, what="FlowJo workspace")
    except InputParseError as exc:
        raise GatingError(exc.problem, source=exc.source, field=exc.where, expected=exc.expected) from None


# FlowJo's defaults for a linear axis whose range it did not write (FlowKit needs both attributes)
LINEAR_DEFAULTS = {"minRange": "0", "maxRange": "262144"}


class WorkspaceWarning(UserWarning):
    """Something of a workspace was read with FlowJo's defaults instead of the file's own values."""


def _with_linear_defaults(doc: XmlDocument) -> bytes:
    """The workspace bytes for FlowKit, with FlowJo's default range on ``transforms:linear`` lacking one.

    FlowJo 10 may write a linear transform without ``minRange``/``maxRange``; FlowKit then fails with a
    TypeError. The missing attributes are filled in (an un-namespaced attribute of the same name is taken
    first, else ``LINEAR_DEFAULTS``) and a :class:`WorkspaceWarning` names the parameters. A linear scale's
    range does not change which events a gate holds. Untouched workspaces are passed on byte for byte.
    """
    filled: list[str] = []
    for el in doc.root.iter(_q("transforms", "linear")):
        missing = [a for a in LINEAR_DEFAULTS if _q("transforms", a) not in el.attrib]
        if not missing:
            continue
        for a in missing:
            el.set(_q("transforms", a), el.attrib.get(a, LINEAR_DEFAULTS[a]))
        param = el.find(_q("data-type", "parameter"))
        name = param.attrib.get(_q("data-type", "name"), "?") if param is not None else "?"
        filled.append(f"{name} ({', '.join(missing)})")
    if not filled:
        return doc.data
    filled = list(dict.fromkeys(filled))  # one mention per parameter, not per sample
    warnings.warn(f"{doc.source}: linear transform without range read with FlowJo's defaults "
                  f"(minRange 0, maxRange 262144): {'; '.join(filled[:10])}"
                  + (f" and {len(filled) - 10} more" if len(filled) > 10 else ""), WorkspaceWarning, stacklevel=3)
    return ET.tostring(doc.root, encoding="utf-8", xml_declaration=True)


def read_workspace(path: str | Path) -> dict[str, FlowJoSample]:
    """Import every sample of a FlowJo 10 workspace: gates (ours) and FlowJo's counts, keyed by sample name.

    Gate names are FlowJo population names, path-qualified (``parent/child``) where a name repeats.
    The FCS files are not needed (``FlowJoSample.uri`` says where FlowJo found each one). Two samples
    of one name are refused (FlowKit keeps one sample per name, so the other's gates would be lost).
    """
    import flowkit as fk

    p = Path(path)
    doc = _read(p)
    root = doc.root
    if root.tag != "Workspace":
        raise GatingError(f"root element is {root.tag!r}", source=str(p), field="Workspace",
                          expected="a FlowJo 10 workspace")
    data = _with_linear_defaults(doc)

    def parse() -> Any:
        with warnings.catch_warnings():
            # FlowKit warns for every sample whose FCS file it was not given; we do not need them
            warnings.filterwarnings("ignore", message=".*sample was not loaded.*")
            # the checked bytes (no DTD, so nothing for lxml to expand or fetch), not the path
            return fk.Workspace(io.BytesIO(data), fcs_samples=None, load_missing_file_data=True)

    def flowkit(call: Any) -> Any:  # whatever FlowKit raises becomes a GatingError naming this workspace
        return guarded(call, source=str(p), what="FlowJo workspace", error=GatingError)

    ws = flowkit(parse)
    counts = _counts(root, str(p))
    resolutions = _gate_resolutions(root)
    ellipses = _ellipses(root)
    uris = {}
    named: dict[str, int] = {}
    for sample in root.iter("Sample"):
        node, ds = sample.find("SampleNode"), sample.find("DataSet")
        if node is not None:
            named[node.attrib.get("name", "")] = named.get(node.attrib.get("name", ""), 0) + 1
        if node is not None and ds is not None:
            uris[node.attrib.get("name", "")] = ds.attrib.get("uri")
    twice = sorted(n for n, k in named.items() if k > 1)
    if twice:  # FlowKit keeps one sample per name: the others' gates would be lost or given to the wrong file
        raise GatingError(f"several samples are named {', '.join(repr(n) for n in twice)}", source=str(p),
                          field="SampleNode name",
                          expected="one sample per name (rename the samples in FlowJo so that each name is unique)")
    out: dict[str, FlowJoSample] = {}
    for sid in flowkit(lambda: ws.get_sample_ids(loaded_only=False)):
        strategy = flowkit(lambda: ws.get_gating_strategy(sid))
        doc = flowkit(lambda: from_flowkit_strategy(strategy))
        doc.source = str(p)
        by_path, res_by_path = counts.get(sid, {}), resolutions.get(sid, {})
        gate_counts: dict[str, int] = {}
        gate_res: dict[str, int] = {}
        shapes = ellipses.get(sid, {})
        for gid, gpath in strategy.get_gate_ids():
            key = (*[x for x in gpath if x != "root"], gid)
            if key in shapes:  # FlowKit made a polygon of it; the exact ellipse is in the workspace
                ours = _our_name(gid, gpath, strategy)
                doc.gates = [_as_ellipse(g, *shapes[key]) if g.name == ours else g for g in doc.gates]
            if key in by_path:
                gate_counts[_our_name(gid, gpath, strategy)] = by_path[key]
            if key in res_by_path:
                gate_res[_our_name(gid, gpath, strategy)] = res_by_path[key]
        keywords = {str(k): str(v) for k, v in (ws.get_keywords(sid) or {}).items()}
        out[sid] = FlowJoSample(sid, sid, doc, gate_counts, uris.get(sid), gate_res, keywords)
    return out


def _our_name(gid: str, path: Sequence[str], strategy: Any) -> str:
    n = sum(1 for g, _ in strategy.get_gate_ids() if g == gid)
    return gid if n <= 1 else "/".join([*[x for x in path if x != "root"], gid])


# ---------------------------------------------------------------------------------------------- export
@dataclass
class WorkspaceTube:
    """One tube to write into a workspace: its FCS file, its gates and (optionally) its spillover matrix.

    ``spillovers`` maps the compensation references used by the gates (``"FCS"`` for the file's own)
    to matrices; ``channel_ranges`` gives ``$PnR`` per channel for the linear display of untransformed
    parameters (262144 when absent); ``keywords`` are copied into the workspace for FlowJo's tables;
    ``counts`` (events per gate) and ``n_events`` are written as the populations' ``count`` attributes
    (FlowJo recomputes them when it opens the file; other readers can compare against them).
    """

    fcs_path: str | Path
    gates: Sequence[Gate]
    spillovers: Mapping[str, Any] = field(default_factory=dict)
    channel_ranges: Mapping[str, float] = field(default_factory=dict)
    keywords: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    n_events: int | None = None

    @property
    def sample_name(self) -> str:
        return self.name or Path(self.fcs_path).name


def _fmt(v: float) -> str:
    return repr(float(v))


def _transform_element(parent: ET.Element, param: str, t: ScaleTransform | None, top: float) -> None:
    t = getattr(t, "exact", t)  # table-based transforms are written as the scale they tabulate
    if t is None or isinstance(t, Linear):
        el = ET.SubElement(parent, _q("transforms", "linear"))
        lo, hi = (0.0, top) if t is None else (t.A, t.T)
        el.set(_q("transforms", "minRange"), _fmt(lo))
        el.set(_q("transforms", "maxRange"), _fmt(hi))
        el.set("gain", "1")
    elif isinstance(t, Logicle):
        el = ET.SubElement(parent, _q("transforms", "logicle"))
        el.set(_q("transforms", "length"), "256")
        for k, v in (("T", t.T), ("W", t.W), ("M", t.M), ("A", t.A)):
            el.set(_q("transforms", k), _fmt(v))
    elif isinstance(t, Asinh):
        el = ET.SubElement(parent, _q("transforms", "fasinh"))
        el.set(_q("transforms", "length"), "256")
        el.set(_q("transforms", "maxRange"), _fmt(t.T))
        for k, v in (("T", t.T), ("M", t.M), ("A", t.A)):
            el.set(_q("transforms", k), _fmt(v))
        el.set(_q("transforms", "W"), "0")
    elif isinstance(t, FlowJoBiex):
        el = ET.SubElement(parent, _q("transforms", "biex"))
        el.set(_q("transforms", "length"), "256")
        el.set(_q("transforms", "maxRange"), _fmt(t.max_value))
        el.set(_q("transforms", "neg"), _fmt(t.negative))
        el.set(_q("transforms", "width"), _fmt(t.width))
        el.set(_q("transforms", "pos"), _fmt(t.positive))
    elif isinstance(t, FlowJoLog):
        el = ET.SubElement(parent, _q("transforms", "log"))
        el.set(_q("transforms", "offset"), _fmt(t.offset))
        el.set(_q("transforms", "decades"), _fmt(t.decades))
    else:
        raise GatingError(f"parameter {param}: FlowJo has no equivalent of transform {t.name!r}",
                          field="transform", expected="linear, logicle, asinh, FlowJo biex or log")
    p = ET.SubElement(el, _q("data-type", "parameter"))
    p.set(_q("data-type", "name"), param)


def _spillover_element(parent: ET.Element, name: str, sp: Spillover, prefix: str) -> None:
    el = ET.SubElement(parent, _q("transforms", "spilloverMatrix"))
    el.set("prefix", prefix)
    el.set("name", name)
    el.set("editable", "0")
    el.set("version", "FlowJo-10.5.3")
    el.set("status", "FINALIZED")
    el.set("suffix", "")
    params = ET.SubElement(el, _q("data-type", "parameters"))
    for det in sp.channels:
        pe = ET.SubElement(params, _q("data-type", "parameter"))
        pe.set(_q("data-type", "name"), det)
        pe.set("userProvidedCompInfix", prefix + det)
    for i, det in enumerate(sp.channels):
        row = ET.SubElement(el, _q("transforms", "spillover"))
        row.set(_q("data-type", "parameter"), det)
        row.set("userProvidedCompInfix", prefix + det)
        for j, det2 in enumerate(sp.channels):
            co = ET.SubElement(row, _q("transforms", "coefficient"))
            co.set(_q("data-type", "parameter"), det2)
            co.set(_q("transforms", "value"), _fmt(sp.matrix[i, j]))


DISPLAY_CHANNELS = 256.0  # FlowJo stores ellipses on its 256-channel display grid of each axis


def _display_scale(t: ScaleTransform | None, top: float) -> float:
    """Display channels per unit of a gate coordinate on an axis' scale (FlowJo's grid starts at 0 on it).

    FlowJo stores an ellipse in display channels, 0-256 across the transformed axis, which FlowKit reads
    back as ``channel / 256`` on the axis' transform (times 4096 for FlowJo's biex, whose scale runs to 4096).
    An untransformed parameter is shown on the linear scale written for it, 0 to ``$PnR``.
    """
    if t is None:
        return DISPLAY_CHANNELS / float(top)
    t = getattr(t, "exact", t)
    return DISPLAY_CHANNELS / (4096.0 if isinstance(t, FlowJoBiex) else 1.0)


def ellipse_foci_edges(mean: np.ndarray, covariance: np.ndarray, distance_square: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """FlowJo's ellipse: its two foci and four edge points (major axis ends, then minor axis ends)."""
    vals, vecs = np.linalg.eigh(np.asarray(covariance, dtype=float) * float(distance_square))
    if np.any(vals <= 0):
        raise GatingError("the ellipse's covariance is not positive definite", field="covariance")
    b, a = np.sqrt(vals)
    minor, major = vecs[:, 0], vecs[:, 1]
    if a - b <= 1e-9 * a:  # a circle: foci a hair apart, so that the major axis has a direction
        major, minor = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    c = np.sqrt(max(a * a - b * b, (1e-9 * a) ** 2))
    m = np.asarray(mean, dtype=float)
    return np.array([m - c * major, m + c * major]), np.array([m + a * major, m - a * major,
                                                                m + b * minor, m - b * minor])


def ellipse_from_foci_edges(foci: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of the ellipse FlowJo stores as foci and edge points (distance_square 1).

    As FlowKit reads it: the centre between the foci, the semi-major axis the longer of the first and
    third edge points' distances from it, along the foci, and the semi-minor axis from the foci (FlowJo's
    minor edge points are not reliable).
    """
    foci, edges = np.asarray(foci, dtype=float), np.asarray(edges, dtype=float)
    m = foci.mean(axis=0)
    a = max(float(np.linalg.norm(edges[0] - m)), float(np.linalg.norm(edges[2] - m)))
    c = float(np.linalg.norm(foci[1] - m))
    if c > 0:
        major = (foci[1] - m) / c
    else:
        far = edges[0] if np.linalg.norm(edges[0] - m) >= np.linalg.norm(edges[2] - m) else edges[2]
        major = (far - m) / max(float(np.linalg.norm(far - m)), 1e-300)
    minor = np.array([-major[1], major[0]])
    b2 = abs(a * a - c * c)
    cov = a * a * np.outer(major, major) + b2 * np.outer(minor, minor)
    return m, cov


def _gate_element(gate_parent: ET.Element, g: Gate, fj_id: str, parent_id: str | None,
                  param_name: Any, display: Any) -> None:
    def dims_of(el: ET.Element, dims: Sequence[Dimension], lims: Sequence[tuple[Any, Any]] | None) -> None:
        for k, d in enumerate(dims):
            de = ET.SubElement(el, _q("gating", "dimension"))
            if lims is not None:
                lo, hi = lims[k]
                if lo is not None:
                    de.set(_q("gating", "min"), _fmt(_to_data(d, lo)))
                if hi is not None:
                    de.set(_q("gating", "max"), _fmt(_to_data(d, hi)))
            fd = ET.SubElement(de, _q("data-type", "fcs-dimension"))
            fd.set(_q("data-type", "name"), param_name(d))

    if isinstance(g, RangeGate):
        el = ET.SubElement(gate_parent, _q("gating", "RectangleGate"))
        el.set("eventsInside", "1")
        el.set("percentX", "0")
        el.set("percentY", "0")
        dims_of(el, g.dims, list(zip(g.mins, g.maxs)))
    elif isinstance(g, EllipsoidGate):
        if len(g.dims) != 2:
            raise GatingError(f"gate {g.name}: only 2-D ellipses can be written to FlowJo", field="dims")
        for d in g.dims:
            if d.ratio is not None:
                raise GatingError(f"dimension {d.key}: ratio dimensions cannot be written to FlowJo", field="dims")
        scale = np.array([display(d) for d in g.dims])
        foci, edges = ellipse_foci_edges(g.mean * scale, g.covariance * np.outer(scale, scale),
                                         g.distance_square)
        el = ET.SubElement(gate_parent, _q("gating", "EllipsoidGate"))
        el.set("eventsInside", "1")
        dims_of(el, g.dims, None)
        for tag, points in (("foci", foci), ("edge", edges)):
            group = ET.SubElement(el, _q("gating", tag))
            for point in points:
                ve = ET.SubElement(group, _q("gating", "vertex"))
                for v in point:
                    ET.SubElement(ve, _q("gating", "coordinate")).set(_q("data-type", "value"), _fmt(v))
    elif isinstance(g, PolygonGate):
        verts = g.vertices
        el = ET.SubElement(gate_parent, _q("gating", "PolygonGate"))
        el.set("eventsInside", "0" if getattr(g, "complement", False) else "1")
        el.set("quadId", "-1")
        el.set("gateResolution", str(int(getattr(g, "resolution", 256))))
        dims_of(el, g.dims, None)
        for v in verts:
            ve = ET.SubElement(el, _q("gating", "vertex"))
            for k, d in enumerate(g.dims):
                ce = ET.SubElement(ve, _q("gating", "coordinate"))
                ce.set(_q("data-type", "value"), _fmt(_to_data(d, v[k])))
    else:
        raise GatingError(f"gate {g.name}: {type(g).__name__} has no FlowJo gate equivalent",
                          field="gates", expected="range, quadrant, polygon or ellipse gates")
    el.set(_q("gating", "id"), fj_id)
    if parent_id is not None:
        el.set(_q("gating", "parent_id"), parent_id)


_BOOLEAN_NODES = {"and": "AndNode", "or": "OrNode", "not": "NotNode"}


def _check_boolean(g: BooleanGate, by_name: Mapping[str, Gate]) -> None:
    """FlowJo's boolean nodes name whole populations; they have no per-operand complement."""
    for ref, complement in g.operands:
        if ref not in by_name:
            raise GatingError(f"gate {g.name}: operand {ref!r} is not a gate of this sample", field="operands",
                              expected="operands among the exported gates")
        if complement:
            raise GatingError(f"gate {g.name}: operand {ref!r} is complemented; FlowJo's {_BOOLEAN_NODES[g.op]} "
                              "cannot complement an operand", field="operands",
                              expected="plain operands (write the complement as a NOT gate of its own)")


def _display_gate(g: Gate, by_name: Mapping[str, Gate]) -> Gate | None:
    """The shape drawn for a gate: its own, or for a boolean gate its first operand's (None if none)."""
    seen: set[str] = set()
    while isinstance(g, BooleanGate):
        if g.name in seen:
            return None
        seen.add(g.name)
        g = by_name[g.operands[0][0]]
    return g


def _population_path(name: str, by_name: Mapping[str, Gate]) -> list[str]:
    """A population's path from the sample root, as FlowJo names boolean dependents (``A/B/C``)."""
    chain: list[str] = []
    for cur in (name, *ancestors(name, {n: g.parent for n, g in by_name.items()})):
        part = str(cur).rsplit("/", 1)[-1]
        if "/" in part:
            raise GatingError(f"gate {cur}: '/' in a population name", field="name")
        chain.append(part)
    return chain[::-1]


def _to_data(d: Dimension, v: float) -> float:
    """A gate coordinate in data units (FlowJo stores coordinates before the display transform)."""
    if d.ratio is not None:
        raise GatingError(f"dimension {d.key}: ratio dimensions cannot be written to FlowJo", field="dims")
    if d.transform is None:
        return float(v)
    return float(np.asarray(d.transform.inverse(np.array([float(v)])))[0])


def export_workspace(tubes: Iterable[WorkspaceTube], path: str | Path, group_name: str = "All Samples") -> Path:
    """Write one FlowJo 10 workspace holding every tube with its own gates; returns the path."""
    tube_list = list(tubes)
    if not tube_list:
        raise GatingError("no tubes to export", field="tubes", expected="at least one tube")
    out = Path(path)
    root = ET.Element("Workspace", {"version": "20.0", "flowJoVersion": "10.5.3", "curGroup": group_name})
    matrices = ET.SubElement(root, "Matrices")
    groups = ET.SubElement(root, "Groups")
    gnode = ET.SubElement(groups, "GroupNode", {"name": group_name, "annotation": "", "owningGroup": group_name})
    group = ET.SubElement(gnode, "Group", {"name": group_name})
    refs = ET.SubElement(group, "SampleRefs")
    samples = ET.SubElement(root, "SampleList")
    names_seen: set[str] = set()
    for k, tube in enumerate(tube_list, start=1):
        sid = str(k)
        if tube.sample_name in names_seen:
            raise GatingError(f"two tubes are named {tube.sample_name!r}", field="tubes",
                              expected="distinct FCS file names in one workspace")
        names_seen.add(tube.sample_name)
        ET.SubElement(refs, "SampleRef", {"sampleID": sid})
        _sample_element(samples, tube, sid, matrices)
    ET.indent(root, space="  ")
    with atomic_path(out) as tmp:
        ET.ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)
    return out


def _sample_element(samples: ET.Element, tube: WorkspaceTube, sid: str, matrices: ET.Element) -> None:
    gates = list(tube.gates)
    by_name = {g.name: g for g in gates}
    refs = {d.compensation for g in gates for d in g.dims if d.compensation not in UNCOMPENSATED}
    if len(refs) > 1:
        raise GatingError(f"{tube.sample_name}: gates use several compensation matrices {sorted(refs)}",
                          field="compensation", expected="one matrix per sample (a FlowJo limitation)")
    comp_ref = next(iter(refs), None)
    prefix = "Comp-"
    sp: Spillover | None = None
    if comp_ref is not None:
        if comp_ref not in tube.spillovers:
            raise GatingError(f"{tube.sample_name}: no spillover matrix given for reference {comp_ref!r}",
                              field="spillovers", expected=f"a matrix for {comp_ref!r}")
        sp = as_spillover(tube.spillovers[comp_ref])

    sample = ET.SubElement(samples, "Sample")
    fcs = Path(tube.fcs_path)
    try:
        uri = fcs.resolve().as_uri()
    except ValueError:
        uri = str(fcs)
    ET.SubElement(sample, "DataSet", {"uri": uri, "sampleID": sid})
    if sp is not None:
        matrix_name = ACQUISITION_DEFINED if comp_ref == "FCS" else str(comp_ref)
        _spillover_element(sample, matrix_name, sp, prefix)
        _spillover_element(matrices, matrix_name, sp, prefix)  # FlowJo also lists the matrices up front

    def param_name(d: Dimension) -> str:
        if sp is not None and d.compensation == comp_ref and d.key in sp.channels:
            return prefix + d.key
        return d.key

    transforms: dict[str, ScaleTransform | None] = {}
    for g in gates:
        for d in g.dims:
            prev = transforms.get(d.key, "unset")
            if prev != "unset" and prev != d.transform:
                raise GatingError(f"{tube.sample_name}: parameter {d.key} is gated on two scales",
                                  field="transform", expected="one transform per parameter (a FlowJo limitation)")
            transforms[d.key] = d.transform  # type: ignore[assignment]
    def display(d: Dimension) -> float:
        return _display_scale(d.transform, float(tube.channel_ranges.get(d.key, 262144.0)))

    xf = ET.SubElement(sample, "Transformations")
    for key, t in transforms.items():
        top = float(tube.channel_ranges.get(key, 262144.0))
        _transform_element(xf, key, t, top)
        if sp is not None and key in sp.channels:
            _transform_element(xf, prefix + key, t, top)
    kws = ET.SubElement(sample, "Keywords")
    for k, v in tube.keywords.items():
        ET.SubElement(kws, "Keyword", {"name": str(k), "value": str(v)})
    node = ET.SubElement(sample, "SampleNode", {"name": tube.sample_name, "annotation": "", "owningGroup": "",
                                                "sampleID": sid})
    if tube.n_events is not None:
        node.set("count", str(int(tube.n_events)))
    children: dict[str | None, list[Gate]] = {}
    for g in gates:
        if isinstance(g, BooleanGate):
            _check_boolean(g, by_name)
        if g.parent is not None and g.parent not in by_name:
            raise GatingError(f"gate {g.name}: unknown parent {g.parent!r}", field="parent")
        children.setdefault(g.parent, []).append(g)
    if len(by_name) != len(gates):
        dups = sorted({g.name for g in gates if sum(h.name == g.name for h in gates) > 1})
        raise GatingError(f"{tube.sample_name}: gate names {dups} are used twice", field="name",
                          expected="unique population names")
    try:  # every gate is then reachable from the sample's root
        topological_order(gates, lambda g: g.name, lambda g: [g.parent] if g.parent is not None else [])
    except HierarchyError as exc:
        raise GatingError(f"{tube.sample_name}: {exc}", field="parent",
                          expected="a hierarchy rooted at the events") from None
    ids: dict[str, str] = {}

    def add(parent_el: ET.Element, parent: str | None) -> None:
        kids = children.get(parent, [])
        if not kids:
            return
        subs = ET.SubElement(parent_el, "Subpopulations")
        for g in kids:
            fj_id = f"ID{sid}{len(ids) + 1:04d}"
            ids[g.name] = fj_id
            # a path-qualified name (parent/child, see read_workspace) is written as the population's own name
            attrs = {"name": g.name.rsplit("/", 1)[-1], "annotation": "", "owningGroup": ""}
            if isinstance(g, BooleanGate):
                pop = ET.SubElement(subs, _BOOLEAN_NODES[g.op], attrs)
            else:
                pop = ET.SubElement(subs, "Population", attrs)
            if g.name in tube.counts:
                pop.set("count", str(int(tube.counts[g.name])))
            pid = ids.get(parent) if parent is not None else None
            # as FlowJo does, a boolean node carries a copy of its first operand's gate (for display only:
            # membership comes from the Dependents); its children name that gate as their parent
            shape = _display_gate(g, by_name)
            if shape is not None:
                gate_el = ET.SubElement(pop, "Gate")
                gate_el.set(_q("gating", "id"), fj_id)
                if pid is not None:
                    gate_el.set(_q("gating", "parent_id"), pid)
                _gate_element(gate_el, shape, fj_id, pid, param_name, display)
            add(pop, g.name)
            if isinstance(g, BooleanGate):
                deps = ET.SubElement(pop, "Dependents")
                for ref, _ in g.operands:
                    ET.SubElement(deps, "Dependent", {"name": "/".join(_population_path(ref, by_name))})

    add(node, None)
