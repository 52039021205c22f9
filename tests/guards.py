"""Guards for tests that could hang: such a test fails after a time limit instead of hanging the suite."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


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
