"""A run's gates out to FlowJo / Gating-ML (``bat export-gates``), and edited gates back (``--gates-from``).

Stored gates are on the template's dimensions (``FSC-A``, ``CCR3``…) in the template's display scales. For
export they are put on each file's own channels (``$PnN``), with the template's transforms and the file's
spillover matrix (``"FCS"``) on fluorescence dimensions; the conversion to FlowJo's data units and to
Gating-ML is done by :mod:`bat_analysis.gating.flowjo` and :mod:`bat_analysis.gating.gatingml`.
Acquisition QC that removed a clog is a boolean OR of time segments: the segments are exported as range
gates beside it and the union as a Gating-ML ``BooleanGate`` / FlowJo ``OrNode`` over them, so that every
gate below it is exported too and re-imports with the same events. Range limits on raw channels are written
a float32 step clear of the events on either side (:func:`_reader_safe_limits`), so that readers that
keep events in float64 (FlowKit) count what the tool counted on float32 events.

Every exported document names its tube: a Gating-ML file mirrors the tube's path in the layout
(``a/P01.fcs`` -> ``a/P01.xml``, :func:`gatingml_names`) and records the path and the file's SHA-256; a
workspace sample is named by the path and carries both as keywords. On import, each document is matched to
its tube by that record, the sample's ``DataSet uri``, its path, or the checksum -- never by a file's base
name -- and the match is refused unless it is one to one (:func:`_match_tubes`).

On import, each gate of a tube whose name is a template gate is mapped back onto the template dimensions
(channel by channel, coordinates carried through the imported scale's inverse and the template's scale) and
compared with the automated gate stored for that tube: only gates that differ (a reviewer moved them) become
corrections, each recorded with the reviewer, the file it came from and when. A boolean gate is compared
through its operands (see :func:`_boolean_correction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import BatError
from ..gating._channels import resolve_channels
from ..gating.gates import UNCOMPENSATED, BooleanGate, RangeGate
from ..gating.templates import SCATTER_DIMS
from .corrections import GateCorrection, OverridesError, check_geometry
from ..records import GateRecord, Tube

RELATIVE_TOLERANCE = 1e-6


def _file_gates(records: Sequence[GateRecord], template: Any, channels: Mapping[str, Any],
                compensated: bool) -> list[Any]:
    """The gates of one tube on the file's channels.

    A boolean gate (acquisition QC's union of time segments) is written with its member gates, which
    share its parent. A gate kept on its outside (``keep: outside``) becomes a polygon with
    ``complement`` or, for other shapes, its inside as ``<name>.inside`` and ``<name>`` as NOT of it.
    A gate that was not set (it kept all its parent's events) is left out and its children hang from
    the nearest ancestor that was set, so the rest of the hierarchy is still exported; a gate below one
    that could not be gated at all is left out.
    """
    from ..gating.gates import PolygonGate, gate_from_dict

    def on_file(data: Mapping[str, Any], name: str, parent: str | None, rec_dims: Sequence[str]) -> Any:
        data = {k: v for k, v in data.items() if k not in ("transforms", "transform_specs", "members", "keep")}
        boolean = data.get("type") == "boolean"  # operands carry the dimensions
        dims = [] if boolean else _file_dims(rec_dims, template, channels, compensated)
        data.update(name=name, parent=parent, dims=[d.key for d in dims], transforms=[None] * len(dims))
        gate = gate_from_dict(data)
        gate.dims = tuple(dims)
        return gate

    placed: dict[str, str | None] = {}  # gate name -> the exported gate its children hang from
    dropped: set[str] = set()
    gates: list[Any] = []
    for rec in records:
        geo = rec.geometry or {}
        kind = geo.get("type")
        if rec.parent is not None and (rec.parent in dropped or rec.parent not in placed):
            dropped.add(rec.name)
            continue
        parent = placed[rec.parent] if rec.parent is not None else None
        if not geo:
            if rec.method == "not_gated" and rec.count == rec.parent_count and rec.parent_count > 0:
                placed[rec.name] = parent  # kept every parent event: children hang from the parent
            else:
                dropped.add(rec.name)
            continue
        if kind not in ("range", "polygon", "ellipsoid", "boolean"):
            raise BatError(f"gate {rec.name}: cannot export geometry of type {kind!r}", field="geometry",
                           expected="range, polygon, ellipsoid or boolean")
        outside = geo.get("keep") == "outside"
        own = f"{rec.name}.inside" if outside and kind != "polygon" else rec.name
        for member in geo.get("members", []):
            gates.append(on_file(member, member["name"], parent, member.get("dims", rec.dims)))
        gate = on_file(geo, own, parent, rec.dims)
        if outside and isinstance(gate, PolygonGate):
            gate.complement = True
        gates.append(gate)
        if own != rec.name:
            gates.append(BooleanGate(rec.name, (), op="not", operands=((own, False),), parent=parent))
        placed[rec.name] = rec.name
    return gates


def _reader_safe_limits(gates: Sequence[Any], sample: Any) -> list[Any]:
    """The gates with every range limit on a raw channel placed where a float64 reader splits the events as
    the tool does.

    The tool keeps events as float32: a value scaled on reading (``$TIMESTEP``, gain, log) is computed in
    float64 and rounded, whereas a reader such as FlowKit keeps the float64 value, up to half a float32 step
    away. A limit that lies within that half step of an event (the acquisition QC's last time segment ends
    one float64 step above the last event) puts the event on the other side for that reader. Each limit is
    moved, by at most about one float32 step (far below the re-import tolerance), into the gap between the
    events on either side of it, a float32 step from each (half a step beyond any float64 value that rounds
    to them): the tool's own membership is unchanged and a float64 reader agrees. Only untransformed,
    uncompensated dimensions are adjusted (the time segments and scatter ranges); quadrants keep their
    dividers.
    """
    import dataclasses

    from ..gating.gates import QuadrantGate

    columns: dict[str, np.ndarray] = {}
    out = []
    for g in gates:
        if not isinstance(g, RangeGate) or isinstance(g, QuadrantGate):
            out.append(g)
            continue
        mins, maxs = list(g.mins), list(g.maxs)
        for k, d in enumerate(g.dims):
            if d.transform is not None or d.compensation not in UNCOMPENSATED or d.ratio is not None:
                continue
            if d.key not in columns:
                columns[d.key] = np.asarray(sample.column(d.key))
            col = columns[d.key]
            mins[k] = _separating_limit(col, mins[k])
            maxs[k] = _separating_limit(col, maxs[k])
        out.append(dataclasses.replace(g, mins=tuple(mins), maxs=tuple(maxs)))
    return out


def _separating_limit(values: np.ndarray, limit: float | None) -> float | None:
    """``limit`` moved into the gap between the float32 ``values`` below it and those at or above it, so that
    values within half a float32 step of them fall on the same side (see :func:`_reader_safe_limits`)."""
    if limit is None or not np.isfinite(limit) or len(values) == 0:
        return limit
    b = np.float64(limit)
    inside = values >= b
    a = float(values.max(where=~inside & ~np.isnan(values), initial=-np.inf))  # nearest values either side
    c = float(values.min(where=inside, initial=np.inf))
    lo = np.nextafter(np.float32(a), np.float32(np.inf)) if np.isfinite(a) else None  # one float32 step clear
    hi = np.nextafter(np.float32(c), np.float32(-np.inf)) if np.isfinite(c) else None
    if lo is not None and hi is not None and np.float64(lo) > np.float64(hi):  # neighbouring float32 values
        return float((np.float64(a) + np.float64(c)) / 2)
    if lo is not None and b < np.float64(lo):
        b = np.float64(lo)
    if hi is not None and b > np.float64(hi):
        b = np.float64(hi)
    return float(b)


def _file_dims(dims: Sequence[str], template: Any, channels: Mapping[str, Any], compensated: bool) -> list[Any]:
    """Template dimensions as the file's channels, with the template's scales (fluorescence compensated)."""
    from ..gating.gates import Dimension
    from ..gating.tube import template_dimension

    out = []
    for d in dims:
        tdim = template_dimension(template, d)
        fluo = d not in SCATTER_DIMS
        out.append(Dimension(channels[d].pnn, tdim.transform, "FCS" if (fluo and compensated) else None))
    return out


def gatingml_names(files: Sequence[str]) -> dict[str, str]:
    """Where each tube's Gating-ML document is written under the destination folder (POSIX relative paths).

    The tube's path in the layout, relative to the data folder, with ``.xml`` for its suffix: ``a/P01.fcs``
    and ``b/P01.fcs`` go to ``a/P01.xml`` and ``b/P01.xml``. A path that would leave the folder (absolute,
    ``..``) and paths that would meet another tube's document (``P01.fcs`` and ``P01.lmd``, or names that
    differ only in case, which one file system keeps apart and another does not) get their file name with a
    short hash of the tube's path instead (``P01-3fa2c81b.xml``). Each document also names its tube inside
    (see :func:`export_run_gates`), so a renamed document still finds its tube.
    """
    import hashlib
    from pathlib import PurePosixPath, PureWindowsPath

    def plain(file: str) -> str | None:
        parts = PurePosixPath(file.replace("\\", "/")).parts
        if not parts or PurePosixPath(file).is_absolute() or PureWindowsPath(file).is_absolute() or \
                any(p in ("..", ".") for p in parts) or ":" in file:
            return None
        return PurePosixPath(*parts).with_suffix(".xml").as_posix()

    def hashed(file: str) -> str:
        digest = hashlib.sha256(file.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        return f"{PurePosixPath(file.replace(chr(92), '/')).stem}-{digest}.xml"

    names = {f: plain(f) for f in files}
    seen: dict[str, int] = {}
    for n in names.values():
        if n is not None:
            seen[n.casefold()] = seen.get(n.casefold(), 0) + 1
    out = {f: n if n is not None and seen[n.casefold()] == 1 else hashed(f) for f, n in names.items()}
    if len({n.casefold() for n in out.values()}) != len(out):  # a hashed name met a plain one
        out = {f: hashed(f) for f in files}
    return out


def export_run_gates(results: Sequence[Any], template: Any, data_dir: Path, fmt: str, dest: Path) -> list[Path]:
    """Write the gates of every gated tube: one Gating-ML file per tube, or one FlowJo workspace.

    Every document names the tube it belongs to, which ``--gates-from`` matches on (never on a base name):
    a Gating-ML document records the tube's path in the layout and its file's SHA-256 in its
    ``custom_info`` and is written at :func:`gatingml_names`; a workspace sample is named by the tube's path
    (two ``P01.fcs`` in different folders are two samples), its ``DataSet uri`` is the file and its
    keywords ``BAT_FILE`` / ``BAT_SHA256`` carry the path and checksum. Returns every file written.
    """
    from .._checksums import file_sha256
    from .._fileio import make_dir
    from ..gating.flowjo import WorkspaceTube, export_workspace
    from ..gating.gatingml import export_gatingml
    from ..io.fcs import read_fcs

    make_dir(dest)
    gated = [res for res in results if res.ok and res.gates]
    names = gatingml_names([res.tube.file for res in gated])
    written: list[Path] = []
    ws_tubes = []
    for res in gated:
        path = Path(res.tube.file) if Path(res.tube.file).is_absolute() else data_dir / res.tube.file
        sample = read_fcs(path)
        channels, _ = resolve_channels(sample, template, str(path), panel=False)  # as gating found them
        spill = sample.spillover if template.compensation.get("source", "file") == "file" else None
        gates = _reader_safe_limits(_file_gates(res.gates, template, channels, spill is not None), sample)
        spillovers = {"FCS": (list(spill.channels), np.asarray(spill.matrix))} if spill is not None else {}
        origin = {"file": res.tube.file, "sha256": res.file_sha256 or file_sha256(path)}
        if fmt == "gatingml":
            written.append(export_gatingml(gates, dest / names[res.tube.file], spillovers, origin=origin))
        else:
            ranges = {c.pnn: float(c.range) for c in sample.channels if c.range}
            exported = {g.name for g in gates}
            counts = {g.name: int(g.count) for g in res.gates if g.name in exported}
            ws_tubes.append(WorkspaceTube(fcs_path=path.resolve(), gates=gates, spillovers=spillovers,
                                          channel_ranges=ranges, name=res.tube.file, counts=counts,
                                          n_events=int(res.n_events),
                                          keywords={"BAT_FILE": origin["file"], "BAT_SHA256": origin["sha256"]}))
    if fmt == "flowjo":
        if not ws_tubes:
            raise BatError("no gated tube to export", field="tubes", expected="a run with at least one gated tube")
        written.append(export_workspace(ws_tubes, dest / "experiment.wsp"))
    return written


# ------------------------------------------------------------------------------------------------ import
def _to_template_scale(values: Sequence[float | None], imported: Any, target: Any) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        x = np.array([float(v)])
        data = imported.inverse(x) if imported is not None else x
        scaled = target.apply(data) if target is not None else data
        out.append(float(np.asarray(scaled)[0]))
    return out


def gate_geometry_on_template(gate: Any, template: Any, pnn_to_dim: Mapping[str, str]) -> dict[str, Any] | None:
    """An imported gate's geometry on the template's dimensions and scales (None if it does not map)."""
    from ..gating.gates import EllipsoidGate, PolygonGate, RangeGate
    from ..gating.tube import template_dimension

    try:
        spec = template.gate(gate.name)
    except KeyError:
        return None
    dims = [pnn_to_dim.get(d.key) for d in gate.dims]
    if tuple(dims) != tuple(spec.dims):
        return None
    targets = [template_dimension(template, d).transform for d in dims]
    imported = [d.transform for d in gate.dims]
    if isinstance(gate, RangeGate):
        mins, maxs = [], []
        for lo, hi, imp, tgt in zip(gate.mins, gate.maxs, imported, targets):
            mins += _to_template_scale([lo], imp, tgt)
            maxs += _to_template_scale([hi], imp, tgt)
        return {"type": "range", "mins": mins, "maxs": maxs}
    if isinstance(gate, PolygonGate):
        cols = [_to_template_scale(list(gate.vertices[:, i]), imported[i], targets[i]) for i in range(2)]
        return {"type": "polygon", "vertices": [[x, y] for x, y in zip(*cols)]}
    if isinstance(gate, EllipsoidGate):
        # an ellipse is carried exactly across the same scale or an affine change of it (a linear display
        # scale of a raw axis, as FlowJo writes one); not across a change to or from a non-linear scale
        slopes, mean = [], []
        for m, imp, tgt in zip(gate.mean, imported, targets):
            if imp is tgt or (imp is not None and tgt is not None and getattr(imp, "name", None) == tgt.name):
                slopes.append(1.0)
                mean.append(float(m))
            elif _affine(imp) and _affine(tgt):
                lo, hi = _to_template_scale([0.0, 1.0], imp, tgt)
                slopes.append(float(hi) - float(lo))
                mean.append(float(lo) + (float(hi) - float(lo)) * float(m))
            else:
                return None
        k = np.array(slopes)
        cov = np.asarray(gate.covariance, dtype=float) * np.outer(k, k)
        return {"type": "ellipsoid", "mean": mean, "covariance": cov.tolist(),
                "distance_square": float(gate.distance_square)}
    return None


def _affine(t: Any) -> bool:
    """Whether a scale is an affine map of the data (none, or Gating-ML ``flin``)."""
    from ..gating.transforms import Linear

    return t is None or isinstance(getattr(t, "exact", t), Linear)


def _coords(geo: Mapping[str, Any]) -> list[float | None]:
    """A geometry's numbers, as compared by :func:`same_geometry`; an ellipse as its mean and its covariance
    scaled by ``distance_square`` (the same ellipse may be written with any split of the two)."""
    kind = geo.get("type")
    if kind == "range":
        return list(geo["mins"]) + list(geo["maxs"])
    if kind == "polygon":
        return [float(v) for p in geo["vertices"] for v in p]
    if kind == "ellipsoid":
        d2 = float(geo["distance_square"])
        return list(geo["mean"]) + [float(v) * d2 for r in geo["covariance"] for v in r]
    return []


def same_geometry(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, *,
                  open_limit: float | None = None) -> bool:
    """Whether two geometries are the same gate (to a relative 1e-6; an open range side equals a limit at
    or beyond ``open_limit``)."""
    if a is None or b is None or a.get("type") != b.get("type"):
        return False
    ca, cb = _coords(a), _coords(b)
    if len(ca) != len(cb):
        return False
    for x, y in zip(ca, cb):
        if x is None or y is None:
            other = y if x is None else x
            if other is not None and (open_limit is None or abs(other) < open_limit):
                return False
            continue
        if abs(x - y) > RELATIVE_TOLERANCE * max(1.0, abs(x), abs(y)):
            return False
    return True


GATINGML_NAMESPACE = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"


@dataclass
class _Imported:
    """One imported gate document and what names its data file (see :func:`_match_tubes`)."""

    label: str  # how problems name it: the sample of a workspace, or the Gating-ML file
    document: Any
    file: str | None = None  # the tube's path recorded at export (Gating-ML custom_info, BAT_FILE keyword)
    sha256: str | None = None  # the file's checksum recorded at export
    uri: str | None = None  # a workspace sample's DataSet uri
    path_name: str | None = None  # relative path the document stands for (sample name; Gating-ML file path)
    stem: bool = False  # path_name has no suffix (a Gating-ML file's path without .xml)


def _documents(path: Path) -> list[_Imported]:
    """The imported gate documents, each with what identifies its data file.

    A file is recognised by its content, not its extension: a root element ``Workspace`` is a FlowJo
    workspace (FlowJo can save one as ``.xml``), a root in the Gating-ML 2.0 namespace a Gating-ML
    document. The file is parsed by the hardened parser first (:mod:`bat_analysis._safe_parse`).
    """
    from ..gating.flowjo import read_workspace
    from ..gating.gatingml import read_gatingml
    from .._safe_parse import read_xml

    def gml(f: Path, rel: str) -> _Imported:
        doc = read_gatingml(f)
        return _Imported(f"{rel}.xml", doc, doc.origin.get("file"), doc.origin.get("sha256"),
                         path_name=rel, stem=True)

    if path.is_dir():
        files = sorted(f for f in path.rglob("*.xml") if f.is_file())
        if not files:
            raise OverridesError("no Gating-ML (.xml) files in this folder", source=str(path))
        return [gml(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
    checked = read_xml(path, what="file with edited gates")  # an InputParseError (located) when unsafe or broken
    if checked.root.tag == "Workspace":
        return [_Imported(f"sample {name!r}", s.document, s.keywords.get("BAT_FILE"), s.keywords.get("BAT_SHA256"),
                          uri=s.uri, path_name=name) for name, s in read_workspace(path).items()]
    if checked.root_namespace == GATINGML_NAMESPACE:
        return [gml(path, path.stem)]
    raise OverridesError(f"this file is neither a FlowJo workspace nor a Gating-ML 2.0 document (its root element "
                         f"is <{checked.root_name[:60]}>)", source=str(path),
                         problems=["expected a FlowJo workspace (.wsp or .xml), a Gating-ML 2.0 file or a folder of "
                                   "Gating-ML files"])


def _uri_path(uri: str | None, base: Path) -> Path | None:
    """The local file a workspace's ``DataSet uri`` names (relative URIs from the workspace's folder)."""
    from urllib.parse import unquote, urlparse

    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        return None
    p = Path(unquote(parsed.path))
    return p if p.is_absolute() else base / p


def _match_tubes(docs: Sequence[_Imported], tubes: Sequence[Tube], data_dir: Path, source: Path) -> list[Tube]:
    """The tube of each imported document, never guessed from a base name.

    In order: the tube's path recorded at export (``custom_info`` of a Gating-ML file, ``BAT_FILE`` of a
    workspace sample); the sample's ``DataSet uri`` if it lies in the data folder; the sample's name or
    the Gating-ML file's path in the given folder, as a path of the layout (``a/P01.fcs``; ``a/P01`` for
    ``a/P01.xml``); the file checksum recorded at export. A checksum recorded at export must be the
    matched file's (the gates were drawn on that data). A document that matches no tube, or several, and
    two documents for one tube are refused, all at once, naming each.
    """
    from .._checksums import file_sha256

    by_file = {t.file: t for t in tubes}
    by_stem: dict[str, list[Tube]] = {}
    for t in tubes:
        by_stem.setdefault(Path(t.file).with_suffix("").as_posix(), []).append(t)
    root = data_dir.resolve()
    by_resolved = {}
    for t in tubes:
        by_resolved[(Path(t.file) if Path(t.file).is_absolute() else root / t.file).resolve()] = t
    shas: dict[str, str | None] = {}

    def sha(t: Tube) -> str | None:
        if t.file not in shas:
            fcs = Path(t.file) if Path(t.file).is_absolute() else data_dir / t.file
            try:
                shas[t.file] = file_sha256(fcs)
            except OSError:
                shas[t.file] = None
        return shas[t.file]

    problems: list[str] = []
    matched: list[Tube] = []
    owner: dict[str, str] = {}
    for doc in docs:
        tube: Tube | None = by_file.get(doc.file) if doc.file else None
        how = "the path recorded at export"
        if tube is None and doc.uri:
            local = _uri_path(doc.uri, source.parent)
            try:
                tube = by_resolved.get(local.resolve()) if local is not None else None
            except (OSError, RuntimeError, ValueError):  # a path the system cannot resolve names no tube
                tube = None
            how = "its DataSet uri"
        if tube is None and doc.path_name:
            if doc.stem:
                found = by_stem.get(doc.path_name, [])
                if len(found) > 1:
                    problems.append(f"{doc.label}: stands for {len(found)} tubes of the layout "
                                    f"({', '.join(t.file for t in found)}); give each its own file name")
                    continue
                tube = found[0] if found else None
            else:
                tube = by_file.get(doc.path_name)
            how = "its name"
        if tube is None and doc.sha256:
            found = [t for t in tubes if sha(t) == doc.sha256]
            if len(found) > 1:
                problems.append(f"{doc.label}: its data file (SHA-256 {doc.sha256[:12]}…) is several tubes of "
                                f"the layout ({', '.join(t.file for t in found)})")
                continue
            tube = found[0] if found else None
            how = "its checksum"
        if tube is None:
            recorded = f" (exported for {doc.file})" if doc.file else ""
            problems.append(f"{doc.label}{recorded}: not a file of the layout (matched by path in the data "
                            "folder or by file checksum, never by file name alone)")
            continue
        if doc.sha256 and sha(tube) is not None and sha(tube) != doc.sha256:
            problems.append(f"{doc.label}: matched to {tube.file} by {how}, but the gates were exported for other "
                            f"data (SHA-256 {doc.sha256[:12]}… at export, {sha(tube)[:12]}… now): not applied")
            continue
        if tube.file in owner:
            problems.append(f"{doc.label}: {tube.file} already has its gates from {owner[tube.file]}")
            continue
        owner[tube.file] = doc.label
        matched.append(tube)
    if problems:
        raise OverridesError("the edited gates do not match the tubes of the layout one to one", source=str(source),
                             problems=problems)
    return matched


def read_edited_gates(path: Path | str, template: Any, tubes: Sequence[Tube], *, data_dir: Path,
                      reviewer: str | None,
                      automated: Callable[[str, str], dict[str, Any] | None] | None) -> list[GateCorrection]:
    """Gate corrections from a FlowJo workspace / Gating-ML edited by a reviewer.

    Each document is matched to its tube by :func:`_match_tubes` before any gate is compared.
    """
    from ..io.fcs import read_fcs
    from ..store import utc_now

    path = Path(path)
    if not path.exists():
        raise OverridesError("file with edited gates not found", source=str(path))
    docs = _documents(path)
    matched = _match_tubes(docs, tubes, Path(data_dir), path)
    who = reviewer or "unnamed reviewer (give --reviewer)"
    when = utc_now()
    out: list[GateCorrection] = []
    for imported, tube in sorted(zip(docs, matched), key=lambda dt: dt[1].file):
        name, doc = tube.file, imported.document
        fcs = Path(tube.file) if Path(tube.file).is_absolute() else data_dir / tube.file
        sample = read_fcs(fcs)
        channels, _ = resolve_channels(sample, template, str(fcs), panel=False)  # as gating found them
        pnn_to_dim = {ch.pnn: dim for dim, ch in channels.items()}
        doc_gates = {g.name: g for g in doc.gates}
        top = max((float(c.range) for c in channels.values() if c.range), default=None)
        for gate in doc.gates:
            if isinstance(gate, BooleanGate):
                if not _is_template_gate(template, gate.name):
                    continue
                fix = _boolean_correction(gate, doc_gates, template, pnn_to_dim, tube.file, automated,
                                          _open_limit(top, template, gate.name), f"{name}: gate {gate.name}",
                                          str(path))
                if fix is None:
                    continue
                gate = fix
            geo = gate_geometry_on_template(gate, template, pnn_to_dim)
            if geo is None:
                continue
            problems_here: list[str] = []
            geo = check_geometry(f"{name}: gate {gate.name}", geo, len(template.gate(gate.name).dims), problems_here)
            if geo is None:
                raise OverridesError("an edited gate is not usable", source=str(path), problems=problems_here)
            auto = automated(tube.file, gate.name) if automated is not None else None
            if auto is not None and same_geometry(geo, auto, open_limit=_open_limit(top, template, gate.name)):
                continue
            out.append(GateCorrection(tube.file, gate.name, geo, who, f"gate edited in {path.name}", str(path), when))
    return out


def _is_template_gate(template: Any, name: str) -> bool:
    try:
        template.gate(name)
    except KeyError:
        return False
    return True


def _boolean_correction(gate: BooleanGate, doc_gates: Mapping[str, Any], template: Any,
                        pnn_to_dim: Mapping[str, str], file: str,
                        automated: Callable[[str, str], dict[str, Any] | None] | None,
                        open_limit: float | None, where: str, source: str) -> Any | None:
    """What an imported boolean gate of the template means as a correction (None: not a correction).

    ``not`` of one gate is how a gate kept on its outside is exported: its operand's geometry, under the
    template gate's name, is compared like any gate. ``or`` of ranges is acquisition QC's union of time
    segments: compared segment by segment with the automated union; unchanged is no correction, and an
    edited union cannot be applied (a correction is one range, polygon or ellipse), which is said rather
    than ignored.
    """
    import dataclasses

    operands = [doc_gates.get(ref) for ref, _ in gate.operands]
    if any(g is None for g in operands):
        raise OverridesError("an edited boolean gate names a gate that is not in the file", source=source,
                             problems=[f"{where}: operands {[r for r, _ in gate.operands]}"])
    if gate.op == "not" and not gate.operands[0][1] and template.gate(gate.name).keep == "outside":
        return dataclasses.replace(operands[0], name=gate.name, parent=gate.parent)
    if gate.op != "or" or any(c for _, c in gate.operands) or not all(isinstance(g, RangeGate) for g in operands):
        raise OverridesError("an edited boolean gate cannot be read as a correction", source=source,
                             problems=[f"{where}: expected an OR of ranges (acquisition QC time segments) or the "
                                       f"NOT of one gate, got {gate.op} of {[r for r, _ in gate.operands]}"])
    geos = [gate_geometry_on_template(dataclasses.replace(g, name=gate.name), template, pnn_to_dim)
            for g in operands]
    if any(g is None for g in geos):
        raise OverridesError("an edited boolean gate has operands on other dimensions than the template gate",
                             source=source, problems=[f"{where}: dimensions {template.gate(gate.name).dims}"])
    auto = automated(file, gate.name) if automated is not None else None
    auto_members = list((auto or {}).get("members", [])) if (auto or {}).get("type") == "boolean" else \
        ([auto] if auto else [])
    if len(auto_members) == len(geos) and all(
            same_geometry(a, b, open_limit=open_limit)
            for a, b in zip(sorted(geos, key=_lower_limits), sorted(auto_members, key=_lower_limits))):
        return None
    raise OverridesError("an edited union of ranges cannot be applied as a correction", source=source,
                         problems=[f"{where}: {len(operands)} ranges differ from the automated gate; a correction "
                                   "is one range, polygon or ellipse (give the gate as one range, or leave it "
                                   "unedited)"])


def _lower_limits(geo: Mapping[str, Any]) -> list[float]:
    """Sort key of a range geometry: its lower limits (an open side first)."""
    return [float("-inf") if v is None else float(v) for v in geo["mins"]]


def _open_limit(top: float | None, template: Any, gate_name: str) -> float | None:
    """The value from which an exported limit stands for an open side (the largest channel range, in the
    gate's first dimension's scale)."""
    if top is None:
        return None
    from ..gating.tube import template_dimension

    spec = template.gate(gate_name)
    t = template_dimension(template, spec.dims[0]).transform
    return float(np.asarray(t.apply(np.array([top])))[0]) if t is not None else top
