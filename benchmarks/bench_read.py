"""Read speed of a 500,000-event FCS 3.1 float32 file: bat_analysis.read_fcs against FlowIO (preprocessed
events), fcsparser when installed, and numpy.fromfile on the DATA segment as the floor.

    PYTHONPATH=. python benchmarks/bench_read.py [--events 500000] [--channels 12] [--repeats 7]

With ``--ascii-mb N``: time and peak memory of read_fcs on ASCII files ($DATATYPE A) of about N MB, fixed-width
and delimited, each read in a fresh process (peak RSS growth and tracemalloc peak, against the event matrix).

    PYTHONPATH=. python benchmarks/bench_read.py --ascii-mb 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np


def make_file(directory: Path, n_events: int, n_channels: int) -> Path:
    from bat_analysis.io.fcs_write import write_fcs

    rng = np.random.default_rng(0)
    events = rng.lognormal(6, 1.5, size=(n_events, n_channels)).astype(np.float32)
    names = ["FSC-A", "FSC-H", "SSC-A"] + [f"FL{i}-A" for i in range(1, n_channels - 3)] + ["Time"]
    return write_fcs(directory / "bench_500k.fcs", events, names[:n_channels], version="3.1", datatype="F",
                     ranges=[262144] * n_channels)


def make_ascii_file(path: Path, size_mb: float, n_channels: int, delimited: bool) -> Path:
    """An FCS 3.0 file of ASCII DATA of about ``size_mb`` MB: 4-character fields, or values separated by spaces
    and one event per line."""
    rng = np.random.default_rng(0)
    per_event = n_channels * (4 if not delimited else 4.5)
    n_events = int(size_mb * 1e6 / per_event)
    values = rng.integers(0, 1024, size=(n_events, n_channels))
    if delimited:
        data = ("\n".join(" ".join(map(str, row)) for row in values.tolist()) + "\n").encode()
    else:
        data = np.char.zfill(values.astype("S4"), 4).tobytes()
    pairs = [("$BEGINDATA", "0" * 10), ("$ENDDATA", "0" * 10), ("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "A"),
             ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", str(n_channels)), ("$TOT", str(n_events))]
    for i in range(1, n_channels + 1):
        pairs += [(f"$P{i}N", f"FL{i}-A"), (f"$P{i}B", "*" if delimited else "4"), (f"$P{i}E", "0,0"),
                  (f"$P{i}R", "1024")]
    text = ("/" + "".join(f"{k}/{v}/" for k, v in pairs)).encode()
    start = 256 + len(text)
    text = text.replace(b"0" * 10, b"%010d" % start, 1).replace(b"0" * 10, b"%010d" % (start + len(data) - 1), 1)
    end = start + len(data) - 1
    header = b"FCS3.0    %8d%8d%8d%8d%8d%8d" % (256, start - 1, start if end < 10**8 else 0, end if end < 10**8 else 0,
                                                0, 0)
    path.write_bytes(header.ljust(256) + text + data)
    return path


_ASCII_PROBE = """
import sys, time, tracemalloc
from bat_analysis.io.fcs import read_fcs

def peak_rss():  # VmHWM (Linux) is this process's own peak; ru_maxrss would carry the parent's across exec
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))

base = peak_rss()
t0 = time.perf_counter()
events = read_fcs(sys.argv[1]).events
seconds = time.perf_counter() - t0
rss = peak_rss() - base
tracemalloc.start()
read_fcs(sys.argv[1])
traced = tracemalloc.get_traced_memory()[1]
print(seconds, rss, traced, events.nbytes, events.shape[0], events.shape[1])
"""


def ascii_memory(size_mb: float, n_channels: int) -> None:
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        print(f"read_fcs on ASCII DATA, {n_channels} channels, each file read in a fresh process")
        print(f"{'file':34s} {'events':>10s} {'seconds':>8s} {'peak RSS':>12s} {'tracemalloc':>12s}")
        for delimited in (False, True):
            path = make_ascii_file(Path(tmp) / "ascii.fcs", size_mb, n_channels, delimited)
            out = subprocess.run([sys.executable, "-c", _ASCII_PROBE, str(path)], capture_output=True, text=True,
                                 check=True).stdout.split()
            seconds, rss, traced, matrix = float(out[0]), int(out[1]), int(out[2]), int(out[3])
            kind = "delimited" if delimited else "fixed width"
            label = f"{kind}, {path.stat().st_size / 1e6:.1f} MB"
            print(f"{label:34s} {int(out[4]):>10,} {seconds:8.2f} {rss / 1e6:7.0f} MB {rss / matrix:3.1f}x "
                  f"{traced / 1e6:5.0f} MB {traced / matrix:3.1f}x  (x = event matrix, target <= 4)")


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    fn()  # warm the page cache and any lazy imports
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--channels", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ascii-mb", type=float, default=None,
                        help="instead: time and peak memory of ASCII files of about this size")
    args = parser.parse_args(argv)
    if args.ascii_mb:
        ascii_memory(args.ascii_mb, 10 if args.channels == 12 else args.channels)
        print("command: PYTHONPATH=. python benchmarks/bench_read.py " + " ".join(argv or sys.argv[1:]))
        return 0

    import flowio

    from bat_analysis.io.fcs import read_fcs

    with tempfile.TemporaryDirectory() as tmp:
        path = make_file(Path(tmp), args.events, args.channels)
        reference = read_fcs(path).events
        begin = int(read_fcs(path).keywords["$BEGINDATA"])

        def bat() -> np.ndarray:
            return read_fcs(path).events

        def flowio_read() -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return flowio.FlowData(str(path)).as_array()

        def floor() -> np.ndarray:
            raw = np.fromfile(path, dtype="<f4", count=args.events * args.channels, offset=begin)
            return raw.reshape(args.events, args.channels)

        readers: list[tuple[str, Callable[[], object]]] = [
            ("bat_analysis.read_fcs", bat), ("flowio FlowData.as_array", flowio_read),
            ("numpy.fromfile (floor)", floor)]
        try:
            import fcsparser  # optional extra

            readers.append(("fcsparser.parse", lambda: fcsparser.parse(str(path), reformat_meta=False)[1]
                            .to_numpy()))
        except ImportError:
            print("fcsparser not installed: skipped", file=sys.stderr)

        rows = []
        for name, fn in readers:
            median, result = timed(fn, args.repeats)
            same = np.array_equal(np.asarray(result, dtype=np.float32), reference)
            rows.append((name, median, same))
    base = rows[0][1]
    size_mb = args.events * args.channels * 4 / 1e6
    print(f"{args.events:,} events x {args.channels} channels, FCS 3.1 float32 ({size_mb:.0f} MB), "
          f"median of {args.repeats}")
    print(f"{'reader':28s} {'median s':>9s} {'MB/s':>8s} {'vs read_fcs':>12s} {'same values':>12s}")
    for name, median, same in rows:
        print(f"{name:28s} {median:9.4f} {size_mb / median:8.0f} {median / base:11.2f}x {str(same):>12s}")
    print("command: PYTHONPATH=. python benchmarks/bench_read.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
