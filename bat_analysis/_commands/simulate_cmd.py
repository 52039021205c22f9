"""``bat simulate OUT``: write a synthetic BAT experiment with known truth (FCS files, layout, truth, labels)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""

    @app.command("simulate")
    def simulate_command(
        out: Path = typer.Argument(..., help="Folder to write the experiment into (created if absent)."),
        patients: int = typer.Option(3, "--patients", min=1, help="Number of patients."),
        events: int = typer.Option(30_000, "--events", min=100, help="Events per tube."),
        seed: int = typer.Option(0, "--seed", help="Random seed: the same seed and options give the same files."),
        kinds: str = typer.Option("responder,partial,non_responder,non_releaser", "--kinds",
                                  help="Patient kinds, comma-separated, cycled over the patients."),
        scenario: list[str] = typer.Option(["clean"], "--scenario",
                                           help="clean | clog | saturation | low_basophils | high_background | "
                                                "eosinophil_rich | mixed (repeat to combine)."),
        naming: str = typer.Option("bd", "--naming", help="Channel naming: bd | marker_in_pnn | beckman | aliases."),
        fcs_version: str = typer.Option("3.1", "--fcs-version", help="FCS version: 2.0 | 3.0 | 3.1."),
        datatype: str = typer.Option("F", "--datatype", help="F (float32) | D (float64) | I (32-bit integers)."),
        byteorder: str = typer.Option("little", "--byteorder", help="little | big."),
        concentrations: int = typer.Option(6, "--concentrations", min=2, max=12,
                                           help="Allergen concentrations per series (log series 0.01-100 ng/mL)."),
        cd107a: bool = typer.Option(False, "--cd107a", help="Add a CD107a channel."),
        basophil_pct: tuple[float, float] = typer.Option((0.5, 1.0), "--basophil-pct",
                                                         help="Range of basophils among leukocytes, in percent."),
        anti_ige: bool = typer.Option(False, "--anti-ige", help="Add an anti-IgE control tube per patient and arm."),
        bell_fraction: float = typer.Option(0.0, "--bell-fraction", min=0.0, max=1.0,
                                            help="Share of patients whose response falls at high doses."),
        replicates: int = typer.Option(1, "--replicates", min=1, max=3,
                                       help="Draw every tube this many times (files ..._r1.fcs, ..._r2.fcs; a "
                                            "replicate column in the layout)."),
        arm_unit: list[str] = typer.Option([], "--arm-unit", metavar="ARM=UNIT",
                                           help="Write an arm's allergen concentrations in another unit of mass "
                                                "per volume, the same doses (e.g. omalizumab=ug/mL); repeatable."),
        force: bool = typer.Option(False, "--force", help="Write into a folder that already holds files."),
    ) -> None:
        """Simulate a BAT experiment: per patient and arm, controls and an allergen series, with truth.

        \b
        Examples:
          bat simulate sim/ --patients 8 --events 100000 --seed 1
          bat simulate hard/ --scenario clog --scenario low_basophils --naming beckman
          bat simulate reps/ --replicates 2 --arm-unit omalizumab=ug/mL
          bat run sim/ --out sim_results

        The folder receives one FCS file per tube, layout.csv, truth.json (the generating curves and per-tube
        truth) and per-event labels.
        """
        import time

        from ..errors import BatError
        from ..simulate import EXPECTED_CLASS, simulate_experiment
        from .._textsafe import for_terminal

        orders = {"little": "<", "big": ">", "<": "<", ">": ">"}
        if byteorder not in orders:
            typer.echo(f"error: --byteorder {byteorder!r}: expected little or big", err=True)
            raise typer.Exit(code=2)
        units: dict[str, str] = {}
        for item in arm_unit:
            arm, sep, unit = item.partition("=")
            if not sep or not arm.strip() or not unit.strip():
                typer.echo(f"error: --arm-unit {for_terminal(item)!r}: expected ARM=UNIT, e.g. omalizumab=ug/mL",
                           err=True)
                raise typer.Exit(code=2)
            units[arm.strip()] = unit.strip()
        if out.exists() and not out.is_dir():
            typer.echo(f"error: {for_terminal(out)} exists and is not a folder", err=True)
            raise typer.Exit(code=2)
        if out.is_dir() and any(out.iterdir()) and not force:
            typer.echo(f"error: {for_terminal(out)} is not empty (use --force to write into it)", err=True)
            raise typer.Exit(code=2)
        t0 = time.perf_counter()
        try:
            exp = simulate_experiment(
                out, n_patients=patients, n_events=events, seed=seed,
                kinds=[k.strip() for k in kinds.split(",") if k.strip()], scenario=scenario, naming=naming,
                version=fcs_version, datatype=datatype, byteorder=orders[byteorder],
                n_concentrations=concentrations, include_cd107a=cd107a, basophil_pct=basophil_pct,
                controls=("negative_control", "anti_fceri", "anti_ige", "fmlp") if anti_ige
                else ("negative_control", "anti_fceri", "fmlp"),
                bell_fraction=bell_fraction, arm_units=units or None, replicates=replicates,
            )
        except BatError as exc:
            first_line = str(exc).split("\n")[0]
            typer.echo(f"error: {for_terminal(first_line)}", err=True)
            raise typer.Exit(code=2) from None
        elapsed = time.perf_counter() - t0
        typer.echo(f"wrote {len(exp.tubes)} FCS files, {exp.layout_path.name}, {exp.truth_path.name}, "
                   f"{exp.labels_path.name} into {for_terminal(out)} in {elapsed:.1f} s")
        for pid, p in exp.truth["patients"].items():
            inh = p["auc_inhibition_pct"]
            inh_text = f"{inh:.0f}%" if inh is not None else "n/a"
            typer.echo(f"  {pid}: {p['kind']:<13} allergen {p['allergen']:<8} AUC inhibition {inh_text:>5}  "
                       f"expected class {EXPECTED_CLASS[p['kind']]}")
