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

from .._checksums import file_sha256
from ..errors import BatError, GatingError
from ..records import Flag, GateRecord, Tube, TubeResult
from . import estimators as est
from ._channels import resolve_channels
from .compensation import Spillover, as_spillover
from .gates import Dimension, Gate, gate_to_dict
from ._geometry import from_gate, to_gate
from ._hierarchy import topological_order
from .templates import SCATTER_DIMS, GateSpec, Template

# the numerical failures an estimator may meet on strange data; they become flags, never a crash
_NUMERIC_ERRORS = (ValueError, FloatingPointError, ZeroDivisionError, np.linalg.LinAlgError)

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
#: a gate's members when it kept every event of the tube (its indices, 0..n-1, are made only if asked for)
EVERY_EVENT = "every event"


@dataclass
class _TubeState:
    """One tube's working state while its gates are applied in order: the template, the gating columns
    (raw compensated values) and channel ranges, and what each gate gave so far (member indices, or
    :data:`EVERY_EVENT`, or None when not gated; records, flags, the event fractions removed)."""

    template: Template
    columns: dict[str, np.ndarray]
    ranges: dict[str, float | None]
    n_events: int
    idx: dict[str, np.ndarray | str | None] = field(default_factory=dict)
    records: list[GateRecord] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    fractions: dict[str, float] = field(default_factory=dict)


def _parents_first(gates: tuple[GateSpec, ...]) -> list[GateSpec]:
    """The template's gates with every parent before its children (template order where free)."""
    return topological_order(gates, lambda g: g.name, lambda g: [g.parent] if g.parent is not None else [])


def _remap(gate: Gate, dims: tuple[Dimension, ...], gspec: GateSpec) -> Gate:
    """An override gate on the template's dimensions (matched by key; geometry in the template's scales)."""
    keys = tuple(d.key for d in gate.dims)
    if keys != gspec.dims:
        raise GatingError(f"override for gate {gspec.name} is on {list(keys)}", field=gspec.name,
                          expected=f"dimensions {list(gspec.dims)}")
    try:
        geometry = from_gate(gate)
    except TypeError:
        raise GatingError(f"override for gate {gspec.name}: {type(gate).__name__} cannot replace an estimated "
                          "gate", field=gspec.name, expected="a range, polygon or ellipsoid gate") from None
    return to_gate(geometry, gspec.name, dims)


def _density_for(cols: list[np.ndarray], dims: tuple[Dimension, ...], tops: list[float | None]
                 ) -> tuple[np.ndarray | None, tuple[np.ndarray, ...] | None]:
    """The parent's events as a gate set without its estimator is drawn over (an override, a fixed gate, a
    fallback): a 2-D density image, or a 1-D histogram (:func:`~.estimators.histogram_1d`)."""
    if len(dims) == 1 and len(cols) == 1:
        hist = est.histogram_1d(cols[0], dims[0])
        return (None, None) if hist is None else (est.small_counts(hist[0]), (hist[1],))
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
    """The registered estimator of the gate's method on the parent's events."""
    spec = est.ESTIMATORS.get(gspec.method)
    if spec is None:
        raise GatingError(f"gate {gspec.name}: no estimator for method {gspec.method!r}", field="method",
                          expected=f"one of {', '.join(est.ESTIMATORS)}")
    return spec.function(est.GateData(gspec.name, tuple(cols), dims, tuple(tops)), gspec.params)


@dataclass
class _GateInput:
    """One gate's view of the tube: its parent's member indices (None: all events), their count, the
    dimensions, channel ranges and the parent's columns (empty when a channel is missing)."""

    parent_idx: np.ndarray | None
    n_parent: int
    dims: tuple[Dimension, ...]
    tops: list[float | None]
    missing: list[str]
    cols: list[np.ndarray]


def _gate_input(state: _TubeState, gspec: GateSpec, parent_idx: np.ndarray | None) -> _GateInput:
    n_parent = state.n_events if parent_idx is None else len(parent_idx)
    missing = [d for d in gspec.dims if d not in state.columns]
    dims = tuple(template_dimension(state.template, d) for d in gspec.dims)
    tops = [state.ranges.get(d) for d in gspec.dims]
    cols: list[np.ndarray] = []
    if not missing:
        # member indices are sorted subsets of all events: a parent holding every event needs no gather
        whole = parent_idx is None or len(parent_idx) == state.n_events
        cols = [state.columns[d] if whole else np.take(state.columns[d], parent_idx) for d in gspec.dims]
    return _GateInput(parent_idx, n_parent, dims, tops, missing, cols)


def _first_estimate(gspec: GateSpec, inp: _GateInput, overrides: Mapping[str, Gate]) -> tuple[est.Estimate, str]:
    """The gate's geometry before any fallback, and the method that gave it: a reviewer's override, the
    template's fixed geometry, or the estimator (refused below ``min_events``; numerical failures are flags)."""
    method = gspec.method
    if inp.missing:
        return est.failed(f"no channel for {', '.join(inp.missing)}", "GATE_SKIPPED", gspec.name), method
    cols, dims = inp.cols, inp.dims
    if gspec.name in overrides:
        gate = _remap(overrides[gspec.name], dims, gspec)
        mask = est.apply_gate(gate, cols)
        dens, edges = _density_for(cols, dims, inp.tops)
        return est.Estimate(gate, mask, {"override": True}, [], dens, edges), "override"
    if gspec.method == est.FIXED:
        gate = to_gate(gspec.geometry, gspec.name, dims)
        dens, edges = _density_for(cols, dims, inp.tops)
        return est.Estimate(gate, est.apply_gate(gate, cols), {}, [], dens, edges), method
    if inp.n_parent < gspec.min_events:
        return est.failed(f"{inp.n_parent} events in parent {gspec.parent or 'all events'} "
                          f"(< min_events {gspec.min_events})", "TOO_FEW_EVENTS", gspec.name,
                          n_parent=inp.n_parent), method
    try:
        return _estimate(gspec, cols, dims, inp.tops), method
    except _NUMERIC_ERRORS as exc:
        return est.failed(f"estimation failed on this tube's data ({exc})", "GATE_ESTIMATE_ERROR",
                          gspec.name), method


def _parent_not_gated(state: _TubeState, gspec: GateSpec, population: str) -> None:
    """The parent could not be gated at all: neither is this gate (population failure propagates)."""
    state.idx[gspec.name] = None
    state.records.append(GateRecord(gspec.name, gspec.parent, gspec.dims, {}, 0, 0, "not_gated",
                                    {"failure": f"parent {gspec.parent} not gated"}))
    if gspec.name == population:
        state.flags.append(Flag("BASOPHILS_NOT_GATED", "fail",
                                f"gate {gspec.name} could not be set: its parent {gspec.parent} was not gated"))


def _not_gated(state: _TubeState, gspec: GateSpec, inp: _GateInput, estimate: est.Estimate,
               diagnostics: dict[str, Any], population: str) -> None:
    """No geometry: the population is lost; any other gate keeps all its parent's events."""
    if gspec.name == population:
        state.flags.append(Flag("BASOPHILS_NOT_GATED", "fail",
                                f"gate {gspec.name} could not be set on this tube: "
                                f"{diagnostics.get('failure', 'no estimate')}"))
        state.idx[gspec.name] = None
        count = 0
    else:
        state.flags.append(Flag("GATE_NOT_APPLIED", "warn",
                                f"gate {gspec.name} not applied (all parent events kept): "
                                f"{diagnostics.get('failure', 'no estimate')}"))
        state.idx[gspec.name] = EVERY_EVENT if inp.parent_idx is None else inp.parent_idx
        count = inp.n_parent
    state.records.append(GateRecord(gspec.name, gspec.parent, gspec.dims, {}, count, inp.n_parent, "not_gated",
                                    diagnostics, estimate.density, estimate.density_edges))


def _gated(state: _TubeState, gspec: GateSpec, inp: _GateInput, estimate: est.Estimate, gate: Gate,
           mask: np.ndarray, method: str, diagnostics: dict[str, Any]) -> None:
    """Record a gate that was set: its members, stored geometry, event fraction removed and diagnostics."""
    n_parent, parent_idx = inp.n_parent, inp.parent_idx
    if estimate.density is None:  # every gate is drawn for review
        estimate.density, estimate.density_edges = _density_for(inp.cols, inp.dims, inp.tops)
    if gspec.keep == "outside":
        mask = ~mask
    # a parent holding every event has the indices 0..n-1 (sorted subsets): its members are the mask's
    whole = parent_idx is None or len(parent_idx) == state.n_events
    n_kept = int(np.count_nonzero(mask))
    if whole and n_kept == state.n_events:
        state.idx[gspec.name] = EVERY_EVENT
    else:
        state.idx[gspec.name] = np.flatnonzero(mask) if whole else parent_idx[mask]
    geometry = gate_to_dict(_with_parent(gate, gspec.parent))
    if estimate.members:
        geometry["members"] = [gate_to_dict(m) for m in estimate.members]
    if gspec.keep == "outside":
        geometry["keep"] = "outside"
    spec = est.ESTIMATORS.get(gspec.method)
    if spec is not None and spec.removes is not None:
        state.fractions[spec.removes] = 1.0 - n_kept / n_parent if n_parent else 0.0
    diagnostics.setdefault("fraction_of_parent", n_kept / n_parent if n_parent else 0.0)
    state.records.append(GateRecord(gspec.name, gspec.parent, gspec.dims, geometry, n_kept,
                                    int(n_parent), method, diagnostics, estimate.density, estimate.density_edges))


def _apply_gate_spec(state: _TubeState, gspec: GateSpec, overrides: Mapping[str, Gate],
                     population: str) -> None:
    """Set one gate of the template on the tube (its parent already set) and record the outcome."""
    parent_idx = state.idx.get(gspec.parent) if gspec.parent is not None else None
    if gspec.parent is not None and parent_idx is None:
        _parent_not_gated(state, gspec, population)
        return
    inp = _gate_input(state, gspec, None if isinstance(parent_idx, str) else parent_idx)
    estimate, method = _first_estimate(gspec, inp, overrides)
    diagnostics = dict(estimate.diagnostics)
    state.flags.extend(estimate.flags)
    gate, mask = estimate.gate, estimate.mask
    # the template's fallback geometry when the estimate failed
    if gate is None and gspec.on_fail == "fallback" and gspec.fallback is not None and not inp.missing:
        gate = to_gate(gspec.fallback, gspec.name, inp.dims)
        mask = est.apply_gate(gate, inp.cols)
        method = "fallback"
        diagnostics["fallback_used"] = True
        state.flags.append(Flag("GATE_FALLBACK", "warn",
                                f"gate {gspec.name}: estimate failed ({diagnostics.get('failure')}); "
                                f"the template's fallback geometry was used"))
        if estimate.density is None:
            estimate.density, estimate.density_edges = _density_for(inp.cols, inp.dims, inp.tops)
    if gate is None:
        _not_gated(state, gspec, inp, estimate, diagnostics, population)
        return
    assert mask is not None
    _gated(state, gspec, inp, estimate, gate, mask, method, diagnostics)


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
    return _gate_sample(sample, tube, template, overrides, result, source)[0]


def gate_sample_indices(sample: Any, tube: Tube, template: Template, *,
                        overrides: Mapping[str, Gate] | None = None, result: TubeResult | None = None,
                        source: str | None = None) -> tuple[TubeResult, dict[str, np.ndarray | None]]:
    """As :func:`gate_sample`, also returning each gate's member event indices (None: not gated)."""
    result, state = _gate_sample(sample, tube, template, overrides, result, source)
    every = np.arange(state.n_events) if any(isinstance(v, str) for v in state.idx.values()) else None
    return result, {k: every if isinstance(v, str) else v for k, v in state.idx.items()}


def _gate_sample(sample: Any, tube: Tube, template: Template, overrides: Mapping[str, Gate] | None,
                 result: TubeResult | None, source: str | None) -> tuple[TubeResult, _TubeState]:
    """:func:`gate_sample`, returning the tube's final state too (each gate's members)."""
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
    state = _TubeState(template, columns, ranges, n)
    population = template.population
    for gspec in _parents_first(template.gates):
        _apply_gate_spec(state, gspec, overrides or {}, population)
    result.gates = state.records
    result.flags.extend(state.flags)
    result.event_fractions = {k: float(state.fractions.get(k, 0.0)) for k in est.EVENT_FRACTIONS}
    members = state.idx.get(population)
    if members is None:
        result.n_basophils = 0
        return result, state
    idx = None if isinstance(members, str) else members  # None: every event
    result.n_basophils = n if idx is None else int(len(idx))
    values: dict[str, np.ndarray] = {}
    rest = [m for m in markers if m not in columns]
    for m in markers:
        if m in columns:
            values[m] = np.array(columns[m], dtype=np.float32) if idx is None else \
                np.asarray(columns[m][idx], dtype=np.float32)
    if rest:
        values.update({m: np.asarray(v, dtype=np.float32)
                       for m, v in _compensated(sample, template, channels, rest, idx, source).items()})
    result.basophil_values = {m: values[m] for m in markers}
    return result, state


def gate_tube(path: str | Path, tube: Tube, template: Template, *,
              overrides: Mapping[str, Gate] | None = None,
              reader: Callable[[str | Path], Any] | None = None,
              sha256: str | None = None) -> TubeResult:
    """Gate one FCS file with a template; never raises for bad data.

    ``path`` is read with ``reader`` (default ``read_fcs``: channel units, not compensated); the template's
    fluorescence channels are compensated with the file's spillover matrix, and each gate's geometry is on its
    dimensions' scales (the template's transforms: logicle, asinh, ... or linear). ``tube`` is the layout row
    (concentration in the layout's unit). The result's ``basophil_values`` are compensated and untransformed
    (linear), the units the analysis thresholds in; gate geometry is recorded on the transformed scales.
    ``overrides`` maps gate names to gates whose geometry replaces the estimate (method ``override``,
    e.g. a reviewer's correction); their dimensions must be the template gate's, in its scales.
    ``sha256`` is the file's checksum when the caller has already computed it (a batch checks every file
    first); otherwise the file is hashed here, with the default reader in the same pass that reads it
    (``read_fcs_sha256``: the checksum is that of the bytes gated).
    A file or template problem (any ``BatError``) gives a result with ``error`` set and a fail flag
    ``TUBE_NOT_GATED`` whose message is that error; a warning that the error repeats (an unusable spillover
    matrix, then refused) is dropped, so that the reason is given once.
    """
    result = TubeResult(tube=tube)
    try:
        if reader is None and sha256 is None:
            from ..io.fcs import read_fcs_sha256

            # one pass over the file's bytes: read, hashed as they are read, events decoded from them
            sample, result.file_sha256 = read_fcs_sha256(path)
        else:
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
