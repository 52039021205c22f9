"""Guards for tests that could hang: such a test fails after a time limit instead of hanging the suite."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path


class Hung(BaseException):
    """Raised by ``no_hang``: a BaseException, so that no handler of the code under test can swallow it
    (a plain ``TimeoutError`` is an ``OSError``, which reading code catches)."""


@contextlib.contextmanager
def no_hang(seconds: int, what: str = "the block") -> Iterator[None]:
    """Raise ``Hung`` if the block is still running after ``seconds`` (SIGALRM; the main thread only)."""
    def expired(signum: int, frame: object) -> None:
        raise Hung(f"{what} was still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def inject_hang(folder: Path, victim: str) -> None:
    """Write ``folder/sitecustomize.py`` making ``gate_tube`` sleep for an hour on the tube file ``victim``: child
    interpreters started with ``folder`` on their PYTHONPATH (Dask workers' children, the per-tube child
    process) hang on that tube, for the time-limit tests."""
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import time
        import bat_analysis.gating.tube as tube_module
        real = tube_module.gate_tube
        def hanging(path, tube, template, **options):
            if tube.file == {victim!r}:
                time.sleep(3600)
            return real(path, tube, template, **options)
        tube_module.gate_tube = hanging
    """))


def process_group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still running (a run's workers outliving it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
