"""bat_analysis: basophil activation tests from FCS files to gated, scored, reviewed and reported results.

The public API is re-exported here and imported lazily (on first attribute access), so that the ``bat``
command and ``import bat_analysis`` start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "BatError": "bat_analysis.errors",
    "FcsFormatError": "bat_analysis.errors",
    "MarkerError": "bat_analysis.errors",
    "LayoutError": "bat_analysis.errors",
    "TemplateError": "bat_analysis.errors",
    "ProblemsError": "bat_analysis.errors",
    "GatingError": "bat_analysis.errors",
    "AnalysisError": "bat_analysis.errors",
    "Flag": "bat_analysis.records",
    "Tube": "bat_analysis.records",
    "GateRecord": "bat_analysis.records",
    "TubeResult": "bat_analysis.records",
    "read_fcs": "bat_analysis.io.fcs",
    "read_fcs_keywords": "bat_analysis.io.fcs",
    "FcsSample": "bat_analysis.io.fcs",
    "Channel": "bat_analysis.io.fcs",
    "Spillover": "bat_analysis.io.fcs",
    "resolve_marker": "bat_analysis.io.markers",
    "find_scatter": "bat_analysis.io.markers",
    "find_time": "bat_analysis.io.markers",
    "Panel": "bat_analysis.io.markers",
    "DEFAULT_PANEL": "bat_analysis.io.markers",
    "describe_fcs": "bat_analysis.io.inspect",
    "parse_template": "bat_analysis.gating.templates",
    "gate_sample": "bat_analysis.gating.tube",
    "ReportPaths": "bat_analysis.report",
    "draw_gate": "bat_analysis.report.plots",
    "draw_activation": "bat_analysis.report.plots",
    "draw_dose_response": "bat_analysis.report.plots",
    "draw_tube_panel": "bat_analysis.report.plots",
    "load_run": "bat_analysis.pipeline",
    "export_gates": "bat_analysis.pipeline",
    "score_results": "bat_analysis.pipeline",
    "ResultStore": "bat_analysis.store",
    "read_overrides": "bat_analysis.review.corrections",
    "OverridesError": "bat_analysis.review.corrections",
    "Corrections": "bat_analysis.review.corrections",
    "load_template": "bat_analysis.gating.templates",
    "list_templates": "bat_analysis.gating.templates",
    "validate_template": "bat_analysis.gating.templates",
    "Template": "bat_analysis.gating.templates",
    "gate_tube": "bat_analysis.gating.tube",
    "run": "bat_analysis.pipeline",
    "RunOptions": "bat_analysis.pipeline",
    "RunSummary": "bat_analysis.pipeline",
    "render_reports": "bat_analysis.report",
    "AnalysisConfig": "bat_analysis.analysis.config",
    "estimate_threshold": "bat_analysis.analysis.threshold",
    "ThresholdEstimate": "bat_analysis.analysis.threshold",
    "score_experiment": "bat_analysis.analysis.score",
    "ExperimentScores": "bat_analysis.analysis.score",
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
    "read_layout": "bat_analysis.io.layout",
    "tubes_from_pattern": "bat_analysis.io.layout",
    "simulate_experiment": "bat_analysis.simulate",
    "simulate_tube": "bat_analysis.simulate",
    "SimulatedExperiment": "bat_analysis.simulate",
    "SimulatedTube": "bat_analysis.simulate",
    "load_labels": "bat_analysis.simulate",
    "four_pl": "bat_analysis.simulate",
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

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bat_analysis' has no attribute {name!r}")
    module, _, attr = module.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
