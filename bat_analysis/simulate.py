"""Realistic synthetic basophil activation tests with known truth, for demos, tests and benchmarks.

Each simulated tube is a lysed whole-blood sample: debris, lymphocytes (some HLA-DR+ B cells), monocytes,
neutrophils, eosinophils (CCR3+, SSC-high), basophils (SSC-low, CCR3+ CD123+ HLA-DR− CD203c+, ~0.5–1 % of
leukocytes), doublets and, by scenario, acquisition artefacts (a clog followed by a burst in the time
channel, saturated margin events). Fluorescence is stained, spilled over through a known matrix (written
as ``$SPILLOVER``/``$SPILL``) and measured with detector noise.

Activation: the fraction of basophils that are CD63-high in a tube follows, per patient and arm, a
four-parameter logistic (4PL) in log10(concentration) for allergen tubes; the negative control sits at
the curve's bottom (spontaneous activation), anti-FcεRI and fMLP at patient-specific levels. Omalizumab
pretreatment shifts and flattens the allergen curve according to the patient's kind (``responder``,
``partial``, ``non_responder``; a ``non_releaser`` responds to fMLP only). CD203c rises with activation.

Truth (``truth.json``, see ``TRUTH_FIELDS``) holds, per patient and arm, the generating curve
(bottom, top, ec50, hill: percent CD63+ basophils, EC50 in the layout's unit), the AUC of net %CD63+ over
log10(concentration) at the tested concentrations (trapezoids, as the analysis defines it) and the AUC
inhibition by omalizumab; per tube the realised counts, the true %CD63+ from the labels and the %CD63+ a
perfect gate with the 97.5th-percentile negative-control threshold gives. Per-event labels (population
code, basophil, activated) are in ``labels.npz``, keyed ``"<file>:population"``, ``"<file>:basophil"``
and ``"<file>:activated"`` (file order of the events); ``load_labels`` reads them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis.dose_response import four_pl
from .analysis._units import UnitProblem, convert
from .errors import BatError
from ._fileio import atomic_open, atomic_path, atomic_write_text, make_dir
from .records import Tube

__all__ = [
    "POPULATIONS", "KINDS", "SCENARIOS", "SAMPLE_ARGUMENTS", "NAMING_STYLES", "MARKERS", "TRUTH_FIELDS", "PatientProfile",
    "SimulatedTube", "SimulatedExperiment", "make_patient", "simulate_tube", "simulate_experiment",
    "response", "load_labels", "spillover_matrix", "channel_names",
]

#: population codes of the per-event labels (index = code)
POPULATIONS: tuple[str, ...] = ("debris", "lymphocyte", "monocyte", "neutrophil", "eosinophil", "basophil",
                                "doublet", "clog", "saturated")
DEBRIS, LYMPHOCYTE, MONOCYTE, NEUTROPHIL, EOSINOPHIL, BASOPHIL, DOUBLET, CLOG, SATURATED = range(9)
KINDS: tuple[str, ...] = ("responder", "partial", "non_responder", "non_releaser")
SCENARIOS: tuple[str, ...] = ("clean", "clog", "saturation", "low_basophils", "high_background",
                              "eosinophil_rich", "mixed")
NAMING_STYLES: tuple[str, ...] = ("bd", "marker_in_pnn", "beckman", "aliases")
#: logical markers and their fluorochromes, in channel order (CD107a only when asked for)
MARKERS: tuple[str, ...] = ("CD63", "CCR3", "HLA-DR", "CD123", "CD203c", "CD107a")
FLUOROCHROMES: dict[str, str] = {"CD63": "FITC", "CCR3": "PE", "HLA-DR": "PerCP-Cy5.5", "CD123": "PE-Cy7",
                                 "CD203c": "APC", "CD107a": "BV421"}
EXPECTED_CLASS: dict[str, str] = {"responder": "responder", "partial": "partial_responder",
                                  "non_responder": "non_responder", "non_releaser": "not_evaluable"}
CONTROL_CONDITIONS: tuple[str, ...] = ("negative_control", "anti_fceri", "fmlp")  # the default controls
ALL_CONTROLS: tuple[str, ...] = ("negative_control", "anti_fceri", "anti_ige", "fmlp")
ALLERGENS: tuple[str, ...] = ("birch", "peanut", "cat", "grass", "mite", "wasp", "ragweed", "egg")
UNIT = "ng/mL"
RANGE = 262144.0  # $PnR of every channel; saturated events sit at RANGE - 1
TIMESTEP = 0.01  # seconds per Time unit
ACQUISITION_SECONDS = (60.0, 90.0)  # a tube is acquired for this long, whatever its event count

#: the arguments of ``simulate_experiment`` that made the committed ``sample_fcs/`` (see its README.md)
SAMPLE_ARGUMENTS: dict[str, Any] = {
    "n_patients": 3, "n_events": 9_000, "seed": 2026, "kinds": ("responder", "partial", "non_responder"),
    "n_concentrations": 5, "basophil_pct": (7.0, 10.0),
}

#: every field of truth.json, documented (also written into the file under "definitions")
TRUTH_FIELDS: dict[str, str] = {
    "populations": "population names; the label code of an event is its index in this list",
    "patients.<id>.kind": "responder | partial | non_responder | non_releaser",
    "patients.<id>.expected_class": "class the generating curves imply under docs/method.md, Responder classes "
                                    "(80/20 % AUC inhibition; non_releaser -> not_evaluable); QC failures may "
                                    "override it",
    "patients.<id>.spontaneous_pct": "expected %CD63+ basophils of the negative control (= curve bottom)",
    "patients.<id>.arms.<arm>.curve": "generating 4PL: bottom, top (% CD63+ basophils), ec50 (unit), hill",
    "patients.<id>.high_dose_inhibition": "null, or {drop, ic50}: the rise above bottom is scaled by "
                                          "1 - drop * c^2 / (ic50^2 + c^2) (bell-shaped response)",
    "patients.<id>.arms.<arm>.anti_fceri_pct / anti_ige_pct / fmlp_pct": "expected %CD63+ of the positive "
        "controls (anti-IgE is suppressed by omalizumab like the allergen; anti-FcεRI and fMLP are not)",
    "patients.<id>.arms.<arm>.auc": "trapezoidal area of (curve - bottom) over log10(concentration) at the "
                                    "tested concentrations",
    "patients.<id>.arms.<arm>.cd_sens": "100 / ec50",
    "patients.<id>.auc_inhibition_pct": "100 * (1 - auc(omalizumab) / auc(none)), from the generating curves; "
                                        "null when the untreated response rises by < 5 points (non-releaser)",
    "patients.<id>.ec50_shift_log10": "log10(ec50(omalizumab) / ec50(none)) of the generating curves",
    "tubes.<file>.pct_cd63_expected": "generating %CD63+ basophils of the tube (curve or control level)",
    "tubes.<file>.pct_cd63_true": "100 * activated / basophil events, from the per-event labels (null, like "
                                  "the other basophil figures, when a tube has no basophil)",
    "tubes.<file>.pct_cd63_ref_threshold": "100 * labelled basophils with compensated CD63 above the "
                                          "patient/arm negative control's 97.5th percentile / basophils",
    "tubes.<file>.cd63_threshold_ref": "that 97.5th percentile (compensated linear CD63 of labelled basophils)",
    "tubes.<file>.pct_cd63_resting_ref": "100 * labelled basophils with compensated CD63 above the patient/arm "
                                         "negative control's labelled RESTING basophils' 97.5th percentile / "
                                         "basophils: the truth of the rule the resting-peak threshold applies "
                                         "(2.5% of resting basophils above, whatever the control's activated ones)",
    "tubes.<file>.cd63_threshold_resting_ref": "that 97.5th percentile (compensated linear CD63 of the negative "
                                               "control's labelled resting basophils)",
    "tubes.<file>.cd203c_median_true": "median compensated CD203c of labelled basophils",
    "tubes.<file>.counts": "events per population in the file",
    "tubes.<file>.fractions": "fraction of all events: clog (acquisition artefact), saturated (margin), "
                              "doublet",
    "tubes.<file>.artefacts": "artefacts simulated in the tube (clog, saturation)",
}


# --------------------------------------------------------------------------------------------------------
# channels and spillover

_SCATTER_NAMES: dict[str, tuple[str, str, str, str, str]] = {
    "bd": ("FSC-A", "FSC-H", "SSC-A", "SSC-H", "Time"),
    "marker_in_pnn": ("FSC-A", "FSC-H", "SSC-A", "SSC-H", "Time"),
    "beckman": ("FS INT", "FS PEAK", "SS INT", "SS PEAK", "TIME"),
    "aliases": ("FSC-A", "FSC-H", "SSC-A", "SSC-H", "Time"),
}
_DETECTOR: dict[str, dict[str, str]] = {
    "bd": {"FITC": "FITC-A", "PE": "PE-A", "PerCP-Cy5.5": "PerCP-Cy5-5-A", "PE-Cy7": "PE-Cy7-A",
           "APC": "APC-A", "BV421": "BV421-A"},
    "beckman": {"FITC": "FL1 INT", "PE": "FL2 INT", "PerCP-Cy5.5": "FL4 INT", "PE-Cy7": "FL5 INT",
                "APC": "FL6 INT", "BV421": "FL9 INT"},
    "aliases": {"FITC": "BL1-A", "PE": "YL1-A", "PerCP-Cy5.5": "BL3-A", "PE-Cy7": "YL4-A", "APC": "RL1-A",
                "BV421": "VL1-A"},
}
_ALIAS_PNS: dict[str, str] = {"CD63": "LAMP-3", "CCR3": "CD193 (CCR3)", "HLA-DR": "HLA DR", "CD123": "CD123",
                              "CD203c": "ENPP3", "CD107a": "LAMP-1"}
_CYTOMETER: dict[str, str] = {"bd": "FACSCanto II (simulated)", "marker_in_pnn": "FACSCanto II (simulated)",
                              "beckman": "Navios (simulated)", "aliases": "Attune NxT (simulated)"}

# spillover between fluorochromes: _SPILL[source][detector] (fraction of the source's signal)
_SPILL: dict[str, dict[str, float]] = {
    "FITC": {"PE": 0.22, "PerCP-Cy5.5": 0.035, "BV421": 0.002},
    "PE": {"FITC": 0.012, "PerCP-Cy5.5": 0.11, "PE-Cy7": 0.025, "APC": 0.004},
    "PerCP-Cy5.5": {"PE-Cy7": 0.12, "APC": 0.03, "PE": 0.01},
    "PE-Cy7": {"PerCP-Cy5.5": 0.025, "APC": 0.012, "PE": 0.015},
    "APC": {"PerCP-Cy5.5": 0.07, "PE-Cy7": 0.04},
    "BV421": {"FITC": 0.015, "PE": 0.002},
}


def _markers(include_cd107a: bool) -> tuple[str, ...]:
    return MARKERS if include_cd107a else MARKERS[:-1]


def channel_names(naming: str = "bd", include_cd107a: bool = False) -> tuple[list[str], list[str | None]]:
    """($PnN, $PnS) of a simulated file: 4 scatter channels, the fluorescence channels, Time."""
    if naming not in NAMING_STYLES:
        raise BatError(f"unknown naming style {naming!r}", field="naming", expected=" | ".join(NAMING_STYLES))
    fsc_a, fsc_h, ssc_a, ssc_h, time = _SCATTER_NAMES[naming]
    pnn: list[str] = [fsc_a, fsc_h, ssc_a, ssc_h]
    pns: list[str | None] = [None, None, None, None]
    for marker in _markers(include_cd107a):
        fluor = FLUOROCHROMES[marker]
        if naming == "bd":
            pnn.append(_DETECTOR["bd"][fluor])
            pns.append(marker)
        elif naming == "marker_in_pnn":
            pnn.append(f"{marker} {fluor}-A")
            pns.append(None)
        elif naming == "beckman":
            pnn.append(_DETECTOR["beckman"][fluor])
            pns.append(f"{marker}-{fluor}")
        else:
            pnn.append(_DETECTOR["aliases"][fluor])
            pns.append(_ALIAS_PNS[marker])
    pnn.append(time)
    pns.append(None)
    return pnn, pns


def spillover_matrix(include_cd107a: bool = False) -> np.ndarray:
    """Spillover matrix S (rows: fluorochrome, columns: detector, diagonal 1) in marker order.

    Observed = true @ S, as FCS ``$SPILLOVER`` and FlowKit define it; compensation is observed @ inv(S).
    """
    fluors = [FLUOROCHROMES[m] for m in _markers(include_cd107a)]
    s = np.eye(len(fluors))
    for i, src in enumerate(fluors):
        for j, det in enumerate(fluors):
            if i != j:
                s[i, j] = _SPILL.get(src, {}).get(det, 0.0)
    return s


# --------------------------------------------------------------------------------------------------------
# patients

def response(concentration: np.ndarray | float, curve: dict[str, float],
             high_dose: dict[str, float] | None = None) -> np.ndarray:
    """%CD63+ basophils at ``concentration`` (the layout's unit): the 4PL ``curve`` = {"bottom", "top",
    "ec50" (same unit), "hill"} — :func:`bat_analysis.analysis.dose_response.four_pl`, the model the
    analysis fits, on log10 concentration — its rise above the bottom scaled down at high doses by
    ``high_dose`` = {"drop", "ic50"} (a bell-shaped curve): × (1 − drop · c² / (ic50² + c²))."""
    y = four_pl(np.log10(np.asarray(concentration, dtype=float)), curve["bottom"], curve["top"],
                math.log10(curve["ec50"]), curve["hill"])
    if not high_dose:
        return y
    c = np.asarray(concentration, dtype=float)
    damp = 1.0 - high_dose["drop"] * c ** 2 / (high_dose["ic50"] ** 2 + c ** 2)
    return curve["bottom"] + (y - curve["bottom"]) * damp


def _auc(concentrations: Sequence[float], curve: dict[str, float],
         high_dose: dict[str, float] | None = None) -> float:
    c = np.asarray(concentrations, dtype=float)
    net = response(c, curve, high_dose) - curve["bottom"]
    return float(np.trapezoid(net, np.log10(c)))


@dataclass
class PatientProfile:
    """Everything that makes a simulated patient: blood composition, marker levels, responses per arm."""

    patient: str
    kind: str
    allergen: str
    concentrations: tuple[float, ...]
    composition: dict[str, float]  # fractions of singlet leukocytes
    debris_fraction: float
    doublet_fraction: float
    cd63_rest: float  # median stained CD63 of resting basophils
    cd63_active: float  # median stained CD63 of activated basophils
    cd203c_rest: float
    spontaneous_pct: float
    curves: dict[str, dict[str, float]]  # arm -> 4PL
    anti_fceri_pct: dict[str, float]
    fmlp_pct: dict[str, float]
    scenarios: tuple[str, ...] = ()
    anti_ige_pct: dict[str, float] = field(default_factory=dict)  # omalizumab removes IgE: suppressed there
    high_dose: dict[str, float] | None = None  # high-dose inhibition of the allergen response (bell shape)

    def expected_pct(self, condition: str, pretreatment: str = "none", concentration: float | None = None) -> float:
        """Generating %CD63+ basophils for a tube of this patient."""
        if pretreatment not in self.curves:
            raise BatError(f"unknown pretreatment {pretreatment!r}", field="pretreatment",
                           expected=" | ".join(self.curves))
        if condition == "negative_control":
            return self.spontaneous_pct
        if condition == "anti_fceri":
            return self.anti_fceri_pct[pretreatment]
        if condition == "anti_ige":
            return self.anti_ige_pct[pretreatment]
        if condition == "fmlp":
            return self.fmlp_pct[pretreatment]
        if condition == "allergen":
            if concentration is None or not concentration > 0:
                raise BatError("allergen tube needs a positive concentration", field="concentration",
                               expected="a number > 0")
            return float(response(concentration, self.curves[pretreatment], self.high_dose))
        raise BatError(f"unknown condition {condition!r}", field="condition",
                       expected="negative_control | anti_fceri | anti_ige | fmlp | allergen")

    def auc(self, arm: str) -> float:
        return _auc(self.concentrations, self.curves[arm], self.high_dose)

    @property
    def auc_inhibition_pct(self) -> float | None:
        """100 × (1 − AUC(omalizumab)/AUC(none)) from the generating curves; None without both arms or when
        the untreated allergen response is negligible (a rise of less than 5 points: a non-releaser)."""
        if "none" not in self.curves or "omalizumab" not in self.curves:
            return None
        none = self.curves["none"]
        base = self.auc("none")
        if base <= 0 or none["top"] - none["bottom"] < 5.0:
            return None
        return 100.0 * (1.0 - self.auc("omalizumab") / base)

    def truth(self) -> dict[str, Any]:
        arms = {}
        for arm, curve in self.curves.items():
            arms[arm] = {"curve": dict(curve), "anti_fceri_pct": self.anti_fceri_pct[arm],
                         "anti_ige_pct": self.anti_ige_pct.get(arm), "fmlp_pct": self.fmlp_pct[arm],
                         "auc": self.auc(arm), "cd_sens": 100.0 / curve["ec50"]}
        shift = None
        if "none" in self.curves and "omalizumab" in self.curves:
            shift = math.log10(self.curves["omalizumab"]["ec50"] / self.curves["none"]["ec50"])
        return {
            "kind": self.kind, "expected_class": EXPECTED_CLASS[self.kind], "allergen": self.allergen,
            "unit": UNIT, "concentrations": list(self.concentrations), "spontaneous_pct": self.spontaneous_pct,
            "arms": arms, "auc_inhibition_pct": self.auc_inhibition_pct, "ec50_shift_log10": shift,
            "composition": dict(self.composition), "debris_fraction": self.debris_fraction,
            "doublet_fraction": self.doublet_fraction, "cd63_rest": self.cd63_rest,
            "cd63_active": self.cd63_active, "cd203c_rest": self.cd203c_rest, "scenarios": list(self.scenarios),
            "high_dose_inhibition": dict(self.high_dose) if self.high_dose else None,
        }


def _concentrations(n: int) -> tuple[float, ...]:
    """A log series from 0.01 to 100 (unit), rounded to 3 significant digits."""
    if not 2 <= n <= 12:
        raise BatError(f"{n} allergen concentrations", field="n_concentrations", expected="2 to 12")
    return tuple(float(f"{v:.3g}") for v in np.logspace(-2, 2, n))


def make_patient(patient: str, kind: str, rng: np.random.Generator, *, scenarios: Sequence[str] = (),
                 allergen: str = "birch", n_concentrations: int = 6,
                 arms: Sequence[str] = ("none", "omalizumab"),
                 basophil_pct: tuple[float, float] = (0.5, 1.0), bell: bool = False) -> PatientProfile:
    """Draw a patient of ``kind`` (see ``KINDS``); scenarios change blood composition and background.

    ``basophil_pct``: range of the basophils' share of leukocytes, in percent (whole blood: 0.5–1;
    a basophil-enriched leukocyte preparation: more). ``bell``: the allergen response falls again at the
    highest concentrations (high-dose inhibition, by 30–60 %), in both arms.
    """
    lo, hi = basophil_pct
    if not 0.0 < lo <= hi < 50.0:
        raise BatError(f"basophil_pct {basophil_pct}", field="basophil_pct", expected="0 < low <= high < 50")
    if kind not in KINDS:
        raise BatError(f"unknown patient kind {kind!r}", field="kind", expected=" | ".join(KINDS))
    for arm in arms:
        if arm not in ("none", "omalizumab"):
            raise BatError(f"unknown arm {arm!r}", field="arms", expected="none | omalizumab")
    concentrations = _concentrations(n_concentrations)
    u = rng.uniform
    composition = {"neutrophil": u(0.52, 0.64), "lymphocyte": u(0.22, 0.32), "monocyte": u(0.05, 0.09),
                   "eosinophil": u(0.015, 0.045), "basophil": u(*basophil_pct) / 100.0}
    if "eosinophil_rich" in scenarios:
        composition["eosinophil"] = u(0.10, 0.20)
    total = sum(v for k, v in composition.items() if k != "basophil")
    scale = (1.0 - composition["basophil"]) / total
    composition = {k: (v if k == "basophil" else v * scale) for k, v in composition.items()}

    # spontaneous activation stays below the 2.5 % that the 97.5th-percentile rule assumes, except in the
    # high_background scenario
    spontaneous = u(8.0, 15.0) if "high_background" in scenarios else u(0.5, 2.0)
    releaser = kind != "non_releaser"
    curves: dict[str, dict[str, float]] = {}
    none_curve = {"bottom": spontaneous, "top": min(100.0, spontaneous + u(45.0, 80.0)) if releaser
                  else spontaneous + u(0.0, 1.0), "ec50": 10 ** u(-1.0, 1.0), "hill": u(0.8, 2.0)}
    curves["none"] = none_curve

    high_dose = None
    if bell:
        high_dose = {"drop": u(0.3, 0.6), "ic50": concentrations[-1] / u(1.5, 4.0)}

    def inhibition(oma: dict[str, float]) -> float:
        return 100.0 * (1.0 - _auc(concentrations, oma, high_dose) / _auc(concentrations, none_curve, high_dose))

    band = {"responder": (88.0, 100.0), "partial": (30.0, 70.0), "non_responder": (-10.0, 10.0),
            "non_releaser": (-math.inf, math.inf)}[kind]
    for _ in range(1000):
        rise = none_curve["top"] - spontaneous
        if kind == "responder":
            oma = {"ec50": none_curve["ec50"] * 10 ** u(2.0, 3.0), "top": spontaneous + rise * u(0.05, 0.3)}
        elif kind == "partial":
            oma = {"ec50": none_curve["ec50"] * 10 ** u(0.3, 1.0), "top": spontaneous + rise * u(0.5, 0.85)}
        elif kind == "non_responder":
            oma = {"ec50": none_curve["ec50"] * 10 ** u(-0.1, 0.15),
                   "top": min(100.0, spontaneous + rise * u(0.92, 1.05))}
        else:
            oma = {"ec50": none_curve["ec50"] * 10 ** u(-0.5, 0.5), "top": spontaneous + u(0.0, 1.0)}
        oma_curve = {"bottom": spontaneous, "top": oma["top"], "ec50": oma["ec50"],
                     "hill": float(np.clip(none_curve["hill"] * u(0.85, 1.15), 0.8, 2.0))}
        if band[0] <= inhibition(oma_curve) <= band[1]:
            break
    else:  # pragma: no cover - each band is reached in a few draws
        raise BatError(f"could not draw a {kind} patient", field="kind")
    if "omalizumab" in arms:
        curves["omalizumab"] = oma_curve
    if "none" not in arms:
        del curves["none"]

    anti_none = min(100.0, spontaneous + (u(35.0, 75.0) if releaser else u(0.0, 2.0)))
    fmlp_none = min(100.0, spontaneous + u(15.0, 50.0))
    anti = {"none": anti_none, "omalizumab": spontaneous + (anti_none - spontaneous) * u(0.85, 1.0)}
    fmlp = {"none": fmlp_none, "omalizumab": spontaneous + (fmlp_none - spontaneous) * u(0.9, 1.05)}
    debris, doublets, cd63_rest = u(0.06, 0.14), u(0.025, 0.05), u(220.0, 420.0)
    cd63_active, cd203c_rest = u(5000.0, 12000.0), u(1800.0, 3500.0)
    # anti-IgE needs the IgE that omalizumab removes: suppressed in that arm as much as the allergen's top
    ige_none = min(100.0, spontaneous + (u(30.0, 70.0) if releaser else u(0.0, 2.0)))
    rise = none_curve["top"] - spontaneous
    keep = (oma_curve["top"] - spontaneous) / rise if rise > 1.0 else 1.0
    ige = {"none": ige_none, "omalizumab": spontaneous + (ige_none - spontaneous) * float(np.clip(keep, 0.0, 1.0))}
    return PatientProfile(
        patient=patient, kind=kind, allergen=allergen, concentrations=concentrations, composition=composition,
        debris_fraction=debris, doublet_fraction=doublets, cd63_rest=cd63_rest,
        cd63_active=cd63_active, cd203c_rest=cd203c_rest, spontaneous_pct=spontaneous,
        curves=curves, anti_fceri_pct={a: anti[a] for a in arms}, fmlp_pct={a: fmlp[a] for a in arms},
        scenarios=tuple(scenarios), anti_ige_pct={a: ige[a] for a in arms}, high_dose=high_dose,
    )


# --------------------------------------------------------------------------------------------------------
# events

# scatter: (median FSC-A, sd log, median SSC-A, sd log) per singlet population
_SCATTER = {
    DEBRIS: (12000.0, 0.55, 5000.0, 0.75),
    LYMPHOCYTE: (55000.0, 0.09, 11000.0, 0.20),
    MONOCYTE: (90000.0, 0.10, 38000.0, 0.20),
    NEUTROPHIL: (105000.0, 0.09, 115000.0, 0.17),
    EOSINOPHIL: (100000.0, 0.09, 165000.0, 0.13),
    BASOPHIL: (72000.0, 0.10, 17000.0, 0.22),
}
# stained marker medians (linear units) and log-sd, per population, in MARKERS order
_STAIN = {
    DEBRIS: ((40, 60, 40, 40, 30, 40), 0.8),
    LYMPHOCYTE: ((60, 60, 60, 50, 40, 60), 0.5),
    MONOCYTE: ((450, 150, 8000, 900, 50, 80), 0.4),
    NEUTROPHIL: ((150, 120, 50, 60, 40, 70), 0.4),
    EOSINOPHIL: ((250, 20000, 60, 80, 50, 80), 0.35),
    BASOPHIL: ((300, 12000, 60, 6000, 2500, 120), 0.35),
}
# autofluorescence at SSC-A = RANGE, per fluorochrome in MARKERS order
_AUTOFLUORESCENCE = np.array([260.0, 180.0, 120.0, 70.0, 30.0, 380.0])
_DETECTOR_NOISE = np.array([35.0, 40.0, 45.0, 40.0, 30.0, 35.0])
_B_CELL_FRACTION = 0.15


def _lognormal(rng: np.random.Generator, median: np.ndarray | float, sdlog: np.ndarray | float,
               size: int) -> np.ndarray:
    return np.exp(np.log(median) + sdlog * rng.standard_normal(size))


def _table(values: dict[int, Any], width: int | None = None) -> np.ndarray:
    """A lookup table indexed by population code (rows for codes without values stay 1)."""
    shape = (len(POPULATIONS),) if width is None else (len(POPULATIONS), width)
    out = np.ones(shape)
    for code, v in values.items():
        out[code] = v
    return out.astype(np.float32)


_LOG_FSC = np.log(_table({k: v[0] for k, v in _SCATTER.items()}))
_SD_FSC = _table({k: v[1] for k, v in _SCATTER.items()})
_LOG_SSC = np.log(_table({k: v[2] for k, v in _SCATTER.items()}))
_SD_SSC = _table({k: v[3] for k, v in _SCATTER.items()})
_LOG_STAIN = np.log(_table({k: v[0] for k, v in _STAIN.items()}, len(MARKERS)))
_SD_STAIN = _table({k: v[1] for k, v in _STAIN.items()})


def _singlets(rng: np.random.Generator, pops: np.ndarray, profile: PatientProfile, activated: np.ndarray,
              tube_fraction: float, n_markers: int) -> tuple[np.ndarray, np.ndarray]:
    """Scatter (n×4: FSC-A, FSC-H, SSC-A, SSC-H) and stained fluorescence (n×n_markers) of singlets."""
    n = pops.size
    f32 = np.float32
    log_fsc = _LOG_FSC[pops]
    log_ssc = _LOG_SSC[pops]
    sd_ssc = _SD_SSC[pops]
    if "eosinophil_rich" in profile.scenarios:  # eosinophils reaching down towards the basophils' SSC
        eos = pops == EOSINOPHIL
        log_ssc[eos], sd_ssc[eos] = math.log(140000.0), 0.22
    log_stain = _LOG_STAIN[pops, :n_markers]
    sd = np.repeat(_SD_STAIN[pops][:, None], n_markers, axis=1)
    # B cells among lymphocytes are HLA-DR+
    i63, i_dr, i203 = MARKERS.index("CD63"), MARKERS.index("HLA-DR"), MARKERS.index("CD203c")
    lymph = np.flatnonzero(pops == LYMPHOCYTE)
    log_stain[lymph[rng.random(lymph.size) < _B_CELL_FRACTION], i_dr] = math.log(6000.0)
    # basophils: the patient's levels, activation (CD63 and CD107a high, CD203c up)
    baso = np.flatnonzero(pops == BASOPHIL)
    act = baso[activated[baso]]
    log_stain[baso, i63] = math.log(profile.cd63_rest)
    log_stain[act, i63] = math.log(profile.cd63_active)
    sd[act, i63] = 0.45
    log_stain[baso, i203] = math.log(profile.cd203c_rest * (1.0 + 0.6 * tube_fraction))
    log_stain[act, i203] = math.log(profile.cd203c_rest * 2.4)
    if n_markers > MARKERS.index("CD107a"):
        log_stain[act, MARKERS.index("CD107a")] = math.log(profile.cd63_active * 0.3)

    fsc_a = np.exp(log_fsc + _SD_FSC[pops] * rng.standard_normal(n, dtype=f32))
    ssc_a = np.exp(log_ssc + sd_ssc * rng.standard_normal(n, dtype=f32))
    ratio = 0.82 + 0.02 * rng.standard_normal(n, dtype=f32)
    debris = pops == DEBRIS
    ratio[debris] = 0.80 + 0.06 * rng.standard_normal(int(debris.sum()), dtype=f32)
    fsc_h = fsc_a * ratio
    ssc_h = ssc_a * (0.88 + 0.02 * rng.standard_normal(n, dtype=f32))
    stain = np.exp(log_stain + sd * rng.standard_normal((n, n_markers), dtype=f32))
    stain += (ssc_a / RANGE)[:, None] * _AUTOFLUORESCENCE[None, :n_markers]
    return np.column_stack([fsc_a, fsc_h, ssc_a, ssc_h]), stain


def _leukocyte_draw(rng: np.random.Generator, profile: PatientProfile, n: int) -> np.ndarray:
    names = ("lymphocyte", "monocyte", "neutrophil", "eosinophil", "basophil")
    codes = np.array([LYMPHOCYTE, MONOCYTE, NEUTROPHIL, EOSINOPHIL, BASOPHIL], dtype=np.int8)
    p = np.array([profile.composition[k] for k in names])
    counts = rng.multinomial(n, p / p.sum())
    return np.repeat(codes, counts)


@dataclass
class SimulatedTube:
    """One simulated tube in memory: events as written (uncompensated, spilled) and per-event truth."""

    events: np.ndarray  # float32, n_events × n_channels, channel order of ``pnn``
    pnn: list[str]
    pns: list[str | None]
    markers: dict[str, str]  # logical marker -> $PnN
    spillover: tuple[list[str], np.ndarray]  # ($PnN of fluorescence channels, matrix)
    population: np.ndarray  # int8 codes, see POPULATIONS
    activated: np.ndarray  # bool, True only for activated basophils
    pct_cd63_expected: float
    artefacts: tuple[str, ...]
    keywords: dict[str, str] = field(default_factory=dict)

    @property
    def basophil(self) -> np.ndarray:
        return self.population == BASOPHIL

    @property
    def n_basophils(self) -> int:
        return int(np.count_nonzero(self.basophil))

    @property
    def pct_cd63_true(self) -> float:
        """100 × activated / basophils, from the labels (NaN-free: 0 basophils raises)."""
        n = self.n_basophils
        if n == 0:
            raise BatError("tube has no basophils", field="n_basophils", expected="at least one")
        return 100.0 * float(np.count_nonzero(self.activated)) / n

    def compensated(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Fluorescence channels compensated with the written matrix (n × n_markers, float64).

        ``rows`` (a boolean mask or indices) restricts it to some events, e.g. ``tube.basophil``.
        """
        names, matrix = self.spillover
        cols = [self.pnn.index(c) for c in names]
        data = self.events if rows is None else self.events[rows]
        return data[:, cols].astype(np.float64) @ np.linalg.inv(matrix)

    def write(self, path: str | Path, *, version: str = "3.1", datatype: str = "F", byteorder: str = "<",
              keywords: dict[str, str] | None = None) -> Path:
        """Write the tube as an FCS file with its spillover matrix (``datatype`` "I": 32-bit integers)."""
        from .io.fcs_write import write_fcs

        if datatype == "I" and not np.array_equal(self.events, np.rint(self.events)):
            raise BatError("events are not whole numbers; simulate the tube with datatype='I'", source=str(path),
                           field="$DATATYPE", expected="a tube simulated for integer data")
        words = dict(self.keywords)
        words.update(keywords or {})
        return write_fcs(path, self.events, self.pnn, self.pns, version=version, datatype=datatype,
                         byteorder=byteorder, bits=32 if datatype == "I" else None,
                         ranges=int(RANGE) if datatype == "I" else RANGE, spillover=self.spillover, keywords=words)

    def marker_values(self, marker: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Compensated values of one logical marker (for ``rows`` only, when given)."""
        names, _ = self.spillover
        return self.compensated(rows)[:, names.index(self.markers[marker])]


def _scenario_set(scenario: str | Sequence[str]) -> tuple[str, ...]:
    names = (scenario,) if isinstance(scenario, str) else tuple(scenario)
    for name in names:
        if name not in SCENARIOS:
            raise BatError(f"unknown scenario {name!r}", field="scenario", expected=" | ".join(SCENARIOS))
    return tuple(n for n in names if n != "clean")


def simulate_tube(
    *,
    n_events: int = 20_000,
    condition: str = "negative_control",
    pretreatment: str = "none",
    concentration: float | None = None,
    pct_activated: float | None = None,
    patient: PatientProfile | None = None,
    kind: str = "responder",
    scenario: str | Sequence[str] = "clean",
    naming: str = "bd",
    include_cd107a: bool = False,
    seed: int | np.random.SeedSequence | None = 0,
    datatype: str = "F",
) -> SimulatedTube:
    """Simulate one tube in memory.

    The basophils' activated fraction is ``pct_activated`` when given, else the patient's generating value
    for (condition, pretreatment, concentration). Without ``patient`` one of ``kind`` is drawn from the
    seed. ``scenario`` (one name or several of ``SCENARIOS``) adds artefacts: ``clog`` (a stop in the flow
    then a burst of abnormal events, ~6–12 % of events), ``saturation`` (5–8 % of events at the scatter
    maximum), ``low_basophils`` (~150 basophils), ``high_background`` (8–15 % spontaneous activation),
    ``eosinophil_rich`` (10–20 % eosinophils, some at lower SSC). ``datatype`` "I" rounds and clips the
    values to what an integer file holds, so that the labels match the written data exactly.
    """
    if n_events < 100:
        raise BatError(f"{n_events} events", field="n_events", expected="at least 100")
    scenarios = _scenario_set(scenario)
    if "mixed" in scenarios:
        raise BatError("'mixed' spreads artefacts over the tubes of an experiment; use simulate_experiment",
                       field="scenario", expected=" | ".join(s for s in SCENARIOS if s != "mixed"))
    rng = np.random.default_rng(seed)
    if patient is None:
        patient = make_patient("P01", kind, rng, scenarios=scenarios)
    else:
        scenarios = tuple(dict.fromkeys(patient.scenarios + scenarios))
        if scenarios != patient.scenarios:
            patient = _with_scenarios(patient, scenarios)
    expected = patient.expected_pct(condition, pretreatment, concentration)
    if pct_activated is not None:
        if not 0.0 <= pct_activated <= 100.0:
            raise BatError(f"pct_activated {pct_activated}", field="pct_activated", expected="0 to 100")
        expected = float(pct_activated)
    n_markers = len(_markers(include_cd107a))

    # how many events of each kind
    clog_frac = rng.uniform(0.06, 0.12) if "clog" in scenarios else 0.0
    sat_frac = rng.uniform(0.05, 0.08) if "saturation" in scenarios else rng.uniform(0.001, 0.004)
    n_clog = int(round(n_events * clog_frac))
    n_sat = int(round(n_events * sat_frac))
    n_doublet = int(round(n_events * patient.doublet_fraction))
    n_debris = int(round(n_events * patient.debris_fraction))
    n_leuko = n_events - n_clog - n_sat - n_doublet - n_debris
    if n_leuko <= 0:
        raise BatError(f"{n_events} events leave no room for cells", field="n_events", expected="more events")
    comp = patient.composition
    if "low_basophils" in scenarios:
        comp = dict(comp)
        comp["basophil"] = rng.normal(150.0, 10.0) / n_leuko
        rest = 1.0 - comp["basophil"]
        others = sum(v for k, v in patient.composition.items() if k != "basophil")
        comp = {k: (v if k == "basophil" else v * rest / others) for k, v in comp.items()}
    draw_profile = patient if comp is patient.composition else _with_composition(patient, comp)

    pops = np.concatenate([np.full(n_debris, DEBRIS, np.int8), _leukocyte_draw(rng, draw_profile, n_leuko)])
    activated = np.zeros(pops.size, dtype=bool)
    baso_idx = np.flatnonzero(pops == BASOPHIL)
    n_act = rng.binomial(baso_idx.size, expected / 100.0)
    activated[rng.choice(baso_idx, size=n_act, replace=False)] = True
    scatter, stain = _singlets(rng, pops, patient, activated, expected / 100.0, n_markers)

    # doublets: two leukocytes each (activation of a basophil partner follows the tube's fraction)
    partners = _leukocyte_draw(rng, draw_profile, 2 * n_doublet)
    rng.shuffle(partners)
    part_act = (partners == BASOPHIL) & (rng.random(partners.size) < expected / 100.0)
    p_scatter, p_stain = _singlets(rng, partners, patient, part_act, expected / 100.0, n_markers)
    a, b = p_scatter[:n_doublet], p_scatter[n_doublet:]
    d_fsc_a = a[:, 0] + b[:, 0]
    d_fsc_h = np.maximum(a[:, 1], b[:, 1]) * rng.uniform(1.0, 1.25, n_doublet)
    d_scatter = np.column_stack([d_fsc_a, d_fsc_h, a[:, 2] + b[:, 2], np.maximum(a[:, 3], b[:, 3]) * 1.1])
    d_stain = p_stain[:n_doublet] + p_stain[n_doublet:]

    # saturated margin events: large cells/aggregates beyond the scatter range
    s_pops = rng.choice(np.array([NEUTROPHIL, EOSINOPHIL, MONOCYTE], dtype=np.int8), size=n_sat, p=[0.7, 0.1, 0.2])
    s_scatter, s_stain = _singlets(rng, s_pops, patient, np.zeros(n_sat, bool), 0.0, n_markers)
    hit_fsc = rng.random(n_sat) < 0.6
    hit_ssc = ~hit_fsc | (rng.random(n_sat) < 0.4)
    s_scatter[hit_fsc, 0] = RANGE * rng.uniform(1.0, 1.6, int(hit_fsc.sum()))
    s_scatter[hit_fsc, 1] = s_scatter[hit_fsc, 0] * 0.85
    s_scatter[hit_ssc, 2] = RANGE * rng.uniform(1.0, 1.6, int(hit_ssc.sum()))
    s_scatter[hit_ssc, 3] = s_scatter[hit_ssc, 2] * 0.9

    # clog burst: cells and debris released at once, with disturbed scatter and fluorescence
    c_pops = _leukocyte_draw(rng, draw_profile, n_clog)
    c_pops[rng.random(n_clog) < 0.4] = DEBRIS
    c_scatter, c_stain = _singlets(rng, c_pops, patient, np.zeros(n_clog, bool), 0.0, n_markers)
    c_scatter *= _lognormal(rng, 1.0, 0.35, n_clog)[:, None]
    c_scatter[:, (1, 3)] *= rng.uniform(0.5, 1.0, (n_clog, 2))
    c_stain *= _lognormal(rng, 1.5, 0.6, n_clog * n_markers).reshape(n_clog, n_markers)

    population = np.concatenate([pops, np.full(n_doublet, DOUBLET, np.int8), np.full(n_sat, SATURATED, np.int8),
                                 np.full(n_clog, CLOG, np.int8)])
    activated = np.concatenate([activated, np.zeros(n_doublet + n_sat + n_clog, bool)])
    scatter = np.vstack([scatter, d_scatter, s_scatter, c_scatter])
    stain = np.vstack([stain, d_stain, s_stain, c_stain])

    # acquisition times: a steady flow; a clog stops it for a few seconds, then the burst arrives
    n_steady = population.size - n_clog
    duration = rng.uniform(*ACQUISITION_SECONDS)
    times = np.empty(population.size)
    times[:n_steady] = rng.uniform(0.0, duration, n_steady)
    if n_clog:
        t0 = rng.uniform(0.3, 0.7) * duration
        gap = rng.uniform(2.0, 5.0)
        steady = times[:n_steady]
        steady[steady > t0] += gap
        times[n_steady:] = t0 + gap + rng.uniform(0.0, 0.6, n_clog)
    order = np.argsort(times)

    spill = spillover_matrix(include_cd107a)
    n_total = population.size
    events = np.empty((n_total, 4 + n_markers + 1), dtype=np.float32)
    events[:, :4] = scatter[order]
    fluor = _spill(stain[order], spill)
    fluor += rng.standard_normal(fluor.shape, dtype=np.float32) * _DETECTOR_NOISE[None, :n_markers].astype(np.float32)
    events[:, 4:4 + n_markers] = fluor
    events[:, -1] = times[order] / TIMESTEP
    population = population[order]
    activated = activated[order]
    top = RANGE - 1.0
    np.minimum(events[:, :-1], top, out=events[:, :-1])
    np.maximum(events[:, :4], 0.0, out=events[:, :4])
    if datatype == "I":
        np.rint(events, out=events)
        np.clip(events, 0.0, top, out=events)

    pnn, pns = channel_names(naming, include_cd107a)
    fluor_names = pnn[4:4 + n_markers]
    markers = dict(zip(_markers(include_cd107a), fluor_names))
    artefacts = tuple(a for a in ("clog", "saturation") if a in scenarios)
    return SimulatedTube(events=events, pnn=pnn, pns=pns, markers=markers, spillover=(fluor_names, spill),
                         population=population, activated=activated, pct_cd63_expected=expected,
                         artefacts=artefacts, keywords={"$CYT": _CYTOMETER[naming], "$TIMESTEP": str(TIMESTEP)})


def _spill(stain: np.ndarray, spill: np.ndarray) -> np.ndarray:
    """stain @ spill, column by column over the non-zero entries (no BLAS threads for a 5×5 product)."""
    out = np.zeros(stain.shape, dtype=np.float32)
    for i, j in zip(*np.nonzero(spill)):
        if spill[i, j] == 1.0:
            out[:, j] += stain[:, i]
        else:
            out[:, j] += np.float32(spill[i, j]) * stain[:, i]
    return out


def _with_composition(profile: PatientProfile, composition: dict[str, float]) -> PatientProfile:
    from dataclasses import replace

    return replace(profile, composition=composition)


def _with_scenarios(profile: PatientProfile, scenarios: tuple[str, ...]) -> PatientProfile:
    from dataclasses import replace

    return replace(profile, scenarios=scenarios)


# --------------------------------------------------------------------------------------------------------
# experiments

@dataclass
class SimulatedExperiment:
    """What ``simulate_experiment`` wrote: the folder, its layout sheet, truth and labels, and the tubes."""

    out_dir: Path
    layout_path: Path
    truth_path: Path
    labels_path: Path
    tubes: list[Tube]
    truth: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [self.out_dir / t.file for t in self.tubes]

    def labels(self, file: str) -> tuple[np.ndarray, np.ndarray]:
        """(population codes, activated) of one file's events, in file order."""
        return load_labels(self.labels_path, file)


def load_labels(labels_path: str | Path, file: str) -> tuple[np.ndarray, np.ndarray]:
    """(population codes, activated) of ``file`` from a ``labels.npz`` written by ``simulate_experiment``."""
    labels_path = Path(labels_path)
    with np.load(labels_path) as data:
        key = f"{file}:population"
        if key not in data:
            raise BatError(f"no labels for {file!r}", source=str(labels_path), field=key,
                           expected="a file of the simulated experiment")
        return data[key], data[f"{file}:activated"]


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed ``.npz`` (readable by ``np.load``) at deflate level 1, written atomically."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                   compresslevel=1) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)


def _tube_plan(profile: PatientProfile, arms: Sequence[str],
               controls: Sequence[str]) -> list[tuple[str, str, float | None]]:
    plan: list[tuple[str, str, float | None]] = []
    for arm in arms:
        for condition in controls:
            plan.append((arm, condition, None))
        for c in profile.concentrations:
            plan.append((arm, "allergen", c))
    return plan


def _file_name(patient: str, arm: str, condition: str, allergen: str, concentration: float | None) -> str:
    if condition == "allergen":
        return f"{patient}_{arm}_allergen_{allergen}_{concentration:g}.fcs"
    return f"{patient}_{arm}_{condition}.fcs"


def _mixed_assignments(rng: np.random.Generator, n_patients: int) -> dict[int, tuple[str, ...]]:
    """For the ``mixed`` scenario: which patients get which whole-patient scenario."""
    kinds = ["high_background", "eosinophil_rich", "low_basophils"]
    order = rng.permutation(n_patients)
    out: dict[int, tuple[str, ...]] = {}
    for i, p in enumerate(order[: len(kinds)]):
        out[int(p)] = (kinds[i],)
    return out


def _tube_truth(sim: SimulatedTube, tube: Tube, baso_comp: np.ndarray, thr: float | None,
                scenarios: Sequence[str], thr_resting: float | None = None) -> dict[str, Any]:
    """truth.json's record of one tube (see ``TRUTH_FIELDS``): ``baso_comp``, its basophils' compensated values;
    ``thr``, the reference CD63 threshold of its arm (``thr_resting``: set on the control's resting basophils)."""
    cd63 = baso_comp[:, list(sim.markers).index("CD63")]
    n_b = sim.n_basophils
    counts = np.bincount(sim.population, minlength=len(POPULATIONS))
    return {
        "patient": tube.patient, "condition": tube.condition, "pretreatment": tube.pretreatment,
        "allergen": tube.allergen, "concentration": tube.concentration, "unit": tube.unit,
        "well": tube.extra_dict["well"],
        "n_events": int(sim.events.shape[0]), "n_basophils": n_b,
        "n_activated": int(np.count_nonzero(sim.activated)),
        "pct_cd63_expected": sim.pct_cd63_expected,
        "pct_cd63_true": sim.pct_cd63_true if n_b else None,
        "pct_cd63_ref_threshold": (100.0 * float(np.count_nonzero(cd63 > thr)) / n_b
                                   if n_b and thr is not None else None),
        "cd63_threshold_ref": thr,
        "pct_cd63_resting_ref": (100.0 * float(np.count_nonzero(cd63 > thr_resting)) / n_b
                                 if n_b and thr_resting is not None else None),
        "cd63_threshold_resting_ref": thr_resting,
        "cd203c_median_true": (float(np.median(baso_comp[:, list(sim.markers).index("CD203c")]))
                               if n_b else None),
        "counts": {POPULATIONS[i]: int(c) for i, c in enumerate(counts)},
        "fractions": {"clog": float(counts[CLOG]) / sim.events.shape[0],
                      "saturated": float(counts[SATURATED]) / sim.events.shape[0],
                      "doublet": float(counts[DOUBLET]) / sim.events.shape[0]},
        "artefacts": list(sim.artefacts) + [s for s in scenarios if s not in ("clog", "saturation")],
    }


def _write_layout(path: Path, tubes: Sequence[Tube]) -> Path:
    """The simulated experiment's layout.csv (with each tube's well, and its replicate label when it has one)."""
    replicate = any(t.replicate for t in tubes)
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "patient", "condition", "allergen", "concentration", "unit", "pretreatment", "well"]
                        + (["replicate"] if replicate else []))
        for t in tubes:
            writer.writerow([t.file, t.patient, t.condition, t.allergen or "",
                             "" if t.concentration is None else f"{t.concentration:g}", t.unit or "",
                             t.pretreatment, t.extra_dict["well"]] + ([t.replicate] if replicate else []))
    return path


def _checked_experiment_options(n_patients: int, controls: Sequence[str], kinds: Sequence[str] | None,
                                scenario: str | Sequence[str], naming: str, replicates: int,
                                arm_units: Mapping[str, str] | None, arms: Sequence[str] = ("none", "omalizumab")
                                ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], dict[str, str]]:
    """``simulate_experiment``'s options checked (a ``BatError`` naming the first wrong one): the controls,
    patient kinds, scenarios and units per arm to use."""
    if n_patients < 1:
        raise BatError(f"{n_patients} patients", field="n_patients", expected="at least 1")
    controls = tuple(dict.fromkeys(controls))
    if "negative_control" not in controls or any(c not in ALL_CONTROLS for c in controls):
        raise BatError(f"controls {list(controls)}", field="controls",
                       expected=f"negative_control plus any of {', '.join(ALL_CONTROLS[1:])}")
    kinds = tuple(kinds) if kinds else KINDS
    for k in kinds:
        if k not in KINDS:
            raise BatError(f"unknown patient kind {k!r}", field="kinds", expected=" | ".join(KINDS))
    scenarios = _scenario_set(scenario)
    if naming not in NAMING_STYLES:
        raise BatError(f"unknown naming style {naming!r}", field="naming", expected=" | ".join(NAMING_STYLES))
    if replicates not in (1, 2, 3):
        raise BatError(f"{replicates} replicates", field="replicates", expected="1, 2 or 3")
    units = dict(arm_units or {})
    for arm_name, unit in units.items():
        if arm_name not in arms:  # a unit for an arm that is not simulated would be silently unused
            raise BatError(f"arm_units names arm {arm_name!r}, which is not simulated", field="arm_units",
                           expected=f"one of the arms {', '.join(arms)}")
        try:
            convert(1.0, UNIT, unit)
        except UnitProblem as exc:
            raise BatError(f"the unit of arm {arm_name!r}: {exc}", field="arm_units",
                           expected=f"a unit of mass per volume (convertible to {UNIT})") from None
    return controls, kinds, scenarios, units


def simulate_experiment(
    out_dir: str | Path,
    *,
    n_patients: int = 3,
    n_events: int = 30_000,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    scenario: str | Sequence[str] = "clean",
    naming: str = "bd",
    version: str = "3.1",
    datatype: str = "F",
    byteorder: str = "<",
    n_concentrations: int = 6,
    arms: Sequence[str] = ("none", "omalizumab"),
    include_cd107a: bool = False,
    basophil_pct: tuple[float, float] = (0.5, 1.0),
    controls: Sequence[str] = CONTROL_CONDITIONS,
    bell_fraction: float = 0.0,
    arm_units: Mapping[str, str] | None = None,
    replicates: int = 1,
) -> SimulatedExperiment:
    """Write a simulated BAT experiment into ``out_dir``: FCS files, ``layout.csv``, ``truth.json``, ``labels.npz``.

    Patients are ``P01``, ``P02``…; their kinds cycle through ``kinds`` (default: ``KINDS`` in order). Each
    patient and arm has the ``controls`` (default negative control, anti-FcεRI, fMLP; ``anti_ige`` may be
    added) and ``n_concentrations`` allergen tubes (0.01–100 ng/mL, log series). ``basophil_pct`` is the
    range of the basophils' share of leukocytes in percent (whole blood 0.5–1). ``bell_fraction``: the
    probability that a patient's allergen response falls again at high doses (bell shape). ``arm_units`` writes
    an arm's allergen concentrations in another unit of mass per volume (e.g. ``{"omalizumab": "µg/mL"}``:
    the same doses, 0.01 ng/mL written 1e-05 µg/mL), as a lab mixing units would. ``replicates`` (1–3)
    draws every tube that many times independently (files ``…_r1.fcs``, ``…_r2.fcs``, a ``replicate`` column). ``scenario`` names (``SCENARIOS``) apply to every tube; ``mixed`` gives
    one patient each of high background, eosinophil-rich blood and low basophils, and a clog or saturated
    margin to about one tube in eight. The same arguments and seed give identical files.
    """
    from . import __version__

    controls, kinds, scenarios, arm_units = _checked_experiment_options(n_patients, controls, kinds, scenario,
                                                                        naming, replicates, arm_units, arms)
    out_dir = make_dir(Path(out_dir))

    root = np.random.SeedSequence(seed)
    patient_seeds = root.spawn(n_patients + 1)
    mixed_rng = np.random.default_rng(patient_seeds[-1])
    mixed = "mixed" in scenarios
    if not 0.0 <= bell_fraction <= 1.0:
        raise BatError(f"bell_fraction {bell_fraction}", field="bell_fraction", expected="0 to 1")
    # drawn from their own stream, so that bell_fraction leaves the other patients' data unchanged
    bell_draws = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(10_000,))).random(n_patients)
    patient_scen = _mixed_assignments(mixed_rng, n_patients) if mixed else {}
    base = tuple(s for s in scenarios if s != "mixed")

    tubes: list[Tube] = []
    truth_patients: dict[str, Any] = {}
    truth_tubes: dict[str, Any] = {}
    labels: dict[str, np.ndarray] = {}
    well = 0
    for p in range(n_patients):
        pid = f"P{p + 1:02d}"
        p_seeds = patient_seeds[p].spawn(2)
        prng = np.random.default_rng(p_seeds[0])
        p_scen = tuple(dict.fromkeys(base + patient_scen.get(p, ())))
        profile = make_patient(pid, kinds[p % len(kinds)], prng, scenarios=p_scen,
                               allergen=ALLERGENS[p % len(ALLERGENS)], n_concentrations=n_concentrations,
                               arms=arms, basophil_pct=basophil_pct, bell=bool(bell_draws[p] < bell_fraction))
        truth_patients[pid] = profile.truth()
        plan = [(arm, condition, conc, k) for arm, condition, conc in _tube_plan(profile, arms, controls)
                for k in range(1, replicates + 1)]
        tube_seeds = p_seeds[1].spawn(len(plan))
        neg_threshold: dict[str, float | None] = {}
        neg_resting: dict[str, float | None] = {}
        for (arm, condition, conc, rep), tseed in zip(plan, tube_seeds):
            trng = np.random.default_rng(tseed)
            extra: tuple[str, ...] = ()
            if mixed:
                draw = trng.random(2)
                extra = tuple(a for a, d in zip(("clog", "saturation"), draw) if d < 0.0625)
            sim = simulate_tube(n_events=n_events, condition=condition, pretreatment=arm, concentration=conc,
                                patient=profile, scenario=extra, naming=naming, include_cd107a=include_cd107a,
                                seed=trng.integers(2**63), datatype=datatype)
            name = _file_name(pid, arm, condition, profile.allergen, conc)
            if replicates > 1:
                name = f"{name[:-4]}_r{rep}.fcs"
            row = f"{'ABCDEFGH'[well // 12 % 8]}{well % 12 + 1:02d}"
            well += 1
            keywords = dict(sim.keywords)
            keywords.update({"$FIL": name, "$SRC": pid, "TUBE NAME": name[:-4], "WELL ID": row,
                             "EXPERIMENT NAME": "simulated BAT", "$DATE": "01-JAN-2026",
                             "$BTIM": "10:00:00", "$ETIM": _clock(10 * 3600 + sim.events[-1, -1] * TIMESTEP)})
            sim.write(out_dir / name, version=version, datatype=datatype, byteorder=byteorder, keywords=keywords)
            labels[f"{name}:population"] = sim.population
            labels[f"{name}:activated"] = sim.activated
            labels[f"{name}:basophil"] = sim.basophil
            unit = arm_units.get(arm, UNIT)
            tube = Tube(file=name, patient=pid, condition=condition, pretreatment=arm,
                        allergen=profile.allergen if condition == "allergen" else None,
                        concentration=conc if conc is None else convert(conc, UNIT, unit),
                        unit=unit if condition == "allergen" else None,
                        extra=(("well", row),) + ((("replicate", str(rep)),) if replicates > 1 else ()))
            tubes.append(tube)
            baso_comp = sim.compensated(sim.basophil)
            cd63 = baso_comp[:, list(sim.markers).index("CD63")]
            n_b = sim.n_basophils
            if condition == "negative_control" and arm not in neg_threshold:  # the first replicate's
                neg_threshold[arm] = float(np.quantile(cd63, 0.975)) if n_b else None
                resting = cd63[~sim.activated[sim.basophil]]
                neg_resting[arm] = float(np.quantile(resting, 0.975)) if resting.size else None
            thr = neg_threshold.get(arm)
            truth_tubes[name] = _tube_truth(sim, tube, baso_comp, thr, p_scen, neg_resting.get(arm))

    layout_path = _write_layout(out_dir / "layout.csv", tubes)
    labels_path = out_dir / "labels.npz"
    _write_npz(labels_path, labels)
    pnn, pns = channel_names(naming, include_cd107a)
    fluor = pnn[4:4 + len(_markers(include_cd107a))]
    truth = {
        "generator": "bat_analysis.simulate", "software_version": __version__,
        "parameters": {"n_patients": n_patients, "n_events": n_events, "seed": seed, "kinds": list(kinds),
                       "scenario": list(scenarios) or ["clean"], "naming": naming, "version": version,
                       "datatype": datatype, "byteorder": byteorder, "n_concentrations": n_concentrations,
                       "arms": list(arms), "include_cd107a": include_cd107a,
                       "basophil_pct": list(basophil_pct), "controls": list(controls),
                       "bell_fraction": bell_fraction, **({"arm_units": arm_units} if arm_units else {}),
                       **({"replicates": replicates} if replicates > 1 else {})},
        "populations": list(POPULATIONS),
        "channels": [{"pnn": n, "pns": s} for n, s in zip(pnn, pns)],
        "markers": dict(zip(_markers(include_cd107a), fluor)),
        "spillover": {"channels": fluor, "matrix": spillover_matrix(include_cd107a).tolist()},
        "unit": UNIT, "timestep": TIMESTEP,
        "patients": truth_patients, "tubes": truth_tubes, "definitions": TRUTH_FIELDS,
    }
    truth_path = out_dir / "truth.json"
    atomic_write_text(truth_path, json.dumps(truth, indent=1, allow_nan=False))
    return SimulatedExperiment(out_dir=out_dir, layout_path=layout_path, truth_path=truth_path,
                               labels_path=labels_path, tubes=tubes, truth=truth)
