"""What a benchmark's table says about where it ran: the CPU's name and the source's commit (shared by the
benchmarks, which print them above their tables)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"


def source_commit(repo: Path) -> str:
    """``git describe --always --dirty`` of ``repo`` ("not a git checkout" where git cannot say)."""
    try:
        return subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
