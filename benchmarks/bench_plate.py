"""A whole plate, reports included, against FlowKit's serial fixed gating of the same files (issue 14), in one
invocation.

Simulates a plate with the project's simulator (``bat_analysis.simulate.simulate_experiment``, what
``bat simulate`` runs; default 8 patients x 14 tubes x 60k events: both arms, three controls and four allergen
concentrations each, with its layout sheet), then measures, each in a fresh Python process:

* **FlowKit fixed, serial**: FlowKit's fixed 4-gate strategy (``flowkit_fixed.py``, the same code as
  ``bench_gating.py``) applied to every file of the plate one after the other in one process, timed from the
  first file to the last after imports and a warm-up file;
* **bat run (full)**: ``bat run DATA --layout L --out OUT --workers 2 --quiet`` in a fresh interpreter with an
  empty OUT: gating, results store, scoring, tables, every patient's HTML and PDF report and the review
  gallery (checked present after the run);
* **bat run --no-reports**: the same without reports and gallery, which splits gating from reports.

Wall time and CPU time (user + system of every process of the measurement: the benchmark's children and
the processes they started and reaped) are reported, with the machine's load average before and after each
run. The target: the full ``bat run`` within 1.5x FlowKit's serial wall time (MET/MISS), also shown on CPU time,
which other jobs on a shared machine disturb least.

Run from the repository root (about 2-3 minutes on 2 cores with the defaults; ``--quick``: under a minute):

    PYTHONPATH=. nice python benchmarks/bench_plate.py
    PYTHONPATH=. nice python benchmarks/bench_plate.py --quick              # 2 patients x 14 tubes x 20k
    PYTHONPATH=. nice python benchmarks/bench_plate.py --repeats 3 --workdir /tmp/plate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from flowkit_fixed import flowkit_runner  # benchmarks/ (the script's folder) is on sys.path
from machine import cpu_name, source_commit

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "
TARGET = 1.5  # the full bat run within 1.5x FlowKit's serial fixed gating
CONTROLS = 3  # negative control, anti-FcεRI, fMLP: per patient and arm (the simulator's default)
ARMS = 2  # none and omalizumab


def children_cpu() -> float:
    """User + system CPU seconds of this process's reaped descendants."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Row:
    """One configuration's runs: wall and CPU seconds, load averages before/after, the exact command."""

    label: str
    command: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_s(self) -> float:
        return statistics.median(self.cpu)


# ------------------------------------------------------------------------------------------ FlowKit, serial
def flowkit_serial_in_this_process(data_dir: Path) -> dict:
    """Body of a fresh process: FlowKit's fixed strategy on every FCS file of ``data_dir``, one after another."""
    files = sorted(data_dir.glob("*.fcs"))
    run = flowkit_runner()
    run(files[0])  # warm-up: lazy imports, FlowKit's caches
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    counts = [run(path)["counts"] for path in files]
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    return {"wall": elapsed, "cpu": cpu, "n_files": len(files),
            "basophils_median": statistics.median(c["basophils"] for c in counts)}


def flowkit_serial(data_dir: Path) -> tuple[float, float, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_flowkit", str(data_dir)],
                          env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"FlowKit serial run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(lines[-1][len(RESULT_TAG):])
    return data["wall"], data["cpu"], data


# ------------------------------------------------------------------------------------------ bat run
def bat_command(data_dir: Path, layout: Path, out: Path, workers: int, reports: bool) -> list[str]:
    cmd = [sys.executable, "-m", "bat_analysis", "run", str(data_dir), "--layout", str(layout), "--out", str(out),
           "--workers", str(workers), "--quiet"]
    return cmd + ([] if reports else ["--no-reports"])


def bat_run(cmd: list[str], out: Path, n_patients: int, reports: bool) -> tuple[float, float]:
    """(wall s, CPU s of bat run and every process it reaped) of one run into an empty ``out``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if out.exists():
        shutil.rmtree(out)
    c0 = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    cpu = children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    missing = [name for name in ("tubes.csv", "patients.csv", "results.xlsx", "results.sqlite")
               if not (out / name).is_file()]
    if reports:
        n_html, n_pdf = len(list((out / "reports").glob("*.html"))), len(list((out / "reports").glob("*.pdf")))
        if n_html != n_patients or n_pdf != n_patients:
            missing.append(f"reports ({n_html} HTML, {n_pdf} PDF for {n_patients} patients)")
        if not (out / "review" / "index.html").is_file():
            missing.append("review/index.html")
    if missing:
        raise RuntimeError(f"{shlex.join(cmd)} finished without {', '.join(missing)}")
    return elapsed, cpu


# ------------------------------------------------------------------------------------------ the plate
def build_plate(work: Path, n_patients: int, n_concentrations: int, n_events: int, seed: int) -> tuple[Path, Path]:
    """The simulated plate (reused when the same one is already in ``work``)."""
    data_dir = work / f"plate_{n_patients}p_{n_concentrations}c_{n_events}ev_seed{seed}"
    layout = data_dir / "layout.csv"
    if layout.is_file():
        return data_dir, layout
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(data_dir, n_patients=n_patients, n_events=n_events, seed=seed,
                              n_concentrations=n_concentrations, version="3.1", datatype="F")
    return data_dir, exp.layout_path


def machine_lines() -> list[str]:
    cpu, commit = cpu_name(), source_commit(REPO)
    from importlib.metadata import version

    return [f"source: {REPO} ({commit})", f"date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}",
            f"machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, nice "
            f"{os.nice(0)}", f"python {platform.python_version()}, bat_analysis {version('bat-analysis')}, "
            f"flowkit {version('flowkit')}"]


def table(rows: list[Row], flowkit: Row) -> list[str]:
    head = (f"{'measurement':<26} {'runs':>4} {'wall s':>8} {'cpu s':>8} {'x FlowKit wall|cpu':>19}  "
            f"load average before -> after")
    out = [head, "-" * len(head)]
    for r in [flowkit, *rows]:
        ratio = "" if r is flowkit else f"{r.wall_s / flowkit.wall_s:.2f}|{r.cpu_s / flowkit.cpu_s:.2f}"
        out.append(f"{r.label:<26} {len(r.wall):>4} {r.wall_s:>8.2f} {r.cpu_s:>8.2f} {ratio:>19}  "
                   f"{'; '.join(r.loads)}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=8, help="patients on the plate (default 8)")
    p.add_argument("--concentrations", type=int, default=4,
                   help="allergen concentrations per arm (default 4: 14 tubes per patient)")
    p.add_argument("--events", type=int, default=60_000, help="events per tube (default 60000)")
    p.add_argument("--workers", type=int, default=2, help="bat run --workers (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs per measurement, median reported (default 1)")
    p.add_argument("--quick", action="store_true", help="2 patients x 14 tubes x 20k events: a check, not a figure")
    p.add_argument("--no-split", action="store_true", help="skip the --no-reports run")
    p.add_argument("--seed", type=int, default=2026, help="simulator seed (default 2026)")
    p.add_argument("--workdir", type=Path, help="simulate the plate here and keep it (default: a temporary folder)")
    p.add_argument("--_flowkit", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.patients, args.events = 2, 20_000
    if min(args.patients, args.concentrations, args.workers, args.repeats) < 1 or args.events < 1000:
        p.error("--patients, --concentrations, --workers, --repeats must be >= 1 and --events >= 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._flowkit:
        print(RESULT_TAG + json.dumps(flowkit_serial_in_this_process(args._flowkit)), flush=True)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    tmp = tempfile.TemporaryDirectory(prefix="bat_plate_") if args.workdir is None else None
    work = Path(tmp.name) if tmp is not None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    n_tubes = args.patients * ARMS * (CONTROLS + args.concentrations)
    try:
        t = time.perf_counter()
        data_dir, layout = build_plate(work, args.patients, args.concentrations, args.events, args.seed)
        log(f"plate: {n_tubes} tubes in {data_dir} ({time.perf_counter() - t:.1f} s)")
        flowkit = Row("FlowKit fixed, serial", f"{sys.executable} {Path(__file__).name} --_flowkit {data_dir}")
        configs = [("bat run (full)", True)] + ([] if args.no_split else [("bat run --no-reports", False)])
        rows = [Row(label, shlex.join(bat_command(data_dir, layout, work / "OUT", args.workers, reports)))
                for label, reports in configs]
        for r in range(args.repeats):
            before = load()
            w, c, info = flowkit_serial(data_dir)
            flowkit.wall.append(w)
            flowkit.cpu.append(c)
            flowkit.loads.append(f"{before} -> {load()}")
            log(f"  run {r + 1}: FlowKit {w:.2f} s (CPU {c:.2f}), {info['n_files']} files, "
                f"median {info['basophils_median']:.0f} basophils")
            for row, (label, reports) in zip(rows, configs):
                before = load()
                cmd = bat_command(data_dir, layout, work / "OUT", args.workers, reports)
                w, c = bat_run(cmd, work / "OUT", args.patients, reports)
                row.wall.append(w)
                row.cpu.append(c)
                row.loads.append(f"{before} -> {load()}")
                log(f"  run {r + 1}: {label} {w:.2f} s (CPU {c:.2f})")
    finally:
        if tmp is not None:
            tmp.cleanup()

    full = rows[0]
    ratio, ratio_cpu = full.wall_s / flowkit.wall_s, full.cpu_s / flowkit.cpu_s
    lines = ["bat_analysis plate benchmark (issue 14)", *machine_lines(),
             f"plate: {args.patients} patients x {n_tubes // args.patients} tubes = {n_tubes} tubes x "
             f"{args.events} events, simulator seed {args.seed}, FCS 3.1 float32; benchmark wall time "
             f"{time.time() - started:.0f} s", ""]
    lines += table(rows, flowkit)
    if len(rows) > 1:
        split = rows[1]
        lines.append(f"{'reports (full - no-reports)':<26} {'':>4} {full.wall_s - split.wall_s:>8.2f} "
                     f"{full.cpu_s - split.cpu_s:>8.2f}")
    lines += ["", f"target: full bat run --workers {args.workers} within {TARGET}x FlowKit's serial fixed gating: "
                  f"{ratio:.2f}x wall [{'MET' if ratio <= TARGET else 'MISS'}] "
                  f"({ratio_cpu:.2f}x CPU time; on {args.workers} idle cores, where FlowKit's serial wall time "
                  f"is its CPU time, the run's wall time can fall to {full.cpu_s / args.workers / flowkit.cpu_s:.2f}x "
                  "at best)",
              "", "commands (the FlowKit one times files after a warm-up; bat run is timed whole, start-up "
                  "included):", *(f"  {r.label}: {r.command}" for r in [flowkit, *rows]),
              "", "this benchmark: PYTHONPATH=. python benchmarks/bench_plate.py " + shlex.join(sys.argv[1:])]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
