"""Plain records passed between the stages: a tube of the layout, a QC flag, a gate as drawn, a tube's result.

These are the contracts between gating (map, one task per tube) and analysis (reduce, per patient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONDITIONS = ("negative_control", "anti_fceri", "anti_ige", "fmlp", "allergen")
PRETREATMENTS = ("none", "omalizumab")
SEVERITIES = ("pass", "warn", "fail")


@dataclass(frozen=True)
class Flag:
    """One QC finding: a stable ``code`` (e.g. ``LOW_BASOPHILS``), its severity and a plain-words message."""

    code: str
    severity: str  # "warn" or "fail"
    message: str

    def __post_init__(self) -> None:
        if self.severity not in ("warn", "fail"):
            raise ValueError(f"flag {self.code}: severity must be 'warn' or 'fail', got {self.severity!r}")


@dataclass(frozen=True)
class Tube:
    """One FCS file of an experiment, annotated by the layout sheet."""

    file: str
    patient: str
    condition: str
    pretreatment: str = "none"
    allergen: str | None = None
    concentration: float | None = None
    unit: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def arm(self) -> str:
        """The pretreatment arm the tube belongs to (``none`` or ``omalizumab``)."""
        return self.pretreatment

    @property
    def extra_dict(self) -> dict[str, str]:
        return dict(self.extra)

    @property
    def replicate(self) -> str:
        """The layout's ``replicate`` label ("" without one): replicate tubes of one condition differ in it."""
        return dict(self.extra).get("replicate", "").strip()


@dataclass
class GateRecord:
    """A gate as applied to one tube: geometry, counts, how it was obtained and what to draw.

    ``geometry`` is JSON-serialisable (see ``bat_analysis.gating.gates.gate_to_dict``); ``density`` is an
    optional 2-D histogram of the parent's events in the gate's (transformed) dimensions with its bin
    edges, so that the gate can be drawn for review without the events.
    """

    name: str
    parent: str | None
    dims: tuple[str, ...]
    geometry: dict[str, Any]
    count: int
    parent_count: int
    method: str = "fixed"
    diagnostics: dict[str, Any] = field(default_factory=dict)
    density: np.ndarray | None = None
    density_edges: tuple[np.ndarray, ...] | None = None

    @property
    def fraction_of_parent(self) -> float:
        return self.count / self.parent_count if self.parent_count else float("nan")


@dataclass
class TubeResult:
    """The small result of gating one tube (kilobytes, not the events).

    ``basophil_values`` maps marker names (CD63, CD203c, ...) to the basophils' compensated linear values;
    ``event_fractions`` holds fractions removed by pre-gating steps (``acquisition_qc``, ``margin``,
    ``doublets``). ``error`` is set, with ``flags`` saying why, when the tube could not be gated.
    """

    tube: Tube
    n_events: int = 0
    n_basophils: int = 0
    basophil_values: dict[str, np.ndarray] = field(default_factory=dict)
    event_fractions: dict[str, float] = field(default_factory=dict)
    gates: list[GateRecord] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    has_spillover: bool = False
    n_fluorescent_markers: int = 0
    file_sha256: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
