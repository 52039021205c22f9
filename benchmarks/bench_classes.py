"""Can a clinician trust the scores? %CD63+ and classes of whole simulated runs against the simulator's truth.

Simulates experiments (``bat_analysis.simulate.simulate_experiment``) over several seeds, three cytometer
naming styles on clean blood and the hard cases (``low_basophils``: ~150 basophils per tube,
``high_background``: 8-15% spontaneous activation, ``eosinophil_rich``), runs the whole analysis on each
(``bat_analysis.pipeline.run``, no reports) and compares with ``truth.json``:

* tubes: ``tubes.csv`` ``pct_cd63`` within 2.5 points of the truth for the threshold rule the tool used: the
  truth's ``pct_cd63_ref_threshold`` (the same 97.5th-percentile rule applied to the labelled basophils), or,
  for a tube whose ``threshold_method`` is ``resting_peak`` (activated negative control: its activated events
  set aside), ``pct_cd63_resting_ref``, the same rule applied to the control's labelled resting basophils
  (the labelled activated share plus the 2.5% of resting basophils the rule counts by design); also shown
  against the labelled activated share ``pct_cd63_true`` for every tube; a tube without a value counts as a miss;
* patient x allergen: the classes with ``class_confidence == "high"`` and how many of them equal the class of
  the generating AUC inhibition (``classify`` with the default ``ClassConfig`` limits; non-releasers, whose
  truth has no AUC inhibition, are ``not_evaluable``);
* the share of ``borderline`` among evaluable classes, and the mean width of the AUC-inhibition interval.

A run that fails (simulation or analysis) is a row marked FAILED with its reason, never a crash.

Run: ``PYTHONPATH=. python benchmarks/bench_classes.py [--quick] [--seeds N] [--patients N] [--events N]``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bat_analysis.analysis.classify import classify  # noqa: E402
from bat_analysis.analysis.config import ClassConfig  # noqa: E402
from bat_analysis.pipeline import RunOptions, run  # noqa: E402
from bat_analysis.simulate import simulate_experiment  # noqa: E402

#: (scenario, naming) cells: clean blood in three cytometer styles, then the hard cases (styles rotated)
CELLS: tuple[tuple[str, str], ...] = (
    ("clean", "bd"), ("clean", "beckman"), ("clean", "aliases"),
    ("low_basophils", "bd"), ("high_background", "beckman"), ("eosinophil_rich", "aliases"),
)
TOLERANCE = 2.5  # %CD63+ points
TUBE_TARGET = 95.0  # % of tubes within TOLERANCE


@dataclass
class Tally:
    runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    tubes: int = 0
    tubes_failed: int = 0  # no pct_cd63 in tubes.csv (gating failed)
    within: int = 0  # within TOLERANCE of the truth for the threshold rule used
    within_labels: int = 0  # within TOLERANCE of the labelled activated share
    resting_peak: int = 0  # tubes whose threshold came from the resting-peak model
    deviation: float = 0.0  # sum of (measured - truth) over the tubes with a value
    pairs: int = 0  # patient x allergen rows
    evaluable: int = 0
    lost: int = 0  # not_evaluable although the truth has a class (QC failure, no fit, ...)
    ne_right: int = 0  # not_evaluable where the truth is not_evaluable too (non-releasers)
    high: int = 0
    high_right: int = 0
    borderline: int = 0
    borderline_right: int = 0
    widths: list[float] = field(default_factory=list)
    seconds: float = 0.0
    wrong_high: list[str] = field(default_factory=list)
    lost_reasons: list[str] = field(default_factory=list)
    worst_tubes: list[tuple[float, str]] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        for name in ("runs", "tubes", "tubes_failed", "within", "within_labels", "resting_peak", "deviation",
                     "pairs", "evaluable", "lost", "ne_right", "high", "high_right", "borderline",
                     "borderline_right", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed_runs += other.failed_runs
        self.widths += other.widths
        self.wrong_high += other.wrong_high
        self.lost_reasons += other.lost_reasons
        self.worst_tubes += other.worst_tubes


def _float(text: str | None) -> float:
    try:
        value = float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
    return value


def true_class(auc_inhibition_pct: float | None, config: ClassConfig) -> str:
    """The class the generating curves imply (non-releaser: no AUC inhibition → not_evaluable)."""
    if auc_inhibition_pct is None:
        return "not_evaluable"
    return classify(untreated_positive=True, auc_inhibition_pct=float(auc_inhibition_pct), config=config).label


def score_run(out: Path, truth: dict, label: str, config: ClassConfig) -> Tally:
    """Compare one run's tubes.csv and patients.csv with its truth."""
    t = Tally()
    with open(out / "tubes.csv", newline="", encoding="utf-8") as fh:
        measured = {row["file"]: row for row in csv.DictReader(fh)}
    for name, tube in truth["tubes"].items():
        ref, labelled = tube.get("pct_cd63_ref_threshold"), tube.get("pct_cd63_true")
        if ref is None:  # no basophil in the file: nothing to compare
            continue
        t.tubes += 1
        row = measured.get(name, {})
        value = _float(row.get("pct_cd63"))
        if math.isnan(value):
            t.tubes_failed += 1
            t.worst_tubes.append((math.inf, f"{label} {name}: no %CD63+ (truth {ref:.1f})"))
            continue
        # the truth for the rule the tool says it used: the plain 97.5th percentile of the negative control's
        # labelled basophils (pct_cd63_ref_threshold), or, when the resting-peak model set the activated events
        # of the control aside, the 97.5th percentile of its labelled resting basophils (pct_cd63_resting_ref:
        # the labelled activated share plus the 2.5% of resting basophils the rule counts by design)
        resting_peak = row.get("threshold_method") == "resting_peak"
        t.resting_peak += resting_peak
        truth_value = tube.get("pct_cd63_resting_ref", labelled) if resting_peak else ref
        t.within_labels += abs(value - labelled) <= TOLERANCE
        t.deviation += value - truth_value
        diff = abs(value - truth_value)
        if diff <= TOLERANCE:
            t.within += 1
        else:
            t.worst_tubes.append((diff, f"{label} {name}: {value:.1f} vs truth {truth_value:.1f} "
                                        f"({'resting-peak rule' if resting_peak else '97.5th-percentile rule'}"
                                        f"; {tube.get('n_basophils')} basophils)"))
    with open(out / "patients.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        t.pairs += 1
        patient = truth["patients"].get(row["patient"], {})
        expected = true_class(patient.get("auc_inhibition_pct"), config)
        got = row.get("class", "")
        if got == "not_evaluable" or not got:
            t.ne_right += expected == "not_evaluable"
            if expected != "not_evaluable":
                t.lost += 1
                reason = row.get("class_reason", "")
                t.lost_reasons.append(f"{label} {row['patient']} {row['allergen']}: truth {expected}, "
                                      f"{reason[:150]}{'…' if len(reason) > 150 else ''}")
            continue
        t.evaluable += 1
        low, high = _float(row.get("auc_inhibition_ci_low")), _float(row.get("auc_inhibition_ci_high"))
        if not (math.isnan(low) or math.isnan(high)):
            t.widths.append(high - low)
        confidence = row.get("class_confidence", "")
        if confidence == "high":
            t.high += 1
            if got == expected:
                t.high_right += 1
            else:
                true_pct = patient.get("auc_inhibition_pct")
                t.wrong_high.append(
                    f"{label} {row['patient']} {row['allergen']}: {got} (AUC inhibition "
                    f"{_float(row.get('auc_inhibition_pct')):.1f}%, CI {low:.1f}-{high:.1f}) but truth "
                    f"{expected} ({'none' if true_pct is None else f'{true_pct:.1f}%'})")
        elif confidence == "borderline":
            t.borderline += 1
            t.borderline_right += got == expected
    return t


def one_run(scenario: str, naming: str, seed: int, args: argparse.Namespace, work: Path,
            config: ClassConfig) -> Tally:
    """Simulate, analyse and score one experiment; any failure becomes a failed run in the tally."""
    label = f"{scenario}/{naming}/seed {seed}"
    folder = work / f"{scenario}_{naming}_{seed}"
    t0 = time.perf_counter()
    try:
        experiment = simulate_experiment(folder / "data", n_patients=args.patients, n_events=args.events,
                                         seed=seed, scenario=scenario, naming=naming)
        summary = run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=folder / "out",
                                 workers=args.workers, quiet=True, reports=False))
        truth = json.loads(experiment.truth_path.read_text(encoding="utf-8"))
        tally = score_run(folder / "out", truth, label, config)
        if summary.n_failed:
            tally.failed_runs.append(f"{label}: {summary.n_failed} tube(s) failed: "
                                     + "; ".join(f"{f}: {r}" for f, r in summary.failed[:3]))
    except Exception as exc:  # a failed run is a row of the table, not a crash of the benchmark
        tally = Tally(failed_runs=[f"{label}: FAILED {type(exc).__name__}: {exc}"])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    tally.runs = 1
    tally.seconds = time.perf_counter() - t0
    return tally


def _pct(num: int, den: int) -> str:
    return f"{100.0 * num / den:5.1f}%" if den else "    -"


def row_text(name: str, t: Tally) -> str:
    width = f"{sum(t.widths) / len(t.widths):6.1f}" if t.widths else "     -"
    measured = t.tubes - t.tubes_failed
    bias = f"{t.deviation / measured:+5.2f}" if measured else "    -"
    failed = sum(1 for f in t.failed_runs if "FAILED" in f)
    return (f"| {name:<26} | {t.runs - failed}/{t.runs} | {t.within}/{t.tubes} = {_pct(t.within, t.tubes)} | "
            f"{_pct(t.within_labels, t.tubes)} | {bias} | {t.resting_peak} | {t.tubes_failed} | "
            f"{t.evaluable}/{t.pairs} | {t.lost} | {t.ne_right} | "
            f"{t.high_right}/{t.high} | "
            f"{t.borderline}/{t.evaluable} = {_pct(t.borderline, t.evaluable)} | {width} | {t.seconds:5.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 40k events per tube")
    parser.add_argument("--seeds", type=int, default=None, help="experiments per cell (default 3; --quick 1)")
    parser.add_argument("--patients", type=int, default=4, help="patients per experiment (kinds cycle)")
    parser.add_argument("--events", type=int, default=None, help="events per tube (default 60000; --quick 40000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the simulated data and runs in this folder")
    args = parser.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.events = args.events or (40_000 if args.quick else 60_000)
    config = ClassConfig()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_classes_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    cells: list[tuple[str, Tally]] = []
    for i, (scenario, naming) in enumerate(CELLS):
        cell = Tally()
        for s in range(args.seeds):
            cell.add(one_run(scenario, naming, 1000 * (i + 1) + s, args, work, config))
        cells.append((f"{scenario} / {naming}", cell))
        print(f"  done {scenario}/{naming}: {cell.seconds:.0f} s", file=sys.stderr, flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    clean, hard, overall = Tally(), Tally(), Tally()
    for (name, cell), (scenario, _) in zip(cells, CELLS):
        (clean if scenario == "clean" else hard).add(cell)
        overall.add(cell)

    print(f"{args.patients} patients x {args.seeds} seed(s) per cell, {args.events} events per tube; "
          f"classes {config.partial_min:g}/{config.responder_min:g}% AUC inhibition")
    print()
    print("| scenario / naming | runs ok | tubes within 2.5 points | same, vs labels | mean deviation "
          "| resting-peak tubes | tubes without value | evaluable / pairs | truth evaluable, reported not "
          "| not_evaluable right | high-confidence right | borderline / evaluable | mean CI width (points) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cell in cells:
        print(row_text(name, cell))
    print(row_text("all clean", clean))
    print(row_text("all hard cases", hard))
    print(row_text("overall", overall))
    print()
    tube_share = 100.0 * overall.within / overall.tubes if overall.tubes else 0.0
    print(f"target tubes within {TOLERANCE:g} points >= {TUBE_TARGET:g}%: {tube_share:.1f}% "
          f"{'MET' if tube_share >= TUBE_TARGET else 'MISS'}")
    print(f"target every high-confidence class right: {overall.high_right}/{overall.high} "
          f"{'MET' if overall.high_right == overall.high else 'MISS'}")
    print(f"borderline classes right (point estimate): {overall.borderline_right}/{overall.borderline}")
    if overall.wrong_high:
        print("\nhigh-confidence classes that are wrong:")
        for line in overall.wrong_high:
            print("  " + line)
    if overall.lost_reasons:
        print(f"\nclasses reported not_evaluable although the truth has one ({len(overall.lost_reasons)}), first 12:")
        for line in overall.lost_reasons[:12]:
            print("  " + line)
    if overall.failed_runs:
        print("\nfailures:")
        for line in overall.failed_runs:
            print("  " + line)
    if overall.worst_tubes:
        print(f"\ntubes beyond {TOLERANCE:g} points ({len(overall.worst_tubes)}), worst 8:")
        for _, line in sorted(overall.worst_tubes, reverse=True)[:8]:
            print("  " + line)
    load = os.getloadavg()
    command = "python benchmarks/bench_classes.py" + (" --quick" if args.quick else "")
    command += f" --seeds {args.seeds} --patients {args.patients} --events {args.events} --workers {args.workers}"
    print(f"\n{time.perf_counter() - t0:.0f} s, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"command: PYTHONPATH=. {command}")


if __name__ == "__main__":
    main()
