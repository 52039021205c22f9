"""How often the resting-peak threshold model switches on, on simulated negative controls.

Each negative-control tube is simulated (``bat_analysis.simulate``, basophil-enriched so that a tube holds
200-3000 basophils) with a chosen activated fraction; the compensated CD63 values of its labelled basophils
go to ``estimate_threshold`` (the gating is left out: this measures the threshold rule alone).

* quiet controls: 0.1-1% activated basophils, below the 2.5% the 97.5th percentile assumes. The model
  switching on here is a false trigger (target: at most 1%).
* activated controls: 3-5%, 5-10% and 10-30% activated. The model switching on is a detection.

Run: ``python benchmarks/bench_threshold_model.py [--seeds 200]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bat_analysis.analysis.threshold import estimate_threshold  # noqa: E402
from bat_analysis.simulate import make_patient, simulate_tube  # noqa: E402

BANDS = (("quiet 0.1-1%", 0.1, 1.0), ("3-5%", 3.0, 5.0), ("5-10%", 5.0, 10.0), ("10-30%", 10.0, 30.0))


def one(seed: int, low: float, high: float) -> tuple[bool, int]:
    rng = np.random.default_rng(seed)
    patient = make_patient("P01", "responder", rng, basophil_pct=(5.0, 10.0))
    n_basophils = int(rng.uniform(200, 3000))
    n_events = int(n_basophils / (patient.composition["basophil"] * 0.8))
    pct = float(rng.uniform(low, high))
    tube = simulate_tube(n_events=max(n_events, 1000), patient=patient, pct_activated=pct, seed=seed)
    values = tube.marker_values("CD63", tube.basophil)
    est = estimate_threshold(values)
    return est.method == "resting_peak", int(values.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="simulated controls per band")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"{'negative control':<16} {'controls':>8} {'model on':>9} {'rate':>7}  basophils")
    for name, low, high in BANDS:
        hits, sizes = 0, []
        for seed in range(args.seeds):
            fired, n = one(10_000 * (BANDS.index((name, low, high)) + 1) + seed, low, high)
            hits += fired
            sizes.append(n)
        print(f"{name:<16} {args.seeds:>8} {hits:>9} {100.0 * hits / args.seeds:>6.1f}%  "
              f"{min(sizes)}-{max(sizes)}")
    load = os.getloadavg()[0]
    print(f"\n{time.perf_counter() - t0:.0f} s, load {load:.1f}; command: python benchmarks/bench_threshold_model.py "
          f"--seeds {args.seeds}")


if __name__ == "__main__":
    main()
