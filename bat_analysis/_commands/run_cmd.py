"""``bat run``, ``bat demo``, ``bat report`` and ``bat export-gates``: the batch analysis and what follows it.

Messages quote file names, layout cells and FCS keywords: they are printed through
``textsafe.for_terminal`` (control characters and escape sequences shown escaped)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from .._textsafe import for_terminal

EXIT_BAD_INPUT = 2
EXIT_NOTHING_ANALYSED = 1
EXIT_REPORTS_FAILED = 3
EXIT_WRITE_FAILED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


def _interrupted(exc: KeyboardInterrupt) -> typer.Exit:
    """Ctrl-C: say what was saved and how to resume (the same command), exit 130."""
    import sys

    typer.secho(f"\n{for_terminal(exc, multiline=True) or 'Stopped (Ctrl-C).'}", err=True, fg=typer.colors.YELLOW)
    argv = sys.argv[1:] if Path(sys.argv[0]).name in ("bat", "__main__.py") else []
    again = f": bat {shlex.join(argv)}" if argv else ""
    typer.echo(f"To resume, run the same command again{for_terminal(again)} — tubes already saved in the results "
               "store are reused, only the others are gated.", err=True)
    return typer.Exit(code=EXIT_INTERRUPTED)


def _fail(exc: Exception, hint: str | None = None) -> typer.Exit:
    from ..errors import WriteError
    from ..pipeline import NothingAnalysedError

    typer.secho(f"error: {for_terminal(exc, multiline=True)}", err=True, fg=typer.colors.RED)
    for note in getattr(exc, "__notes__", ()):
        typer.echo(for_terminal(note, multiline=True), err=True)
    if isinstance(exc, WriteError):
        return typer.Exit(code=EXIT_WRITE_FAILED)
    if hint:
        typer.echo(hint, err=True)
    return typer.Exit(code=EXIT_NOTHING_ANALYSED if isinstance(exc, NothingAnalysedError) else EXIT_BAD_INPUT)


LAYOUT_NAMES = ("layout.csv", "layout.xlsx")


def default_layout(data_dir: Path) -> Path:
    """The layout sheet of DATA_DIR when ``--layout`` is not given: ``layout.csv`` or ``layout.xlsx``."""
    from ..errors import BatError

    if not data_dir.is_dir():  # the run says the data folder is missing, before any layout matters
        return data_dir / LAYOUT_NAMES[0]
    found = [data_dir / name for name in LAYOUT_NAMES if (data_dir / name).is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        raise BatError("the data folder holds both layout.csv and layout.xlsx", source=str(data_dir),
                       field="--layout", expected="--layout naming the one to use")
    raise BatError("no layout sheet given, and the data folder has no layout.csv or layout.xlsx",
                   source=str(data_dir), field="--layout",
                   expected="--layout SHEET (CSV or XLSX, one row per FCS file), or a layout.csv in the folder")


def _summarise(summary: Any, quiet: bool) -> None:
    out = for_terminal(summary.out)
    for warning in summary.warnings:  # shown even with --quiet: files were left out of the run
        typer.secho(f"warning: {for_terminal(warning)}", err=True, fg=typer.colors.YELLOW)
    if summary.report_error:
        typer.secho(f"error: {for_terminal(summary.report_error, multiline=True)}", err=True,
                    fg=typer.colors.RED)
    rendered = summary.reports in ("written", "kept")
    for note in summary.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    for note in summary.stale:
        typer.secho(f"warning: {note}", err=True, fg=typer.colors.YELLOW)
    if quiet:
        return
    if summary.corrections_note:
        typer.echo(summary.corrections_note + ".")
    if summary.report_note:
        typer.secho(f"note: {for_terminal(summary.report_note, multiline=True)}", err=True,
                    fg=typer.colors.YELLOW)
    typer.echo(f"Analysed {summary.n_tubes} tubes in {summary.elapsed_s:.1f} s "
               f"({summary.n_gated} gated now, {summary.n_reused} reused from a previous run; "
               f"{len(summary.rescored)} patient(s) scored now).")
    if summary.failed:
        typer.secho(f"{len(summary.failed)} tube(s) could not be gated (qc_status=fail in tubes.csv):",
                    fg=typer.colors.YELLOW)
        for file, reason in summary.failed[:20]:
            typer.echo(f"  - {for_terminal(file)}: {for_terminal(reason)}")
        if len(summary.failed) > 20:
            typer.echo(f"  ... and {len(summary.failed) - 20} more")
    typer.echo(f"Results in {out}/: tubes.csv, patients.csv, results.xlsx, results.sqlite"
               + (", reports/, review/" if rendered else ""))
    if rendered:
        gallery = for_terminal(summary.out / "review" / "index.html")
        review = for_terminal(shlex.quote(str(summary.out)))
        typer.echo(f"Next: open {gallery} to see every gate (flagged tubes first), or run 'bat review {review}' "
                   "to correct, accept and sign off gates in the browser (or write an overrides file and re-run "
                   "with --overrides FILE; see 'bat run --help').")


def register(app: typer.Typer) -> None:
    """Add ``run``, ``demo``, ``report`` and ``export-gates`` to ``app``."""
    _add_run(app)
    _add_demo(app)
    _add_report(app)
    _add_export_gates(app)


def _add_run(app: typer.Typer) -> None:
    """``bat run``."""
    @app.command("run")
    def run_command(
        data_dir: Path = typer.Argument(..., help="Folder holding the FCS files of the experiment."),
        layout: Optional[Path] = typer.Option(None, "--layout", "-l", help="Layout sheet (CSV or XLSX): file, "
                                              "patient, condition, allergen, concentration, unit, pretreatment "
                                              "(default: DATA_DIR/layout.csv or DATA_DIR/layout.xlsx)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; re-running resumes)."),
        template: str = typer.Option("bat_ccr3_cd63", "--template", "-t",
                                     help="Gating template: a shipped name ('bat templates list') or a YAML path."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1,
                                              help="Local worker processes (default: one per core)."),
        scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                                help="Dask scheduler address (tcp://HOST:PORT) to run on a cluster."),
        overrides: Optional[Path] = typer.Option(None, "--overrides",
                                                 help="Reviewer corrections (YAML: tube, gate, geometry or "
                                                      "threshold, reviewer, reason; 'withdraw: true' withdraws "
                                                      "one). Added to the corrections kept in the results "
                                                      "store, which every re-run applies."),
        gates_from: Optional[Path] = typer.Option(None, "--gates-from",
                                                  help="Gates edited in FlowJo: a workspace (.wsp) or Gating-ML "
                                                       "(.xml, or a folder of them) exported by 'bat export-gates'."),
        reviewer: Optional[str] = typer.Option(None, "--reviewer",
                                               help="Who made the corrections (default for --overrides entries "
                                                    "without one, and for --gates-from)."),
        replace: bool = typer.Option(False, "--replace", help="--out holds another experiment's results: move its "
                                     "results store (and reviewer corrections) aside to OUT/replaced/ and start "
                                     "afresh."),
        parquet: bool = typer.Option(False, "--parquet", help="Also write tubes.parquet and patients.parquet."),
        no_reports: bool = typer.Option(False, "--no-reports", help="Skip the HTML/PDF reports and review gallery."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary (errors still shown)."),
        strict: bool = typer.Option(False, "--strict",
                                    help="Refuse the run when DATA_DIR holds FCS files with no layout row (default: "
                                         "leave them out, e.g. compensation and unstained tubes, with a warning)."),
        skip_missing: bool = typer.Option(False, "--skip-missing",
                                          help="Record tubes whose file does not exist as failed (qc_status=fail) "
                                               "and analyse the rest (default: refuse the run, listing them)."),
        allow_outside_data_dir: bool = typer.Option(False, "--allow-outside-data-dir",
                                                    help="Let the layout name files outside DATA_DIR (absolute "
                                                         "paths, '..', links out of it). Only regular files are "
                                                         "ever read."),
        tube_timeout: Optional[float] = typer.Option(None, "--tube-timeout", min=0, metavar="SECONDS",
                                                     help="Seconds a tube may take to gate (default 300); a tube "
                                                          "taking longer is stopped and recorded as failed, the "
                                                          "batch goes on (0: no limit)."),
    ) -> None:
        """Analyse a folder of FCS files: gate every tube, score every patient, write tables and reports.

        \b
        Example:
          bat run plate1/ --out results/plate1 --workers 2
          (the layout is plate1/layout.csv or plate1/layout.xlsx unless --layout names another)

        Re-running the same command resumes: tubes already gated with the same file and template are reused.
        Reviewer corrections are kept in the results store: a re-run without --overrides still applies them.
        An --out folder holding another experiment's results is refused unless --replace is given.

        Exit 0 when the run completed (even if tubes failed QC); 2 on a bad invocation; 1 if no tube was analysed;
        3 if the tables were written but the reports could not be; 4 if an output could not be written (disk
        full, no permission): the run is recorded as failed and earlier outputs are moved to OUT/outdated-*;
        130 when stopped with Ctrl-C (it says what was saved; the same command resumes).
        """
        from ..errors import BatError
        from ..pipeline import DEFAULT_TUBE_TIMEOUT_S, RunOptions, run

        if tube_timeout is None:
            tube_timeout = DEFAULT_TUBE_TIMEOUT_S
        try:
            layout = layout if layout is not None else default_layout(data_dir)
        except BatError as exc:
            raise _fail(exc) from None
        opts = RunOptions(data_dir=data_dir, layout=layout, out=out, template=template, workers=workers,
                          scheduler=scheduler, overrides=overrides, gates_from=gates_from, reviewer=reviewer,
                          replace=replace, quiet=quiet, parquet=parquet, reports=not no_reports, strict=strict,
                          skip_missing=skip_missing, allow_outside_data_dir=allow_outside_data_dir,
                          tube_timeout_s=tube_timeout)
        try:
            summary = run(opts)
        except BatError as exc:
            raise _fail(exc, "Fix the problem above and run the same command again; finished tubes are kept."
                        ) from None
        except KeyboardInterrupt as exc:
            raise _interrupted(exc) from None
        _summarise(summary, quiet)
        if summary.reports == "failed":
            raise typer.Exit(code=EXIT_REPORTS_FAILED)


def _add_demo(app: typer.Typer) -> None:
    """``bat demo``."""
    @app.command("demo")
    def demo_command(
        out: Path = typer.Option(Path("bat_demo"), "--out", "-o", help="Output folder for the demo results."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Local worker processes."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    ) -> None:
        """Run the whole analysis on the bundled sample experiment (3 patients, 48 tubes).

        \b
        Example:
          bat demo --out demo_results
          (then open demo_results/review/index.html)
        """
        from ..errors import BatError
        from ..pipeline import RunOptions, run, sample_data

        try:
            data_dir = sample_data(out / "sample_fcs", quiet=quiet)
            summary = run(RunOptions(data_dir=data_dir, layout=data_dir / "layout.csv", out=out,
                                     workers=workers, quiet=quiet))
        except BatError as exc:
            raise _fail(exc) from None
        except KeyboardInterrupt as exc:
            raise _interrupted(exc) from None
        if not quiet:
            typer.echo(f"Demo data: {for_terminal(data_dir)}")
        _summarise(summary, quiet)
        if summary.reports == "failed":
            raise typer.Exit(code=EXIT_REPORTS_FAILED)


def _add_report(app: typer.Typer) -> None:
    """``bat report``."""
    @app.command("report")
    def report_command(
        out: Path = typer.Argument(..., help="Output folder of a previous 'bat run'."),
        patient: Optional[list[str]] = typer.Option(None, "--patient", "-p",
                                                    help="Only this patient (repeat for several)."),
    ) -> None:
        """Re-render the per-patient reports and the review gallery from the results store, without re-gating.

        \b
        Example:
          bat report results/plate1 --patient P01
        """
        from ..errors import BatError
        from ..pipeline import rerender

        try:
            paths, note = rerender(out, patients=list(patient) if patient else None)
        except BatError as exc:
            raise _fail(exc, "Give the --out folder of a completed 'bat run'.") from None
        except KeyboardInterrupt:
            typer.secho("\nStopped (Ctrl-C) before the reports were finished; no file is left half-written. "
                        "Run the same command again to write them.", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(code=EXIT_INTERRUPTED) from None
        typer.echo(f"Wrote {len(paths)} file(s) under {for_terminal(out)}/reports and {for_terminal(out)}/review.")


def _add_export_gates(app: typer.Typer) -> None:
    """``bat export-gates``."""
    @app.command("export-gates")
    def export_gates_command(
        out: Path = typer.Argument(..., help="Output folder of a previous 'bat run'."),
        fmt: str = typer.Option("flowjo", "--format", "-f", help="gatingml (one file per tube) or flowjo "
                                "(one workspace for the experiment)."),
        dest: Optional[Path] = typer.Option(None, "--dest", help="Where to write (default: OUT/gates/)."),
    ) -> None:
        """Export every tube's gates (as applied, corrections included) for FlowJo or FlowKit.

        \b
        Example:
          bat export-gates results/plate1 --format flowjo

        Edit the gates in FlowJo, save, and give the file back with 'bat run ... --gates-from FILE'.
        """
        from ..errors import BatError

        if fmt not in ("gatingml", "flowjo"):
            raise _fail(BatError(f"unknown format {fmt!r}", field="--format", expected="gatingml or flowjo"))
        from ..pipeline import export_gates

        try:
            paths = export_gates(out, fmt, dest)
        except BatError as exc:
            raise _fail(exc, "Give the --out folder of a completed 'bat run'.") from None
        where = dest or out / "gates"
        typer.echo(f"Wrote {len(paths)} file(s) under {for_terminal(where)}:")
        for path in paths:
            shown = path.relative_to(where) if path.is_relative_to(where) else path
            typer.echo(f"  {for_terminal(shown)}")
