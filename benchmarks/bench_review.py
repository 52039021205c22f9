"""Edit-to-update latency of ``bat review``: re-gating a tube with an edited basophil gate.

Simulates one patient (``--events`` per tube), runs ``bat run`` on it, opens the results as the workbench
does (:class:`bat_analysis.workbench._session.ReviewSession`), re-gates the first allergen tube once (this
reads the FCS file into the cache), then times ``--edits`` edits, each moving one vertex of the basophil
polygon a little (seeded), and prints the median, the 95th percentile and the maximum. Timed in-process
(no HTTP), the server-side part of what the page waits for after a drag.

    PYTHONPATH=. python benchmarks/bench_review.py --events 100000 --edits 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--edits", type=int, default=20)
    args = ap.parse_args()
    from bat_analysis.pipeline import RunOptions, run
    from bat_analysis.simulate import simulate_experiment
    from bat_analysis.workbench._session import ReviewSession

    with tempfile.TemporaryDirectory() as tmp:
        exp = simulate_experiment(f"{tmp}/data", n_patients=1, n_events=args.events, seed=3, n_concentrations=2)
        run(RunOptions(data_dir=exp.out_dir, layout=exp.layout_path, out=f"{tmp}/out", workers=1, quiet=True,
                       reports=False))
        session = ReviewSession(f"{tmp}/out")
        tube = next(t for t in session.queue()["tubes"] if t["condition"] == "allergen")["id"]
        gate = next(g for g in session.tube(tube)["gates"] if g["name"] == session.template.population)
        verts = np.asarray(gate["geometry"]["vertices"], dtype=float)
        session.regate(tube, gate["name"], {"type": "polygon", "vertices": verts.tolist()})
        rng = np.random.default_rng(0)
        times = []
        for i in range(args.edits):
            v = verts.copy()
            v[i % len(v)] += rng.normal(0.0, 0.01, 2)
            t0 = time.perf_counter()
            session.regate(tube, gate["name"], {"type": "polygon", "vertices": v.tolist()})
            times.append(time.perf_counter() - t0)
        ms = np.asarray(times) * 1000.0
        print(f"{args.events} events, {args.edits} edits: median {statistics.median(ms):.0f} ms, "
              f"p95 {np.percentile(ms, 95):.0f} ms, max {ms.max():.0f} ms")


if __name__ == "__main__":
    main()
