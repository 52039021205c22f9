"""Read speed of a 500,000-event FCS 3.1 float32 file: bat_analysis.read_fcs against FlowIO (preprocessed
events), fcsparser when installed, and numpy.fromfile on the DATA segment as the floor.

    PYTHONPATH=. python benchmarks/bench_read.py [--events 500000] [--channels 12] [--repeats 7]
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
    args = parser.parse_args(argv)

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
