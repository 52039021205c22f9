"""``run_cohort``: read the runs' results and the clinical sheet, join them, run every analysis, write the outputs.

Contract: ``run_cohort(CohortOptions)`` → ``CohortSummary`` (paths written, patients joined, mismatched IDs,
notes). It writes into ``out`` — always all of ``roc.csv``, ``roc_points.csv``, ``roc_tests.csv``,
``associations.csv``, ``strata.csv``, ``longitudinal.csv``, ``table1.csv`` (an analysis that was not asked for, such
as strata without ``--stratify``, leaves its CSV with the header only), then ``cohort.html`` and ``cohort.pdf`` —
each file atomically (``outputs.write_csv`` / ``outputs.atomic_path``). Bad input raises ``BatError`` (located:
file, row, column, what was expected) before any file is written. Predictors default to the in-vitro columns
present (``auc_inhibition_pct``, ``ec50_shift_log10``, ``cd_sens_ratio``). ``demo_inputs(folder, n, seed)`` writes a
simulated cohort (``simulate_clinical``) as a run folder with ``patients.csv`` plus ``clinical.csv`` and
``followup.csv`` and returns the options that analyse it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BatError
from .._outputs import write_csv
from . import _analyses as analyses, _clinical as clinical
from ._report import write_report

DEFAULT_PREDICTORS = ("auc_inhibition_pct", "ec50_shift_log10", "cd_sens_ratio")


@dataclass
class CohortOptions:
    """What ``bat cohort`` is asked (its options, one field each).

    ``clinical``: the clinical sheet (CSV/XLSX, one row per patient, matched on ``id_column``); ``outcome`` its
    column to predict and ``positive`` the value counted as positive; ``out``: the output folder; ``results``:
    run folders (each with its ``patients.csv``); ``predictors``: in-vitro columns judged by ROC (default
    ``auc_inhibition_pct`` in %, ``ec50_shift_log10`` in decades of concentration, ``cd_sens_ratio``, unitless);
    ``covariates``, ``group``, ``stratify``: columns for the associations, Table 1 and strata; ``allergen``:
    keep one allergen's rows; ``outcomes_over_time``: a long table of follow-up outcomes; ``command``: the
    command line recorded in the report.
    """

    clinical: Path
    outcome: str
    positive: str
    out: Path
    results: list[Path] = field(default_factory=list)
    predictors: list[str] = field(default_factory=list)
    covariates: list[str] = field(default_factory=list)
    group: str | None = None
    stratify: list[str] = field(default_factory=list)
    id_column: str = "patient"
    allergen: str | None = None
    outcomes_over_time: Path | None = None
    command: str = ""


@dataclass
class CohortSummary:
    out: Path
    paths: list[Path]
    n_patients: int
    mismatches: clinical.Mismatches
    notes: list[str]
    tables: dict[str, pd.DataFrame]
    elapsed_s: float


def _check_columns(df: pd.DataFrame, names: list[str], option: str) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        have = clinical.columns_text(df)
        raise BatError(f"column(s) {', '.join(repr(m) for m in missing)} not found", field=option,
                       expected=f"columns of the clinical sheet, the results or derived ones: {have}")


def run_cohort(opts: CohortOptions) -> CohortSummary:
    """Everything ``bat cohort`` does (see the module contract)."""
    t0 = time.perf_counter()
    if Path(opts.out).exists() and not Path(opts.out).is_dir():
        raise BatError("the output folder is a file", source=str(opts.out), field="--out",
                       expected="a folder (created if absent)")
    if not opts.results:
        raise BatError("no results folder given", field="--results", expected="one or more run folders (RUN_DIR)")
    results = clinical.read_results(opts.results, opts.allergen)
    sheet = clinical.read_clinical(opts.clinical, opts.id_column)
    sheet, derived = clinical.derive_columns(sheet, str(opts.clinical))
    df, mismatches = clinical.join(results, sheet)
    notes = mismatches.lines()
    predictors = list(dict.fromkeys(opts.predictors)) or [p for p in DEFAULT_PREDICTORS if p in df.columns]
    if not predictors:
        raise BatError("no predictor to analyse", field="--predictors",
                       expected="column names, e.g. --predictors auc_inhibition_pct,sige")
    _check_columns(df, predictors, "--predictors")
    _check_columns(df, list(opts.covariates), "--covariates")
    if opts.group:
        _check_columns(df, [opts.group], "--group")
    # every bad cell of every predictor, located in its own file (row numbers as a spreadsheet shows them),
    # before anything is computed
    for p in predictors:
        if p in sheet.columns:
            clinical.numeric(sheet, p, str(opts.clinical))
        elif p in results.columns:
            for path, part in results.groupby("results_file", sort=False):
                clinical.numeric(part, p, str(path))
    for c in opts.covariates:
        if c in sheet.columns:
            clinical.check_text_or_numbers(sheet, c, str(opts.clinical))
    followup = None
    if opts.outcomes_over_time is not None:
        followup = analyses.check_followup(clinical.read_sheet(opts.outcomes_over_time, what="follow-up sheet"),
                                           str(opts.outcomes_over_time))
        unknown = sorted(set(followup["patient"]) - set(df["patient"]))
        if unknown:
            notes.append(f"{len(unknown)} patient(s) of the follow-up sheet not among the joined patients (left "
                         "out): " + ", ".join(unknown[:50]) + (" …" if len(unknown) > 50 else ""))
    # the analyses (each raises before anything is written)
    roc, points = analyses.roc(df, predictors, opts.outcome, opts.positive)
    directions = dict(zip(roc["predictor"], roc["direction"]))
    tests = analyses.roc_tests(df, predictors, opts.outcome, opts.positive, directions)
    assoc = analyses.associations(df, predictors, opts.outcome, opts.positive, list(opts.covariates))
    strata = (analyses.strata(df, opts.outcome, opts.positive, opts.group, list(opts.stratify)) if opts.stratify
              else pd.DataFrame(columns=analyses.STRATA_COLUMNS))
    longi = (analyses.longitudinal(followup, df, opts.group) if followup is not None
             else pd.DataFrame(columns=analyses.LONGITUDINAL_COLUMNS))
    sheet_cols = [c for c in sheet.columns if c not in ("patient", clinical.ROW, opts.group)]
    t1_vars = list(dict.fromkeys(sheet_cols + [p for p in predictors if p not in sheet_cols]))
    t1 = analyses.table1(df, opts.group, t1_vars)
    for r in assoc.itertuples(index=False):
        if r.note:
            notes.append(f"odds ratio for {r.predictor}: {r.note}")
    if derived:
        notes.append("derived columns: " + ", ".join(derived))
    tables = {"roc": roc, "roc_points": points, "roc_tests": tests, "associations": assoc, "strata": strata,
              "longitudinal": longi, "table1": t1}
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(tables[k], out / f"{k}.csv") for k in
             ("roc", "roc_points", "roc_tests", "associations", "strata", "longitudinal", "table1")]
    y = analyses.outcome_labels(df, opts.outcome, opts.positive)
    meta = {"outcome": f"{opts.outcome} = {opts.positive}", "command": opts.command, "notes": notes,
            "summary": f"{len(df)} patients joined ({int(np.nansum(y))} with {opts.outcome} = {opts.positive}, "
                       f"{int(np.sum(y == 0))} without, {int(np.isnan(y).sum())} blank); "
                       f"results from {', '.join(str(r) for r in opts.results)}; clinical sheet {opts.clinical}."}
    paths += write_report(out, tables, meta)
    return CohortSummary(out=out, paths=paths, n_patients=len(df), mismatches=mismatches, notes=notes,
                         tables=tables, elapsed_s=time.perf_counter() - t0)


def demo_inputs(folder: str | Path, n_patients: int = 200, seed: int = 0) -> CohortOptions:
    """Write a simulated cohort's inputs into ``folder`` and return the options analysing it into ``folder``."""
    from ._simulate_clinical import simulate_cohort

    folder = Path(folder)
    sim = simulate_cohort(n_patients, seed)
    run_dir = folder / "demo_run"
    write_csv(sim.results, run_dir / "patients.csv")
    write_csv(sim.clinical, folder / "clinical.csv")
    write_csv(sim.followup, folder / "followup.csv")
    return CohortOptions(
        clinical=folder / "clinical.csv", outcome="response", positive="yes", out=folder, results=[run_dir],
        predictors=["auc_inhibition_pct", "ec50_shift_log10", "sige_total_ige_ratio_pct"],
        covariates=["age", "sex", "bmi", "baseline_exacerbations"], group="treatment",
        stratify=["sige_total_ige_ratio_pct>=10", "sige_class"], outcomes_over_time=folder / "followup.csv")
