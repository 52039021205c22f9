"""The batch pipeline: map (one gating task per tube, in parallel), then reduce (scoring per patient, each
patient as soon as the last of its tubes is stored, while the workers gate the others).

Executors
---------
* local processes (default): a ``concurrent.futures.ProcessPoolExecutor`` whose workers stay alive across
  tubes and use one BLAS thread each; ``workers=1`` gates in one such worker process, or in this process when
  there is no time limit (same single-thread BLAS setting, so the numbers are identical to any worker count);
* a Dask distributed cluster (``scheduler="tcp://HOST:PORT"``), through ``distributed.Client`` (optional
  extra ``bat-analysis[dask]``).

Time limit
----------
Each tube has a time limit (``tube_timeout_s``, default ``DEFAULT_TUBE_TIMEOUT_S``; ``None`` or 0: none). A tube
that exceeds it is stopped, recorded as failed (flag ``TUBE_TIMEOUT``) and the batch goes on. Locally, workers
report when they start a tube; the worker of a tube past its limit is killed, and the other tubes it broke the
pool for are gated again in a fresh pool. On Dask, each tube is gated in a child process of the Dask worker,
killed at the limit.

Resume and crash safety
-----------------------
Each finished tube is written to the results store (one transaction) with a cache key made of its file's
sha256, the template's sha256, the package version, its layout annotation and the reviewer corrections that
apply to it. A re-run gates only tubes whose key changed or that are missing, then scores every patient from
the stored results. Results are always read back from the store before scoring, so a resumed run and an
uninterrupted run score bit-identical inputs. A lock file keeps two runs from writing the same folder.

Reviewer corrections and the output folder
------------------------------------------
The corrections a run is given (``--overrides``, ``--gates-from``; read by :mod:`bat_analysis.review`) are
appended to the store's corrections log; every run applies the log's active corrections (a plain re-run too),
except stale ones (made on a tube file or template that changed since), which flag their tubes
``CORRECTION_STALE`` and are reported. A tube a reviewer excluded is dropped from scoring, and the tables
carry the log's review status (:mod:`bat_analysis.review._status`). An output folder belongs to one experiment
(:func:`check_same_experiment`); ``--replace`` sets another experiment's results aside
(:func:`set_store_aside`). Reports of patients no longer in the run are removed.

Writing the output folder
-------------------------
Every file goes through :mod:`bat_analysis._fileio` (atomic, never through a symbolic link, mode 0666 & ~umask).
The tables are replaced as a set; a full rendering of the reports is built in a staging folder inside OUT and
swapped in. A write failure is a ``WriteError`` (path, cause, what to do): the run is recorded as ``failed``
(or ``completed without reports`` when only the reports failed), and once the store holds this run's tables,
earlier tables and reports that were not rewritten are moved to ``OUT/outdated-<time>/`` (removed if even
that fails), so that outputs of another run are never presented beside this run's.

Progress and Ctrl-C
-------------------
The progress display counts files checked, tubes gated, patients scored and report files written (each
patient's HTML and PDF, the gallery), each n of N with an ETA. Ctrl-C ends the run's worker processes at once
(:func:`stopping_on_ctrl_c`; workers ignore it themselves) and raises :class:`RunInterrupted`, which says what
the results store holds (tubes gated so far) and what was not written; the same command resumes from the store.

Input files
-----------
Every tube's file is resolved and checked before anything is gated (``io.paths.resolve_data_file``: inside
DATA_DIR after links unless ``allow_outside_data_dir``, a regular file, never a FIFO, device or /proc file)
and hashed from that checked path without following a link put in its place. FCS files of DATA_DIR that no
layout row names are left out with a warning (``RunSummary.warnings``, the run's info ``unlisted_files``), or
refused with ``strict``. A file missing at run time refuses the run with the layout's other problems, unless
``skip_missing``: its tube is then stored as failed (flag ``FILE_NOT_FOUND``, reason "file not found: PATH").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shlex
import socket
import sqlite3
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, Literal, Mapping, Sequence

from . import __version__, _pools
from ._checksums import file_sha256
from .errors import BatError, DataFileError, WriteError
from .records import Flag, Tube, TubeResult
from .store import AUTO, REVIEWED, STORE_NAME, ResultStore, to_json

if TYPE_CHECKING:
    from .analysis.score import ExperimentScores
    from .review.corrections import Corrections
    from .review._log import StoredCorrections

LOCK_NAME = ".bat-run.lock"
TABLE_OUTPUTS = ("tubes.csv", "patients.csv", "results.xlsx", "tubes.parquet", "patients.parquet",
                 "tube_markers.csv")
REPORT_OUTPUTS = ("reports", "review")
DASK_CONNECT_TIMEOUT = "15s"
DEFAULT_TUBE_TIMEOUT_S = 300.0
CHECK_THREADS = 2  # threads hashing the input files before the run (hashing is bound by one core per thread)


class NothingAnalysedError(BatError):
    """Every tube of the run failed: there is nothing to score."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run. ``str()`` says, in plain words, what is saved in the results store and what is
    not; ``n_saved`` of ``n_tubes`` tubes have a current stored result (``n_saved`` is None when the run was
    stopped before it could tell). The same command resumes from the store."""

    def __init__(self, message: str, *, n_saved: int | None = None, n_tubes: int | None = None) -> None:
        super().__init__(message)
        self.n_saved, self.n_tubes = n_saved, n_tubes


# ------------------------------------------------------------------------------------------------ lock
class RunLock:
    """An exclusive lock on an output folder, held for the duration of a run.

    Uses ``fcntl.flock`` on ``OUT/.bat-run.lock``: the operating system releases it when the holder exits,
    however it exits (even SIGKILL), so a stale lock file left by a killed run never blocks. The file holds
    the holder's pid, host and start time, quoted in the refusal message. It is opened with ``O_NOFOLLOW``
    (a symbolic link planted there is refused, never written through) and removed when the lock is released;
    a run that locked a file since removed by the previous holder locks again (the lock is the file in place).
    """

    def __init__(self, out_dir: Path | str) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def _refuse(self, cause: str) -> BatError:
        return BatError(f"{LOCK_NAME} in the output folder {cause}", source=str(self.path.parent), field="--out",
                        expected=f"remove {self.path} (bat_analysis never writes through a link in its output "
                                 "folder), or choose another --out folder")

    def acquire(self) -> "RunLock":
        import fcntl
        import stat

        from ._fileio import make_dir, write_error

        make_dir(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        for _ in range(100):
            try:
                fd = os.open(self.path, flags, 0o666)
            except OSError as exc:
                if exc.errno == errno.ELOOP and self.path.is_symlink():
                    raise self._refuse("is a symbolic link") from None
                raise write_error(exc, self.path, action="create the lock file") from exc
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise self._refuse("is not a regular file")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "unknown process"
                    raise BatError(f"another 'bat run' is writing to this folder ({holder})",
                                   source=str(self.path.parent), field="--out",
                                   expected="wait for that run to finish, or choose another --out folder") from None
                try:  # the previous holder may have removed the file between our open and our lock
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                note = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                os.ftruncate(fd, 0)
                os.pwrite(fd, note.encode("utf-8"), 0)
            except OSError as exc:
                os.close(fd)
                raise write_error(exc, self.path) from exc
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        raise BatError("the lock file keeps being replaced by another process", source=str(self.path),
                       field="--out", expected="one 'bat run' at a time in this folder")

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fd, self._fd = self._fd, None
            try:
                try:  # remove the file while still holding the lock, and only if it is still ours
                    if os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False)):
                        os.unlink(self.path)
                except OSError:  # a lock file left behind is harmless: the lock is the flock, not the file
                    pass
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class GateTask:
    """Everything a worker needs to gate one tube (picklable; no open files)."""

    path: str
    tube: Tube
    template: Any
    variant: str = AUTO
    overrides: dict[str, Any] | None = None
    sha256: str | None = None  # the file's checksum, computed once when the batch is checked


_WORKER_BLAS_LIMIT: Any = None


def _limit_blas_once() -> None:
    """Limit this process to one BLAS/OpenMP thread (once per process; kept for the process's life)."""
    global _WORKER_BLAS_LIMIT
    if _WORKER_BLAS_LIMIT is None:
        from threadpoolctl import threadpool_limits

        _WORKER_BLAS_LIMIT = threadpool_limits(limits=1)


def gate_one(task: GateTask) -> TubeResult:
    """Gate one tube. Never raises: an unexpected failure becomes a failed TubeResult naming the reason."""
    from .gating.tube import gate_tube

    try:
        result = gate_tube(task.path, task.tube, task.template, overrides=task.overrides, sha256=task.sha256)
    except Exception as exc:  # a bug or an unforeseen input must not stop the batch: record it on the tube
        reason = f"gating stopped with {type(exc).__name__}: {exc}"
        result = TubeResult(tube=task.tube, error=reason,
                            flags=[Flag("GATING_CRASHED", "fail", reason)])
    if result.file_sha256 is None:
        try:
            result.file_sha256 = task.sha256 or file_sha256(task.path)
        except (OSError, BatError):  # unreadable or refused: gate_tube has already recorded why
            result.file_sha256 = None
    return result


def _worker_gate(task: GateTask) -> TubeResult:
    _limit_blas_once()
    return gate_one(task)


_TIMED_OUT = "gating took longer than "


def timed_out(task: GateTask, timeout_s: float) -> TubeResult:
    """The failed result of a tube whose gating was stopped at the time limit (gated again by a re-run, which
    may have a longer limit: see ``stopped_at_time_limit``)."""
    reason = (f"{_TIMED_OUT}{timeout_s:g} s and was stopped; the other tubes went on (a damaged or "
              f"unusually large file? raise the limit with --tube-timeout)")
    return TubeResult(tube=task.tube, error=reason, file_sha256=task.sha256,
                      flags=[Flag("TUBE_TIMEOUT", "fail", reason)])


def stopped_at_time_limit(error: str | None) -> bool:
    """Whether a stored tube's error is a time limit's (not a property of its file: a re-run gates it again)."""
    return bool(error) and error.startswith(_TIMED_OUT)


#: in a pool worker: where it reports (task index, pid, start time) when it starts a tube
_STARTED: Any = None


def _pool_worker_gate(task: GateTask, index: int) -> TubeResult:
    if _STARTED is not None:
        _STARTED.put((index, os.getpid(), time.time()))
    return _worker_gate(task)


def _exit_when_orphaned(parent: int, interval_s: float = 0.5) -> None:
    while True:
        time.sleep(interval_s)
        if os.getppid() != parent:  # the run was killed (even with SIGKILL): do not linger
            os._exit(1)


def _worker_init(started: Any = None) -> None:
    """Worker start: one BLAS thread, a watchdog that ends the worker if the run itself dies, the queue
    on which it reports each tube it starts (when tubes have a time limit), and Ctrl-C ignored (a terminal
    sends it to every process of the run: the run itself stops the workers, see :func:`stopping_on_ctrl_c`)."""
    import signal
    import threading

    global _STARTED
    _STARTED = started
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle: it ends the workers
    _limit_blas_once()
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True,
                     name="bat-orphan-watchdog").start()


@contextlib.contextmanager
def stopping_on_ctrl_c() -> Iterator[None]:
    """While the block runs (in the main thread), Ctrl-C first terminates the worker processes the block
    started (gating, drawing reports), then raises ``KeyboardInterrupt`` where the run is: no pool waits for
    work in flight or queued (nor for a result a worker was sending when it was ended: :mod:`._pools`), and
    each ``finally`` of the run (store, lock, temporaries) runs as usual. Processes that were running before
    the block are left alone."""
    import multiprocessing
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = set(multiprocessing.active_children())
    previous = signal.getsignal(signal.SIGINT)

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C is handled as before the run
        _pools.workers_stopped()  # their pools are then shut down without waiting on a half-sent result
        for child in set(multiprocessing.active_children()) - before:
            try:
                child.terminate()
            except (OSError, ValueError):  # already gone or closed
                pass
        raise KeyboardInterrupt

    _pools.stop_cleared()
    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is stop:
            signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------------------------------ executors
Completed = tuple[int, TubeResult]


def run_local(tasks: Sequence[GateTask], workers: int, timeout_s: float | None = None) -> Iterator[Completed]:
    """Gate tasks in local processes, yielding as they finish; in this process when ``workers == 1`` and there
    is no time limit.

    If a worker process dies (out of memory, a crash inside a C library), the tubes it left unfinished are
    retried once in a fresh pool; those that break a pool again are gated one per process, so that only the
    file that kills its worker is recorded as failed (flag ``WORKER_DIED``). A tube still gating after
    ``timeout_s`` seconds is recorded as failed (flag ``TUBE_TIMEOUT``) and its worker killed; the tubes that
    worker's death interrupted are retried like those of a dead worker.
    """
    if workers <= 1 and not timeout_s:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            for i, task in enumerate(tasks):
                yield i, gate_one(task)
        return
    workers = max(1, workers)
    broken = yield from _pool_pass(tasks, list(range(len(tasks))), workers, timeout_s)
    if broken:
        broken = yield from _pool_pass(tasks, broken, workers, timeout_s)
    for i in broken:
        again = yield from _pool_pass(tasks, [i], 1, timeout_s)
        for j in again:
            reason = "the worker process died while gating this file (out of memory or a crash in a library)"
            yield j, TubeResult(tube=tasks[j].tube, error=reason,
                                flags=[Flag("WORKER_DIED", "fail", reason)])


def _pool_pass(tasks: Sequence[GateTask], indices: list[int], workers: int, timeout_s: float | None = None
               ) -> Generator[Completed, None, list[int]]:
    """One pool over ``indices``; yields finished results and returns the indices a broken pool lost.

    With ``timeout_s``, workers report each tube they start; a tube past its limit is yielded as failed and its
    worker killed (which breaks the pool: the tubes in flight or queued are returned with the lost ones).
    If the consumer stops early (Ctrl-C, an error while storing), queued tubes are cancelled and only the
    tubes in flight are waited for.
    """
    import multiprocessing
    import signal

    broken: list[int] = []
    if not indices:
        return broken
    started = multiprocessing.get_context().SimpleQueue() if timeout_s else None
    pool = ProcessPoolExecutor(max_workers=min(workers, len(indices)), initializer=_worker_init,
                               initargs=(started,))
    running: dict[int, tuple[int, float]] = {}  # task index -> (worker pid, start time), as reported
    expired: set[int] = set()
    try:
        futures: dict[Future, int] = {pool.submit(_pool_worker_gate, tasks[i], i): i for i in indices}
        by_index = {i: f for f, i in futures.items()}
        not_done = set(futures)
        while not_done:
            poll = None
            if started is not None:
                while not started.empty():
                    index, pid, at = started.get()
                    running[index] = (pid, at)
                pending = [running[futures[f]][1] + timeout_s for f in not_done if futures[f] in running]
                poll = min(1.0, max(0.01, min(pending, default=time.time() + 1.0) - time.time()))
            done, not_done = wait(not_done, timeout=poll, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: futures[f]):
                i = futures[fut]
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    if i not in expired:
                        broken.append(i)
                    continue
                if i not in expired:
                    yield i, result
            if started is None:
                continue
            now = time.time()
            latest = {pid: i for i, (pid, at) in sorted(running.items(), key=lambda kv: kv[1][1])}
            for i, (pid, at) in sorted(running.items()):
                if i in expired or by_index[i] not in not_done or latest.get(pid) != i or now - at <= timeout_s:
                    continue
                expired.add(i)
                try:
                    os.kill(pid, signal.SIGKILL)  # a running task cannot be cancelled: its process is ended
                except ProcessLookupError:
                    pass
                yield i, timed_out(tasks[i], timeout_s)
    finally:
        _pools.shutdown(pool)
    return sorted(broken)


def _gate_in_child(task: GateTask, timeout_s: float) -> TubeResult:
    """Gate one tube in a child Python process, killed if it runs past ``timeout_s`` (for Dask workers, which
    cannot kill a running task and, being daemonic processes, cannot use ``multiprocessing``)."""
    import pickle
    import subprocess

    package_parent = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH"))
                                                       if p)}
    try:
        done = subprocess.run([sys.executable, "-c", "from bat_analysis.pipeline import _child_main; _child_main()"],
                              input=pickle.dumps(task), capture_output=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        return timed_out(task, timeout_s)
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        reason = f"the worker process died while gating this file ({tail[0]})"
        return TubeResult(tube=task.tube, error=reason, file_sha256=task.sha256,
                          flags=[Flag("WORKER_DIED", "fail", reason)])
    return pickle.loads(done.stdout)  # written by _child_main from our own task, never from an input file


def _child_main() -> None:
    """Entry point of ``_gate_in_child``'s process: a pickled task on stdin, the pickled result on stdout."""
    import pickle

    task = pickle.loads(sys.stdin.buffer.read())
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the result
    sys.stdout = sys.stderr
    result = _worker_gate(task)
    channel.write(pickle.dumps(result))
    channel.flush()


def _dask_gate(task: GateTask, timeout_s: float | None) -> TubeResult:
    return _gate_in_child(task, timeout_s) if timeout_s else _worker_gate(task)


def run_dask(tasks: Sequence[GateTask], address: str, timeout_s: float | None = None) -> Iterator[Completed]:
    """Gate tasks on a Dask distributed cluster, yielding as they finish (each in a child process of its worker,
    stopped at ``timeout_s``, when there is a time limit)."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise BatError("running on a cluster needs the 'distributed' package", field="--scheduler",
                       expected="pip install 'bat-analysis[dask]', or leave out --scheduler to use local "
                                "processes") from exc
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise BatError(f"cannot reach the Dask scheduler ({exc})", source=address, field="--scheduler",
                       expected="the address of a running scheduler, e.g. tcp://HOST:8786") from exc
    try:
        futures = [client.submit(_dask_gate, t, timeout_s, pure=False) for t in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                yield i, fut.result()
            except Exception as exc:  # a lost worker or a task the cluster gave up on: record it, go on
                reason = f"the cluster could not gate this file ({type(exc).__name__}: {exc})"
                yield i, TubeResult(tube=tasks[i].tube, error=reason,
                                    flags=[Flag("WORKER_DIED", "fail", reason)])
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------ keys
def tube_annotation(tube: Tube) -> dict[str, Any]:
    return {"file": tube.file, "patient": tube.patient, "condition": tube.condition,
            "pretreatment": tube.pretreatment, "allergen": tube.allergen,
            "concentration": tube.concentration, "unit": tube.unit, "extra": [list(p) for p in tube.extra]}


_CODE_FINGERPRINTS: dict[tuple[str, ...], str] = {}


def code_fingerprint(*subpackages: str) -> str:
    """sha256 of the package's source files in ``subpackages`` (with the version, it names the code that
    produced a stored result, so that results of a modified installation are never reused)."""
    if subpackages not in _CODE_FINGERPRINTS:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256(__version__.encode())
        for sub in subpackages:
            for path in sorted((root / sub).glob("*.py")) if (root / sub).is_dir() else [root / sub]:
                h.update(path.name.encode())
                h.update(path.read_bytes())
        _CODE_FINGERPRINTS[subpackages] = h.hexdigest()
    return _CODE_FINGERPRINTS[subpackages]


def cache_key(file_sha: str | None, template_sha: str, tube: Tube, corrections_sha: str | None) -> str:
    """The key a stored tube result is valid for: file, template, version (and code), annotation and
    corrections."""
    payload = to_json([file_sha, template_sha, __version__, code_fingerprint("io", "gating", "records.py"),
                       tube_annotation(tube), corrections_sha or ""])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def resolve_file(data_dir: Path, tube: Tube, *, allow_outside: bool = False) -> Path:
    """The checked real path of a tube's file (``io.paths.resolve_data_file``; raises ``DataFileError``)."""
    from .io._paths import resolve_data_file

    return resolve_data_file(data_dir, tube.file, allow_outside=allow_outside)


def unlisted_warning(data_dir: Path, names: Sequence[str], shown: int = 20) -> str:
    """The warning for FCS files of DATA_DIR that no layout row names (left out of the run)."""
    listed = ", ".join(names[:shown]) + (f", ... and {len(names) - shown} more" if len(names) > shown else "")
    what = ("file in {}/ has no row in the layout and was left out" if len(names) == 1
            else "files in {}/ have no row in the layout and were left out").format(data_dir)
    return (f"{len(names)} {what}: {listed} "
            "(run with --strict to refuse a folder with files the layout does not name)")


# ------------------------------------------------------------------------------------------------ run
@dataclass
class RunOptions:
    """What ``bat run`` was asked to do (one field per option of the command).

    ``data_dir``: the folder of FCS files; ``layout``: the layout sheet naming each file's patient, condition,
    arm, allergen and concentration (in the sheet's unit); ``out``: the results folder (created; a second run
    into it resumes from its store); ``template``: a shipped template name or a YAML path; ``workers``: gating
    processes (None: one per available core); ``scheduler``: a Dask scheduler address instead;
    ``overrides`` / ``gates_from``: reviewer corrections as an overrides YAML or an edited FlowJo workspace /
    Gating-ML file, added to the store's corrections log under ``reviewer``; ``replace``: set the existing
    store aside and start afresh; ``reports``: write the HTML/PDF reports and the review gallery;
    ``parquet``: also write the tables as Parquet; ``tube_timeout_s``: seconds one tube may take before it is
    stopped and recorded as failed (None or 0: no limit).
    """

    data_dir: Path
    layout: Path
    out: Path
    template: str | Path = "bat_ccr3_cd63"
    workers: int | None = None
    scheduler: str | None = None
    overrides: Path | None = None
    gates_from: Path | None = None
    reviewer: str | None = None
    replace: bool = False
    quiet: bool = False
    parquet: bool = False
    reports: bool = True
    command: str = ""
    strict: bool = False  # FCS files of data_dir without a layout row refuse the run (else: left out, warned)
    skip_missing: bool = False  # a layout row whose file does not exist: tube failed (else: the run is refused)
    allow_outside_data_dir: bool = False  # layout files may be absolute, use '..' or link out of data_dir
    tube_timeout_s: float | None = DEFAULT_TUBE_TIMEOUT_S


@dataclass
class RunSummary:
    """What a run did: counts, failed tubes with reasons, the files written, the scored tables.

    ``reports`` says what became of the reports and review gallery: ``written`` by this run, ``kept`` (those
    in the folder were drawn from the same results), ``not_written`` (``--no-reports``, or the renderer is not
    installed; ``report_note`` says which) or ``failed`` (``report_error`` says why; the tables and the store
    are complete)."""

    out: Path
    run_id: int
    n_tubes: int
    n_gated: int
    n_reused: int
    n_failed: int
    failed: list[tuple[str, str]]
    outputs: list[Path]
    elapsed_s: float
    tubes: Any = None
    patients: Any = None
    scores: Any = None
    results: list[TubeResult] = field(default_factory=list)
    report_note: str | None = None
    rescored: list[str] = field(default_factory=list)
    report_error: str | None = None
    corrections_note: str | None = None
    stale: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reports: Literal["written", "kept", "not_written", "failed"] = "not_written"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _progress(quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=quiet, transient=False)


def run(options: RunOptions, *, on_result: Callable[[int, TubeResult], None] | None = None) -> RunSummary:
    """Run the whole analysis into ``options.out``; raises BatError for a bad invocation or when no tube
    could be analysed, WriteError when an output cannot be written (the run is then recorded as failed and
    the earlier outputs are withdrawn). ``on_result`` is called after each tube is stored (used by tests to
    interrupt)."""
    from ._fileio import make_dir, remove_leftovers

    t0 = time.perf_counter()
    data_dir, out = Path(options.data_dir), Path(options.out)
    if not data_dir.is_dir():
        raise BatError("data folder not found", source=str(data_dir), field="DATA_DIR",
                       expected="a folder holding the FCS files")
    if not Path(options.layout).is_file():
        raise BatError("layout sheet not found", source=str(options.layout), field="--layout",
                       expected="a CSV or XLSX layout sheet (columns: file, patient, condition, allergen, "
                                "concentration, unit, pretreatment)")
    workers = options.workers if options.workers is not None else default_workers()
    if workers < 1:
        raise BatError(f"--workers must be at least 1, got {workers}", field="--workers", expected="an integer ≥ 1")
    if options.tube_timeout_s is not None and not options.tube_timeout_s >= 0:
        raise BatError(f"--tube-timeout must be a number of seconds ≥ 0, got {options.tube_timeout_s}",
                       field="--tube-timeout", expected="seconds per tube (0: no limit)")
    make_dir(out)
    with stopping_on_ctrl_c(), RunLock(out):
        for folder in (out, *(out / name for name in REPORT_OUTPUTS)):  # a killed run's temporaries
            if not folder.is_symlink():
                remove_leftovers(folder)
        return _run_locked(options, data_dir, out, workers, on_result, t0)


def _run_locked(options: RunOptions, data_dir: Path, out: Path, workers: int,
                on_result: Callable[[int, TubeResult], None] | None, t0: float) -> RunSummary:
    """The run inside the folder's lock: read the layout and template, open the store, read the corrections
    given, check every input, record the run as begun, then :func:`_run_stored`."""
    from .gating.templates import load_template
    from .io.layout import read_layout, unlisted_files
    from .review._load import load_corrections
    from .review._log import geometry_in_force, plan_log_entries

    tubes = read_layout(Path(options.layout), data_dir, check_unlisted=options.strict,
                        skip_missing=options.skip_missing, allow_outside_data_dir=options.allow_outside_data_dir)
    unlisted = [] if options.strict else unlisted_files(data_dir, [t.file for t in tubes])
    if not tubes:
        raise BatError("the layout sheet lists no tubes", source=str(options.layout),
                       expected="one row per FCS file")
    template = load_template(options.template)
    command = options.command or " ".join(shlex.quote(a) for a in sys.argv)
    notes = []
    if options.replace:
        moved = set_store_aside(out)
        if moved is not None:
            notes.append(f"--replace: the previous results (store with its reviewer corrections, reports) were "
                         f"moved to {moved}")
    with ResultStore.in_folder(out) as store:
        check_same_experiment(store, out, data_dir, tubes)
        automated = geometry_in_force(store)
        given = load_corrections(template, overrides=options.overrides, gates_from=options.gates_from,
                                 tubes=tubes, data_dir=data_dir, reviewer=options.reviewer, automated=automated)
        with _progress(options.quiet) as progress:
            early_imports = preload_gating if workers > 1 and not options.scheduler else None
            inputs = check_inputs(tubes, data_dir, progress, allow_outside=options.allow_outside_data_dir,
                                  meanwhile=early_imports)
            entries = plan_log_entries(given, store.correction_log(), tubes=tubes, checksums=inputs.checksums,
                                       template_sha256=template.sha256, version=__version__, automated=automated,
                                       source=str(options.overrides or options.gates_from or ""))
            layout_sha = file_sha256(options.layout)
            run_id = _begin_run(store, options, template, command, data_dir, workers, layout_sha, unlisted)
            ctx = _RunContext(options=options, data_dir=data_dir, out=out, workers=workers, on_result=on_result,
                              t0=t0, command=command, tubes=tubes, template=template, store=store,
                              progress=progress, run_id=run_id, inputs=inputs, layout_sha=layout_sha,
                              entries=entries)
            try:
                summary = _run_stored(ctx)
                if unlisted:
                    summary.warnings.append(unlisted_warning(data_dir, unlisted))
            except BaseException as exc:
                _record_stopped(store, run_id, len(tubes), exc)
                if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
                    raise _interrupted(ctx) from exc
                raise
            summary.notes = notes + summary.notes + store.warnings
            return summary


def _interrupted(ctx: _RunContext) -> RunInterrupted:
    """What a run stopped by Ctrl-C saved (tubes in the results store, tables, reports) and how to resume."""
    store_path = ctx.out / STORE_NAME
    n = len(ctx.tubes)
    if ctx.pending is None:
        return RunInterrupted(f"Stopped (Ctrl-C) before any tube was gated by this run; the results store "
                              f"{store_path} keeps what earlier runs stored. No table or report was written.",
                              n_tubes=n)
    saved = n - len(ctx.pending)
    text = f"Stopped (Ctrl-C) while {ctx.phase}. "
    if ctx.pending:
        text += (f"{saved} of {n} tubes are gated and saved in the results store {store_path} "
                 f"({ctx.n_gated_now} gated by this run); {len(ctx.pending)} still to gate. "
                 "No table or report was written by this run.")
    else:
        text += f"All {n} tubes are gated and saved in the results store {store_path}"
        text += (" and the tables (tubes.csv, patients.csv, results.xlsx) were written; the reports were not "
                 "finished (earlier reports, if any, are left as they were)." if ctx.tables_written
                 else "; the tables and reports were not written.")
    return RunInterrupted(text, n_saved=saved, n_tubes=n)


def _begin_run(store: ResultStore, options: RunOptions, template: Any, command: str, data_dir: Path, workers: int,
               layout_sha: str, unlisted: list[str]) -> int:
    """Record the run as begun in the store, with what it was asked and given; returns its id."""
    return store.begin_run(version=__version__, template_name=template.name,
                           template_sha256=template.sha256, command=command,
                           info={"data_dir": str(data_dir), "layout": str(options.layout),
                                 "data_dir_resolved": str(data_dir.resolve()),
                                 "layout_resolved": str(Path(options.layout).resolve()),
                                 "layout_sha256": layout_sha,
                                 "workers": workers, "scheduler": options.scheduler,
                                 "overrides": str(options.overrides) if options.overrides else None,
                                 "gates_from": str(options.gates_from) if options.gates_from else None,
                                 "template_source": template.source,
                                 "template_text": template.source_text,
                                 "unlisted_files": unlisted, "strict": options.strict,
                                 "skip_missing": options.skip_missing,
                                 "allow_outside_data_dir": options.allow_outside_data_dir})


def _record_stopped(store: ResultStore, run_id: int, n_tubes: int, exc: BaseException) -> None:
    """Record a run that ended with ``exc`` as ``failed`` (a write failure) or ``stopped``, unless it was
    already recorded; when even that fails, say so on ``exc``."""
    status = "failed" if isinstance(exc, WriteError) else "stopped"
    try:
        if store.last_run() and store.last_run()["status"] == "running":
            store.end_run(run_id, status=status, n_tubes=n_tubes, n_gated=0, n_reused=0, n_failed=0)
    except (BatError, sqlite3.Error) as also:
        exc.add_note(f"The run could not be recorded as {status} in the results store either ({also}); "
                     "it will show as 'running' until the next run.")


@dataclass
class InputCheck:
    """Every tube's file checked before anything is gated: its checked real path, its sha256 (None when it
    cannot be read: gating records why), and the tubes that fail without gating (file -> (flag, reason))."""

    checksums: dict[str, str | None] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    unavailable: dict[str, tuple[str, str]] = field(default_factory=dict)


def check_inputs(tubes: Sequence[Tube], data_dir: Path, progress: Any, *, allow_outside: bool = False,
                 meanwhile: Callable[[], None] | None = None) -> InputCheck:
    """Resolve (``io.paths.resolve_data_file``) and hash every tube's file, without following a link put in
    place of the checked file. A file missing (``--skip-missing``, or deleted since the layout was read) or
    refused fails its tube alone (flags ``FILE_NOT_FOUND`` / ``FILE_REFUSED``).

    The files are resolved and hashed in :data:`CHECK_THREADS` threads (hashlib lets go of the interpreter while
    it hashes), and ``meanwhile`` (the run's imports before its workers start: :func:`preload_gating`) runs in
    this thread at the same time, on the other core."""
    check = progress.add_task("Checking files", total=len(tubes), note="")
    out = InputCheck()

    def one(tube: Tube) -> tuple[Path | None, str | None, DataFileError | None]:
        path = None
        try:
            path = resolve_file(data_dir, tube, allow_outside=allow_outside)
            return path, file_sha256(path, follow_symlinks=False), None
        except DataFileError as exc:
            return None, None, exc
        except OSError:
            return path, None, None  # unreadable (permissions): gating records why on the tube

    threads = ThreadPoolExecutor(max_workers=CHECK_THREADS)
    try:
        checked = threads.map(one, tubes)
        if meanwhile is not None:
            meanwhile()
        for tube, (path, sha, problem) in zip(tubes, checked):
            out.checksums[tube.file] = sha
            if path is not None:
                out.paths[tube.file] = path
            if problem is not None:
                out.unavailable[tube.file] = (("FILE_NOT_FOUND", f"file not found: {data_dir / tube.file}")
                                              if problem.kind == "missing" else ("FILE_REFUSED", str(problem)))
            progress.advance(check)
    finally:  # Ctrl-C: the files not begun are not hashed (only those being hashed are waited for)
        threads.shutdown(wait=True, cancel_futures=True)
    return out


def check_same_experiment(store: ResultStore, out: Path, data_dir: Path, tubes: Sequence[Tube]) -> None:
    """Refuse to write a run into a folder holding another experiment's results.

    The folder's experiment is that of its last run. It is the same experiment when its data folder is the
    same (resolved path; the layout may have been edited), or, for a data folder that was moved or copied,
    when at least one FCS file of this run has the same name and content (sha256) as one analysed there.
    """
    last = next((r for r in reversed(store.runs()) if store.inputs(r["id"])), None)
    if last is None:
        return
    info = last["info"]
    here = str(data_dir.resolve())
    then = info.get("data_dir_resolved") or info.get("data_dir")
    if then is not None and (then == here or Path(then).resolve() == Path(here)):
        return
    stored = {Path(f).name: sha for f, sha in store.inputs(last["id"]).items() if ":" not in f and sha}
    for tube in tubes:
        sha = stored.get(Path(tube.file).name)
        if sha is None:
            continue
        try:
            if file_sha256(resolve_file(data_dir, tube)) == sha:
                return
        except (OSError, DataFileError):  # missing or refused: the run reports it on the tube
            continue
    layout = info.get("layout_resolved") or info.get("layout") or "unknown layout"
    raise BatError(f"this output folder holds the results of another experiment (data folder {then}, layout "
                   f"{layout}); no FCS file of this run was analysed there", source=str(out), field="--out",
                   expected="another --out folder for this experiment, or --replace to set those results aside "
                            f"(moved to {out / 'replaced'}) and start afresh")


def set_store_aside(out: Path) -> Path | None:
    """Move the results store of ``out`` (with its WAL files), its reports and review gallery to
    ``out/replaced/<UTC time>/``; returns that folder (None when there was no store). Nothing is deleted.
    Call only while holding the folder's RunLock."""
    src = out / STORE_NAME
    if not src.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, n = out / "replaced" / stamp, 1
    while dest.exists():
        n += 1
        dest = out / "replaced" / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for suffix in ("-wal", "-shm", ""):  # the database file last: until then the old store stays whole
        if Path(f"{src}{suffix}").exists():
            os.replace(f"{src}{suffix}", dest / f"{STORE_NAME}{suffix}")
    for folder in ("reports", "review"):
        if (out / folder).is_dir():
            os.replace(out / folder, dest / folder)
    return dest


@dataclass
class _RunContext:
    """One run's working state once it is recorded in the store: what was asked (``options``), where
    (``data_dir``, ``out``), with what (``template``, ``tubes``, the checked ``inputs``, the layout's sha256),
    the open ``store`` and ``progress`` display, the run's id, and the corrections log ``entries`` it adds; then
    where it is (``phase``, the tubes still to gate, tables written), said when Ctrl-C stops it."""

    options: RunOptions
    data_dir: Path
    out: Path
    workers: int
    on_result: Callable[[int, TubeResult], None] | None
    t0: float
    command: str
    tubes: list[Tube]
    template: Any
    store: ResultStore
    progress: Any
    run_id: int
    inputs: InputCheck
    layout_sha: str
    entries: list[dict[str, Any]]
    phase: str = "checking the inputs"  # what the run is doing, in words (said when Ctrl-C stops it)
    pending: dict[str, int] | None = None  # tube file -> results still to gate (None until the gating is planned)
    n_gated_now: int = 0  # tubes whose every result this run gated and stored
    tables_written: bool = False


def mark_implausible(results: Sequence[TubeResult], store: ResultStore, population: str) -> None:
    """Flag each corrected tube whose population does not look like the automated one's
    (:mod:`bat_analysis.gating._plausibility`)."""
    from .gating._plausibility import implausible_gate_flags

    for r in results:
        if store.current_variant(r.tube.file) == REVIEWED:
            r.flags.extend(implausible_gate_flags(store.get_tube(r.tube.file, AUTO), r, population))


@dataclass
class _GatePlan:
    """The tubes to gate now (one task per tube and variant, with the cache key it is stored under) and how
    many tubes are reused from the store."""

    tasks: list[GateTask]
    keys: list[str]
    n_reused: int


@dataclass
class _Scored:
    """The scores of a run and its tables as stored (what the tables files and reports are written from)."""

    scores: Any
    tubes: Any
    patients: Any
    recomputed: list[str]


def _run_stored(ctx: _RunContext) -> RunSummary:
    """The run once it is recorded in the store: corrections, gating, scoring, tables, reports."""
    applied = _apply_corrections(ctx)
    corrections = applied.corrections
    plan = _plan_tasks(ctx, corrections)
    ctx.pending = {}
    for task in plan.tasks:
        ctx.pending[task.tube.file] = ctx.pending.get(task.tube.file, 0) + 1
    ctx.phase = "gating"
    early = _EarlyScoring(ctx, corrections, applied.stale)
    try:
        return _gate_score_write(ctx, applied, plan, early)
    finally:
        if early.reports is not None:
            early.reports.close()


def _gate_score_write(ctx: _RunContext, applied: StoredCorrections, plan: _GatePlan,
                      early: _EarlyScoring) -> RunSummary:
    """Gating (patients scored, and their reports rendered, as they complete), scoring, tables, reports."""
    corrections = applied.corrections
    _gate(ctx, plan, corrections, early)
    results = _current_results(ctx, corrections, applied.stale, plan, early.read)
    failed = [(r.tube.file, r.error or "") for r in results if not r.ok]
    ctx.phase = "scoring"
    scored = _score(ctx, results, corrections, early)
    ctx.phase = "writing the tables"
    outputs = _write_tables(ctx, scored)
    ctx.tables_written = True
    ctx.phase = "writing the reports"
    summary = RunSummary(out=ctx.out, run_id=ctx.run_id, n_tubes=len(ctx.tubes), n_gated=len(plan.tasks),
                         n_reused=plan.n_reused, n_failed=len(failed), failed=failed, outputs=outputs,
                         elapsed_s=0.0, tubes=scored.tubes, patients=scored.patients, scores=scored.scores,
                         results=results, rescored=scored.recomputed, stale=[note for _, note in applied.stale],
                         corrections_note=corrections_note(corrections, ctx.entries, ctx.options,
                                                           len(applied.stale)))
    summary.notes += [note for _, status, note in applied.statuses if status == "not_in_run" and note]
    _write_reports(ctx, summary, results, scored.scores, corrections.thresholds(), early.reports)
    remove_departed_reports(ctx.out, {r.tube.patient for r in results})
    status = "completed without reports" if summary.reports == "failed" else "completed"
    ctx.store.end_run(ctx.run_id, status=status, n_tubes=len(ctx.tubes), n_gated=len(plan.tasks),
                      n_reused=plan.n_reused, n_failed=len(failed))
    summary.elapsed_s = time.perf_counter() - ctx.t0
    return summary


def _apply_corrections(ctx: _RunContext) -> StoredCorrections:
    """Record the run's inputs, add the corrections given to the store's log, and sort the log's active
    corrections into those this run applies and those it does not (stale, or not in this run's layout)."""
    from .review._log import from_store

    store, template = ctx.store, ctx.template
    store.record_inputs(ctx.run_id, {**ctx.inputs.checksums,
                                     f"layout:{Path(ctx.options.layout).name}": ctx.layout_sha,
                                     f"template:{template.name}": template.sha256})
    # the corrections given now join the store's log; the active ones of the log are what this run applies
    store.append_corrections(ctx.entries, ctx.run_id)
    applied = from_store(store.active_corrections(), template, ctx.tubes, ctx.inputs.checksums,
                         store_path=str(store.path))
    store.record_run_corrections(ctx.run_id, applied.statuses)
    return applied


def _plan_tasks(ctx: _RunContext, corrections: Corrections) -> _GatePlan:
    """The tubes to gate: each tube's automated result, and its reviewed result when a gate of it is
    corrected, unless the store holds one under the same cache key. A tube whose file is unavailable is
    stored as failed at once; a reviewed result whose correction was withdrawn or is stale is removed."""
    template, store, inputs = ctx.template, ctx.store, ctx.inputs
    stored = store.stored_tubes()
    tasks: list[GateTask] = []
    keys: list[str] = []
    for tube in ctx.tubes:
        if tube.file in inputs.unavailable:
            _store_unavailable(ctx, tube, corrections)
            continue
        path = str(inputs.paths.get(tube.file, ctx.data_dir / tube.file))
        want = [(AUTO, None, None)]
        if corrections.gates_for(tube.file):
            want.append((REVIEWED, corrections.gate_overrides(template, tube.file), corrections.sha256_for(tube.file)))
        elif (tube.file, REVIEWED) in stored:
            store.delete_variant(tube.file, REVIEWED)  # the correction was withdrawn or is stale
        for variant, overrides, corr_sha in want:
            key = cache_key(inputs.checksums[tube.file], template.sha256, tube, corr_sha)
            have = stored.get((tube.file, variant))
            if have is not None and have.cache_key == key and not stopped_at_time_limit(have.error):
                continue
            tasks.append(GateTask(path=path, tube=tube, template=template, variant=variant,
                                  overrides=overrides, sha256=inputs.checksums[tube.file]))
            keys.append(key)
    n_reused = len(ctx.tubes) - len({t.tube.file for t in tasks}) - len(inputs.unavailable)
    return _GatePlan(tasks, keys, n_reused)


def _store_unavailable(ctx: _RunContext, tube: Tube, corrections: Corrections) -> None:
    """Store a tube whose file is missing or refused as failed (flag and reason from the input check)."""
    code, reason = ctx.inputs.unavailable[tube.file]
    reviewed = bool(corrections.gates_for(tube.file))
    corr_sha = corrections.sha256_for(tube.file) if reviewed else None
    failed_now = TubeResult(tube=tube, error=reason, flags=[Flag(code, "fail", f"{tube.file}: {reason}")])
    # keyed by the refusal (no checksum): never taken for the result of a file that is back, or unreadable
    key = cache_key(code, ctx.template.sha256, tube, corr_sha)
    ctx.store.put_tube(failed_now, variant=REVIEWED if reviewed else AUTO, cache_key=key, run_id=ctx.run_id,
                       template_sha256=ctx.template.sha256, version=__version__, corrections_sha256=corr_sha)


class _EarlyScoring:
    """Scores each patient as soon as the last of its tubes is stored, while the workers gate the others
    (this process would otherwise wait for them), and counts scored patients on the progress display.

    A patient is scored exactly as :func:`_score` scores it — its tubes read back from the store, corrected
    ones checked for plausibility and stale corrections marked, :func:`score_results` — and its scores are
    stored under the same key, so that :func:`_score` reuses them: the tables are those of scoring after
    gating. Off when patients are classified relative to the cohort (scored together)."""

    def __init__(self, ctx: _RunContext, corrections: Corrections, stale: Sequence[tuple[Any, str]]) -> None:
        self.ctx, self.corrections, self.stale = ctx, corrections, stale
        self.thresholds = corrections.thresholds()
        self.by_patient: dict[str, list[Tube]] = {}
        for tube in ctx.tubes:
            self.by_patient.setdefault(tube.patient, []).append(tube)
        self.enabled = analysis_config(ctx.template).classes.cohort_mode == "none"
        # reports drawn during the gating need spare processes: not with --workers 1, --no-reports or Dask
        self.reports = (_EarlyReports(ctx) if self.enabled and ctx.options.reports and ctx.workers > 1
                        and not ctx.options.scheduler else None)
        self.recomputed: list[str] = []
        self.read: dict[str, tuple[TubeResult, tuple[Flag, ...]]] = {}  # file -> (result as read, its flags then)
        self.counted: set[str] = set()
        self.task: Any = None

    def show(self) -> None:
        """Put "Scoring patients, n of N" on the progress display (once)."""
        if self.task is None:
            self.task = self.ctx.progress.add_task("Scoring patients", total=len(self.by_patient), note="")

    def count(self, patient: str) -> None:
        """Advance the progress display by one patient (once per patient)."""
        self.show()
        if patient not in self.counted:
            self.counted.add(patient)
            self.ctx.progress.advance(self.task)

    def tube_stored(self, tube: Tube) -> None:
        """Called after each stored result: score the tube's patient if none of its tubes is still to gate."""
        pending = self.ctx.pending or {}
        tubes = self.by_patient[tube.patient]
        if not self.enabled or any(pending.get(t.file) for t in tubes):
            return
        results = []
        for t in tubes:
            res = self.ctx.store.get_tube(t.file, REVIEWED if self.corrections.gates_for(t.file) else AUTO)
            if res is None:  # _current_results says so
                return
            results.append(res)
        for r in results:  # as read, before the marks below (see _current_results)
            self.read[r.tube.file] = (r, tuple(r.flags))
        _mark_results(results, self.ctx.store, self.ctx.template.population, self.stale)
        score_results(results, self.ctx.template, self.thresholds, self.ctx.store, self.recomputed,
                      on_patient=self.count)
        if self.reports is not None:  # the stored scores, as the run's scoring reads them back
            scores = score_results(results, self.ctx.template, self.thresholds, self.ctx.store)
            with_reviews(self.ctx, scores, self.corrections)
            self.reports.submit(tube.patient, results, scores)


class _EarlyReports:
    """Each patient's reports rendered in worker processes as soon as the patient is scored, while the
    workers gate the others (:class:`bat_analysis.report._html.PatientRendering`), into the staging folder in
    which :func:`render` then completes the run's reports. A patient's reports depend only on its tubes, its
    scores and the run's details, all final once it is scored. They are discarded (rendered again at the end)
    when the reviewers' log changed in the meantime, or when the run does not write reports after all."""

    def __init__(self, ctx: _RunContext) -> None:
        self.ctx = ctx
        self.rendering: Any = None
        self.staging: Path | None = None
        self.log_mark: int | None = None

    def submit(self, patient: str, results: Sequence[TubeResult], scores: Any) -> None:
        if self.rendering is None:
            try:
                from .report._html import PatientRendering
            except ImportError:  # no renderer: render() says so at the end
                return
            from ._fileio import temporary_dir

            ctx = self.ctx
            self.log_mark = log_mark(ctx.store)
            self.staging = temporary_dir(ctx.out, "reports-staging")
            info = {**run_info(ctx.store, ctx.run_id), "population": ctx.template.population}
            # forked, like the gating workers (a local run: no Dask client's threads), from this process, which
            # holds the renderer and the analysis already imported
            self.rendering = PatientRendering(self.staging, info, workers=ctx.workers, fork=True)
        self.rendering.submit(patient, results, scores)

    def usable(self) -> bool:
        """Whether what was rendered still holds (the reviewers' log is as it was at the first rendering)."""
        return self.rendering is not None and self.log_mark == log_mark(self.ctx.store)

    def close(self) -> None:
        """End the rendering processes and remove the staging folder if :func:`render` did not take it."""
        from ._fileio import remove_path

        if self.rendering is not None:
            self.rendering.close()
            self.rendering = None
        if self.staging is not None and os.path.lexists(self.staging):
            remove_path(self.staging)
        self.staging = None


def log_mark(store: ResultStore) -> int:
    """The id of the reviewers' log's latest entry (0 when empty): it changes with every decision."""
    return max((int(e["id"]) for e in store.correction_log()), default=0)


def _mark_results(results: Sequence[TubeResult], store: ResultStore, population: str,
                  stale: Sequence[tuple[Any, str]]) -> None:
    """Flag corrected tubes whose population looks implausible, the tubes of stale corrections, and the tubes
    a reviewer excluded (failed, so that scoring leaves them out)."""
    from .review._log import mark_stale
    from .review._status import mark_excluded

    mark_implausible(results, store, population)
    mark_stale(results, stale)
    mark_excluded(results, store.correction_log())


def _gate(ctx: _RunContext, plan: _GatePlan, corrections: Corrections, early: _EarlyScoring | None = None) -> None:
    """Gate the planned tasks (local processes or a Dask cluster), storing each result as it arrives (and
    scoring each patient whose tubes are all stored, with ``early``)."""
    from .gating.tube import gate_tube  # noqa: F401  (imported once here; forked workers inherit it)

    if not ctx.options.scheduler and ctx.workers > 1:
        preload_gating()

    tasks, options = plan.tasks, ctx.options
    gate = ctx.progress.add_task("Gating tubes", total=len(tasks), note="")
    if early is not None:
        early.show()  # below the gating: patients are scored as their tubes are stored
    limit = options.tube_timeout_s or None
    executor = (run_dask(tasks, options.scheduler, limit) if options.scheduler
                else run_local(tasks, ctx.workers, limit))
    n_fail_now = 0
    for i, result in executor:
        task = tasks[i]
        corr_sha = corrections.sha256_for(task.tube.file) if task.variant == REVIEWED else None
        ctx.store.put_tube(result, variant=task.variant, cache_key=plan.keys[i], run_id=ctx.run_id,
                           template_sha256=ctx.template.sha256, version=__version__, corrections_sha256=corr_sha)
        n_fail_now += 0 if result.ok else 1
        if ctx.pending is not None:
            left = ctx.pending.get(task.tube.file, 1) - 1
            if left > 0:
                ctx.pending[task.tube.file] = left
            elif ctx.pending.pop(task.tube.file, None) is not None:
                ctx.n_gated_now += 1
        ctx.progress.update(gate, advance=1, note=f"{n_fail_now} failed" if n_fail_now else "")
        if ctx.on_result is not None:
            ctx.on_result(i, result)
        if early is not None:
            early.tube_stored(task.tube)
        if ctx.n_gated_now == 1 and options.reports:
            _preload_renderer()


# What gate_tube imports on its first call (the estimators' image libraries, ~0.25 s), as (module, name)
# (scikit-image loads a submodule when one of its names is first taken): imported by the run before its workers
# start, which then inherit them (forked) instead of each importing them again. The gating does not import
# scipy.signal (~0.4 s more; see gating/_peaks.py and gating/_simplify.py).
GATING_LIBRARIES = (("scipy.ndimage", "label"), ("scipy.spatial", "ConvexHull"),
                    ("skimage.feature", "peak_local_max"), ("skimage.measure", "find_contours"),
                    ("skimage.segmentation", "watershed"), ("flowutils.gating", "points_in_polygon"),
                    ("flowutils.transforms", "logicle"), ("flowutils.compensate", "compensate"))


def preload_gating() -> None:
    """Import :data:`GATING_LIBRARIES` in this process (each is imported only once)."""
    import importlib

    for module, name in GATING_LIBRARIES:
        getattr(importlib.import_module(module), name)


def _preload_renderer() -> None:
    """Import the report renderer (matplotlib and the PDF writer, ~0.7 s) and cut the PDF's fonts (~50 ms) while
    the workers gate, rather than after the gating while they wait (a run that gated a tube re-renders its
    reports); the processes that draw reports during the gating are forked from this one later, holding them
    (each would otherwise cut the fonts for itself)."""
    try:
        import bat_analysis.report  # noqa: F401
        from bat_analysis.report import _pdf
    except ImportError:  # not installed: render() says so in the run's report note
        return
    try:
        _pdf._cut_fonts()
    except Exception:  # noqa: BLE001 - not kept: each PDF tries again, and render() reports its failure
        pass


def _current_results(ctx: _RunContext, corrections: Corrections, stale: Sequence[tuple[Any, str]],
                     plan: _GatePlan, read: Mapping[str, tuple[TubeResult, tuple[Flag, ...]]] | None = None
                     ) -> list[TubeResult]:
    """Every tube's current result read back from the store (reviewed where a gate is corrected), stale
    corrections flagged; raises NothingAnalysedError (the run recorded as failed) when every tube failed.
    ``read`` holds results this run already read back after their last storing (``_EarlyScoring``), with their
    flags as read: copies of those are taken instead of reading the store again (the originals may still be on
    their way to a drawing process)."""
    store = ctx.store
    read = read or {}
    results: list[TubeResult] = []
    for tube in ctx.tubes:
        variant = REVIEWED if corrections.gates_for(tube.file) else AUTO
        if tube.file in read:
            before, flags = read[tube.file]
            results.append(replace(before, flags=list(flags)))
            continue
        res = store.get_tube(tube.file, variant)
        if res is None:
            raise BatError("a gated tube is missing from the results store", source=str(store.path),
                           field=tube.file, expected="re-run the same command")
        results.append(res)
    _mark_results(results, ctx.store, ctx.template.population, stale)
    failed = [(r.tube.file, r.error or "") for r in results if not r.ok]
    if len(failed) == len(results):
        store.end_run(ctx.run_id, status="failed", n_tubes=len(ctx.tubes), n_gated=len(plan.tasks),
                      n_reused=plan.n_reused, n_failed=len(failed))
        reasons = "\n".join(f"  - {f}: {why}" for f, why in failed[:10])
        raise NothingAnalysedError(f"no tube could be analysed ({len(failed)} of {len(failed)} failed):\n"
                                   f"{reasons}", source=str(ctx.data_dir),
                                   expected="readable FCS files matching the template's panel; "
                                            "try 'bat inspect FILE' on one of them")
    return results


def _score(ctx: _RunContext, results: list[TubeResult], corrections: Corrections, early: _EarlyScoring) -> _Scored:
    """Score every patient (reusing unchanged patients' stored scores, those ``early`` stored during the
    gating included) and store the run's tables with their review-status columns; the tables are read back
    from the store, as every later reader sees them."""
    recomputed = list(early.recomputed)
    scores = score_results(results, ctx.template, corrections.thresholds(), ctx.store, recomputed,
                           on_patient=early.count)
    ctx.store.put_tables(ctx.run_id, *with_reviews(ctx, scores, corrections))
    tubes_df, patients_df = ctx.store.tables()
    return _Scored(scores, tubes_df, patients_df, recomputed)


def with_reviews(ctx: _RunContext, scores: Any, corrections: Corrections) -> tuple[Any, Any]:
    """The run's tables with the review-status columns as the store's log has them now; ``scores.tubes`` gains
    those columns too (the reports and the gallery show each tube's review status)."""
    from .review._status import review_tables, with_review_status

    tables = review_tables(ctx.store, ctx.run_id, annotate_reviews(scores.tubes, corrections), scores.patients)
    scores.tubes = with_review_status(scores.tubes, tables[0])
    return tables


def _write_tables(ctx: _RunContext, scored: _Scored) -> list[Path]:
    """Write tubes.csv, patients.csv, results.xlsx (and the parquet files); on a write failure the earlier
    tables and reports, which no longer match the store, are withdrawn and the WriteError says so."""
    from ._outputs import write_tables

    about = about_sheet(ctx.template, ctx.command, ctx.inputs.checksums, ctx.layout_sha, ctx.run_id)
    try:
        return write_tables(ctx.out, scored.tubes, scored.patients, about, parquet=ctx.options.parquet,
                            tube_markers=scored.scores.tube_markers)
    except WriteError as exc:  # the previous tables and reports no longer match the store: withdraw them
        withdrawn = withdraw_outputs(ctx.out, TABLE_OUTPUTS + REPORT_OUTPUTS, ctx.store)
        exc.add_note(withdrawn[:1].upper() + withdrawn[1:] + ".")
        raise


def _write_reports(ctx: _RunContext, summary: RunSummary, results: list[TubeResult], scores: Any,
                   thresholds: dict[tuple[str, str], float], early: _EarlyReports | None = None) -> None:
    """Write the reports and review gallery unless ``--no-reports`` or they are current (drawn from the same
    results, thresholds and code, and all present); sets ``summary.reports`` and its note or error. Reports
    that are not current are withdrawn from the folder (never shown beside this run's tables)."""
    out, store = ctx.out, ctx.store
    key = reports_key(store, results, thresholds, ctx.run_id)
    current = store.get_meta("reports_key") == key
    if not ctx.options.reports:
        summary.reports = "not_written"
        summary.report_note = f"reports not written (--no-reports); write them later with 'bat report {out}'"
    elif current and not reports_missing(out, results):
        summary.reports = "kept"
        summary.report_note = "reports and review gallery kept: nothing changed since they were written"
    else:
        rep = ctx.progress.add_task("Writing reports", total=None, note="files")
        try:
            paths, summary.report_note = render(out, store, results, scores, ctx.run_id, workers=ctx.workers,
                                                population=ctx.template.population, early=early,
                                                on_progress=lambda n, total: ctx.progress.update(
                                                    rep, completed=n, total=total))
            summary.reports = "written" if summary.report_note is None else "not_written"
        except Exception as exc:  # the tables and the store are complete: say so, do not lose them
            paths = []
            why = str(exc) if isinstance(exc, WriteError) else f"{type(exc).__name__}: {exc}"
            summary.reports = "failed"
            summary.report_error = (f"the reports could not be written ({why}); the tables and the results "
                                    f"store are complete; retry with 'bat report {out}'")
        summary.outputs += paths
        current = summary.reports == "written"
        if current:
            store.set_meta("reports_key", key)
    if not current and any(os.path.lexists(out / name) for name in REPORT_OUTPUTS):
        withdrawn = withdraw_outputs(out, REPORT_OUTPUTS, store)
        if summary.report_error:
            summary.report_error += "; " + withdrawn
        else:
            summary.report_note = f"{summary.report_note}; {withdrawn}"


# ------------------------------------------------------------------------------------------------ reduce
def analysis_config(template: Any) -> Any:
    """The analysis configuration of a template's ``analysis:``/``qc:`` sections."""
    from .analysis.config import AnalysisConfig

    return AnalysisConfig.from_mapping(template.analysis_mapping() or None, source=template.source)


def _merge_scores(parts: Sequence[ExperimentScores]) -> ExperimentScores:
    """One experiment's scores from per-patient ones: tables concatenated in patient order, fits, thresholds,
    effects and references (keyed by patient) merged; the analysis configuration is the run's, the same in
    every part."""
    import pandas as pd

    from .analysis.score import ExperimentScores

    def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        if len(frames) == 1:
            return frames[0]
        # a column with no value in one patient's table (no tube gated) takes the type it has where it holds
        # values: pandas is changing how such columns count towards the result's types (FutureWarning), and
        # the table must not change with the pandas version
        held = {c: f[c].dtype for f in reversed(frames) for c in f.columns if f[c].notna().any()}
        return pd.concat([f.astype({c: held[c] for c in f.columns
                                    if c in held and held[c].kind in "fOUSM" and f[c].dtype != held[c]
                                    and f[c].isna().all()}) for f in frames], ignore_index=True)

    return ExperimentScores(tubes=concat([p.tubes for p in parts]), patients=concat([p.patients for p in parts]),
                            fits={k: v for p in parts for k, v in p.fits.items()},
                            thresholds={k: v for p in parts for k, v in p.thresholds.items()},
                            effects={k: v for p in parts for k, v in p.effects.items()},
                            config=parts[0].config,
                            references={k: v for p in parts for k, v in p.references.items()},
                            tube_markers=concat([p.tube_markers for p in parts]))


def _patient_key(results: Sequence[TubeResult], store: ResultStore, config: Any,
                 thresholds: dict[tuple[str, str], Any]) -> str:
    stored = store.stored_tubes()
    tube_keys = []
    for r in results:
        variant = store.current_variant(r.tube.file)
        tube_keys.append([r.tube.file, variant, stored[(r.tube.file, variant)].cache_key])
    patient = results[0].tube.patient
    thr = sorted([list(k), v] for k, v in thresholds.items() if k[0] == patient)
    flags = [[r.tube.file, f.code, f.severity, f.message] for r in results for f in r.flags]  # incl. stale marks
    payload = to_json([__version__, code_fingerprint("analysis", "records.py"), tube_keys, repr(config), thr, flags])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def score_results(results: Sequence[TubeResult], template: Any, thresholds: dict[tuple[str, str], float],
                  store: ResultStore | None = None, recomputed: list[str] | None = None, *,
                  on_patient: Callable[[str], None] | None = None) -> Any:
    """Score the experiment patient by patient; a patient whose inputs did not change reuses its stored scores.

    Patients are independent (thresholds, metrics, fits and classes are per patient and arm), so scoring them
    one at a time gives the same numbers as scoring all at once; only the affected patients are recomputed
    after a reviewer's correction. A cohort-relative classification needs every patient: scored together.
    ``on_patient(patient)`` is called as each patient's scores are ready (for a progress display).

    Scoring uses one BLAS/OpenMP thread, as the gating workers do: its many small fits (the resting-peak
    model's k-means initialisations) lose to the start-up of threads what they gain (a plate of 8 patients:
    0.85 s of CPU instead of 1.5-3 s), and the threads would compete with the gating workers.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _score_results(results, template, thresholds, store, recomputed, on_patient)


def _score_results(results: Sequence[TubeResult], template: Any, thresholds: dict[tuple[str, str], float],
                   store: ResultStore | None, recomputed: list[str] | None,
                   on_patient: Callable[[str], None] | None) -> Any:
    from .analysis.score import score_experiment

    config = analysis_config(template)
    cohort = config.classes.cohort_mode != "none"
    if cohort or store is None:
        everyone = sorted({r.tube.patient for r in results})
        if recomputed is not None:
            recomputed += everyone
        scores = score_experiment(list(results), config, threshold_overrides=thresholds or None)
        for patient in everyone if on_patient is not None else []:
            on_patient(patient)
        return scores
    by_patient: dict[str, list[TubeResult]] = {}
    for r in results:
        by_patient.setdefault(r.tube.patient, []).append(r)
    parts = []
    for patient in sorted(by_patient):
        group = by_patient[patient]
        key = _patient_key(group, store, config, thresholds)
        cached = store.get_patient_scores(patient, key)
        if cached is None:
            own = {k: v for k, v in thresholds.items() if k[0] == patient}
            cached = score_experiment(group, config, threshold_overrides=own or None)
            store.put_patient_scores(patient, key, cached)
            if recomputed is not None:
                recomputed.append(patient)
        parts.append(cached)
        if on_patient is not None:
            on_patient(patient)
    return _merge_scores(parts)


def annotate_reviews(tubes_df: Any, corrections: Any) -> Any:
    """Add ``manually_adjusted`` and ``review_note`` columns (after the contract's columns)."""
    df = tubes_df.copy()
    notes = []
    for file, patient, arm in zip(df["file"], df["patient"], df["pretreatment"]):
        notes.append(corrections.note_for(file, patient, arm))
    df["manually_adjusted"] = [bool(n) for n in notes]
    df["review_note"] = notes
    return df


def about_sheet(template: Any, command: str, checksums: dict[str, str | None], layout_sha: str,
                run_id: int) -> dict[str, Any]:
    """The 'about' sheet of results.xlsx: software, template, inputs and their checksums, date."""
    from .store import utc_now

    about: dict[str, Any] = {"software": "bat_analysis", "version": __version__, "run": run_id,
                             "date (UTC)": utc_now(), "command": command, "template": template.name,
                             "template sha256": template.sha256, "layout sha256": layout_sha}
    for file in sorted(checksums):
        about[f"sha256 {file}"] = checksums[file] or "unreadable"
    return about


def run_info(store: ResultStore, run_id: int | None = None) -> dict[str, Any]:
    """Run details for reports: version, template, command, date, checksums, manual adjustments."""
    runs = store.runs()
    run = next((r for r in runs if r["id"] == run_id), runs[-1] if runs else {})
    return {"version": run.get("version"), "template": run.get("template_name"),
            "template_sha256": run.get("template_sha256"), "command": run.get("command"),
            "date": run.get("started_at"), "run_id": run.get("id"),
            "checksums": store.inputs(run["id"]) if run else {},
            "manual_adjustments": [e for e in store.run_corrections(run["id"]) if e["status"] == "applied"]
            if run else []}


def reports_key(store: ResultStore, results: Sequence[TubeResult], thresholds: dict[tuple[str, str], float],
                run_id: int) -> str:
    """What the reports are drawn from: every tube's stored result key, the thresholds set by reviewers and
    the analysis and report code. Reports already written from the same key are kept as they are."""
    stored = store.stored_tubes()
    keys = []
    for r in results:
        variant = store.current_variant(r.tube.file)
        keys.append([r.tube.file, variant, stored[(r.tube.file, variant)].cache_key])
    payload = to_json([code_fingerprint("analysis", "report", "records.py"), keys,
                       sorted([list(k), v] for k, v in thresholds.items()),
                       [[e["id"], e["status"]] for e in store.run_corrections(run_id)],
                       max((e["id"] for e in store.correction_log()), default=0),  # decisions since (review status)
                       [[r.tube.file, f.code, f.message] for r in results for f in r.flags]])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def reports_missing(out: Path, results: Sequence[TubeResult]) -> bool:
    """Whether the review gallery or any patient's HTML/PDF report is absent from ``out``."""
    try:
        from .report._html import report_filename
    except ImportError:
        return True
    if not (out / "review" / "index.html").is_file():
        return True
    for patient in {r.tube.patient for r in results}:
        stem = report_filename(patient)
        if not ((out / "reports" / f"{stem}.html").is_file() and (out / "reports" / f"{stem}.pdf").is_file()):
            return True
    return False


def remove_departed_reports(out: Path, patients: set[str]) -> list[Path]:
    """Delete ``reports/<patient>.html|pdf`` of patients who are not in the run (left by an earlier run of
    an edited layout, or of another experiment set aside with --replace); returns what was removed."""
    folder = out / "reports"
    if not folder.is_dir():
        return []
    try:
        from .report._html import report_filename
    except ImportError:  # reports cannot have been written by this installation
        return []
    keep = {report_filename(p) for p in patients}
    removed = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".html", ".pdf") and not path.name.startswith(".") and path.stem not in keep \
                and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def corrections_note(corrections: Any, entries: Sequence[dict[str, Any]], options: RunOptions,
                     n_stale: int = 0) -> str | None:
    """The plain-words line saying which reviewer corrections a run applied and what it added to the store."""
    n = len(corrections.gates) + len(corrections.threshold_list)
    added = sum(1 for e in entries if e["action"] == "apply")
    withdrawn = sum(1 for e in entries if e["action"] == "withdraw")
    if not (n or added or withdrawn or n_stale):
        return None
    text = f"{n} reviewer correction{'s' if n != 1 else ''} from the store applied"
    if n_stale:
        text += f", {n_stale} stale (not applied)"
    given = [str(p) for p in (options.overrides, options.gates_from) if p is not None]
    if given:
        text += (f" ({added} new or changed, {withdrawn} withdrawn by {' and '.join(given)})")
    return text


@contextlib.contextmanager
def counting_files(paths: Sequence[Path], on_count: Callable[[int], None] | None,
                   interval_s: float = 0.2) -> Iterator[None]:
    """While the block runs, call ``on_count(n)`` from a background thread whenever the number ``n`` of
    ``paths`` that exist changes (files written atomically appear whole), and once more at the end."""
    import threading

    if on_count is None:
        yield
        return
    done = threading.Event()

    def count() -> int:
        return sum(1 for p in paths if os.path.exists(p))

    def watch() -> None:
        seen = -1
        while not done.wait(interval_s):
            n = count()
            if n != seen:
                seen = n
                on_count(n)

    watcher = threading.Thread(target=watch, daemon=True, name="bat-report-progress")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        on_count(count())


def report_files(out: Path, patients: Sequence[str]) -> list[Path]:
    """The files a full rendering writes into ``out``: each patient's HTML and PDF report and the gallery."""
    from .report._html import report_filename

    return [*(out / "reports" / f"{report_filename(p)}.{kind}" for p in sorted(set(patients))
              for kind in ("html", "pdf")), out / "review" / "index.html"]


def render(out: Path, store: ResultStore, results: Sequence[TubeResult], scores: Any, run_id: int | None,
           patients: list[str] | None = None, workers: int | None = None,
           population: str = "", on_progress: Callable[[int, int], None] | None = None,
           early: _EarlyReports | None = None) -> tuple[list[Path], str | None]:
    """Per-patient reports and the review gallery, when the report renderer is installed; ``population``
    (the gating template's) names the gated cells in them.

    A full rendering is built in a staging folder inside ``out`` and swapped in (``reports/``, then
    ``review/``): a failure (a full disk) leaves the previous reports whole, never a mix of old and new;
    ``on_progress(n, N)`` is told, as they appear, how many of its N files (:func:`report_files`) are
    written. Reports of chosen patients are written in place, each file atomically, into real folders (a
    symbolic link in place of ``reports/`` is refused). ``early`` holds the patients a run rendered during its
    gating, into its own staging folder: a full rendering completes that folder instead of starting anew."""
    from ._fileio import make_dir, remove_path, replace_dir, temporary_dir

    try:
        from .report import render_reports
    except ImportError as exc:
        return [], f"reports not written: the report renderer is not available ({exc})"
    info = {**run_info(store, run_id), "population": population}
    if patients:
        make_dir(out / "reports", inside=out)
        return render_reports(out, list(results), scores, info, patients=patients, workers=workers).files(), None
    rendering = None
    if early is not None and early.usable():
        staging, rendering = early.staging, early.rendering
    else:
        if early is not None:
            early.close()
        staging = temporary_dir(out, "reports-staging")
    expected = report_files(staging, [r.tube.patient for r in results])
    try:
        with counting_files(expected, on_progress and (lambda n: on_progress(n, len(expected)))):
            paths = render_reports(staging, list(results), scores, info, workers=workers, rendering=rendering)
        for name in REPORT_OUTPUTS:
            if os.path.lexists(staging / name):
                replace_dir(staging / name, out / name)
    except WriteError as exc:  # name the file the user knows, not the staging folder's copy
        raise WriteError(str(exc.source).replace(str(staging), str(out)), exc.cause, exc.todo,
                         detail=exc.detail) from exc
    finally:
        if rendering is not None:
            rendering.close()  # its processes write into the staging folder: ended before it is removed
        try:
            remove_path(staging)
        except BatError as exc:
            print(f"warning: {exc}", file=sys.stderr)
    return [out / p.relative_to(staging) if p.is_relative_to(staging) else p for p in paths.files()], None


def withdraw_outputs(out: Path, names: Sequence[str], store: ResultStore | None = None) -> str:
    """Move outputs that no longer match the results store (``names`` in ``out``) into
    ``out/outdated-<UTC time>/``, so that they are never taken for the current run's (a rename: it works on a
    full disk); if even that fails, remove them. Returns a sentence saying what was done."""
    from ._fileio import make_dir, remove_path

    present = [name for name in names if os.path.lexists(out / name)]
    if store is not None:
        try:
            store.set_meta("reports_key", "")
        except (BatError, sqlite3.Error):  # the reports are gone from their place: they are re-rendered anyway
            pass
    if not present:
        return "no earlier tables or reports were left in the folder"
    folder = out / f"outdated-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    try:
        make_dir(folder, inside=out)
        for name in present:
            os.rename(out / name, folder / name)
        return (f"the earlier {', '.join(present)} no longer match the results and were moved to {folder}")
    except (BatError, OSError):
        moved = [name for name in present if not os.path.lexists(out / name)]
        removed, kept = [], []
        for name in present:
            if name in moved:
                continue
            try:
                remove_path(out / name)
                removed.append(name)
            except BatError:
                kept.append(name)
        text = f"the earlier {', '.join(removed)} no longer matched the results and were removed" if removed else ""
        if moved:
            text += ("; " if text else "") + f"{', '.join(moved)} were moved to {folder}"
        if kept:
            text += (("; " if text else "") + f"OUTDATED, could not be moved or removed: {', '.join(kept)}"
                     " — do not use them")
        return text


# ------------------------------------------------------------------------------------------------ after a run
def sample_data(fallback_dir: Path, *, quiet: bool = True) -> Path:
    """The bundled sample experiment: package data ``bat_analysis.sample_fcs``, else the checkout's
    ``sample_fcs/``, else regenerated with the simulator into ``fallback_dir``."""
    from importlib import resources

    candidates: list[Path] = []
    try:
        # a folder without __init__.py is a namespace package: files() is then a MultiplexedPath, whose
        # children (not itself) are plain paths
        layout = resources.files("bat_analysis.sample_fcs").joinpath("layout.csv")
        candidates.append(Path(str(layout)).parent)
    except ModuleNotFoundError:
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "sample_fcs")
    for folder in candidates:
        if (folder / "layout.csv").is_file() and any(folder.glob("*.fcs")):
            return folder
    fallback_dir = Path(fallback_dir)
    if not (fallback_dir / "layout.csv").is_file():
        from .simulate import SAMPLE_ARGUMENTS, simulate_experiment

        if not quiet:
            print(f"sample data not installed: simulating it into {fallback_dir}", file=sys.stderr)
        simulate_experiment(fallback_dir, **SAMPLE_ARGUMENTS)
    return fallback_dir


@dataclass
class StoredRun:
    """A finished run read back from its store: its tubes' current results, scores and run details."""

    results: list[TubeResult]
    scores: Any
    info: dict[str, Any]
    template: Any
    run_id: int
    notes: list[str] = field(default_factory=list)


def load_run(out: Path | str, *, score: bool = True) -> StoredRun:
    """The last completed run of an output folder, from its results store (nothing is re-gated)."""
    from .gating.templates import load_template, parse_template

    out = Path(out)
    with ResultStore.in_folder(out, create=False) as store:
        done = [r for r in store.runs() if r["status"].startswith("completed")]
        if not done:
            raise BatError("no completed run in this folder", source=str(out),
                           expected="the --out folder of a 'bat run' that finished; run it (again) first")
        run = done[-1]
        info = run["info"]
        if info.get("template_text"):
            template = parse_template(info["template_text"], source=info.get("template_source") or run["template_name"])
        else:
            template = load_template(run["template_name"])
        files = [f for f in store.inputs(run["id"]) if ":" not in f]
        results = []
        for f in files:
            variant = store.current_variant(f)
            res = store.get_tube(f, variant) if variant else None
            if res is None:
                raise BatError("a tube of the last run is missing from the store", source=str(store.path),
                               field=f, expected="re-run 'bat run' with the same arguments")
            results.append(res)
        considered = store.run_corrections(run["id"])
        thresholds = {(e["patient"], e["pretreatment"]): float(e["value"])
                      for e in considered if e["kind"] == "threshold" and e["status"] == "applied"}
        _mark_results(results, store, template.population,
                      [(e, e["note"] or "stale correction") for e in considered if e["status"] == "stale"])
        scores = score_results(results, template, thresholds, store) if score else None
        return StoredRun(results=results, scores=scores, info=run_info(store, run["id"]), template=template,
                         run_id=int(run["id"]), notes=list(store.warnings))


def rerender(out: Path | str, patients: list[str] | None = None) -> tuple[list[Path], str | None]:
    """Re-render reports and the review gallery of a finished run from its store."""
    if not (Path(out) / STORE_NAME).is_file():
        raise BatError("no results store here", source=str(out),
                       expected=f"an output folder written by 'bat run' (containing {STORE_NAME})")
    stored = load_run(out)
    if patients:
        known = {r.tube.patient for r in stored.results}
        unknown = sorted(set(patients) - known)
        if unknown:
            raise BatError(f"unknown patient(s): {', '.join(unknown)}", source=str(out), field="--patient",
                           expected=f"one of {', '.join(sorted(known))}")
    for note in stored.notes:
        print(f"warning: {note}", file=sys.stderr)
    from .review._status import write_review_tables

    with stopping_on_ctrl_c(), RunLock(out), ResultStore.in_folder(out, create=False) as store:
        sums = stored.info.get("checksums") or {}
        about = about_sheet(stored.template, stored.info.get("command") or "",
                            {f: v for f, v in sums.items() if ":" not in f},
                            next((v for f, v in sums.items() if f.startswith("layout:")), "") or "", stored.run_id)
        write_review_tables(out, store, stored, about)  # the review-status columns as the log has them now
        return render(Path(out), store, stored.results, stored.scores, stored.run_id, patients=patients,
                      population=stored.template.population)


def export_gates(out: Path | str, fmt: str, dest: Path | str | None = None) -> list[Path]:
    """Export the gates of a finished run (as applied, corrections included) for FlowJo or Gating-ML."""
    from .review._exchange import export_run_gates

    if fmt not in ("gatingml", "flowjo"):
        raise BatError(f"unknown format {fmt!r}", field="--format", expected="gatingml or flowjo")
    if not (Path(out) / STORE_NAME).is_file():
        raise BatError("no results store here", source=str(out),
                       expected=f"an output folder written by 'bat run' (containing {STORE_NAME})")
    with RunLock(out):
        stored = load_run(out, score=False)
        with ResultStore.in_folder(out, create=False) as store:
            run = next(r for r in store.runs() if r["id"] == stored.run_id)
        data_dir = Path(run["info"].get("data_dir") or ".")
        if dest is None:
            from ._fileio import make_dir

            dest = make_dir(Path(out) / "gates", inside=out)  # a link in place of OUT/gates is refused
        return export_run_gates(stored.results, stored.template, data_dir, fmt, Path(dest))
