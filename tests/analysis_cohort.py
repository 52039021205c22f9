"""A seeded simulated BAT cohort generated directly as TubeResult objects (basophil values only), with the
generating curves as truth: used by the analysis acceptance test and its printed table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bat_analysis.records import Tube, TubeResult

KINDS = ("responder", "partial_responder", "non_responder", "non_releaser")
CONCENTRATIONS = tuple(float(c) for c in 10.0 ** np.linspace(-2, 3, 6))  # 0.01 … 1000 (EC50 0.1–10 inside)


@dataclass
class TruePatient:
    patient: str
    kind: str
    curves: dict[str, tuple[float, float, float, float]]  # arm -> (bottom, top, log_ec50, hill), % activated
    auc_inhibition_pct: float
    spontaneous_pct: float


def _tube_values(rng: np.random.Generator, n: int, activated_pct: float, shift: float) -> dict[str, np.ndarray]:
    a = int(rng.binomial(n, min(max(activated_pct, 0.0), 100.0) / 100.0))
    resting = rng.lognormal(math.log(300.0), 0.5, n - a)
    active = rng.lognormal(math.log(300.0 * shift), 0.5, a)
    cd63 = np.concatenate([resting, active]).astype(np.float32)
    cd203c = np.concatenate([rng.lognormal(math.log(1000.0), 0.4, n - a),
                             rng.lognormal(math.log(3000.0), 0.4, a)]).astype(np.float32)
    order = rng.permutation(n)
    return {"CD63": cd63[order], "CD203c": cd203c[order]}


def logistic4(x: float, bottom: float, top: float, log_ec50: float, hill: float) -> float:
    """The generating curve, written out here (not the production ``four_pl``) so that the truth is computed
    independently of the code under test: % activated at x = log10(concentration)."""
    return bottom + (top - bottom) / (1.0 + 10.0 ** ((log_ec50 - x) * hill))


def _trapezoid_area(xs: list[float], ys: list[float]) -> float:
    """The trapezoid rule written out: sum of (x[i+1] - x[i]) * (y[i] + y[i+1]) / 2 over sorted, distinct xs."""
    return sum((x1 - x0) * (y0 + y1) / 2.0 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))


def true_auc_inhibition(curves: dict[str, tuple[float, float, float, float]]) -> float:
    """100 × (1 − AUC_omalizumab / AUC_none) of the generating curves' net activation (above the untreated
    arm's bottom, negative parts counted as 0) at the tested points, by the trapezoid rule on log10
    concentration (docs/method.md, Omalizumab effect)."""
    xs = [math.log10(c) for c in CONCENTRATIONS]
    spont = curves["none"][0]
    aucs = {arm: _trapezoid_area(xs, [max(logistic4(x, *p) - spont, 0.0) for x in xs]) for arm, p in curves.items()}
    return 100.0 * (1.0 - aucs["omalizumab"] / aucs["none"])


def simulate_cohort(n_patients: int = 24, seed: int = 7, *, n_basophils: tuple[int, int] = (300, 1500),
                    jitter_max: float = 1.5) -> tuple[list[TubeResult], list[TruePatient]]:
    """``n_patients`` cycling through the four kinds; basophils per tube uniform in ``n_basophils``; extra
    per-tube noise of up to ``jitter_max`` points of % activated on allergen tubes."""
    rng = np.random.default_rng(seed)
    results: list[TubeResult] = []
    truth: list[TruePatient] = []
    for i in range(n_patients):
        kind = KINDS[i % len(KINDS)]
        pid = f"P{i + 1:02d}"
        # spontaneous activation below the 2.5% the 97.5th-percentile rule assumes (as bat_analysis.simulate
        # draws it), except one patient in five with high background (8-15%), where the resting-peak model works
        spont = float(rng.uniform(8.0, 15.0)) if i % 5 == 3 else float(rng.uniform(0.0, 2.0))
        shift = float(rng.uniform(8.0, 20.0))
        jitter = float(rng.uniform(0.0, jitter_max))  # extra per-tube noise (points of % activated)
        log_ec50 = float(rng.uniform(-1.0, 1.0))
        hill = float(rng.uniform(0.8, 2.0))
        top = float(rng.uniform(45.0, 90.0))
        if kind == "responder":
            keep, dshift = float(rng.uniform(0.0, 0.12)), float(rng.uniform(0.5, 1.5))
        elif kind == "partial_responder":
            keep, dshift = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.0, 0.6))
        elif kind == "non_responder":
            keep, dshift = float(rng.uniform(0.9, 1.05)), float(rng.uniform(-0.1, 0.2))
        else:  # non-releaser: no IgE-mediated response at all
            keep, dshift, top = 1.0, 0.0, spont
        curves = {"none": (spont, top, log_ec50, hill),
                  "omalizumab": (spont, spont + keep * (top - spont), log_ec50 + dshift, hill)}
        inhibition = true_auc_inhibition(curves) if kind != "non_releaser" else float("nan")
        truth.append(TruePatient(pid, kind, curves, inhibition, spont))
        fceri = spont if kind == "non_releaser" else float(rng.uniform(40.0, 80.0))
        fmlp = float(rng.uniform(20.0, 50.0))
        for arm in ("none", "omalizumab"):
            tubes = [(f"{pid}_{arm}_neg.fcs", "negative_control", None, spont),
                     (f"{pid}_{arm}_fceri.fcs", "anti_fceri", None, fceri),
                     (f"{pid}_{arm}_fmlp.fcs", "fmlp", None, fmlp)]
            for j, c in enumerate(CONCENTRATIONS):
                level = logistic4(math.log10(c), *curves[arm]) + rng.normal(0.0, jitter)
                tubes.append((f"{pid}_{arm}_a{j}.fcs", "allergen", c, level))
            for file, cond, conc, level in tubes:
                n = int(rng.integers(n_basophils[0], n_basophils[1]))
                tube = Tube(file=file, patient=pid, condition=cond, pretreatment=arm,
                            allergen="Ara h 2" if cond == "allergen" else None, concentration=conc,
                            unit="ng/mL" if cond == "allergen" else None)
                results.append(TubeResult(tube=tube, n_events=n * 200, n_basophils=n,
                                          basophil_values=_tube_values(rng, n, level, shift),
                                          event_fractions={"acquisition_qc": 0.02, "margin": 0.005,
                                                           "doublets": 0.04},
                                          has_spillover=True, n_fluorescent_markers=4))
    return results, truth
