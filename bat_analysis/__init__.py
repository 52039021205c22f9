"""bat_analysis: basophil activation tests from FCS files to gated, scored, reviewed and reported results.

The public face is small: the names below (reading, layouts, templates, gating a tube, scoring, running,
reports, cohort, errors) and four namespaces for the building blocks — ``gates`` (gate geometry and membership),
``transforms`` (logicle, hyperlog, asinh, ...), ``estimators`` (automated gate estimation) and ``simulate``
(synthetic experiments with known truth). Everything is imported lazily (on first attribute access), so that the
``bat`` command and ``import bat_analysis`` start fast. The method behind the numbers is ``docs/method.md``.

Units, everywhere in the API: events are read in channel units (``read_fcs``: scaled as the FCS standard says,
not compensated, not transformed); gating compensates with the file's spillover and draws gates on the
template's transformed scales; the values handed to the analysis (``TubeResult.basophil_values``, thresholds)
are compensated and untransformed (linear); percentages are of basophils, 0-100; concentrations are in the
layout's unit and dose-response curves run on log10 of them.

Names that were exported before 0.2 but are not part of this face still resolve, with a ``DeprecationWarning``
that names the module to import them from.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it ("module:attribute" when the names differ)
_EXPORTS: dict[str, str] = {
    # errors: every problem with an input is a BatError naming the file, the field and what was expected
    "BatError": "bat_analysis.errors",
    "ProblemsError": "bat_analysis.errors",
    # reading FCS files
    "read_fcs": "bat_analysis.io.fcs",
    "FcsSample": "bat_analysis.io.fcs",
    "describe_fcs": "bat_analysis.io.inspect",
    # layouts: which file is which tube
    "Tube": "bat_analysis.records",
    "read_layout": "bat_analysis.io.layout",
    "tubes_from_pattern": "bat_analysis.io.layout",
    # gating templates
    "Template": "bat_analysis.gating.templates",
    "load_template": "bat_analysis.gating.templates",
    "list_templates": "bat_analysis.gating.templates",
    "validate_template": "bat_analysis.gating.templates",
    # gating a tube
    "gate_tube": "bat_analysis.gating.tube",
    "TubeResult": "bat_analysis.records",
    # scoring: thresholds, per-tube metrics, dose response, omalizumab effect, classes
    "AnalysisConfig": "bat_analysis.analysis.config",
    "score_experiment": "bat_analysis.analysis.score",
    "ExperimentScores": "bat_analysis.analysis.score",
    "estimate_threshold": "bat_analysis.analysis.threshold",
    "four_pl": "bat_analysis.analysis.dose_response",
    # running a whole experiment, and reading a finished run back
    "run": "bat_analysis.pipeline",
    "RunOptions": "bat_analysis.pipeline",
    "RunSummary": "bat_analysis.pipeline",
    "load_run": "bat_analysis.pipeline",
    # reports
    "render_reports": "bat_analysis.report",
    # cohort: the runs' results joined with clinical data
    "run_cohort": "bat_analysis.cohort.run",
    "CohortOptions": "bat_analysis.cohort.run",
}

# namespace -> module (reachable as ``bat_analysis.<namespace>``)
_NAMESPACES: dict[str, str] = {
    "gates": "bat_analysis.gating.gates",
    "transforms": "bat_analysis.gating.transforms",
    "estimators": "bat_analysis.gating.estimators",
    "simulate": "bat_analysis.simulate",
}

# exported before 0.2, no longer part of the public face: name -> where it lives ("module:attribute")
_DEPRECATED: dict[str, str] = {
    "FcsFormatError": "bat_analysis.errors",
    "MarkerError": "bat_analysis.errors",
    "LayoutError": "bat_analysis.errors",
    "TemplateError": "bat_analysis.errors",
    "GatingError": "bat_analysis.errors",
    "AnalysisError": "bat_analysis.errors",
    "Flag": "bat_analysis.records",
    "GateRecord": "bat_analysis.records",
    "read_fcs_keywords": "bat_analysis.io.fcs",
    "Channel": "bat_analysis.io.fcs",
    "Spillover": "bat_analysis.io.fcs",
    "resolve_marker": "bat_analysis.io.markers",
    "find_scatter": "bat_analysis.io.markers",
    "find_time": "bat_analysis.io.markers",
    "Panel": "bat_analysis.io.markers",
    "DEFAULT_PANEL": "bat_analysis.io.markers",
    "parse_template": "bat_analysis.gating.templates",
    "gate_sample": "bat_analysis.gating.tube",
    "ReportPaths": "bat_analysis.report",
    "draw_gate": "bat_analysis.report.plots",
    "draw_activation": "bat_analysis.report.plots",
    "draw_dose_response": "bat_analysis.report.plots",
    "draw_tube_panel": "bat_analysis.report.plots",
    "export_gates": "bat_analysis.pipeline",
    "score_results": "bat_analysis.pipeline",
    "ResultStore": "bat_analysis.store",
    "read_overrides": "bat_analysis.review.corrections",
    "OverridesError": "bat_analysis.review.corrections",
    "Corrections": "bat_analysis.review.corrections",
    "ThresholdEstimate": "bat_analysis.analysis.threshold",
    "add_cohort_classes": "bat_analysis.analysis.score",
    "FitResult": "bat_analysis.analysis.dose_response",
    "analyse_series": "bat_analysis.analysis.dose_response",
    "omalizumab_effect": "bat_analysis.analysis.omalizumab",
    "OmalizumabEffect": "bat_analysis.analysis.omalizumab",
    "classify": "bat_analysis.analysis.classify",
    "cohort_classes": "bat_analysis.analysis.classify",
    "tube_qc": "bat_analysis.analysis.qc",
    "tube_metrics": "bat_analysis.analysis.metrics",
    "write_fcs": "bat_analysis.io.fcs_write",
    "simulate_experiment": "bat_analysis.simulate",
    "simulate_tube": "bat_analysis.simulate",
    "SimulatedExperiment": "bat_analysis.simulate",
    "SimulatedTube": "bat_analysis.simulate",
    "load_labels": "bat_analysis.simulate",
    "Dimension": "bat_analysis.gating.gates",
    "Ratio": "bat_analysis.gating.gates",
    "ArrayEvents": "bat_analysis.gating.gates",
    "RangeGate": "bat_analysis.gating.gates",
    "QuadrantGate": "bat_analysis.gating.gates",
    "PolygonGate": "bat_analysis.gating.gates",
    "EllipsoidGate": "bat_analysis.gating.gates",
    "BooleanGate": "bat_analysis.gating.gates",
    "evaluate": "bat_analysis.gating.gates",
    "gate_to_dict": "bat_analysis.gating.gates",
    "gate_from_dict": "bat_analysis.gating.gates",
    "Linear": "bat_analysis.gating.transforms",
    "Log": "bat_analysis.gating.transforms",
    "Asinh": "bat_analysis.gating.transforms",
    "Logicle": "bat_analysis.gating.transforms",
    "Hyperlog": "bat_analysis.gating.transforms",
    "FlowJoBiex": "bat_analysis.gating.transforms",
    "FastLogicle": "bat_analysis.gating.transforms",
    "FastHyperlog": "bat_analysis.gating.transforms",
    "compensate": "bat_analysis.gating.compensation",
    "read_gatingml": "bat_analysis.gating.gatingml",
    "export_gatingml": "bat_analysis.gating.gatingml",
    "GatingDocument": "bat_analysis.gating.gatingml",
    "read_workspace": "bat_analysis.gating.flowjo",
    "export_workspace": "bat_analysis.gating.flowjo",
    "flowjo_counts": "bat_analysis.gating.flowjo",
    "transform_from_spec": "bat_analysis.gating.transforms:from_spec",
}

__all__ = sorted([*_EXPORTS, *_NAMESPACES]) + ["__version__"]


def _resolve(spec: str, name: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or name)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = _resolve(_EXPORTS[name], name)
    elif name in _NAMESPACES:
        value = importlib.import_module(_NAMESPACES[name])
    elif name in _DEPRECATED:
        spec = _DEPRECATED[name]
        module, _, attr = spec.partition(":")
        warnings.warn(f"bat_analysis.{name} is no longer part of the public API; import it from {module} "
                      f"(from {module} import {attr or name})", DeprecationWarning, stacklevel=2)
        return _resolve(spec, name)  # not cached: every use warns
    else:
        raise AttributeError(f"module 'bat_analysis' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
