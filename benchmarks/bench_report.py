"""How long the review drawings of one tube take: ``PngRenderer.tube`` (one PNG per gate, then the activation
histogram), the per-tube cost of ``bat run``'s reports and review gallery.

A patient is simulated (``bat_analysis.simulate``) and gated with the shipped template (``gate_tube``); the
drawings of each allergen tube, against its negative control and a fixed threshold, on the axes the reports give a
patient's tubes (``shared_gate_limits``, ``activation_range``, as ``drawing_jobs`` passes them), are then timed
``--repeats`` times after one warm-up; the CPU milliseconds per plot (this process's) are printed beside the
wall-clock seconds. A regression to drawing every event, or to matplotlib per tube, shows as tens of milliseconds
per plot (painted plots take ~2-3 ms; the bound printed is 5 s per tube).

With ``--patient``, the whole per-patient output instead: a simulated patient with both arms (14 tubes) is gated and
scored, then ``render_reports`` writes its HTML report, its PDF and the review gallery in one process
(``--repeats`` times after a warm-up); the median seconds per phase (draw, html + gallery, pdf) are printed.
``--profile FILE`` writes a cProfile of one more rendering (``python -m pstats FILE``).

Run: ``python benchmarks/bench_report.py [--events 20000] [--repeats 5] [--dpi 225]``
     ``python benchmarks/bench_report.py --patient [--events 50000] [--repeats 3] [--profile /tmp/report.prof]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bat_analysis.gating.templates import load_template  # noqa: E402
from bat_analysis.gating.tube import gate_tube  # noqa: E402
from bat_analysis.report.plots import (PLOT_DPI, PngRenderer, activation_range, marker_values,  # noqa: E402
                                       shared_gate_limits)
from bat_analysis.simulate import simulate_experiment  # noqa: E402

BOUND_S = 5.0  # per tube; the former timed test's limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per simulated tube")
    parser.add_argument("--repeats", type=int, default=5, help="timed drawings per tube")
    parser.add_argument("--dpi", type=int, default=PLOT_DPI, help=f"default {PLOT_DPI}, the reports' resolution")
    parser.add_argument("--patient", action="store_true",
                        help="time render_reports for one patient (HTML, PDF and gallery) instead")
    parser.add_argument("--profile", metavar="FILE", help="with --patient: cProfile one more rendering into FILE")
    args = parser.parse_args()
    if args.patient:
        bench_patient(args)
        return
    template = load_template("bat_ccr3_cd63")
    with tempfile.TemporaryDirectory() as tmp:
        exp = simulate_experiment(Path(tmp), n_patients=1, n_events=args.events, seed=3, n_concentrations=3,
                                  arms=("none",))
        results = {t.file: gate_tube(exp.out_dir / t.file, t, template) for t in exp.tubes}
    negative = next(r for r in results.values() if r.tube.condition == "negative_control")
    neg_values = marker_values(negative, "CD63")
    renderer = PngRenderer(dpi=args.dpi)
    limits = shared_gate_limits(results.values())  # the axes drawing_jobs gives the patient's tubes
    xlim = activation_range([marker_values(r, "CD63") for r in results.values()], [300.0])
    kw = dict(negative_values=neg_values, threshold=300.0, gate_limits=limits, xlim=xlim)
    print(f"{'tube':<34} {'basophils':>9} {'PNGs':>5} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU ms/PNG':>10}")
    worst = 0.0
    for res in results.values():
        if res.tube.condition != "allergen" or res.error is not None:
            continue
        renderer.tube(res, **kw)  # warm-up
        times, cpus, n_png = [], [], 0
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            n_png = len(renderer.tube(res, **kw))
            times.append(time.perf_counter() - t0)
            cpus.append((time.process_time() - c0) / n_png)
        worst = max(worst, statistics.median(times))
        print(f"{res.tube.file:<34} {res.n_basophils:>9} {n_png:>5} {statistics.median(times):>9.3f} "
              f"{min(times):>7.3f} {max(times):>7.3f} {1000 * statistics.median(cpus):>10.1f}")
    verdict = "within" if worst < BOUND_S else "ABOVE"
    print(f"\nslowest tube (median) {worst:.3f} s: {verdict} the {BOUND_S:.0f} s bound; load "
          f"{os.getloadavg()[0]:.1f}; command: python benchmarks/bench_report.py --events {args.events} "
          f"--repeats {args.repeats} --dpi {args.dpi}")


def bench_patient(args: argparse.Namespace) -> None:
    """``render_reports`` for one simulated patient (both arms), per phase, in one process."""
    from bat_analysis.analysis.score import score_experiment
    from bat_analysis.report import render_reports

    template = load_template("bat_ccr3_cd63")
    with tempfile.TemporaryDirectory() as tmp:
        exp = simulate_experiment(Path(tmp) / "data", n_patients=1, n_events=args.events, seed=3)
        results = [gate_tube(exp.out_dir / t.file, t, template) for t in exp.tubes]
        scores = score_experiment(results)
        info = {"version": "bench", "template": "bat_ccr3_cd63", "command": "bench_report.py --patient"}
        render_reports(Path(tmp) / "warm", results, scores, info, workers=1)  # warm-up: imports, fonts
        runs = []
        for k in range(args.repeats):
            cpu = time.process_time()
            paths = render_reports(Path(tmp) / f"out{k}", results, scores, info, workers=1)
            runs.append({**paths.seconds, "cpu": time.process_time() - cpu})
        if args.profile:
            import cProfile

            cProfile.runctx("render_reports(Path(tmp) / 'prof', results, scores, info, workers=1)", globals(),
                            {**locals(), "Path": Path}, args.profile)
    phases = ("draw", "html", "pdf", "total", "cpu")  # cpu: this process's CPU seconds (steadier under load)
    print(f"1 patient, {len(results)} tubes x {args.events} events; median of {args.repeats} (s):")
    print("  ".join(f"{p} {statistics.median(r[p] for r in runs):.2f}" for p in phases))
    print(f"load {os.getloadavg()[0]:.1f}; command: python benchmarks/bench_report.py --patient --events "
          f"{args.events} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
