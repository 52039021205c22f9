"""Gating templates: declarative YAML describing a panel, its compensation, transforms and gate hierarchy.

A template is data, never code. :func:`load_template` parses it (plain YAML behind the limits of
:mod:`bat_analysis._safe_parse`: size, nesting, alias expansion, number length) and validates it and returns a
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
        method: debris_density    # a registered estimator (bat templates methods) or 'fixed'
        params: {bins: 128}       # the estimator's typed parameters
        keep: inside              # inside | outside
        min_events: 200
        on_fail: fallback         # fallback | not_gated
        fallback: {type: polygon, vertices: [[...], ...]}   # range: min/max (or mins/maxs) lists
    reference_gates: [...]        # thresholds estimated on another tube (e.g. CD63 on the negative control)
    metrics: [...]
    qc: {...}                     # passed to the analysis configuration
    analysis: {...}               # passed to the analysis configuration

Dimensions are scatter/time names (``FSC-A``, ``FSC-H``, ``FSC-W``, ``SSC-A``, ``SSC-H``, ``SSC-W``,
``Time``) or markers of the panel. Methods and their parameters come from the estimator registry
(:data:`bat_analysis.gating.estimators.ESTIMATORS`), geometries are read by
:mod:`bat_analysis.gating._geometry` (held typed in :class:`GateSpec`), parent cycles are found by
:mod:`bat_analysis.gating._hierarchy`, and ``qc:``/``analysis:`` are checked by
:meth:`bat_analysis.analysis.config.AnalysisConfig.checked`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputParseError, TemplateError
from .._safe_parse import MAX_YAML_BYTES, load_yaml, read_limited
from .estimators import ESTIMATORS, FIXED, Param
from ._geometry import Geometry, is_number, parse_geometry, value_name
from ._hierarchy import cycle_text, parent_cycles
from .transforms import from_spec

SCHEMA_VERSION = 1
SCATTER_DIMS = ("FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W", "Time")
DEFAULT_TEMPLATE = "bat_ccr3_cd63"


# ---------------------------------------------------------------------------------------------- methods
def method_names() -> tuple[str, ...]:
    """Every method a gate may name: the registered estimators, then ``fixed``."""
    return (*ESTIMATORS, FIXED)


def method_params(method: str) -> Mapping[str, Param]:
    """The typed parameters of a method (none for ``fixed``); KeyError for an unknown method."""
    if method == FIXED:
        return {}
    return ESTIMATORS[method].params


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
    fallback: Geometry | None = None
    geometry: Geometry | None = None
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
_tname = value_name  # how a value is named in a problem
_is_number = is_number  # a finite int or float (not a boolean, not NaN or infinity)


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

    def geometry(self, where: str, geo: Any, n_dims: int) -> Geometry | None:
        """A gate's typed geometry (see :mod:`bat_analysis.gating._geometry`); problems added, None when bad."""
        return parse_geometry(geo, n_dims, where, self.problems)


def _marker_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _drop_broken_keys(ck: _Checker, mapping: dict[str, Any], where: str) -> dict[str, Any]:
    """Report (and leave out) keys holding a line break: no setting is named so, and every problem of a
    template is one line."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str) and key.splitlines() != [key]:
            ck.add(f"{where}.{key!r}", "unknown key (a setting name is one line of text)")
            continue
        out[key] = _drop_broken_keys(ck, value, f"{where}.{key}") if isinstance(value, dict) else value
    return out


def _check_analysis(ck: _Checker, qc: dict[str, Any], analysis: dict[str, Any]) -> None:
    """Check the ``qc:`` and ``analysis:`` sections against the analysis configuration's keys.

    The configuration's own checker returns each problem located by its key path; the ``qc:`` section is
    checked as the configuration's ``qc`` section, so its problems read ``qc.KEY`` as in the template.
    """
    from ..analysis.config import AnalysisConfig

    qc = _drop_broken_keys(ck, qc, "qc")
    analysis = _drop_broken_keys(ck, analysis, "analysis")
    for prefix, mapping in (("", {"qc": qc} if qc else None), ("analysis", analysis or None)):
        if not mapping:
            continue
        _config, problems = AnalysisConfig.checked(mapping, prefix=prefix)
        for p in problems:
            ck.problems.append(p if len(p) <= 300 else p[:297] + "...")


def _check_top(ck: _Checker, data: dict[str, Any], source: str) -> tuple[str, str]:
    """Unknown sections, the schema version, the name and the description."""
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
    return name, description


def _parse_marker(ck: _Checker, marker: Any, spec: Any) -> MarkerSpec | None:
    """One panel entry: a list of aliases, or a mapping with aliases and required."""
    where = f"panel.{marker}"
    if not isinstance(marker, str) or not marker.strip():
        ck.add("panel", f"marker names must be text, got {_tname(marker)}")
        return None
    if marker in SCATTER_DIMS:
        ck.add(where, "scatter/time channels are found automatically; do not list them in the panel")
        return None
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
        return None
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        ck.add(f"{where}.aliases" if isinstance(spec, dict) else where,
               f"expected a list of texts, got {_tname(aliases)}")
        aliases = []
    return MarkerSpec(marker, tuple(aliases), required)


def _parse_panel(ck: _Checker, data: dict[str, Any]) -> dict[str, MarkerSpec]:
    """The panel: markers with their aliases; an alias used by two markers is a problem."""
    panel: dict[str, MarkerSpec] = {}
    raw_panel = data.get("panel")
    if not isinstance(raw_panel, dict) or not raw_panel:
        ck.add("panel", f"expected a mapping of marker -> aliases, got {_tname(raw_panel)}")
        raw_panel = {}
    for marker, spec in raw_panel.items():
        parsed = _parse_marker(ck, marker, spec)
        if parsed is not None:
            panel[marker] = parsed
    seen_alias: dict[str, str] = {}
    for m in panel.values():
        for a in (m.name, *m.aliases):
            k = _marker_key(a)
            if k in seen_alias and seen_alias[k] != m.name:
                ck.add(f"panel.{m.name}", f"alias {a!r} is also used by marker {seen_alias[k]!r}")
            seen_alias[k] = m.name
    return panel


def _marker_list(ck: _Checker, data: dict[str, Any], key: str, panel: Mapping[str, MarkerSpec]) -> tuple[str, ...]:
    """A list of panel markers (``identification``, ``activation``)."""
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


def _parse_compensation(ck: _Checker, data: dict[str, Any]) -> dict[str, Any]:
    """``compensation:``: file (with on_missing), none, or a matrix over named channels."""
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
    return dict(comp)


def _parse_transforms(ck: _Checker, data: dict[str, Any], panel: Mapping[str, MarkerSpec],
                      source: str) -> dict[str, dict[str, Any]]:
    """``transforms:`` per dimension (parameters checked by the transform library itself)."""
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
    return transforms


_GATE_KEYS = {"name", "parent", "dims", "method", "params", "keep", "min_events", "on_fail", "fallback",
              "geometry", "description"}


def _gate_dims(ck: _Checker, where: str, g: dict[str, Any], panel: Mapping[str, MarkerSpec]) -> list[str]:
    """A gate's dimensions: scatter/time channels or panel markers."""
    dims = g.get("dims")
    if not isinstance(dims, list) or not dims or not all(isinstance(d, str) for d in dims):
        ck.add(f"{where}.dims", f"expected a list of dimension names, got {_tname(dims)}")
        dims = []
    valid_dims = set(SCATTER_DIMS) | set(panel)
    for j, d in enumerate(dims):
        if d not in valid_dims:
            ck.add(f"{where}.dims[{j}]", f"unknown dimension {d!r}; expected a scatter/time channel "
                                         f"({', '.join(SCATTER_DIMS)}) or a panel marker "
                                         f"({', '.join(panel) or 'none'})")
    return dims


def _gate_method(ck: _Checker, where: str, g: dict[str, Any], dims: list[str]) -> tuple[Any, dict[str, Any]]:
    """A gate's method (a registered estimator or ``fixed``) and its typed parameters, defaults filled."""
    method = g.get("method")
    names = method_names()
    known = isinstance(method, str) and method in names
    if not known:
        ck.add(f"{where}.method", f"unknown method {_tname(method)}; expected one of {', '.join(names)}")
    elif method != FIXED and ESTIMATORS[method].n_dims > 0 and dims and len(dims) != ESTIMATORS[method].n_dims:
        ck.add(f"{where}.dims", f"method {method} needs {ESTIMATORS[method].n_dims} dimension(s), got {len(dims)}")
    raw_params = g.get("params", {}) or {}
    params: dict[str, Any] = {}
    if not isinstance(raw_params, dict):
        ck.add(f"{where}.params", f"expected a mapping, got {_tname(raw_params)}")
        raw_params = {}
    if known:
        specs = method_params(method)
        for k, v in raw_params.items():
            if k not in specs:
                ck.add(f"{where}.params.{k}", f"unknown parameter for {method}; expected "
                                              f"{', '.join(specs) or 'none'}")
            else:
                params[k] = ck.typed(f"{where}.params.{k}", v, specs[k])
        for k, p in specs.items():
            params.setdefault(k, p.default)
    return method, params


def _gate_outcome(ck: _Checker, where: str, g: dict[str, Any], method: Any, n: int
                  ) -> tuple[str, int, str, Geometry | None, Geometry | None]:
    """What a gate keeps, its minimum parent size, what happens when estimation fails, its geometries."""
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
    fallback = None
    if "fallback" in g:
        fallback = ck.geometry(f"{where}.fallback", g["fallback"], n)
    if on_fail == "fallback" and "fallback" not in g:
        ck.add(f"{where}.on_fail", "is 'fallback' but the gate has no 'fallback' geometry")
    geometry = None
    if method == FIXED:
        if "geometry" not in g:
            ck.add(f"{where}.geometry", "method 'fixed' needs a geometry")
        else:
            geometry = ck.geometry(f"{where}.geometry", g["geometry"], n)
    elif "geometry" in g:
        ck.add(f"{where}.geometry", f"only method 'fixed' takes a geometry (this gate uses {method})")
    return keep, min_events, on_fail, fallback, geometry


def _parse_gate(ck: _Checker, i: int, g: Any, panel: Mapping[str, MarkerSpec],
                names_seen: dict[str, int]) -> GateSpec | None:
    """One entry of ``gates:``."""
    where = f"gates[{i}]"
    if not isinstance(g, dict):
        ck.add(where, f"expected a mapping, got {_tname(g)}")
        return None
    gname = g.get("name")
    if isinstance(gname, str) and gname.strip():
        where = f"gates[{i}] ({gname})"
    for k in g:
        if k not in _GATE_KEYS:
            ck.add(f"{where}.{k}", f"unknown key; expected one of {', '.join(sorted(_GATE_KEYS))}")
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
    dims = _gate_dims(ck, where, g, panel)
    method, params = _gate_method(ck, where, g, dims)
    keep, min_events, on_fail, fallback, geometry = _gate_outcome(ck, where, g, method, len(dims))
    desc = g.get("description", "") or ""
    return GateSpec(gname, parent, tuple(dims), str(method), params, keep, min_events, on_fail,
                    fallback, geometry, str(desc))


def _parse_gates(ck: _Checker, data: dict[str, Any], panel: Mapping[str, MarkerSpec]) -> list[GateSpec]:
    """``gates:``, each gate checked on its own (the hierarchy is checked by :func:`_check_hierarchy`)."""
    gates: list[GateSpec] = []
    raw_gates = data.get("gates")
    if not isinstance(raw_gates, list) or not raw_gates:
        ck.add("gates", f"expected a list of gates, got {_tname(raw_gates)}")
        raw_gates = []
    names_seen: dict[str, int] = {}
    for i, g in enumerate(raw_gates):
        spec = _parse_gate(ck, i, g, panel, names_seen)
        if spec is not None:
            gates.append(spec)
    return gates


def _check_hierarchy(ck: _Checker, data: dict[str, Any], gates: list[GateSpec]) -> tuple[str, dict[str, Any]]:
    """Parents exist, no cycle, a root gate, and the population; returns the population and the gates by name."""
    by_name = {g.name: (i, g) for i, g in enumerate(gates)}
    for i, g in enumerate(gates):
        if g.parent is not None and g.parent not in by_name:
            ck.add(f"gates[{i}] ({g.name}).parent", f"unknown gate {g.parent!r}; expected one of "
                                                    f"{', '.join(by_name)} or null")
    # each gate on a cycle names it, from itself round (gates below a cycle have a valid parent)
    in_cycle: list[tuple[int, str, str]] = []
    for cycle in parent_cycles([g.name for g in gates], {name: g.parent for name, (_, g) in by_name.items()}):
        loop = list(cycle[:-1])
        for k, name in enumerate(loop):
            i = by_name[name][0]
            in_cycle.append((i, f"gates[{i}] ({name}).parent", f"cycle: {cycle_text(loop[k:] + loop[:k + 1])}"))
    for _, where, msg in sorted(in_cycle, key=lambda t: t[0]):
        ck.add(where, msg)
    if gates and not any(g.parent is None for g in gates):
        ck.add("gates", "no gate starts from all events (parent: null)")
    population = data.get("population", gates[-1].name if gates else "")
    if gates and not _in(population, by_name):
        ck.add("population", f"unknown gate {_tname(population)}; expected one of {', '.join(by_name)}")
    return population, by_name


def _check_reference_gates(ck: _Checker, data: dict[str, Any], panel: Mapping[str, MarkerSpec],
                           by_name: Mapping[str, Any]) -> list[Any]:
    """``reference_gates:``: thresholds estimated on another tube."""
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
    return refs


def _parse_settings(ck: _Checker, data: dict[str, Any], panel: Mapping[str, MarkerSpec],
                    activation: tuple[str, ...]) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """``metrics:``, ``qc:`` and ``analysis:`` (the last two checked by the analysis configuration, with the
    template's ``activation:`` list as its activation markers)."""
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
    return metrics, qc, analysis


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
    name, description = _check_top(ck, data, source)
    panel = _parse_panel(ck, data)
    identification = _marker_list(ck, data, "identification", panel)
    activation = _marker_list(ck, data, "activation", panel)
    comp = _parse_compensation(ck, data)
    transforms = _parse_transforms(ck, data, panel, source)
    gates = _parse_gates(ck, data, panel)
    population, by_name = _check_hierarchy(ck, data, gates)
    refs = _check_reference_gates(ck, data, panel, by_name)
    metrics, qc, analysis = _parse_settings(ck, data, panel, activation)
    if ck.problems:
        raise TemplateError(f"template has {len(ck.problems)} problem(s)", source=source, problems=ck.problems)
    return Template(name=name, description=description.strip(), schema_version=SCHEMA_VERSION, panel=panel,
                    compensation=comp, transforms=transforms, gates=tuple(gates),
                    population=str(population),
                    identification=identification, activation=activation,
                    reference_gates=tuple(dict(r) for r in refs), metrics=tuple(metrics), qc=dict(qc),
                    analysis=dict(analysis), source=source, source_text=text,
                    sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
