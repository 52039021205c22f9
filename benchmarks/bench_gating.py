"""Per-tube gating and plate-run benchmark (issues 6 and 14), in one invocation.

Builds its inputs with the project's simulator in a temporary folder (FCS 3.1, float32, 10 channels:
single files of 50k / 500k / 2M events, a 20M-event file for memory, and a 96-tube plate of 8 patients x
12 tubes x 100k events), then measures, each measurement in a fresh Python process:

* the floor: ``numpy.fromfile`` of the DATA segment (offsets parsed beforehand);
* FlowKit's FIXED 4-gate strategy end to end, with FlowKit's own API: ``flowkit.Sample`` + $SPILLOVER
  compensation (``compensation_ref="FCS"``) + logicle + cells polygon -> singlets polygon -> basophil
  polygon -> CD63 range, and the counts;
* our per-tube path ``bat_analysis.gating.tube.gate_tube`` (read, compensate, transform, all automated gate
  estimation and application, counts, basophil marker values), with the file hashed as it is read; and
  the same with the checksum given (``gate_tube, sha``), as ``bat run``'s workers call it once the batch has
  hashed its inputs (for information: the targets count the checksum);
* the plate through ``bat run`` with ``--workers 1`` and ``--workers 2`` and through a Dask ``LocalCluster``
  (``--scheduler``): the gating part and the full run (tables, reports, review gallery).

Single-tube measurements run one warm-up call (on the smallest file, so that lazy imports and caches are
paid before timing), then reset the process's peak-RSS mark (``/proc/self/clear_refs``), read the baseline
RSS, and time ``--repeats`` calls; the peak RSS above that baseline is ``VmHWM - baseline``. Every worker
is limited to one BLAS/OpenMP thread (one core). Ratios, not absolute times, are the targets: the machine
is shared and noisy.

Targets: issue 14's per tube (gate_tube >= 3x FlowKit fixed's events/s at 50k events, >= 10x at 2M; CPU
time, one core: ``--sizes 50k,2M --no-huge --no-plate`` measures just those) and issue 6's older ones.

Run from the repository root:
    PYTHONPATH=. python benchmarks/bench_gating.py            # everything (about 20 minutes on 2 cores)
    PYTHONPATH=. python benchmarks/bench_gating.py --quick    # 50k/500k, 3 repeats, no 20M file
    PYTHONPATH=. python benchmarks/bench_gating.py --sizes 500k,2M --no-plate --no-huge
    nice env PYTHONPATH=. python benchmarks/bench_gating.py --sizes 50k,500k,2M --no-huge --no-plate  # per tube
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# FlowKit's fixed 4-gate strategy, shared with bench_plate.py (benchmarks/, the script's folder, is on sys.path)
from flowkit_fixed import flowkit_runner
from machine import cpu_name, source_commit

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "
N_CHANNELS = 10
PLATE_PATIENTS = 8
PLATE_TUBES_PER_PATIENT = 12
PLATE_EVENTS = 100_000
HUGE_EVENTS = 20_000_000
WARMUP_EVENTS = 20_000
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------------------------
# sizes, statistics, process memory
# ----------------------------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """``"50k"`` -> 50000, ``"2M"`` -> 2000000, ``"1500"`` -> 1500."""
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        mult, t = 1_000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a number such as 50k, 500k or 2M") from None
    if value < 1000:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected at least 1000 events")
    return int(value)


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def proc_status_kib(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key} field")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class Measurement:
    """Repeated wall times of one thing, with optional memory figures (bytes) and free-form info."""

    name: str
    n_events: int | None
    times: list[float]
    cpu_times: list[float] = field(default_factory=list)
    peak_rss_above_baseline: int | None = None
    baseline_rss: int | None = None
    matrix_bytes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_times) if self.cpu_times else None

    @property
    def ms_per_million(self) -> float | None:
        if not self.n_events:
            return None
        return 1000.0 * self.median / (self.n_events / 1e6)

    @property
    def memory_ratio(self) -> float | None:
        if self.peak_rss_above_baseline is None or not self.matrix_bytes:
            return None
        return self.peak_rss_above_baseline / self.matrix_bytes


# ----------------------------------------------------------------------------------------------------------
# the floor: numpy.fromfile of the DATA segment
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSegment:
    offset: int
    n_events: int
    n_params: int
    dtype: str


def parse_text_segment(raw: bytes) -> dict[str, str]:
    """Keywords of an FCS TEXT segment (first byte is the delimiter; a doubled delimiter is literal)."""
    delim = raw[:1].decode("latin-1")
    text = raw[1:].decode("latin-1")
    fields: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == delim:
            if i + 1 < len(text) and text[i + 1] == delim:
                current.append(delim)
                i += 2
                continue
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if current:
        fields.append("".join(current))
    return {fields[k].upper(): fields[k + 1] for k in range(0, len(fields) - 1, 2)}


def data_segment(path: Path) -> DataSegment:
    """Offset, shape and numpy dtype of the DATA segment of a float/double FCS 3.x file."""
    with open(path, "rb") as fh:
        header = fh.read(58)
        text_start, text_end = int(header[10:18]), int(header[18:26])
        data_start = int(header[26:34].strip() or 0)
        fh.seek(text_start)
        kw = parse_text_segment(fh.read(text_end - text_start + 1))
    if data_start == 0:
        data_start = int(kw["$BEGINDATA"])
    kind = {"F": "f4", "D": "f8"}.get(kw["$DATATYPE"])
    if kind is None:
        raise ValueError(f"{path}: $DATATYPE {kw['$DATATYPE']!r}; the floor needs float (F) or double (D) data")
    order = "<" if kw["$BYTEORD"].startswith("1") else ">"
    return DataSegment(data_start, int(kw["$TOT"]), int(kw["$PAR"]), order + kind)


def parse_text_segment_of(path: Path) -> dict[str, str]:
    """All TEXT keywords of an FCS file (the simulator's truth counts travel as keywords)."""
    with open(path, "rb") as fh:
        header = fh.read(58)
        text_start, text_end = int(header[10:18]), int(header[18:26])
        fh.seek(text_start)
        return parse_text_segment(fh.read(text_end - text_start + 1))


def floor_runner() -> Callable[[Path], dict[str, Any]]:
    segments: dict[Path, DataSegment] = {}

    def run(path: Path) -> dict[str, Any]:
        seg = segments.get(path)
        if seg is None:  # parsed on the first call for a file (~50 us; the median discounts it)
            seg = segments[path] = data_segment(path)
        events = np.fromfile(path, dtype=seg.dtype, count=seg.n_events * seg.n_params,
                             offset=seg.offset).reshape(seg.n_events, seg.n_params)
        return {"n_events": int(events.shape[0]), "checksum": float(events[:, 0].sum(dtype=np.float64))}

    return run


# ----------------------------------------------------------------------------------------------------------
# our per-tube path
# ----------------------------------------------------------------------------------------------------------
def ours_runner() -> Callable[[Path], dict[str, Any]]:
    from bat_analysis.gating.templates import load_template
    from bat_analysis.gating.tube import gate_tube
    from bat_analysis.records import Tube

    template = load_template("bat_ccr3_cd63")

    def run(path: Path) -> dict[str, Any]:
        result = gate_tube(path, Tube(file=path.name, patient="P01", condition="negative_control"), template)
        return {"n_events": int(result.n_events), "n_basophils": int(result.n_basophils),
                "error": result.error, "flags": [f.code for f in result.flags]}

    return run


def ours_given_runner() -> Callable[[Path], dict[str, Any]]:
    """``gate_tube`` as ``bat run``'s workers call it: the batch hashed each file when it checked its inputs
    and passes the checksum on (computed here by ``prepare``, before the timed calls), so the tube is read
    without being hashed again."""
    from bat_analysis._checksums import file_sha256
    from bat_analysis.gating.templates import load_template
    from bat_analysis.gating.tube import gate_tube
    from bat_analysis.records import Tube

    template = load_template("bat_ccr3_cd63")
    known: dict[Path, str] = {}

    def run(path: Path) -> dict[str, Any]:
        sha = known.get(path) or file_sha256(path)
        result = gate_tube(path, Tube(file=path.name, patient="P01", condition="negative_control"), template,
                           sha256=sha)
        return {"n_events": int(result.n_events), "n_basophils": int(result.n_basophils),
                "error": result.error, "flags": [f.code for f in result.flags]}

    def prepare(path: Path) -> None:
        known[path] = file_sha256(path)

    run.prepare = prepare  # type: ignore[attr-defined]
    return run


def flowio_runner() -> Callable[[Path], dict[str, Any]]:
    import flowio

    def run(path: Path) -> dict[str, Any]:
        events = flowio.FlowData(str(path)).as_array(preprocess=True)
        return {"n_events": int(events.shape[0])}

    return run


def read_fcs_runner() -> Callable[[Path], dict[str, Any]]:
    from bat_analysis.io.fcs import read_fcs

    def run(path: Path) -> dict[str, Any]:
        sample = read_fcs(path)
        return {"n_events": int(sample.n_events)}

    return run


RUNNERS: dict[str, Callable[[], Callable[[Path], dict[str, Any]]]] = {
    "floor": floor_runner, "flowio": flowio_runner, "read_fcs": read_fcs_runner,
    "flowkit": flowkit_runner, "ours": ours_runner, "ours_given": ours_given_runner,
}
LABELS = {"floor": "numpy.fromfile", "flowio": "FlowIO read", "read_fcs": "read_fcs",
          "flowkit": "FlowKit fixed", "ours": "gate_tube", "ours_given": "gate_tube, sha"}


def measure_in_this_process(kind: str, path: Path, warmup: Path, repeats: int) -> dict[str, Any]:
    """Body of a fresh worker process: warm up, reset the peak-RSS mark, time ``repeats`` calls."""
    run = RUNNERS[kind]()
    run(warmup)
    if hasattr(run, "prepare"):  # what the caller has done before (the batch's checksum), outside the timing
        run.prepare(path)
    gc.collect()
    peak_reset = reset_peak_rss()
    baseline = proc_status_kib("VmRSS") * 1024
    times: list[float] = []
    cpu_times: list[float] = []
    info: dict[str, Any] = {}
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        info = run(path)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        gc.collect()
    peak = proc_status_kib("VmHWM") * 1024
    return {"times": times, "cpu_times": cpu_times, "baseline_rss": baseline, "peak_rss_above_baseline": peak - baseline,
            "peak_reset": peak_reset, "info": info}


def measure(kind: str, path: Path, warmup: Path, repeats: int, n_events: int) -> Measurement:
    """Run one measurement in a fresh interpreter and collect its JSON result."""
    env = {**os.environ, **SINGLE_THREAD_ENV, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_measure", kind, "--_file", str(path),
           "--_warmup", str(warmup), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {kind} on {path.name} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    data = json.loads(lines[-1][len(RESULT_TAG):])
    if not data["peak_reset"]:
        data["info"]["memory_note"] = "peak-RSS mark could not be reset; peak includes imports"
    return Measurement(name=kind, n_events=n_events, times=data["times"], cpu_times=data["cpu_times"],
                       peak_rss_above_baseline=data["peak_rss_above_baseline"],
                       baseline_rss=data["baseline_rss"], matrix_bytes=n_events * N_CHANNELS * 4,
                       info=data["info"])


# ----------------------------------------------------------------------------------------------------------
# report: tables and targets
# ----------------------------------------------------------------------------------------------------------
def fmt_s(x: float) -> str:
    return f"{x:.4f}" if x < 1 else f"{x:.2f}"


def fmt_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def count_note(n: int, ms: dict[str, Measurement], truth: dict[str, str]) -> str:
    """Sanity line: basophils and CD63+ found by each method against the simulator's truth."""
    parts = [f"truth {truth.get('TRUE_BASOPHILS', '?')} basophils / {truth.get('TRUE_ACTIVATED', '?')} CD63+"]
    fk = ms.get("flowkit")
    if fk is not None:
        c = fk.info["counts"]
        parts.append(f"FlowKit fixed {c['basophils']} / {c['cd63_pos']}")
    ours = ms.get("ours")
    if ours is not None:
        err = f", error: {ours.info['error']}" if ours.info.get("error") else ""
        flags = ",".join(ours.info.get("flags") or []) or "no flags"
        parts.append(f"gate_tube {ours.info['n_basophils']} basophils ({flags}{err})")
    return f"{size_label(n)} counts: " + "; ".join(parts)


def ratio_text(a: Measurement, b: Measurement, width: int) -> str:
    """``a / b`` on wall time and on CPU time, as ``wall|cpu``."""
    wall = a.median / b.median
    cpu = (a.cpu_median / b.cpu_median) if a.cpu_median and b.cpu_median else None
    text = f"{wall:.1f}|{cpu:.1f}" if cpu is not None else f"{wall:.1f}"
    return f"{text:>{width}}"


def tube_table(rows: dict[int, dict[str, Measurement]], repeats: int) -> list[str]:
    head = (f"{'events':>7} {'method':<15} {'median s':>9} {'min-max s':>15} {'cpu s':>7} {'ms/M ev':>8} "
            f"{'xFlowKit':>9} {'xfloor':>10} {'peak MB':>8} {'xmatrix':>7}")
    out = [f"Per tube, one core: wall time median of {repeats} runs (min-max), CPU time median; ratios as "
           f"wall|cpu; peak RSS above the post-import baseline",
           head, "-" * len(head)]
    for n in sorted(rows):
        ms = rows[n]
        fk, floor = ms.get("flowkit"), ms.get("floor")
        for kind in LABELS:
            m = ms.get(kind)
            if m is None:
                continue
            speed = ratio_text(fk, m, 9) if fk is not None and kind in ("ours", "ours_given") else f"{'':>9}"
            slow = ratio_text(m, floor, 10) if floor is not None and kind != "floor" else f"{'':>10}"
            ratio = f"{m.memory_ratio:7.1f}" if m.memory_ratio is not None else f"{'-':>7}"
            rng = f"{fmt_s(min(m.times))}-{fmt_s(max(m.times))}"
            cpu = fmt_s(m.cpu_median) if m.cpu_median is not None else "-"
            out.append(f"{size_label(n):>7} {LABELS[kind]:<15} {fmt_s(m.median):>9} {rng:>15} {cpu:>7} "
                       f"{m.ms_per_million:8.1f} {speed} {slow} "
                       f"{fmt_mb(m.peak_rss_above_baseline):>8} {ratio}")
    return out


def plate_table(plate: dict[str, Measurement], repeats: int, n_patients: int) -> list[str]:
    head = (f"{'configuration':<30} {'part':<7} {'median s':>9} {'min-max s':>13} {'cpu s':>7} "
            f"{'s/tube':>7} {'x workers 1':>11} {'x pool':>9}")
    n_tubes = n_patients * PLATE_TUBES_PER_PATIENT
    out = [f"Plate: {n_patients} patients x {PLATE_TUBES_PER_PATIENT} tubes x {size_label(PLATE_EVENTS)} "
           f"events; wall time median of {repeats} runs (min-max), CPU time (all processes) median; "
           f"ratios as wall|cpu", head, "-" * len(head)]
    labels = {"w1": "bat run --workers 1", "w2": "bat run --workers 2",
              "dask": "bat run --scheduler (Dask 2x1)"}
    for cfg in ("w1", "w2", "dask"):
        for part in ("gating", "full"):
            m = plate.get(f"{cfg}_{part}")
            if m is None:
                continue
            base = plate.get(f"w1_{part}")
            pool = plate.get(f"w2_{part}")
            sp = ratio_text(base, m, 11) if base is not None and cfg != "w1" else f"{'':>11}"
            rel = ratio_text(m, pool, 9) if pool is not None and cfg == "dask" else f"{'':>9}"
            rng = f"{fmt_s(min(m.times))}-{fmt_s(max(m.times))}"
            cpu = f"{m.cpu_median:7.1f}" if m.cpu_median is not None else f"{'-':>7}"
            out.append(f"{labels[cfg]:<30} {part:<7} {fmt_s(m.median):>9} {rng:>13} {cpu} "
                       f"{m.median / n_tubes:7.3f} {sp} {rel}")
        full = plate.get(f"{cfg}_full")
        if full is not None and full.info.get("cold_first_run_s") is not None:
            out.append(f"{'':<30} (first run on the fresh cluster: {full.info['cold_first_run_s']:.1f} s, "
                       f"CPU {full.info['cold_first_run_cpu_s']:.1f} s; not in the median)")
    return out


#: issue 14, per tube on one core: gate_tube's events/s at least this many times FlowKit's fixed strategy's
#: (CPU-time medians, measured in the same invocation)
TUBE_TARGETS = {50_000: 3.0, 2_000_000: 10.0}


def mark(ok: bool) -> str:
    return "MET " if ok else "MISS"


def tube_targets(rows: dict[int, dict[str, Measurement]]) -> list[str]:
    """Issue 14's per-tube targets: gate_tube >= 3x FlowKit's events/s at 50k events, >= 10x at 2M."""
    out = ["Per-tube targets (issue 14), one core: gate_tube's events/s over FlowKit fixed's (CPU-time medians)"]
    for n, target in TUBE_TARGETS.items():
        ms = rows.get(n, {})
        fk, ours = ms.get("flowkit"), ms.get("ours")
        if fk is None or ours is None or not fk.cpu_median or not ours.cpu_median:
            out.append(f"  {size_label(n):>5}: not measured (needs --sizes with {size_label(n)} and FlowKit)")
            continue
        ratio = fk.cpu_median / ours.cpu_median
        out.append(f"  {size_label(n):>5}: {ratio:5.1f}x (>= {target:g})  [{mark(ratio >= target)}]   "
                   f"gate_tube {1000 * ours.cpu_median:7.1f} ms, FlowKit fixed {1000 * fk.cpu_median:7.1f} ms CPU "
                   f"(wall: {fk.median / ours.median:.1f}x)")
        given = ms.get("ours_given")
        if given is not None and given.cpu_median:
            out.append(f"  {'':>5}  {fk.cpu_median / given.cpu_median:5.1f}x with the checksum given, as bat run's "
                       f"workers call it ({1000 * given.cpu_median:.1f} ms; the batch hashes each file once when "
                       f"it checks its inputs): for information, the target counts the checksum")
    return out


def targets(rows: dict[int, dict[str, Measurement]], huge: Measurement | None,
            plate: dict[str, Measurement]) -> list[str]:
    out = ["Targets (issue 6)"]

    for n in sorted(rows):
        ms = rows[n]
        if {"flowkit", "ours", "floor"} <= ms.keys():
            fk, ours, floor = ms["flowkit"], ms["ours"], ms["floor"]
            sp_w, fl_w = fk.median / ours.median, ours.median / floor.median
            sp_c = fk.cpu_median / ours.cpu_median if fk.cpu_median and ours.cpu_median else sp_w
            fl_c = ours.cpu_median / floor.cpu_median if ours.cpu_median and floor.cpu_median else fl_w
            out.append(f"  1. {size_label(n):>5}: {sp_c:6.1f}x FlowKit's events/s (>= 10)  [{mark(sp_c >= 10)}]   "
                       f"{fl_c:6.1f}x the floor's time (<= 10)  [{mark(fl_c <= 10)}]   "
                       f"(CPU-time medians; wall: {sp_w:.1f}x, {fl_w:.1f}x)")
    mem = [(n, ms["ours"]) for n, ms in sorted(rows.items()) if "ours" in ms]
    if huge is not None:
        mem.append((huge.n_events or 0, huge))
    for n, m in mem:
        if m.memory_ratio is not None:
            fk = rows.get(n, {}).get("flowkit")
            fk_txt = f"; FlowKit {fk.memory_ratio:.1f}x" if fk is not None and fk.memory_ratio is not None else ""
            out.append(f"  3. {size_label(n):>5}: peak {m.memory_ratio:.1f}x the event matrix (<= 4)  "
                       f"[{mark(m.memory_ratio <= 4)}]{fk_txt}")
    per_m = [(n, m) for n, m in mem if m.cpu_median]
    if per_m:
        cpu = [(n, 1000 * m.cpu_median / (n / 1e6)) for n, m in per_m]  # type: ignore[operator]
        txt = ", ".join(f"{size_label(n)} {v:.0f}" for n, v in cpu)
        wall = ", ".join(f"{size_label(n)} {m.ms_per_million:.0f}" for n, m in per_m)
        spread = max(v for _, v in cpu) / min(v for _, v in cpu)
        out.append(f"  4. CPU ms per million events (gate_tube): {txt}  (largest/smallest {spread:.2f}); "
                   f"wall: {wall}")
    if "w2_full" in plate:
        m = plate["w2_full"]
        cpu = f"; CPU {m.cpu_median:.1f} s, i.e. >= {m.cpu_median / 2:.1f} s on 2 idle cores" if m.cpu_median else ""
        out.append(f"  2. full plate run, --workers 2: {m.median:.1f} s wall (<= 20)  [{mark(m.median <= 20)}]{cpu}")
    if "w1_gating" in plate and "w2_gating" in plate:
        w1, w2 = plate["w1_gating"], plate["w2_gating"]
        s = w1.median / w2.median
        extra = ""
        if w1.cpu_median and w2.cpu_median:
            extra = (f"; CPU w2/w1 {w2.cpu_median / w1.cpu_median:.2f} (1.00 = no parallel overhead, "
                     f"speed-up on 2 idle cores <= {2 * w1.cpu_median / w2.cpu_median:.2f})")
        out.append(f"  2. gating speed-up 1 -> 2 workers: {s:.2f}x wall (near-linear: >= 1.8)  "
                   f"[{mark(s >= 1.8)}]{extra}")
    for part in ("gating", "full"):
        if f"dask_{part}" in plate and f"w2_{part}" in plate:
            d, w2 = plate[f"dask_{part}"], plate[f"w2_{part}"]
            r = d.median / w2.median
            extra = f"; CPU {d.cpu_median / w2.cpu_median:.2f}x" if d.cpu_median and w2.cpu_median else ""
            out.append(f"  5. Dask LocalCluster / local pool ({part}): {r:.2f}x wall (<= 1.5)  "
                       f"[{mark(r <= 1.5)}]{extra}")
    return out


def machine_lines() -> list[str]:
    cpu, commit = cpu_name(), source_commit(REPO)
    from importlib.metadata import version
    return [f"source: {REPO} ({commit})",
            f"date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}",
            f"machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            f"python {platform.python_version()}, numpy {np.__version__}, flowkit {version('flowkit')}, "
            f"flowio {version('flowio')}, flowutils {version('flowutils')}"]


# ----------------------------------------------------------------------------------------------------------
# the plate: gating part (the map stage of the pipeline) and the full `bat run`
# ----------------------------------------------------------------------------------------------------------
def rusage_cpu(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or its reaped descendants (RUSAGE_CHILDREN)."""
    import resource

    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def cluster_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by the Dask cluster's processes (they are not children of ``bat run``)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def plate_gating_in_this_process(data_dir: Path, layout: Path, workers: int, scheduler: str | None) -> dict:
    """Body of a fresh process: build the plate's tasks as ``bat run`` does, time the executor to the last tube."""
    import resource

    from bat_analysis import pipeline
    from bat_analysis.gating.templates import load_template
    from bat_analysis.io.layout import read_layout

    template = load_template("bat_ccr3_cd63")
    tubes = read_layout(layout, data_dir)
    tasks = [pipeline.GateTask(path=str(pipeline.resolve_file(data_dir, t)), tube=t, template=template)
             for t in tubes]
    c0 = rusage_cpu(resource.RUSAGE_SELF) + rusage_cpu(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    executor = pipeline.run_dask(tasks, scheduler) if scheduler else pipeline.run_local(tasks, workers)
    results = [r for _, r in executor]  # consumes the generator: the pool is shut down and its workers reaped
    elapsed = time.perf_counter() - t0
    cpu = rusage_cpu(resource.RUSAGE_SELF) + rusage_cpu(resource.RUSAGE_CHILDREN) - c0
    return {"times": [elapsed], "cpu": cpu, "n_tubes": len(results),
            "n_failed": sum(1 for r in results if not r.ok),
            "n_basophils_median": float(np.median([r.n_basophils for r in results]))}


def plate_gating(data_dir: Path, layout: Path, workers: int, scheduler: str | None,
                 cluster_pids: list[int]) -> tuple[float, float, dict]:
    """(wall s, CPU s, info) of the gating part, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_plate_gating", str(data_dir), "--_layout",
           str(layout), "--_workers", str(workers)] + (["--_scheduler", scheduler] if scheduler else [])
    k0 = cluster_cpu(cluster_pids)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    k1 = cluster_cpu(cluster_pids)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"plate gating (workers {workers}, scheduler {scheduler}) failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(lines[-1][len(RESULT_TAG):])
    info = {k: v for k, v in data.items() if k not in ("times", "cpu")}
    return data["times"][0], data["cpu"] + (k1 - k0), info


def bat_run_command(data_dir: Path, layout: Path, out: Path, workers: int, scheduler: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "bat_analysis", "run", str(data_dir),
           "--layout", str(layout), "--out", str(out), "--quiet"]
    return cmd + (["--scheduler", scheduler] if scheduler else ["--workers", str(workers)])


def plate_full(data_dir: Path, layout: Path, out: Path, workers: int, scheduler: str | None,
               cluster_pids: list[int]) -> tuple[float, float]:
    """(wall s, CPU s) of one complete ``bat run`` (fresh interpreter, empty OUT) incl. tables and reports.

    CPU counts ``bat run`` and every process it started and reaped, plus the Dask cluster's processes.
    """
    import resource

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if out.exists():
        shutil.rmtree(out)
    c0, k0 = rusage_cpu(resource.RUSAGE_CHILDREN), cluster_cpu(cluster_pids)
    t0 = time.perf_counter()
    proc = subprocess.run(bat_run_command(data_dir, layout, out, workers, scheduler), env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    cpu = rusage_cpu(resource.RUSAGE_CHILDREN) - c0 + cluster_cpu(cluster_pids) - k0
    if proc.returncode != 0:
        raise RuntimeError(f"bat run (workers {workers}, scheduler {scheduler}) failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    for name in ("tubes.csv", "patients.csv"):
        if not (out / name).is_file():
            raise RuntimeError(f"bat run finished without writing {out / name}")
    return elapsed, cpu


def measure_plate(data_dir: Path, layout: Path, scratch: Path, repeats: int, dask: bool, n_patients: int,
                  log: Callable[[str], None]) -> dict[str, Measurement]:
    plate: dict[str, Measurement] = {}
    n_total = n_patients * PLATE_TUBES_PER_PATIENT * PLATE_EVENTS
    configs: list[tuple[str, int, str | None]] = [("w1", 1, None), ("w2", 2, None)]
    cluster = None
    pids: list[int] = []
    try:
        if dask:
            import psutil
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                   env=SINGLE_THREAD_ENV)
            pids = [p.pid for p in psutil.Process().children(recursive=True)]
            configs.append(("dask", 2, cluster.scheduler_address))
        for cfg, workers, scheduler in configs:
            cluster_pids = pids if scheduler else []
            cold = None
            if scheduler is not None:  # the cluster's workers import everything on their first tasks
                cold = plate_full(data_dir, layout, scratch / f"out_{cfg}_cold", workers, scheduler, cluster_pids)
                log(f"  plate {cfg}: cold first run {cold[0]:.2f} s (CPU {cold[1]:.1f} s)")
            g_wall, g_cpu, f_wall, f_cpu, info = [], [], [], [], {}
            for r in range(repeats):
                load = os.getloadavg()[0]
                w, c, info = plate_gating(data_dir, layout, workers, scheduler, cluster_pids)
                g_wall.append(w)
                g_cpu.append(c)
                w, c = plate_full(data_dir, layout, scratch / f"out_{cfg}_{r}", workers, scheduler, cluster_pids)
                f_wall.append(w)
                f_cpu.append(c)
                log(f"  plate {cfg} run {r + 1}/{repeats} (load {load:.1f}): gating {g_wall[-1]:.2f} s "
                    f"(CPU {g_cpu[-1]:.1f}), full {f_wall[-1]:.2f} s (CPU {f_cpu[-1]:.1f})")
            plate[f"{cfg}_gating"] = Measurement(f"{cfg} gating", n_total, g_wall, g_cpu, info=info)
            plate[f"{cfg}_full"] = Measurement(
                f"{cfg} full", n_total, f_wall, f_cpu,
                info={"cold_first_run_s": cold[0], "cold_first_run_cpu_s": cold[1]} if cold else {})
    finally:
        if cluster is not None:
            cluster.close()
    return plate


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def build_single(work: Path, n_events: int, seed: int) -> Path:
    """One simulated tube (anti-FcεRI, clean) as FCS 3.1 float32 with $SPILLOVER; reused when present."""
    path = work / f"tube_{size_label(n_events)}_seed{seed}.fcs"
    if path.is_file():
        return path
    from bat_analysis.io.fcs_write import write_fcs
    from bat_analysis.simulate import simulate_tube

    sim = simulate_tube(n_events=n_events, condition="anti_fceri", kind="responder", seed=seed)
    if sim.events.shape[1] != N_CHANNELS:
        raise RuntimeError(f"the simulator wrote {sim.events.shape[1]} channels, expected {N_CHANNELS}")
    keywords = {**sim.keywords, "TRUE_BASOPHILS": sim.n_basophils,
                "TRUE_ACTIVATED": int(np.count_nonzero(sim.activated))}
    write_fcs(path, sim.events, sim.pnn, sim.pns, version="3.1", datatype="F", spillover=sim.spillover,
              keywords=keywords)
    return path



def build_plate(work: Path, seed: int, n_patients: int) -> tuple[Path, Path]:
    """n_patients x 12 tubes x 100k events (both arms: 3 controls + 3 allergen concentrations each)."""
    data_dir = work / f"plate_{n_patients}p_seed{seed}"
    layout = data_dir / "layout.csv"
    if layout.is_file():
        return data_dir, layout
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(data_dir, n_patients=n_patients, n_events=PLATE_EVENTS, seed=seed,
                              n_concentrations=PLATE_TUBES_PER_PATIENT // 2 - 3, version="3.1", datatype="F")
    n_files = len(list(data_dir.glob("*.fcs")))
    if n_files != n_patients * PLATE_TUBES_PER_PATIENT:
        raise RuntimeError(f"the simulated plate has {n_files} files, expected "
                           f"{n_patients * PLATE_TUBES_PER_PATIENT}")
    return data_dir, exp.layout_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="sizes 50k,500k, 3 repeats (1 for the plate), no 20M-event file")
    p.add_argument("--sizes", type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()],
                   help="single-file sizes, comma-separated (default 50k,500k,2M)")
    p.add_argument("--repeats", type=int, help="timed runs per measurement (default 5)")
    p.add_argument("--plate-repeats", type=int, help="runs per plate configuration (default 5)")
    p.add_argument("--plate-patients", type=int, default=PLATE_PATIENTS,
                   help=f"patients on the simulated plate, 12 tubes each (default {PLATE_PATIENTS})")
    p.add_argument("--no-huge", action="store_true", help=f"skip the {size_label(HUGE_EVENTS)}-event memory run")
    p.add_argument("--no-flowkit", action="store_true", help="skip FlowKit's fixed strategy")
    p.add_argument("--no-plate", action="store_true", help="skip the 96-tube plate runs")
    p.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster plate runs")
    p.add_argument("--workdir", type=Path,
                   help="build the inputs here and keep them; files already there are reused, so empty it "
                        "after a simulator change (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    p.add_argument("--seed", type=int, default=2026, help="simulator seed (default 2026)")
    # internal: one measurement in a fresh process
    p.add_argument("--_measure", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--_file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_warmup", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_plate_gating", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_layout", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_workers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_scheduler", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [50_000, 500_000] if args.quick else [50_000, 500_000, 2_000_000]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.plate_repeats is None:
        args.plate_repeats = 1 if args.quick else 5
    if args.quick:
        args.no_huge = True
    if args.repeats < 1 or args.plate_repeats < 1 or args.plate_patients < 1:
        p.error("--repeats, --plate-repeats and --plate-patients must be at least 1")
    return args


def reproduce_command() -> str:
    return "PYTHONPATH=. python benchmarks/bench_gating.py " + shlex.join(
        a for a in sys.argv[1:] if not a.startswith("--_"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._measure:
        out = measure_in_this_process(args._measure, args._file, args._warmup, args.repeats)
        print(RESULT_TAG + json.dumps(out), flush=True)
        return 0
    if args._plate_gating:
        out = plate_gating_in_this_process(args._plate_gating, args._layout, args._workers, args._scheduler)
        print(RESULT_TAG + json.dumps(out), flush=True)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bat_bench_")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        log(f"building inputs in {work}")
        warmup = build_single(work, WARMUP_EVENTS, args.seed)
        files = {n: build_single(work, n, args.seed) for n in args.sizes}
        kinds = ["floor", "flowio", "read_fcs"] + ([] if args.no_flowkit else ["flowkit"]) + ["ours", "ours_given"]
        rows: dict[int, dict[str, Measurement]] = {}
        notes: list[str] = []
        for n, path in files.items():
            rows[n] = {}
            truth = parse_text_segment_of(path)
            for kind in kinds:
                try:
                    m = measure(kind, path, warmup, args.repeats, n)
                except RuntimeError as exc:
                    notes.append(f"{size_label(n)} {LABELS[kind]}: FAILED, {str(exc).splitlines()[-1]}")
                    log(str(exc))
                    continue
                rows[n][kind] = m
                log(f"  {size_label(n):>5} {kind:<8} median {m.median:.4f} s, "
                    f"peak {fmt_mb(m.peak_rss_above_baseline)} MB  {m.info}")
            notes.append(count_note(n, rows[n], truth))
        huge = None
        if not args.no_huge:
            path = build_single(work, HUGE_EVENTS, args.seed)
            try:
                huge = measure("ours", path, warmup, 1, HUGE_EVENTS)
                log(f"  {size_label(HUGE_EVENTS)} ours: {huge.median:.2f} s, "
                    f"peak {fmt_mb(huge.peak_rss_above_baseline)} MB")
            except RuntimeError as exc:
                notes.append(f"{size_label(HUGE_EVENTS)} gate_tube: FAILED, {str(exc).splitlines()[-1]}")
                log(str(exc))
            path.unlink()  # 800 MB: not kept even in --workdir
        plate: dict[str, Measurement] = {}
        if not args.no_plate:
            data_dir, layout = build_plate(work, args.seed, args.plate_patients)
            try:
                plate = measure_plate(data_dir, layout, work / "plate_runs", args.plate_repeats,
                                      not args.no_dask, args.plate_patients, log)
            except RuntimeError as exc:
                notes.append(f"plate: FAILED, {str(exc).splitlines()[-1]}")
                log(str(exc))
    finally:
        if tmp is not None:
            tmp.cleanup()

    lines = ["bat_analysis benchmark (issues 6 and 14)", *machine_lines(),
             f"inputs: simulator (seed {args.seed}), FCS 3.1 float32, {N_CHANNELS} channels; "
             f"benchmark wall time {time.time() - started:.0f} s", ""]
    lines += tube_table(rows, args.repeats)
    if huge is not None:
        lines.append(f"{size_label(HUGE_EVENTS):>7} {'gate_tube':<15} {fmt_s(huge.median):>9} {'(1 run)':>15} "
                     f"{fmt_s(huge.cpu_median or 0):>7} {huge.ms_per_million:8.1f} {'':>9} {'':>10} "
                     f"{fmt_mb(huge.peak_rss_above_baseline):>8} {huge.memory_ratio:7.1f}")
    if plate:
        lines += ["", *plate_table(plate, args.plate_repeats, args.plate_patients)]
    lines += ["", *notes, "", *tube_targets(rows), "", *targets(rows, huge, plate), "",
              f"command: {reproduce_command()}"]
    print("\n".join(lines))
    if args.json is not None:
        payload = {"tube": {str(n): {k: asdict(m) for k, m in ms.items()} for n, ms in rows.items()},
                   "huge": asdict(huge) if huge else None, "plate": {k: asdict(m) for k, m in plate.items()},
                   "command": reproduce_command(), "report": lines}
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
