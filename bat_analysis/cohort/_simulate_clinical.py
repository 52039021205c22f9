"""A simulated cohort for ``bat cohort --demo`` and the tests: in-vitro results, a clinical sheet and follow-up
visits for the same patients, generated with known relations (the ``TRUTH`` constants).

Contract: ``simulate_cohort(n_patients, seed)`` → ``SimulatedCohort(results, clinical, followup)``, three
DataFrames; the same arguments give the same frames.

- ``results`` has the first columns of a run's ``patients.csv`` (``score.PATIENT_COLUMNS``: ``patient``,
  ``allergen``, EC50 and CD-sens per arm, ``auc_inhibition_pct``, ``ec50_shift_log10``, ``class`` …) — numbers drawn
  directly, not gated from FCS files. AUC inhibition is 100·Beta(2, 1.6) − 10 (−10 … 90%); the class follows the
  default thresholds (responder ≥ 80%, partial ≥ 20%).
- ``clinical`` (one row per patient): ``patient, age, sex, bmi, baseline_exacerbations, sige, total_ige,
  treatment, response, systemic_reaction``. ``treatment`` alternates omalizumab / standard. ``response`` (``yes`` /
  ``no``: ≥ 50% fewer exacerbations) follows a logistic model whose true coefficients are ``TRUTH["response"]``:
  logit P = b0 + b_auc·(AUC inhibition − 40)/25 + b_age·(age − 40)/10 + b_female·[sex = F] + b_exac·(baseline
  exacerbations − 2) + b_oma_high_ratio·[omalizumab and sIgE/total IgE ≥ 10%] — so omalizumab raises the
  response in the high-ratio stratum only (an interaction for ``--stratify``). ``systemic_reaction`` (``yes``/``no`` during immunotherapy) has risk ``TRUTH["reaction"]``
  by sIgE/total-IgE ratio (≥ 10% or not) and treatment — omalizumab lowers it in the high-ratio stratum only.
- ``followup`` (long: ``patient, week, variable, value``): ACT (5–25) and FEV1 (% predicted) at weeks 0, 12, 24
  and 48; the mean change from week 0 grows with the week in the omalizumab group (``TRUTH["act_gain"]`` points
  of ACT at week 48, ``TRUTH["fev1_gain"]`` of FEV1) and stays near 0 in the standard group; a random patient
  level and visit noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis.score import PATIENT_COLUMNS

TRUTH = {
    "response": {"b0": -0.2, "b_auc": 1.1, "b_age": -0.25, "b_female": 0.3, "b_exac": -0.2,
                 "b_oma_high_ratio": 1.2},
    "reaction": {("high", "standard"): 0.45, ("high", "omalizumab"): 0.10,
                 ("low", "standard"): 0.15, ("low", "omalizumab"): 0.12},
    "act_gain": 4.0,
    "fev1_gain": 8.0,
    "weeks": (0, 12, 24, 48),
}
ALLERGENS = ("birch", "peanut", "cat", "house_dust_mite")


@dataclass
class SimulatedCohort:
    results: pd.DataFrame
    clinical: pd.DataFrame
    followup: pd.DataFrame


def simulate_cohort(n_patients: int = 120, seed: int = 0) -> SimulatedCohort:
    """Results, clinical sheet and follow-up of ``n_patients`` simulated patients (see the module contract)."""
    if n_patients < 4:
        raise ValueError("a simulated cohort needs at least 4 patients")
    rng = np.random.default_rng(seed)
    n = n_patients
    ids = [f"P{i + 1:04d}" for i in range(n)]
    inh = 100.0 * rng.beta(2.0, 1.6, n) - 10.0
    ec50_none = 10 ** rng.normal(-0.3, 0.5, n)
    shift = np.clip(inh, 0, None) / 40.0 + rng.normal(0, 0.15, n)  # log10 EC50 shift grows with inhibition
    ec50_oma = ec50_none * 10 ** shift
    cls = np.where(inh >= 80, "responder", np.where(inh >= 20, "partial_responder", "non_responder"))
    results = pd.DataFrame({
        "patient": ids, "allergen": "",
        "ec50_none": ec50_none, "ec50_omalizumab": ec50_oma,
        "cd_sens_none": 100.0 / ec50_none, "cd_sens_omalizumab": 100.0 / ec50_oma,
        "cd_max_none": rng.uniform(30, 90, n), "cd_max_omalizumab": rng.uniform(10, 60, n),
        "auc_none": rng.uniform(80, 200, n), "auc_omalizumab": np.nan, "auc_inhibition_pct": inh,
        "ec50_shift_log10": shift, "class": cls, "class_reason": "simulated", "qc_status": "pass",
    })
    results["auc_omalizumab"] = results["auc_none"] * (1 - inh / 100.0)
    results = results[list(PATIENT_COLUMNS)]

    age = np.clip(rng.normal(40, 14, n), 6, 85).round()
    sex = np.where(rng.random(n) < 0.55, "F", "M")
    bmi = np.clip(rng.normal(26, 4.5, n), 15, 50).round(1)
    exac = rng.poisson(2.0, n)
    total_ige = np.round(10 ** rng.normal(2.4, 0.4, n), 1)
    sige = np.round(total_ige * 10 ** rng.normal(-1.1, 0.45, n), 2)
    treatment = np.where(np.arange(n) % 2 == 0, "omalizumab", "standard")
    ratio_high = 100.0 * sige / total_ige >= 10.0
    t = TRUTH["response"]
    logit = (t["b0"] + t["b_auc"] * (inh - 40.0) / 25.0 + t["b_age"] * (age - 40.0) / 10.0
             + t["b_female"] * (sex == "F") + t["b_exac"] * (exac - 2.0)
             + t["b_oma_high_ratio"] * ((treatment == "omalizumab") & ratio_high))
    response = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    risk = np.array([TRUTH["reaction"][("high" if h else "low", tr)] for h, tr in zip(ratio_high, treatment)])
    reaction = np.where(rng.random(n) < risk, "yes", "no")
    clinical = pd.DataFrame({"patient": ids, "age": age.astype(int), "sex": sex, "bmi": bmi,
                             "baseline_exacerbations": exac, "sige": sige, "total_ige": total_ige,
                             "treatment": treatment, "response": response, "systemic_reaction": reaction})

    weeks = TRUTH["weeks"]
    rows = []
    act0 = np.clip(rng.normal(14, 3, n), 5, 25)
    fev0 = np.clip(rng.normal(72, 10, n), 30, 110)
    u_act = rng.normal(0, 1.5, n)
    u_fev = rng.normal(0, 4, n)
    for i in range(n):
        oma = treatment[i] == "omalizumab"
        for w in weeks:
            frac = w / weeks[-1]
            act = act0[i] + (TRUTH["act_gain"] * frac if oma else 0.3 * frac) \
                + (u_act[i] if w else 0) + (rng.normal(0, 1.2) if w else 0)
            fev = fev0[i] + (TRUTH["fev1_gain"] * frac if oma else 0.5 * frac) + (u_fev[i] if w else 0) \
                + (rng.normal(0, 3) if w else 0)
            rows.append((ids[i], w, "ACT", round(float(np.clip(act, 5, 25)), 1)))
            rows.append((ids[i], w, "FEV1_pct", round(float(fev), 1)))
    followup = pd.DataFrame(rows, columns=["patient", "week", "variable", "value"])
    # drawn last so that adding it left every other draw unchanged; random, hence unrelated to the treatment
    results["allergen"] = rng.choice(ALLERGENS, n)
    return SimulatedCohort(results=results, clinical=clinical, followup=followup)
