"""Time ``bat cohort`` on a simulated cohort and (optionally) save a picture of its report.

    PYTHONPATH=. python benchmarks/bench_cohort.py --patients 1000
    PYTHONPATH=. python benchmarks/bench_cohort.py --patients 200 --picture docs/cohort_report.png

Runs exactly what ``bat cohort --demo --patients N --out DIR`` runs (``demo_inputs`` then ``run_cohort``: ROC with
DeLong intervals and paired tests for three predictors, adjusted logistic regressions, two stratifications, a mixed
model per follow-up variable, Table 1, cohort.html and cohort.pdf) in a temporary folder, ``--repeats`` times, and
prints the wall time of each step with the machine's load average. ``--picture`` writes the report's four figures
(ROC curves, forest plot, stratum bars, trajectories) as one PNG, the same figures the report embeds.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--picture", type=Path, default=None)
    args = ap.parse_args()

    t_import = time.perf_counter()
    from bat_analysis.cohort.run import demo_inputs, run_cohort
    t_import = time.perf_counter() - t_import

    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            opts = demo_inputs(tmp, args.patients, args.seed)
            t1 = time.perf_counter()
            summary = run_cohort(opts)
            t2 = time.perf_counter()
            times.append((t1 - t0, t2 - t1))
            if args.picture is not None:
                _picture(summary.tables, args.picture)
    load = os.getloadavg()
    print(f"patients {args.patients}, repeats {args.repeats}, imports {t_import:.2f} s")
    print("simulate s: " + ", ".join(f"{a:.2f}" for a, _ in times))
    print("analyse + report s: " + ", ".join(f"{b:.2f}" for _, b in times)
          + f" (best {min(b for _, b in times):.2f})")
    print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cpus {os.cpu_count()}")


def _picture(tables, target: Path) -> None:
    from PIL import Image

    from bat_analysis.cohort import _report as report

    figs = [report.roc_figure(tables["roc"], tables["roc_points"]), report.forest_figure(tables["associations"]),
            report.strata_figure(tables["strata"]), report.trajectory_figure(tables["longitudinal"])]
    images = []
    for fig in figs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72)
        buf.seek(0)
        images.append(Image.open(buf).convert("RGB"))
    w = images[0].width + images[1].width
    left_h = images[0].height + images[2].height
    right_h = images[1].height + images[3].height
    sheet = Image.new("RGB", (w, max(left_h, right_h)), "white")
    sheet.paste(images[0], (0, 0))
    sheet.paste(images[2], (0, images[0].height))
    sheet.paste(images[1], (images[0].width, 0))
    sheet.paste(images[3], (images[0].width, images[1].height))
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet = sheet.quantize(colors=128)
    sheet.save(target, optimize=True)
    print(f"wrote {target} ({target.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
