"""Shutting down the run's process pools, also after Ctrl-C ended their workers.

Contract:

- :func:`workers_stopped` is called by :func:`bat_analysis.pipeline.stopping_on_ctrl_c` when Ctrl-C made it end
  the worker processes of a run (gating, drawing reports); :func:`stop_cleared` when such a block begins.
- :func:`shutdown` shuts a ``concurrent.futures.ProcessPoolExecutor`` down, cancelling what is queued, and waits
  for its processes (``wait``). After :func:`workers_stopped` it first releases the executor's result pipe: a
  worker ended while it was sending a result leaves half a message in the pipe, and the executor's own thread
  would wait for the rest of it for ever (the shutdown with it, so that a Ctrl-C hung the run). This process
  holds the pipe's other end for writing too; once it closes that end, the thread reads end-of-file as soon
  as the ended workers are gone, takes the pool for broken, and the shutdown completes.

The result pipe is ``ProcessPoolExecutor._result_queue._writer`` (CPython 3.11-3.13): when an executor lacks it,
nothing is closed and the shutdown is the standard one.
"""

from __future__ import annotations

from typing import Any

_STOPPED = False


def stop_cleared() -> None:
    """A new block that may stop its workers begins: no worker has been ended by Ctrl-C."""
    global _STOPPED
    _STOPPED = False


def workers_stopped() -> None:
    """Ctrl-C ended the worker processes: pools shut down from now on release their result pipes first."""
    global _STOPPED
    _STOPPED = True


def shutdown(pool: Any, *, wait: bool = True) -> None:
    """``pool.shutdown(wait, cancel_futures=True)``, releasing its result pipe first after Ctrl-C ended the
    workers (see the module's contract)."""
    if _STOPPED:
        writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
        if writer is not None and not getattr(writer, "closed", True):
            writer.close()
    pool.shutdown(wait=wait, cancel_futures=True)
