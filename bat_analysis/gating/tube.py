"""Gate one tube: read -> compensate -> acquisition QC -> margin -> cells -> singlets -> basophils.

:func:`gate_tube` is the map step of the pipeline. It returns a small :class:`TubeResult` (counts, gate
geometry with its density image, flags and the basophils' compensated marker values) and never raises
for bad data: a file or template problem becomes ``TubeResult.error`` with a fail flag naming it.

Only the channels the template uses are compensated; gates are estimated and applied on raw
compensated values (ranges compared in raw units, density images binned with inverse-transformed
edges, polygons tested inside their bounding box), so per-event transforms are rarely needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..checksums import file_sha256
from ..errors import BatError, GatingError
from ..records import Flag, GateRecord, Tube, TubeResult
from . import estimators as est
from .channels import resolve_channels
from .compensation import Spillover, as_spillover
from .gates import Dimension, EllipsoidGate, Gate, PolygonGate, RangeGate, gate_to_dict
from .templates import SCATTER_DIMS, GateSpec, Template

# the numerical failures an estimator may meet on strange data; they become flags, never a crash
_NUMERIC_ERRORS = (ValueError, FloatingPointError, ZeroDivisionError, np.linalg.LinAlgError)

_FRACTION_OF = {"flow_rate": "acquisition_qc", "margin": "margin", "singlet_band": "doublets"}


# ---------------------------------------------------------------------------------------------- dimensions
_DIM_CACHE: dict[tuple[str, str], Dimension] = {}


def template_dimension(template: Template, dim: str) -> Dimension:
    """The gating dimension ``dim`` of a template with its scale transform (built once per template)."""
    from .transforms import from_spec

    key = (template.sha256, dim)
    if key not in _DIM_CACHE:
        spec = template.transform_spec(dim)
        tf = None if spec.get("type") == "none" else from_spec(spec, source=template.source,
                                                                 where=f"transforms.{dim}")
        _DIM_CACHE[key] = Dimension(dim, tf)
    return _DIM_CACHE[key]


# ---------------------------------------------------------------------------------------------- gating
@dataclass
class _Run:
    """Working state of one tube."""

    template: Template
    columns: dict[str, np.ndarray]
    ranges: dict[str, float | None]
    n_events: int
    idx: dict[str, np.ndarray | None] = field(default_factory=dict)
    records: list[GateRecord] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    fractions: dict[str, float] = field(default_factory=dict)


def _topological(gates: tuple[GateSpec, ...]) -> list[GateSpec]:
    by_name = {g.name: g for g in gates}
    done: list[GateSpec] = []
    seen: set[str] = set()

    def visit(g: GateSpec) -> None:
        if g.name in seen:
            return
        seen.add(g.name)
        if g.parent is not None:
            visit(by_name[g.parent])
        done.append(g)

    for g in gates:
        visit(g)
    return done


def _geometry_gate(spec: dict[str, Any], name: str, dims: tuple[Dimension, ...]) -> Gate:
    """A gate object from a template geometry mapping (fixed or fallback)."""
    kind = spec["type"]
    if kind == "range":
        n = len(dims)
        return RangeGate(name, dims, mins=tuple(spec.get("min", [None] * n)),
                         maxs=tuple(spec.get("max", [None] * n)))
    if kind == "polygon":
        return PolygonGate(name, dims, vertices=np.asarray(spec["vertices"], dtype=float))
    return EllipsoidGate(name, dims, mean=np.asarray(spec["mean"], dtype=float),
                         covariance=np.asarray(spec["covariance"], dtype=float),
                         distance_square=float(spec["distance_square"]))


def _remap(gate: Gate, dims: tuple[Dimension, ...], gspec: GateSpec) -> Gate:
    """An override gate on the template's dimensions (matched by key; geometry in the template's scales)."""
    keys = tuple(d.key for d in gate.dims)
    if keys != gspec.dims:
        raise GatingError(f"override for gate {gspec.name} is on {list(keys)}", field=gspec.name,
                          expected=f"dimensions {list(gspec.dims)}")
    if isinstance(gate, RangeGate):
        return RangeGate(gspec.name, dims, mins=gate.mins, maxs=gate.maxs)
    if isinstance(gate, PolygonGate):
        return PolygonGate(gspec.name, dims, vertices=gate.vertices)
    if isinstance(gate, EllipsoidGate):
        return EllipsoidGate(gspec.name, dims, mean=gate.mean, covariance=gate.covariance,
                             distance_square=gate.distance_square)
    raise GatingError(f"override for gate {gspec.name}: {type(gate).__name__} cannot replace an estimated gate",
                      field=gspec.name, expected="a range, polygon or ellipsoid gate")


def _density_for(cols: list[np.ndarray], dims: tuple[Dimension, ...], tops: list[float | None]
                 ) -> tuple[np.ndarray | None, tuple[np.ndarray, ...] | None]:
    if len(dims) != 2 or len(cols[0]) == 0:
        return None, None
    step = est.thin(len(cols[0]))
    xs, ys = np.ascontiguousarray(cols[0][::step]), np.ascontiguousarray(cols[1][::step])
    xl = est.scale_limits(dims[0], xs, tops[0])
    yl = est.scale_limits(dims[1], ys, tops[1])
    counts, ex, ey = est.density_image(xs, ys, dims[0], dims[1], xl, yl, weights=step if step > 1 else None)
    return est.small_counts(counts), (ex, ey)


def _estimate(gspec: GateSpec, cols: list[np.ndarray], dims: tuple[Dimension, ...],
              tops: list[float | None]) -> est.Estimate:
    p, name = gspec.params, gspec.name
    m = gspec.method
    if m == "flow_rate":
        return est.estimate_flow_rate(cols[0], dims[0], name, p)
    if m == "margin":
        return est.estimate_margin(cols, dims, tops, name, p)
    if m == "debris_density":
        return est.estimate_cells(cols[0], cols[1], dims[0], dims[1], (tops[0], tops[1]), name, p)
    if m == "singlet_band":
        return est.estimate_singlets(cols[0], cols[1], dims[0], dims[1], (tops[0], tops[1]), name, p)
    if m == "cluster_2d":
        return est.estimate_cluster(cols[0], cols[1], dims[0], dims[1], name, p)
    raise GatingError(f"gate {name}: no estimator for method {m!r}", field="method")


def _apply_gate_spec(run: _Run, gspec: GateSpec, overrides: Mapping[str, Gate],
                     population: str) -> None:
    template = run.template
    parent_idx = run.idx.get(gspec.parent) if gspec.parent is not None else None
    if gspec.parent is not None and parent_idx is None:
        # the parent could not be gated at all (population failure propagates)
        run.idx[gspec.name] = None
        run.records.append(GateRecord(gspec.name, gspec.parent, gspec.dims, {}, 0, 0, "not_gated",
                                      {"failure": f"parent {gspec.parent} not gated"}))
        if gspec.name == population:
            run.flags.append(Flag("BASOPHILS_NOT_GATED", "fail",
                                  f"gate {gspec.name} could not be set: its parent {gspec.parent} was not gated"))
        return
    n_parent = run.n_events if parent_idx is None else len(parent_idx)
    missing = [d for d in gspec.dims if d not in run.columns]
    dims = tuple(template_dimension(template, d) for d in gspec.dims)
    tops = [run.ranges.get(d) for d in gspec.dims]
    estimate: est.Estimate | None = None
    method = gspec.method
    if missing:
        estimate = est.failed(f"no channel for {', '.join(missing)}", "GATE_SKIPPED", gspec.name)
        cols: list[np.ndarray] = []
    else:
        # member indices are sorted subsets of all events: a parent holding every event needs no gather
        whole = parent_idx is None or len(parent_idx) == run.n_events
        cols = [run.columns[d] if whole else run.columns[d][parent_idx] for d in gspec.dims]
        if gspec.name in overrides:
            gate = _remap(overrides[gspec.name], dims, gspec)
            mask = est.apply_gate(gate, cols)
            dens, edges = _density_for(cols, dims, tops)
            estimate = est.Estimate(gate, mask, {"override": True}, [], dens, edges)
            method = "override"
        elif gspec.method == "fixed":
            gate = _geometry_gate(gspec.geometry or {}, gspec.name, dims)
            dens, edges = _density_for(cols, dims, tops)
            estimate = est.Estimate(gate, est.apply_gate(gate, cols), {}, [], dens, edges)
        elif n_parent < gspec.min_events:
            estimate = est.failed(f"{n_parent} events in parent {gspec.parent or 'all events'} "
                                  f"(< min_events {gspec.min_events})", "TOO_FEW_EVENTS", gspec.name,
                                  n_parent=n_parent)
        else:
            try:
                estimate = _estimate(gspec, cols, dims, tops)
            except _NUMERIC_ERRORS as exc:
                estimate = est.failed(f"estimation failed on this tube's data ({exc})", "GATE_ESTIMATE_ERROR",
                                      gspec.name)
    diagnostics = dict(estimate.diagnostics)
    run.flags.extend(estimate.flags)
    gate, mask = estimate.gate, estimate.mask
    if gate is None and gspec.on_fail == "fallback" and gspec.fallback is not None and not missing:
        gate = _geometry_gate(gspec.fallback, gspec.name, dims)
        mask = est.apply_gate(gate, cols)
        method = "fallback"
        diagnostics["fallback_used"] = True
        run.flags.append(Flag("GATE_FALLBACK", "warn",
                              f"gate {gspec.name}: estimate failed ({diagnostics.get('failure')}); "
                              f"the template's fallback geometry was used"))
        if estimate.density is None:
            estimate.density, estimate.density_edges = _density_for(cols, dims, tops)
    if gate is None:
        if gspec.name == population:
            run.flags.append(Flag("BASOPHILS_NOT_GATED", "fail",
                                  f"gate {gspec.name} could not be set on this tube: "
                                  f"{diagnostics.get('failure', 'no estimate')}"))
            run.idx[gspec.name] = None
            count = 0
        else:
            run.flags.append(Flag("GATE_NOT_APPLIED", "warn",
                                  f"gate {gspec.name} not applied (all parent events kept): "
                                  f"{diagnostics.get('failure', 'no estimate')}"))
            run.idx[gspec.name] = np.arange(n_parent) if parent_idx is None else parent_idx
            count = n_parent
        run.records.append(GateRecord(gspec.name, gspec.parent, gspec.dims, {}, count, n_parent, "not_gated",
                                      diagnostics, estimate.density, estimate.density_edges))
        return
    assert mask is not None
    if estimate.density is None:  # every gate is drawn for review
        estimate.density, estimate.density_edges = _density_for(cols, dims, tops)
    if gspec.keep == "outside":
        mask = ~mask
    kept = np.flatnonzero(mask) if parent_idx is None else parent_idx[mask]
    run.idx[gspec.name] = kept
    geometry = gate_to_dict(_with_parent(gate, gspec.parent))
    if estimate.members:
        geometry["members"] = [gate_to_dict(m) for m in estimate.members]
    if gspec.keep == "outside":
        geometry["keep"] = "outside"
    if gspec.method in _FRACTION_OF and method != "not_gated":
        run.fractions[_FRACTION_OF[gspec.method]] = 1.0 - len(kept) / n_parent if n_parent else 0.0
    diagnostics.setdefault("fraction_of_parent", len(kept) / n_parent if n_parent else 0.0)
    run.records.append(GateRecord(gspec.name, gspec.parent, gspec.dims, geometry, int(len(kept)), int(n_parent),
                                  method, diagnostics, estimate.density, estimate.density_edges))


def _with_parent(gate: Gate, parent: str | None) -> Gate:
    gate.parent = parent
    return gate


def _compensated(sample: Any, template: Template, channels: dict[str, Any], dims: list[str],
                 rows: np.ndarray | None, source: str) -> dict[str, np.ndarray]:
    """Compensated float32 columns of ``dims`` (fluorescence dimensions; optionally only ``rows``)."""
    from .compensation import compensate

    events = sample.events if rows is None else sample.events[rows]
    wanted = [channels[d].pnn for d in dims]
    spill = _spillover(sample, template, channels, source)
    if spill is None or not wanted:
        return {d: np.ascontiguousarray(events[:, channels[d].index], dtype=np.float32) for d in dims}
    comp = compensate(events, [c.pnn for c in sample.channels], spill, wanted)
    return {d: np.ascontiguousarray(comp[:, j]) for j, d in enumerate(dims)}


def _spillover(sample: Any, template: Template, channels: dict[str, Any], source: str) -> Spillover | None:
    """The spillover matrix the template asks for: the file's, the template's own or none."""
    comp = template.compensation
    if comp.get("source", "file") == "none":
        return None
    if comp["source"] == "matrix":
        names = [channels[c].pnn if c in channels else c for c in comp["channels"]]
        return Spillover(tuple(names), np.asarray(comp["values"], dtype=float))
    if sample.spillover is None:
        if getattr(sample, "spillover_error", None):
            # a matrix is there but unusable (unknown channels, singular): refuse rather than gate uncompensated
            sample.require_spillover()
        return None
    return as_spillover(sample.spillover)


def gate_sample(sample: Any, tube: Tube, template: Template, *, overrides: Mapping[str, Gate] | None = None,
                result: TubeResult | None = None, source: str | None = None) -> TubeResult:
    """Gate an already-read :class:`FcsSample` (see :func:`gate_tube`); raises BatError on bad input."""
    return gate_sample_indices(sample, tube, template, overrides=overrides, result=result, source=source)[0]


def gate_sample_indices(sample: Any, tube: Tube, template: Template, *,
                        overrides: Mapping[str, Gate] | None = None, result: TubeResult | None = None,
                        source: str | None = None) -> tuple[TubeResult, dict[str, np.ndarray | None]]:
    """As :func:`gate_sample`, also returning each gate's member event indices (None: not gated)."""
    source = source or str(getattr(sample, "path", tube.file))
    result = result or TubeResult(tube=tube)
    channels, flags = resolve_channels(sample, template, source)
    result.flags.extend(flags)
    n = int(sample.events.shape[0])
    result.n_events = n
    markers = [m for m in template.panel if m in channels]
    result.n_fluorescent_markers = len(markers)
    spill = _spillover(sample, template, channels, source)
    result.has_spillover = spill is not None
    if template.compensation.get("source", "file") == "file" and sample.spillover is None and len(markers) >= 2:
        result.flags.append(Flag("NO_SPILLOVER", "warn",
                                 f"{Path(source).name}: no spillover matrix in the file; "
                                 f"{len(markers)} fluorescent markers left uncompensated"))
    gating_dims = sorted({d for g in template.gates for d in g.dims if d in channels})
    fluo = [d for d in gating_dims if d not in SCATTER_DIMS]
    # every gating channel as a contiguous row (later passes over a column are cache-friendly), the
    # fluorescence ones compensated, in one pass over the event matrix
    from .compensation import compensate

    scatter = [d for d in gating_dims if d in SCATTER_DIMS]
    order = scatter + fluo
    rows = compensate(sample.events, [c.pnn for c in sample.channels], None if not fluo else spill,
                      [channels[d].pnn for d in order], copied=[channels[d].pnn for d in scatter],
                      channel_major=True)
    columns: dict[str, np.ndarray] = {d: rows[j] for j, d in enumerate(order)}
    ranges = {d: float(channels[d].range) if channels[d].range else None for d in gating_dims}
    run = _Run(template, columns, ranges, n)
    population = template.population
    for gspec in _topological(template.gates):
        _apply_gate_spec(run, gspec, overrides or {}, population)
    result.gates = run.records
    result.flags.extend(run.flags)
    result.event_fractions = {k: float(run.fractions.get(k, 0.0)) for k in ("acquisition_qc", "margin", "doublets")}
    idx = run.idx.get(population)
    if idx is None:
        result.n_basophils = 0
        return result, run.idx
    result.n_basophils = int(len(idx))
    values: dict[str, np.ndarray] = {}
    rest = [m for m in markers if m not in columns]
    for m in markers:
        if m in columns:
            values[m] = np.asarray(columns[m][idx], dtype=np.float32)
    if rest:
        values.update({m: np.asarray(v, dtype=np.float32)
                       for m, v in _compensated(sample, template, channels, rest, idx, source).items()})
    result.basophil_values = {m: values[m] for m in markers}
    return result, run.idx


def gate_tube(path: str | Path, tube: Tube, template: Template, *,
              overrides: Mapping[str, Gate] | None = None,
              reader: Callable[[str | Path], Any] | None = None,
              sha256: str | None = None) -> TubeResult:
    """Gate one FCS file with a template; never raises for bad data.

    ``overrides`` maps gate names to gates whose geometry replaces the estimate (method ``override``,
    e.g. a reviewer's correction); their dimensions must be the template gate's, in its scales.
    ``sha256`` is the file's checksum when the caller has already computed it (a batch checks every file
    first); otherwise the file is hashed here.
    A file or template problem (any ``BatError``) gives a result with ``error`` set and a fail flag
    ``TUBE_NOT_GATED`` whose message is that error; a warning that the error repeats (an unusable spillover
    matrix, then refused) is dropped, so that the reason is given once.
    """
    result = TubeResult(tube=tube)
    try:
        result.file_sha256 = sha256 or file_sha256(path)
        if reader is None:
            from ..io.fcs import read_fcs as reader  # noqa: N813
        sample = reader(path)
        for w in getattr(sample, "warnings", []) or []:
            result.flags.append(Flag("FCS_WARNING", "warn", f"{Path(path).name}: {w}"))
        gate_sample(sample, tube, template, overrides=overrides, result=result, source=str(path))
    except BatError as exc:
        result.error = str(exc)
        result.flags = [f for f in result.flags
                        if f.severity != "warn" or not exc.message or exc.message not in f.message]
        result.flags.append(Flag("TUBE_NOT_GATED", "fail", result.error))
    except OSError as exc:
        result.error = f"{path}: cannot read the file ({exc.strerror or exc})"
        result.flags.append(Flag("TUBE_NOT_GATED", "fail", result.error))
    return result
