"""Gating templates: declarative YAML describing a panel, its compensation, transforms and gate hierarchy.

A template is data, never code. :func:`load_template` parses it (plain YAML behind the limits of
:mod:`bat_analysis.safe_parse`: size, nesting, alias expansion, number length) and validates it and returns a
:class:`Template`; :func:`validate_template` returns every problem found, each with its location
(``gates[3].params.bandwidth: expected a number, got 'x'``). The schema (version 1)::

    schema_version: 1
    name: bat_ccr3_cd63
    description: free text
    panel:                        # logical marker -> aliases (matched against $PnS, then $PnN)
      CCR3: [CD193]
      CD203c: {aliases: [ENPP3], required: false}
    identification: [CCR3]        # markers that find the basophils (optional)
    activation: [CD63]            # markers scored against a negative-control threshold; the first drives
                                  # the dose response (optional; the analysis reads only this list)
    compensation: {source: file}  # file ($SPILLOVER/$SPILL) | none | matrix (+ channels, values)
    transforms:                   # per dimension; 'scatter' and 'fluorescence' are the defaults
      scatter: {type: linear}
      fluorescence: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
      SSC-A: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
    population: basophils         # the gate whose events are reported (default: the last gate)
    gates:                        # in order; each names its parent (null = all events)
      - name: cells
        parent: margin
        dims: [FSC-A, SSC-A]
        method: debris_density    # an estimator (see METHODS) or 'fixed'
        params: {bins: 128}
        keep: inside              # inside | outside
        min_events: 200
        on_fail: fallback         # fallback | not_gated
        fallback: {type: polygon, vertices: [[...], ...]}
    reference_gates: [...]        # thresholds estimated on another tube (e.g. CD63 on the negative control)
    metrics: [...]
    qc: {...}                     # passed to the analysis configuration
    analysis: {...}               # passed to the analysis configuration

Dimensions are scatter/time names (``FSC-A``, ``FSC-H``, ``FSC-W``, ``SSC-A``, ``SSC-H``, ``SSC-W``,
``Time``) or markers of the panel.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputParseError, TemplateError
from ..safe_parse import MAX_YAML_BYTES, load_yaml, read_limited
from .transforms import from_spec

SCHEMA_VERSION = 1
SCATTER_DIMS = ("FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W", "Time")
DEFAULT_TEMPLATE = "bat_ccr3_cd63"


# ---------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Param:
    """A typed estimator parameter: ``kind`` is 'number', 'integer', 'bool' or 'choice'."""

    kind: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """What an estimator needs: how many dimensions, which typed parameters."""

    n_dims: int
    params: Mapping[str, Param]
    doc: str = ""


METHODS: dict[str, MethodSpec] = {
    "flow_rate": MethodSpec(1, {
        "bin_seconds": Param("number", 0.0, 0.0, doc="bin width in time units; 0 = choose from event count"),
        "target_events_per_bin": Param("integer", 200, 10, doc="events per bin when bin_seconds is 0"),
        "n_mad": Param("number", 5.0, 1.0, doc="bins further than n_mad robust SDs from the median are removed"),
        "min_bins": Param("integer", 20, 5, doc="fewer bins than this: no flow-rate check"),
    }, "acquisition QC: remove flow-rate bursts and gaps on the time channel"),
    "margin": MethodSpec(-1, {
        "tolerance": Param("number", 0.001, 0.0, 0.2,
                           doc="events within this fraction of $PnR of the top are saturated"),
    }, "remove events saturated at the top of each dimension's range ($PnR)"),
    "debris_density": MethodSpec(2, {
        "bins": Param("integer", 128, 32, 1024, doc="density image size per axis"),
        "smooth": Param("number", 1.5, 0.0, 20.0, doc="Gaussian smoothing (bins)"),
        "level": Param("number", 0.002, 0.0, 0.5, doc="density contour as a fraction of the maximum"),
        "pad": Param("number", 2.0, 0.0, 20.0, doc="bins added around the cell region"),
    }, "cells: exclude low-FSC debris using the FSC-A/SSC-A density"),
    "singlet_band": MethodSpec(2, {
        "n_sd": Param("number", 4.0, 1.0, 20.0, doc="band half-width in robust SDs of H/A around its mode"),
        "min_signal": Param("number", 0.0, 0.0, doc="ignore events with area below this when fitting"),
    }, "singlets: the FSC-A/FSC-H diagonal band, fitted on the ratio H/A"),
    "cluster_2d": MethodSpec(2, {
        "x_side": Param("choice", "high", choices=("high", "low"), doc="the cluster is high/low on dimension 1"),
        "y_side": Param("choice", "low", choices=("high", "low"), doc="the cluster is high/low on dimension 2"),
        "bins": Param("integer", 128, 32, 1024),
        "smooth": Param("number", 1.5, 0.0, 20.0, doc="Gaussian smoothing (bins)"),
        "peak_min_events": Param("number", 30.0, 1.0, doc="a population needs at least this many events"),
        "merge_ratio": Param("number", 0.5, 0.0, 1.0,
                             doc="merge two density peaks when the pass between them is at least this "
                                 "fraction of the lower peak"),
        "join_ratio": Param("number", 0.1, 0.0, 1.0,
                            doc="join a neighbouring candidate displaced along x when the pass between "
                                "them is at least this fraction of the lower peak"),
        "level": Param("number", 0.05, 0.0, 0.9,
                       doc="cluster boundary as a fraction of the cluster's peak density"),
        "split_n_sd": Param("number", 4.0, 0.5, 20.0,
                            doc="x positivity: negative mode + n robust SDs when no valley is found"),
        "pad": Param("number", 2.0, 0.0, 20.0, doc="bins added around the cluster"),
        "extend_x": Param("bool", True, doc="open the gate towards the x side (nothing brighter belongs "
                                             "elsewhere within the cluster's y band)"),
    }, "basophils: the x-high/low, y-high/low cluster of the 2-D density (number of populations found)"),
    "fixed": MethodSpec(-1, {}, "geometry given in the template ('geometry:')"),
}

GEOMETRY_TYPES = ("range", "polygon", "ellipsoid")


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class MarkerSpec:
    name: str
    aliases: tuple[str, ...] = ()
    required: bool = True


@dataclass(frozen=True)
class GateSpec:
    """One gate of the hierarchy as written in the template (parameters typed, defaults filled)."""

    name: str
    parent: str | None
    dims: tuple[str, ...]
    method: str
    params: dict[str, Any]
    keep: str = "inside"
    min_events: int = 0
    on_fail: str = "not_gated"
    fallback: dict[str, Any] | None = None
    geometry: dict[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class Template:
    """A validated gating template; ``source_text`` and ``sha256`` identify exactly what was used."""

    name: str
    description: str
    schema_version: int
    panel: dict[str, MarkerSpec]
    compensation: dict[str, Any]
    transforms: dict[str, dict[str, Any]]
    gates: tuple[GateSpec, ...]
    population: str = ""
    identification: tuple[str, ...] = ()
    activation: tuple[str, ...] = ()
    reference_gates: tuple[dict[str, Any], ...] = ()
    metrics: tuple[Any, ...] = ()
    qc: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    source_text: str = ""
    sha256: str = ""

    def gate(self, name: str) -> GateSpec:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(name)

    def transform_spec(self, dim: str) -> dict[str, Any]:
        """The transform spec of a dimension: its own entry, else the scatter/fluorescence default."""
        if dim in self.transforms:
            return self.transforms[dim]
        key = "scatter" if dim in SCATTER_DIMS else "fluorescence"
        return self.transforms.get(key, {"type": "none"})

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(self.panel)

    def analysis_mapping(self) -> dict[str, Any]:
        """The ``analysis:`` section with ``qc:`` merged in under ``qc`` and the ``activation:`` list as
        ``markers.activation`` (for AnalysisConfig)."""
        out = with_activation(self.analysis, self.activation)
        if self.qc:
            out.setdefault("qc", dict(self.qc))
        return out


def with_activation(analysis: Mapping[str, Any], activation: tuple[str, ...],
                    ck: _Checker | None = None) -> dict[str, Any]:
    """A copy of an ``analysis:`` section whose ``markers.activation`` is the template's ``activation:`` list
    (unchanged when the list is empty). The list is the one place activation markers are named: the same key
    written under ``analysis.markers`` is reported to ``ck`` (and left out)."""
    out = dict(analysis)
    markers = out.get("markers")
    if isinstance(markers, Mapping) and "activation" in markers:
        if ck is not None:
            ck.add("analysis.markers.activation", "the activation markers are the template's activation: list; "
                   "list them there (e.g. activation: [CD69]) and remove this key")
        markers = {k: v for k, v in markers.items() if k != "activation"}
        out["markers"] = markers
    if activation and (markers is None or isinstance(markers, Mapping)):  # else the checker reports it
        out["markers"] = {**(markers or {}), "activation": list(activation)}
    return out


# ---------------------------------------------------------------------------------------------- location
def templates_dir() -> Path:
    """Folder of the shipped templates (package data, or the checkout's ``gating_templates/``)."""
    try:
        pkg = resources.files("bat_analysis.gating_templates")
        path = Path(str(pkg))
        if path.is_dir() and any(path.glob("*.yaml")):
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "gating_templates"


def list_templates() -> list[str]:
    """Names of the shipped templates, sorted."""
    return sorted(p.stem for p in templates_dir().glob("*.yaml"))


def _locate(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise TemplateError("template file not found", source=str(p))
        return p
    shipped = templates_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise TemplateError(f"no template named {str(name_or_path)!r}; shipped templates: "
                        f"{', '.join(list_templates()) or 'none'} (or give a path to a .yaml file)",
                        source=str(name_or_path))


def load_template(name_or_path: str | Path = DEFAULT_TEMPLATE) -> Template:
    """Load and validate a template by shipped name or path; raises TemplateError listing every problem."""
    path = _locate(name_or_path)
    try:
        data = read_limited(path, MAX_YAML_BYTES, what="template")
    except InputParseError as exc:
        raise TemplateError("cannot read template", source=str(path), problems=[exc.located]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"cannot read template: {exc}", source=str(path)) from None
    return parse_template(text, source=str(path))


def validate_template(path: str | Path) -> list[str]:
    """Every problem of a template file (empty list when it is valid)."""
    try:
        load_template(path)
    except TemplateError as exc:
        return exc.problems or [str(exc)]
    return []


# ---------------------------------------------------------------------------------------------- parsing
def _tname(value: Any) -> str:
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


def _is_number(v: Any) -> bool:
    """A finite int or float (not a boolean, not NaN or infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _in(value: Any, container: Any) -> bool:
    """``value in container`` for texts only (a list or mapping from the YAML is never a name)."""
    return isinstance(value, str) and value in container


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    def typed(self, where: str, value: Any, spec: Param) -> Any:
        """Check one parameter against its spec; returns the value (ints accepted for numbers)."""
        if spec.kind == "number":
            if not _is_number(value):
                self.add(where, f"expected a finite number, got {_tname(value)}")
                return spec.default
            value = float(value)
        elif spec.kind == "integer":
            if not (isinstance(value, int) and not isinstance(value, bool)):
                self.add(where, f"expected an integer, got {_tname(value)}")
                return spec.default
        elif spec.kind == "bool":
            if not isinstance(value, bool):
                self.add(where, f"expected true or false, got {_tname(value)}")
                return spec.default
            return value
        elif spec.kind == "choice":
            if value not in spec.choices:
                self.add(where, f"expected one of {', '.join(spec.choices)}, got {_tname(value)}")
                return spec.default
            return value
        if spec.minimum is not None and value < spec.minimum:
            self.add(where, f"expected a value >= {spec.minimum:g}, got {value:g}")
        if spec.maximum is not None and value > spec.maximum:
            self.add(where, f"expected a value <= {spec.maximum:g}, got {value:g}")
        return value


def _check_geometry(ck: _Checker, where: str, geo: Any, n_dims: int) -> dict[str, Any] | None:
    if not isinstance(geo, dict):
        ck.add(where, f"expected a mapping with 'type' ({', '.join(GEOMETRY_TYPES)}), got {_tname(geo)}")
        return None
    kind = geo.get("type")
    if kind not in GEOMETRY_TYPES:
        ck.add(f"{where}.type", f"expected one of {', '.join(GEOMETRY_TYPES)}, got {_tname(kind)}")
        return None
    ok = True
    if kind == "range":
        for key in ("min", "max"):
            vals = geo.get(key, [None] * n_dims)
            if not isinstance(vals, list) or len(vals) != n_dims:
                ck.add(f"{where}.{key}", f"expected a list of {n_dims} numbers or nulls, got {_tname(vals)}")
                ok = False
                continue
            for i, v in enumerate(vals):
                if v is not None and not _is_number(v):
                    ck.add(f"{where}.{key}[{i}]", f"expected a number or null, got {_tname(v)}")
                    ok = False
        if ok:
            mins, maxs = geo.get("min", [None] * n_dims), geo.get("max", [None] * n_dims)
            for i, (lo, hi) in enumerate(zip(mins, maxs)):
                if lo is None and hi is None:
                    ck.add(f"{where}", f"dimension {i + 1} needs a min or a max")
                    ok = False
                elif lo is not None and hi is not None and lo >= hi:
                    ck.add(f"{where}", f"dimension {i + 1}: min {lo:g} must be below max {hi:g}")
                    ok = False
    elif kind == "polygon":
        verts = geo.get("vertices")
        if n_dims != 2:
            ck.add(where, f"a polygon needs 2 dimensions, the gate has {n_dims}")
            ok = False
        if not isinstance(verts, list) or len(verts) < 3:
            ck.add(f"{where}.vertices", f"expected a list of >= 3 [x, y] pairs, got {_tname(verts)}")
            ok = False
        else:
            for i, v in enumerate(verts):
                if not (isinstance(v, list) and len(v) == 2 and all(_is_number(c) for c in v)):
                    ck.add(f"{where}.vertices[{i}]", f"expected [x, y] numbers, got {_tname(v)}")
                    ok = False
    else:  # ellipsoid
        mean, cov, d2 = geo.get("mean"), geo.get("covariance"), geo.get("distance_square")
        if not (isinstance(mean, list) and len(mean) == n_dims and all(_is_number(c) for c in mean)):
            ck.add(f"{where}.mean", f"expected {n_dims} numbers, got {_tname(mean)}")
            ok = False
        if not (isinstance(cov, list) and len(cov) == n_dims and all(
                isinstance(r, list) and len(r) == n_dims and all(_is_number(c) for c in r) for r in cov)):
            ck.add(f"{where}.covariance", f"expected a {n_dims}x{n_dims} matrix of numbers")
            ok = False
        if not (_is_number(d2) and d2 > 0):
            ck.add(f"{where}.distance_square", f"expected a positive number, got {_tname(d2)}")
            ok = False
    return dict(geo) if ok else None


def _marker_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _drop_broken_keys(ck: _Checker, mapping: dict[str, Any], where: str) -> dict[str, Any]:
    """Report (and leave out) keys holding a line break: no setting is named so, and the analysis
    configuration's problems are read back line by line."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str) and key.splitlines() != [key]:
            ck.add(f"{where}.{key!r}", "unknown key (a setting name is one line of text)")
            continue
        out[key] = _drop_broken_keys(ck, value, f"{where}.{key}") if isinstance(value, dict) else value
    return out


def _check_analysis(ck: _Checker, qc: dict[str, Any], analysis: dict[str, Any]) -> None:
    """Check the ``qc:`` and ``analysis:`` sections against the analysis configuration's keys."""
    from ..analysis.config import AnalysisConfig
    from ..errors import AnalysisError

    qc = _drop_broken_keys(ck, qc, "qc")
    analysis = _drop_broken_keys(ck, analysis, "analysis")
    for section, mapping in (("qc", {"qc": qc} if qc else None), ("analysis", analysis or None)):
        if not mapping:
            continue
        try:
            AnalysisConfig.from_mapping(mapping, prefix="@")
        except AnalysisError as exc:
            lines = [ln.strip()[2:] for ln in str(exc).splitlines() if ln.strip().startswith("- ")]
            for ln in lines or [str(exc)]:
                ln = ln.replace("@.qc.", "qc.") if section == "qc" else ln.replace("@.", "analysis.")
                ck.problems.append(ln if len(ln) <= 300 else ln[:297] + "...")


def parse_template(text: str, *, source: str = "<template>") -> Template:
    """Parse and validate template YAML text; raises TemplateError with every located problem."""
    try:
        data = load_yaml(text, source=source, what="template")  # size, depth, alias and number limits
    except InputParseError as exc:
        raise TemplateError("template cannot be read", source=source, problems=[exc.located]) from None
    ck = _Checker()
    if not isinstance(data, dict):
        raise TemplateError("template must be a YAML mapping", source=source,
                            problems=[f"top level: expected a mapping, got {_tname(data)}"])
    known_top = {"schema_version", "name", "description", "panel", "identification", "activation",
                 "compensation", "transforms", "gates", "population", "reference_gates", "metrics", "qc",
                 "analysis"}
    for key in data:
        if key not in known_top:
            ck.add(str(key), f"unknown section; expected one of {', '.join(sorted(known_top))}")

    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        ck.add("schema_version", f"expected {SCHEMA_VERSION}, got {_tname(version)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        ck.add("name", f"expected a non-empty text, got {_tname(name)}")
        name = Path(source).stem
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        ck.add("description", f"expected text, got {_tname(description)}")
        description = ""

    # panel
    panel: dict[str, MarkerSpec] = {}
    raw_panel = data.get("panel")
    if not isinstance(raw_panel, dict) or not raw_panel:
        ck.add("panel", f"expected a mapping of marker -> aliases, got {_tname(raw_panel)}")
        raw_panel = {}
    for marker, spec in raw_panel.items():
        where = f"panel.{marker}"
        if not isinstance(marker, str) or not marker.strip():
            ck.add("panel", f"marker names must be text, got {_tname(marker)}")
            continue
        if marker in SCATTER_DIMS:
            ck.add(where, "scatter/time channels are found automatically; do not list them in the panel")
            continue
        aliases: Any = []
        required = True
        if spec is None:
            aliases = []
        elif isinstance(spec, list):
            aliases = spec
        elif isinstance(spec, dict):
            unknown = set(spec) - {"aliases", "required"}
            for k in sorted(unknown, key=str):
                ck.add(f"{where}.{k}", "unknown key; expected aliases or required")
            aliases = spec.get("aliases", []) or []
            required = spec.get("required", True)
            if not isinstance(required, bool):
                ck.add(f"{where}.required", f"expected true or false, got {_tname(required)}")
                required = True
        else:
            ck.add(where, f"expected a list of aliases or a mapping, got {_tname(spec)}")
            continue
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            ck.add(f"{where}.aliases" if isinstance(spec, dict) else where,
                   f"expected a list of texts, got {_tname(aliases)}")
            aliases = []
        panel[marker] = MarkerSpec(marker, tuple(aliases), required)
    seen_alias: dict[str, str] = {}
    for m in panel.values():
        for a in (m.name, *m.aliases):
            k = _marker_key(a)
            if k in seen_alias and seen_alias[k] != m.name:
                ck.add(f"panel.{m.name}", f"alias {a!r} is also used by marker {seen_alias[k]!r}")
            seen_alias[k] = m.name

    def marker_list(key: str) -> tuple[str, ...]:
        raw = data.get(key, []) or []
        if not isinstance(raw, list):
            ck.add(key, f"expected a list of panel markers, got {_tname(raw)}")
            return ()
        out = []
        for i, m in enumerate(raw):
            if not _in(m, panel):
                ck.add(f"{key}[{i}]", f"unknown marker {_tname(m)}; the panel has {', '.join(panel) or 'none'}")
            else:
                out.append(m)
        return tuple(out)

    identification = marker_list("identification")
    activation = marker_list("activation")

    # compensation
    comp = data.get("compensation", {"source": "file"})
    if comp is None:
        comp = {"source": "none"}
    if not isinstance(comp, dict):
        ck.add("compensation", f"expected a mapping with 'source', got {_tname(comp)}")
        comp = {"source": "none"}
    src = comp.get("source", "file")
    if src not in ("file", "none", "matrix"):
        ck.add("compensation.source", f"expected file, none or matrix, got {_tname(src)}")
    if src == "matrix":
        chans, vals = comp.get("channels"), comp.get("values")
        if not (isinstance(chans, list) and chans and all(isinstance(c, str) for c in chans)):
            ck.add("compensation.channels", f"expected a list of channel or marker names, got {_tname(chans)}")
        elif not (isinstance(vals, list) and len(vals) == len(chans) and all(
                isinstance(r, list) and len(r) == len(chans) and all(_is_number(v) for v in r) for r in vals)):
            ck.add("compensation.values", f"expected a {len(chans)}x{len(chans)} matrix of numbers")
    if src == "file" and "on_missing" in comp and comp["on_missing"] not in ("warn", "fail", "none"):
        ck.add("compensation.on_missing", f"expected warn, fail or none, got {_tname(comp['on_missing'])}")
    for k in comp:
        if k not in ("source", "channels", "values", "on_missing"):
            ck.add(f"compensation.{k}", "unknown key; expected source, channels, values, on_missing")

    # transforms (parameters checked by the transform library itself)
    transforms: dict[str, dict[str, Any]] = {}
    raw_tf = data.get("transforms", {}) or {}
    if not isinstance(raw_tf, dict):
        ck.add("transforms", f"expected a mapping of dimension -> transform, got {_tname(raw_tf)}")
        raw_tf = {}
    for dim, spec in raw_tf.items():
        where = f"transforms.{dim}"
        if dim not in ("scatter", "fluorescence") and dim not in SCATTER_DIMS and dim not in panel:
            ck.add(where, f"unknown dimension {dim!r}; expected scatter, fluorescence, a scatter/time "
                          f"channel or a panel marker")
        if isinstance(spec, dict) and spec.get("type") == "none":
            if len(spec) > 1:
                ck.add(where, "type none takes no parameters")
            transforms[dim] = {"type": "none"}
            continue
        try:
            from_spec(spec, source=source, where=where)
        except TemplateError as exc:
            ck.problems.extend(exc.problems or [f"{where}: {exc}"])
            continue
        except (TypeError, ValueError, OverflowError, ArithmeticError) as exc:
            ck.add(where, f"unusable transform parameters ({exc})")
            continue
        transforms[dim] = dict(spec)

    # gates
    gates: list[GateSpec] = []
    raw_gates = data.get("gates")
    if not isinstance(raw_gates, list) or not raw_gates:
        ck.add("gates", f"expected a list of gates, got {_tname(raw_gates)}")
        raw_gates = []
    names_seen: dict[str, int] = {}
    valid_dims = set(SCATTER_DIMS) | set(panel)
    gate_keys = {"name", "parent", "dims", "method", "params", "keep", "min_events", "on_fail", "fallback",
                 "geometry", "description"}
    for i, g in enumerate(raw_gates):
        where = f"gates[{i}]"
        if not isinstance(g, dict):
            ck.add(where, f"expected a mapping, got {_tname(g)}")
            continue
        gname = g.get("name")
        if isinstance(gname, str) and gname.strip():
            where = f"gates[{i}] ({gname})"
        for k in g:
            if k not in gate_keys:
                ck.add(f"{where}.{k}", f"unknown key; expected one of {', '.join(sorted(gate_keys))}")
        if not isinstance(gname, str) or not gname.strip():
            ck.add(f"{where}.name", f"expected a non-empty text, got {_tname(gname)}")
            gname = f"gate{i}"
        elif gname in names_seen:
            ck.add(f"{where}.name", f"name {gname!r} already used by gates[{names_seen[gname]}]")
        names_seen.setdefault(gname, i)
        parent = g.get("parent")
        if parent is not None and not isinstance(parent, str):
            ck.add(f"{where}.parent", f"expected a gate name or null, got {_tname(parent)}")
            parent = None
        dims = g.get("dims")
        if not isinstance(dims, list) or not dims or not all(isinstance(d, str) for d in dims):
            ck.add(f"{where}.dims", f"expected a list of dimension names, got {_tname(dims)}")
            dims = []
        for j, d in enumerate(dims):
            if d not in valid_dims:
                ck.add(f"{where}.dims[{j}]", f"unknown dimension {d!r}; expected a scatter/time channel "
                                             f"({', '.join(SCATTER_DIMS)}) or a panel marker "
                                             f"({', '.join(panel) or 'none'})")
        method = g.get("method")
        mspec = METHODS.get(method) if isinstance(method, str) else None
        if mspec is None:
            ck.add(f"{where}.method", f"unknown method {_tname(method)}; expected one of {', '.join(METHODS)}")
        elif mspec.n_dims > 0 and dims and len(dims) != mspec.n_dims:
            ck.add(f"{where}.dims", f"method {method} needs {mspec.n_dims} dimension(s), got {len(dims)}")
        raw_params = g.get("params", {}) or {}
        params: dict[str, Any] = {}
        if not isinstance(raw_params, dict):
            ck.add(f"{where}.params", f"expected a mapping, got {_tname(raw_params)}")
            raw_params = {}
        if mspec is not None:
            for k, v in raw_params.items():
                if k not in mspec.params:
                    ck.add(f"{where}.params.{k}", f"unknown parameter for {method}; expected "
                                                  f"{', '.join(mspec.params) or 'none'}")
                else:
                    params[k] = ck.typed(f"{where}.params.{k}", v, mspec.params[k])
            for k, p in mspec.params.items():
                params.setdefault(k, p.default)
        keep = g.get("keep", "inside")
        if keep not in ("inside", "outside"):
            ck.add(f"{where}.keep", f"expected inside or outside, got {_tname(keep)}")
            keep = "inside"
        min_events = g.get("min_events", 0)
        if not (isinstance(min_events, int) and not isinstance(min_events, bool) and min_events >= 0):
            ck.add(f"{where}.min_events", f"expected a whole number >= 0, got {_tname(min_events)}")
            min_events = 0
        on_fail = g.get("on_fail", "not_gated")
        if on_fail not in ("fallback", "not_gated"):
            ck.add(f"{where}.on_fail", f"expected fallback or not_gated, got {_tname(on_fail)}")
            on_fail = "not_gated"
        n = len(dims)
        fallback = None
        if "fallback" in g:
            fallback = _check_geometry(ck, f"{where}.fallback", g["fallback"], n)
        if on_fail == "fallback" and "fallback" not in g:
            ck.add(f"{where}.on_fail", "is 'fallback' but the gate has no 'fallback' geometry")
        geometry = None
        if method == "fixed":
            if "geometry" not in g:
                ck.add(f"{where}.geometry", "method 'fixed' needs a geometry")
            else:
                geometry = _check_geometry(ck, f"{where}.geometry", g["geometry"], n)
        elif "geometry" in g:
            ck.add(f"{where}.geometry", f"only method 'fixed' takes a geometry (this gate uses {method})")
        desc = g.get("description", "") or ""
        gates.append(GateSpec(gname, parent, tuple(dims), str(method), params, keep, min_events, on_fail,
                              fallback, geometry, str(desc)))

    # parents and cycles
    by_name = {g.name: (i, g) for i, g in enumerate(gates)}
    for i, g in enumerate(gates):
        if g.parent is not None and g.parent not in by_name:
            ck.add(f"gates[{i}] ({g.name}).parent", f"unknown gate {g.parent!r}; expected one of "
                                                    f"{', '.join(by_name)} or null")
    for i, g in enumerate(gates):
        chain, cur = [g.name], g.parent
        while cur is not None and cur in by_name:
            if cur in chain:
                ck.add(f"gates[{i}] ({g.name}).parent", f"cycle: {' -> '.join(chain + [cur])}")
                break
            chain.append(cur)
            cur = by_name[cur][1].parent
    if gates and not any(g.parent is None for g in gates):
        ck.add("gates", "no gate starts from all events (parent: null)")
    population = data.get("population", gates[-1].name if gates else "")
    if gates and not _in(population, by_name):
        ck.add("population", f"unknown gate {_tname(population)}; expected one of {', '.join(by_name)}")

    # reference gates
    refs = data.get("reference_gates", []) or []
    if not isinstance(refs, list):
        ck.add("reference_gates", f"expected a list, got {_tname(refs)}")
        refs = []
    for i, r in enumerate(refs):
        where = f"reference_gates[{i}]"
        if not isinstance(r, dict):
            ck.add(where, f"expected a mapping, got {_tname(r)}")
            continue
        if not _in(r.get("marker"), panel):
            ck.add(f"{where}.marker", f"unknown marker {_tname(r.get('marker'))}; the panel has "
                                      f"{', '.join(panel) or 'none'}")
        if r.get("parent") is not None and not _in(r.get("parent"), by_name):
            ck.add(f"{where}.parent", f"unknown gate {_tname(r.get('parent'))}")
        if r.get("reference", "negative_control") not in ("negative_control", "anti_fceri", "anti_ige", "fmlp"):
            ck.add(f"{where}.reference", f"expected a control condition, got {_tname(r.get('reference'))}")
        if r.get("method", "percentile") not in ("percentile", "resting_peak", "median"):
            ck.add(f"{where}.method", f"expected percentile, resting_peak or median, got {_tname(r.get('method'))}")
        pct = r.get("percentile", 97.5)
        if not (_is_number(pct) and 0 < pct < 100):
            ck.add(f"{where}.percentile", f"expected a number between 0 and 100, got {_tname(pct)}")

    metrics = data.get("metrics", []) or []
    if not isinstance(metrics, list):
        ck.add("metrics", f"expected a list, got {_tname(metrics)}")
        metrics = []
    for i, m in enumerate(metrics):
        if isinstance(m, dict) and "marker" in m and not _in(m["marker"], panel):
            ck.add(f"metrics[{i}].marker", f"unknown marker {_tname(m['marker'])}")
    qc = data.get("qc", {}) or {}
    if not isinstance(qc, dict):
        ck.add("qc", f"expected a mapping, got {_tname(qc)}")
        qc = {}
    analysis = data.get("analysis", {}) or {}
    if not isinstance(analysis, dict):
        ck.add("analysis", f"expected a mapping, got {_tname(analysis)}")
        analysis = {}

    _check_analysis(ck, qc, with_activation(analysis, activation, ck))

    if ck.problems:
        raise TemplateError(f"template has {len(ck.problems)} problem(s)", source=source, problems=ck.problems)
    return Template(name=name, description=description.strip(), schema_version=SCHEMA_VERSION, panel=panel,
                    compensation=dict(comp), transforms=transforms, gates=tuple(gates),
                    population=str(population),
                    identification=identification, activation=activation,
                    reference_gates=tuple(dict(r) for r in refs), metrics=tuple(metrics), qc=dict(qc),
                    analysis=dict(analysis), source=source, source_text=text,
                    sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
