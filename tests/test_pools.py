"""Process pools shut down after Ctrl-C ended their workers (``bat_analysis._pools``): a worker ended while it was
sending its result leaves half a message in the result pipe, on which the shutdown used to wait for ever."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent("""
    import os, signal, struct, sys, tempfile, time
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path
    from bat_analysis import _pools

    def half_sent(marker):
        # what a worker ended while sending its result leaves: the header of a 1000-byte message and 10 bytes
        frame = sys._getframe()
        while frame.f_code.co_name != "_process_worker":
            frame = frame.f_back
        frame.f_locals["result_queue"]._writer._send(struct.pack("!i", 1000) + b"x" * 10)
        Path(marker).write_text(str(os.getpid()))
        time.sleep(120)

    if __name__ == "__main__":
        marker = Path(tempfile.mkdtemp()) / "sending"
        pool = ProcessPoolExecutor(max_workers=1)
        pool.submit(half_sent, str(marker))
        while not marker.exists() or not marker.read_text():
            time.sleep(0.01)
        time.sleep(0.2)  # the executor's thread has read the header and waits for the rest
        if sys.argv[1] == "stopped":
            _pools.workers_stopped()  # what stopping_on_ctrl_c says before it ends the workers
        os.kill(int(marker.read_text()), signal.SIGTERM)
        _pools.shutdown(pool)
        print("shut down")
""")


def _shutdown_after_killing_a_sending_worker(mode: str, tmp_path, timeout: float = 60
                                             ) -> subprocess.CompletedProcess | None:
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    try:
        return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_a_pool_whose_workers_ctrl_c_ended_mid_result_shuts_down(tmp_path):
    """With the stop said (as Ctrl-C says it), the shutdown completes at once."""
    done = _shutdown_after_killing_a_sending_worker("stopped", tmp_path)
    assert done is not None, "the shutdown waited for ever on the half-sent result"
    assert done.returncode == 0 and "shut down" in done.stdout, done.stderr


@pytest.mark.slow
def test_without_the_stop_said_the_same_shutdown_waits_for_ever(tmp_path):
    """The scenario is the hang itself: the standard shutdown of the same pool does not return (within 10 s)."""
    assert _shutdown_after_killing_a_sending_worker("plain", tmp_path, timeout=10) is None
