"""How far is the resting-peak threshold from the resting basophils' 97.5% quantile? Simulated high-background
negative controls with labels, each against a large resting sample of the same patient.

For each of ``--seeds`` patients (``bat_analysis.simulate.make_patient`` with the ``high_background`` scenario:
8–15% spontaneous activation), a negative control is simulated (``--events`` events, a few hundred labelled
basophils, the gate taken from the labels) and 200,000 events of the same patient with no activated basophil
(the resting population). For the threshold ``estimate_threshold`` gives (when it uses the resting-peak
model) and for the resting Gaussian's 97.5% quantile (``_resting_fit``; the rule before the resting events'
own percentile), it prints:

* the share of the resting population above the threshold (the rule promises 2.5%);
* the control's %CD63+ minus its labelled activated share (the promise: + 2.5% of its resting share);
* a tube of the same patient with 10 points more activated basophils: %CD63+ minus its labelled share.

Run: ``PYTHONPATH=. python benchmarks/bench_resting_threshold.py [--seeds 300] [--events 60000]``
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy import special

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bat_analysis.analysis import threshold  # noqa: E402
from bat_analysis.analysis.config import ThresholdConfig  # noqa: E402
from bat_analysis.simulate import make_patient, simulate_tube  # noqa: E402


def one_patient(seed: int, events: int, config: ThresholdConfig) -> dict[str, tuple[float, float, float]] | None:
    from dataclasses import replace

    patient = make_patient("P01", "responder", np.random.default_rng(seed), scenarios=("high_background",))
    control = simulate_tube(n_events=events, patient=patient, seed=10_000 + seed)
    values = control.marker_values("CD63", control.basophil)
    activated = control.activated[control.basophil]
    composition = dict(patient.composition, basophil=0.5)
    big = simulate_tube(n_events=200_000, patient=replace(patient, composition=composition), pct_activated=0.0,
                        seed=20_000 + seed)
    resting = big.marker_values("CD63", big.basophil)
    tube = simulate_tube(n_events=events, patient=patient, pct_activated=100.0 * activated.mean() + 10.0,
                         seed=30_000 + seed)
    tube_values, tube_activated = tube.marker_values("CD63", tube.basophil), tube.activated[tube.basophil]
    est = threshold.estimate_threshold(values, config=config)
    if est.method != "resting_peak":
        return None
    model = est.diagnostics["resting_model"]
    cof = model["cofactor"]
    mu, sd, _ = threshold._resting_fit(np.arcsinh(values / cof))
    gaussian = float(np.sinh(mu + special.ndtri(config.percentile / 100.0) * sd) * cof)
    out = {}
    for name, t in (("resting events' percentile (estimate_threshold)", est.value),
                    ("resting Gaussian's 97.5% quantile", gaussian)):
        out[name] = (100.0 * np.mean(resting > t), 100.0 * (np.mean(values > t) - activated.mean()),
                     100.0 * (np.mean(tube_values > t) - tube_activated.mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--events", type=int, default=60_000)
    args = parser.parse_args()
    config = ThresholdConfig()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    skipped = 0
    for seed in range(args.seeds):
        result = one_patient(seed, args.events, config)
        if result is None:
            skipped += 1
            continue
        for name, r in result.items():
            rows.setdefault(name, []).append(r)
    print(f"{args.seeds} simulated high-background patients ({skipped} without the resting-peak model), "
          f"{args.events} events per tube; errors in %CD63+ points")
    print("| threshold | resting population above it, % (mean ± SD, max; promised 2.5) | control − labels "
          "(mean, max) | tube − labels (mean ± SD, max; > 4 points) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        a = np.asarray(r)
        print(f"| {name} | {a[:, 0].mean():.2f} ± {a[:, 0].std():.2f}, {a[:, 0].max():.2f} | "
              f"{a[:, 1].mean():+.2f}, {a[:, 1].max():+.2f} | {a[:, 2].mean():+.2f} ± {a[:, 2].std():.2f}, "
              f"{a[:, 2].max():+.2f}; {100.0 * np.mean(a[:, 2] > 4.0):.1f}% |")


if __name__ == "__main__":
    main()
