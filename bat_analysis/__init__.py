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
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bat_analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
