"""Profile the per-tube path (``gate_tube``) on one simulated 500k-event file with cProfile.

Prints the top functions by own time and by cumulative time, and the own time summed per source file,
so that the remaining bottleneck can be named with the file and function that costs it.

Run from the repository root:
    PYTHONPATH=. python benchmarks/profile_tube.py                 # simulated 500k events, 3 calls
    PYTHONPATH=. python benchmarks/profile_tube.py --events 2M --calls 1 --top 40
    PYTHONPATH=. python benchmarks/profile_tube.py --file my.fcs   # profile an existing file
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gating import SINGLE_THREAD_ENV, WARMUP_EVENTS, build_single, parse_size  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def short_path(filename: str) -> str:
    """A readable location: ``bat_analysis/...`` inside the repository, ``pkg/...`` for site-packages."""
    if filename.startswith(str(REPO)):
        return os.path.relpath(filename, REPO)
    if "site-packages" in filename:
        return filename.split("site-packages" + os.sep, 1)[1]
    if filename.startswith("~") or filename.startswith("<"):
        return "(built-in)"
    return filename


def per_file_totals(stats: pstats.Stats) -> list[tuple[str, float, int]]:
    """Own time (seconds) and call count summed per source file, largest first."""
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for (filename, _line, _name), (_cc, nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = short_path(filename)
        totals[key] += tt
        calls[key] += nc
    return sorted(((k, v, calls[k]) for k, v in totals.items()), key=lambda r: -r[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", type=Path, help="profile this FCS file instead of a simulated one")
    p.add_argument("--events", type=parse_size, default=500_000, help="simulated events (default 500k)")
    p.add_argument("--calls", type=int, default=3, help="profiled gate_tube calls (default 3)")
    p.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)
    for key, value in SINGLE_THREAD_ENV.items():  # one core, like the benchmark (before numpy loads BLAS)
        os.environ.setdefault(key, value)

    from bat_analysis.gating.templates import load_template
    from bat_analysis.gating.tube import gate_tube
    from bat_analysis.records import Tube

    template = load_template("bat_ccr3_cd63")
    with tempfile.TemporaryDirectory(prefix="bat_profile_") as tmp:
        work = Path(tmp)
        path = args.file or build_single(work, args.events, args.seed)
        warm = build_single(work, WARMUP_EVENTS, args.seed)
        gate_tube(warm, Tube(file=warm.name, patient="P01", condition="negative_control"), template)
        tube = Tube(file=path.name, patient="P01", condition="negative_control")

        t0 = time.perf_counter()
        result = gate_tube(path, tube, template)
        plain = time.perf_counter() - t0
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls):
            result = gate_tube(path, tube, template)
        profiler.disable()

    print(f"gate_tube on {path.name}: {result.n_events} events, {result.n_basophils} basophils, "
          f"error={result.error!r}, flags={[f.code for f in result.flags]}")
    print(f"one unprofiled call: {plain:.4f} s; {args.calls} profiled calls follow (times are totals)\n")
    stats = pstats.Stats(profiler)
    for order, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(order).print_stats(args.top)
        body = buf.getvalue()
        start = body.find("   ncalls")
        print(f"== top {args.top} functions by {title} ==")
        print(body[start:] if start >= 0 else body)
    print(f"== own time per source file (top {args.top}) ==")
    total = sum(t for _, t, _ in per_file_totals(stats))
    for name, tt, nc in per_file_totals(stats)[: args.top]:
        print(f"{tt:9.4f} s {100 * tt / total:5.1f}% {nc:9d} calls  {name}")
    print(f"\ncommand: PYTHONPATH=. python benchmarks/profile_tube.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
