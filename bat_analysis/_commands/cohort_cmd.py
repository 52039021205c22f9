"""``bat cohort``: join the runs' per-patient results with a clinical sheet and analyse them (ROC with DeLong
intervals, adjusted odds ratios, risk strata, outcomes over time, Table 1, cohort.html / cohort.pdf)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

EXIT_BAD_INPUT = 2


def _split(values: Optional[str]) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    """Add the ``cohort`` command to ``app``."""

    @app.command("cohort")
    def cohort_command(
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (created): roc.csv, roc_tests.csv, "
                                 "associations.csv, strata.csv, longitudinal.csv, table1.csv, cohort.html/.pdf."),
        clinical: Optional[Path] = typer.Option(None, "--clinical", "-c",
                                                help="Clinical sheet (CSV or XLSX): one row per patient, an ID "
                                                     "column matching the layout's patient IDs, any other columns."),
        outcome: Optional[str] = typer.Option(None, "--outcome", help="Binary outcome column of the sheet."),
        positive: Optional[str] = typer.Option(None, "--positive", help="The outcome value counted as positive."),
        results: Optional[list[Path]] = typer.Option(None, "--results", "-r",
                                                     help="Run folder written by 'bat run' (its patients.csv); "
                                                          "repeat for several runs."),
        predictors: Optional[str] = typer.Option(None, "--predictors",
                                                 help="Comma-separated predictor columns, from the results or the "
                                                      "sheet (default: auc_inhibition_pct, ec50_shift_log10, "
                                                      "cd_sens_ratio when present)."),
        covariates: Optional[str] = typer.Option(None, "--covariates",
                                                 help="Comma-separated adjustment columns (text columns enter as "
                                                      "indicators)."),
        group: Optional[str] = typer.Option(None, "--group", help="Group column (e.g. treatment) for Table 1, "
                                            "strata and outcomes over time."),
        stratify: Optional[list[str]] = typer.Option(None, "--stratify",
                                                     help="COLUMN or COLUMN>=NUMBER (also >, <=, <); repeat for "
                                                          "several stratifications."),
        id_column: str = typer.Option("patient", "--id-column", help="ID column of the clinical sheet."),
        allergen: Optional[str] = typer.Option(None, "--allergen",
                                               help="The allergen to use when a patient has results for several."),
        outcomes_over_time: Optional[Path] = typer.Option(None, "--outcomes-over-time",
                                                          help="Long follow-up sheet (CSV/XLSX): patient, week, "
                                                               "variable, value."),
        demo: bool = typer.Option(False, "--demo", help="Simulate a cohort and analyse it: writes into --out a run "
                                  "folder demo_run/patients.csv (in-vitro results drawn directly, no FCS files are "
                                  "simulated or gated), clinical.csv and followup.csv, then every output."),
        patients: int = typer.Option(200, "--patients", min=8, help="With --demo: number of simulated patients."),
        seed: int = typer.Option(0, "--seed", help="With --demo: random seed."),
    ) -> None:
        """Relate the in-vitro response to clinical data: ROC, odds ratios, strata, outcomes over time, Table 1.

        ROC curves with DeLong 95% intervals and paired tests, odds ratios per SD adjusted for covariates
        (Benjamini-Hochberg q), event rates per stratum and group with an interaction test, change from baseline
        over time (mixed model), Table 1, and a cohort report (cohort.html, cohort.pdf).

        \b
        Example:
          bat cohort --results results/plate1 --clinical clinical.xlsx --outcome response --positive yes
          --covariates age,sex,bmi --group treatment --stratify 'sige_total_ige_ratio_pct>=10' --out cohort/

        Try it:   bat cohort --demo --out cohort_demo

        Exit 0 on success; 2 on bad input (the message names the file, row and column).
        """
        from ..cohort.run import CohortOptions, demo_inputs, run_cohort
        from ..errors import BatError

        command = "bat " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        try:
            if demo:
                if out.exists() and not out.is_dir():
                    raise BatError(f"{out} exists and is not a folder", field="--out", expected="a folder")
                opts = demo_inputs(out, patients, seed)
                opts.command = command
            else:
                missing = [name for name, v in (("--clinical", clinical), ("--outcome", outcome),
                                                ("--positive", positive), ("--results", results)) if not v]
                if missing:
                    raise BatError(f"missing {', '.join(missing)}", expected="--results RUN_DIR --clinical FILE "
                                   "--outcome COLUMN --positive VALUE --out DIR (or --demo --out DIR)")
                opts = CohortOptions(clinical=clinical, outcome=outcome, positive=positive, out=out,
                                     results=list(results or []), predictors=_split(predictors),
                                     covariates=_split(covariates), group=group, stratify=list(stratify or []),
                                     id_column=id_column, allergen=allergen, outcomes_over_time=outcomes_over_time,
                                     command=command)
            summary = run_cohort(opts)
        except BatError as exc:
            lines = str(exc).splitlines()
            typer.secho(f"error: {lines[0]}", err=True, fg=typer.colors.RED)
            for line in lines[1:21]:
                typer.echo(line, err=True)
            if len(lines) > 21:
                typer.echo(f"  ... and {len(lines) - 21} more", err=True)
            raise typer.Exit(code=EXIT_BAD_INPUT) from None
        for line in summary.notes:
            typer.secho(f"note: {line}", err=True, fg=typer.colors.YELLOW)
        roc = summary.tables["roc"]
        typer.echo(f"{summary.n_patients} patients analysed in {summary.elapsed_s:.1f} s; results in {summary.out}/")
        for r in roc.itertuples(index=False):
            ci = (f"{r.auroc_ci_low:.3f}-{r.auroc_ci_high:.3f}" if r.auroc_ci_low == r.auroc_ci_low
                  else "no interval: a class has a single patient")
            typer.echo(f"  {r.predictor}: AUROC {r.auroc:.3f} ({ci}), n = {r.n_positive} positive + "
                       f"{r.n_negative} negative")
        typer.echo(f"Open {summary.out / 'cohort.html'}")
