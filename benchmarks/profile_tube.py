"""Profile the per-tube path (``gate_tube``) on one simulated 500k-event file.

Prints, first, direct CPU timings (no profiler) of the whole call and of its fixed costs (reading the
file, hashing it), and the inclusive CPU time of each stage (estimators, density images, binning,
compensation, reading, hashing: ``--stages``) measured by wrapping those functions; then cProfile's top
functions by own and cumulative time, and the time of each project function including the library code it
calls, per function and per source file. cProfile adds a cost per
Python call, so functions making many small calls look dearer than they are: trust the direct timings and,
when pyinstrument is installed, its statistical profile (``--pyinstrument``), which does not have that bias.

Run from the repository root:
    PYTHONPATH=. python benchmarks/profile_tube.py                 # simulated 500k events, 3 calls
    PYTHONPATH=. python benchmarks/profile_tube.py --events 2M --calls 1 --top 40
    PYTHONPATH=. python benchmarks/profile_tube.py --file my.fcs   # profile an existing file
    PYTHONPATH=. python benchmarks/profile_tube.py --events 50k --calls 20   # the usual BAT acquisition
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# one core, like the benchmark's workers: set before numpy (imported by bench_gating) loads its BLAS
for _key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_key, "1")

from bench_gating import WARMUP_EVENTS, build_single, parse_size  # noqa: E402

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


def is_builtin(filename: str) -> bool:
    return filename == "~" or filename.startswith("<")


def per_file_totals(stats: pstats.Stats) -> list[tuple[str, float, int]]:
    """Own time (seconds) and call count summed per source file, largest first.

    Built-in functions (numpy's C methods, FlowUtils' C code, hashlib...) have no file: their time is
    charged to the files of their callers, in proportion to the time each caller spent in them, so that
    ``searchsorted`` called from ``estimators.py`` counts against ``estimators.py``.
    """
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for (filename, _line, name), (_cc, nc, tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if is_builtin(filename) and callers:
            spent = sum(c[2] for c in callers.values()) or 1.0
            for (cfile, _cl, _cn), c in callers.items():
                key = "(built-in)" if is_builtin(cfile) else short_path(cfile)
                totals[key] += tt * c[2] / spent
                calls[key] += c[1]
            continue
        key = "(built-in)" if is_builtin(filename) else short_path(filename)
        totals[key] += tt
        calls[key] += nc
    return sorted(((k, v, calls[k]) for k, v in totals.items()), key=lambda r: -r[1])


def is_project(filename: str) -> bool:
    return filename.startswith(str(REPO / "bat_analysis"))


def project_inclusive(stats: pstats.Stats) -> list[tuple[str, float, int]]:
    """Per project function: its cumulative time minus the time of the project functions it calls.

    That is the time a function of ``bat_analysis`` spends in its own code plus the library code it
    calls (numpy, FlowUtils, scikit-image, hashlib...), which names the project line that is expensive.
    """
    raw = stats.stats  # type: ignore[attr-defined]
    out = []
    for func, (_cc, nc, _tt, ct, _callers) in raw.items():
        if not is_project(func[0]):
            continue
        sub = 0.0
        for g, (_gcc, _gnc, _gtt, _gct, gcallers) in raw.items():
            if g != func and is_project(g[0]) and func in gcallers:
                sub += gcallers[func][3]
        label = f"{short_path(func[0])}:{func[1]}({func[2]})"
        out.append((label, max(0.0, ct - sub), nc))
    return sorted(out, key=lambda r: -r[1])


def direct_timings(path: Path, tube: Any, template: Any, repeats: int = 7) -> dict[str, float]:
    """CPU milliseconds (median) of gate_tube and of the fixed costs it contains, measured without a profiler."""
    import statistics

    from bat_analysis.gating.tube import file_sha256, gate_tube
    from bat_analysis.io.fcs import read_fcs, read_fcs_sha256

    def cpu_ms(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            c0 = time.process_time()
            fn()
            times.append(time.process_time() - c0)
        return 1000 * statistics.median(times)

    return {"gate_tube (whole call)": cpu_ms(lambda: gate_tube(path, tube, template)),
            "read_fcs_sha256 (inside gate_tube: read and hashed in one pass)": cpu_ms(lambda: read_fcs_sha256(path)),
            "read_fcs (alone, for reference)": cpu_ms(lambda: read_fcs(path)),
            "file_sha256 (alone, for reference)": cpu_ms(lambda: file_sha256(path))}


#: (module, function) timed by ``--stages``: the estimators, the density and binning helpers they share,
#: compensation, reading and hashing (``sha256_reading``: the DATA segment read while the file is hashed;
#: ``_scale``: channel scaling with the finiteness check); inclusive times (a stage contains those it calls)
STAGES = (
    ("bat_analysis.io.fcs", "read_fcs_sha256"), ("bat_analysis._checksums", "sha256_reading"),
    ("bat_analysis.io.fcs", "_scale"), ("bat_analysis.gating.tube", "resolve_channels"),
    ("bat_analysis.gating.tube", "_gate_input"), ("bat_analysis.gating.tube", "_gated"),
    ("bat_analysis.gating.tube", "_density_for"), ("bat_analysis.gating.compensation", "compensate"),
    ("bat_analysis.gating.estimators", "estimate_flow_rate"), ("bat_analysis.gating.estimators", "estimate_margin"),
    ("bat_analysis.gating.estimators", "estimate_cells"), ("bat_analysis.gating.estimators", "estimate_singlets"),
    ("bat_analysis.gating.estimators", "estimate_cluster"), ("bat_analysis.gating.estimators", "_cluster_density"),
    ("bat_analysis.gating.estimators", "_split_point"), ("bat_analysis.gating.estimators", "_cluster_populations"),
    ("bat_analysis.gating.estimators", "_cluster_region"), ("bat_analysis.gating.estimators", "_outline"),
    ("bat_analysis.gating.estimators", "density_image"), ("bat_analysis.gating.estimators", "scale_limits"),
    ("bat_analysis.gating.estimators", "bin_index"), ("bat_analysis.gating.estimators", "to_scale"),
    ("bat_analysis.gating.estimators", "polygon_mask"),
)


def stage_timings(path: Path, tube: Any, template: Any, repeats: int) -> tuple[float, list[tuple[str, float]]]:
    """CPU ms per gate_tube call (mean of ``repeats``) and, per stage of :data:`STAGES`, its inclusive CPU ms
    per call, measured by wrapping each function (a few dozen wrapped calls per tube: no profiler bias).

    Estimators are wrapped in the registry (``ESTIMATORS``) as well as in their module; gate_tube reads and
    hashes the file in one pass (``read_fcs_sha256``, looked up in its module at each call).
    """
    import dataclasses
    import importlib

    from bat_analysis.gating import estimators as est
    from bat_analysis.gating.tube import gate_tube

    spent: dict[str, float] = defaultdict(float)
    restore: list[tuple[Any, str, Any]] = []

    def timed(label: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            c0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - c0
        return wrapper

    for module_name, name in STAGES:
        module = importlib.import_module(module_name)
        original = getattr(module, name)
        restore.append((module, name, original))
        setattr(module, name, timed(f"{module_name.rsplit('.', 1)[1]}.{name}", original))
    saved_registry = dict(est.ESTIMATORS)
    for key, spec in saved_registry.items():
        fn = getattr(est, spec.function.__name__, None)
        if fn is not None and fn is not spec.function:
            est.ESTIMATORS[key] = dataclasses.replace(spec, function=fn)
    try:
        gate_tube(path, tube, template)
        spent.clear()
        c0 = time.process_time()
        for _ in range(repeats):
            gate_tube(path, tube, template)
        total = (time.process_time() - c0) / repeats
    finally:
        for module, name, original in restore:
            setattr(module, name, original)
        est.ESTIMATORS.clear()
        est.ESTIMATORS.update(saved_registry)
    rows = sorted(((label, t / repeats) for label, t in spent.items()), key=lambda r: -r[1])
    return 1000 * total, [(label, 1000 * t) for label, t in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", type=Path, help="profile this FCS file instead of a simulated one")
    p.add_argument("--events", type=parse_size, default=500_000, help="simulated events (default 500k)")
    p.add_argument("--calls", type=int, default=3, help="profiled gate_tube calls (default 3)")
    p.add_argument("--top", type=int, default=25, help="rows per table (default 25)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--stages", type=int, default=20, metavar="N",
                   help="calls timed stage by stage, without a profiler (default 20; 0: skip)")
    p.add_argument("--pyinstrument", action="store_true",
                   help="also print pyinstrument's statistical call tree (needs pyinstrument installed)")
    args = p.parse_args(argv)

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

        direct = direct_timings(path, tube, template)
        stages = stage_timings(path, tube, template, args.stages) if args.stages > 0 else None
        result = gate_tube(path, tube, template)
        profiler = cProfile.Profile(time.process_time)  # CPU time: least disturbed by a shared machine
        profiler.enable()
        for _ in range(args.calls):
            result = gate_tube(path, tube, template)
        profiler.disable()
        tree = None
        if args.pyinstrument:
            from pyinstrument import Profiler

            sampler = Profiler(interval=0.0005)
            sampler.start()
            for _ in range(args.calls):
                gate_tube(path, tube, template)
            sampler.stop()
            tree = sampler.output_text(unicode=False, color=False, show_all=False)

    print(f"gate_tube on {path.name}: {result.n_events} events, {result.n_basophils} basophils, "
          f"error={result.error!r}, flags={[f.code for f in result.flags]}")
    print("== direct CPU timings, no profiler (median of 7 calls) ==")
    for name, ms in direct.items():
        print(f"{ms:9.2f} ms  {name}")
    if stages is not None:
        total_ms, rows = stages
        print(f"\n== stages, no profiler: inclusive CPU ms per call (mean of {args.stages} calls; "
              f"gate_tube {total_ms:.2f} ms) ==")
        for label, ms in rows:
            print(f"{ms:9.2f} ms {100 * ms / total_ms:5.1f}%  {label}")
    print(f"\n{args.calls} profiled calls follow (CPU seconds, totals over the calls)\n")
    stats = pstats.Stats(profiler)
    for order, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(order).print_stats(args.top)
        body = buf.getvalue()
        start = body.find("   ncalls")
        print(f"== top {args.top} functions by {title} ==")
        print(body[start:] if start >= 0 else body)
    print(f"== own time per source file, built-ins charged to their callers (top {args.top}) ==")
    total = sum(t for _, t, _ in per_file_totals(stats))
    for name, tt, nc in per_file_totals(stats)[: args.top]:
        print(f"{tt:9.4f} s {100 * tt / total:5.1f}% {nc:9d} calls  {name}")
    print(f"\n== project functions: own code + the library code they call, excluding project callees "
          f"(top {args.top}) ==")
    rows = project_inclusive(stats)
    by_file: dict[str, float] = defaultdict(float)
    for label, t, _ in rows:
        by_file[label.split(":", 1)[0]] += t
    for label, t, nc in rows[: args.top]:
        print(f"{t:9.4f} s {t / args.calls * 1000:8.1f} ms/call {nc:7d} calls  {label}")
    print("\n== the same, per project file ==")
    for name, t in sorted(by_file.items(), key=lambda r: -r[1]):
        print(f"{t:9.4f} s {t / args.calls * 1000:8.1f} ms/call  {name}")
    if tree is not None:
        print("\n== pyinstrument (statistical, wall clock) ==")
        print(tree)
    print(f"\ncommand: PYTHONPATH=. python benchmarks/profile_tube.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
