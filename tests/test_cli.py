"""The console-script entry point (bat_analysis/cli.py: main)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bat_analysis import __version__, cli


@pytest.mark.parametrize("code", [0, 2])
def test_main_freezes_the_objects_on_the_way_out_whatever_the_exit(monkeypatch, code):
    calls = []

    def command():
        calls.append("command")
        raise SystemExit(code)

    monkeypatch.setattr(cli, "app", command)
    monkeypatch.setattr(cli.gc, "freeze", lambda: calls.append("freeze"))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == code
    assert calls == ["command", "freeze"]


def test_what_is_registered_to_run_at_exit_still_runs(tmp_path):
    program = ("import sys, tempfile; from bat_analysis.cli import main\n"
               f"folder = tempfile.TemporaryDirectory(dir={str(tmp_path)!r}); print(folder.name, flush=True)\n"
               "sys.argv = ['bat', '--version']; main()\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder, version = done.stdout.split()[0], done.stdout.split()[-1]
    assert version == __version__
    assert Path(folder).parent == tmp_path and not Path(folder).exists()
