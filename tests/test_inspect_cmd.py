"""``bat inspect FILE [--json]``: description, table, JSON, and exit 2 with one line for a refused file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bat_analysis._commands.inspect_cmd import register
from bat_analysis.io.fcs_write import write_fcs
from bat_analysis.io.inspect import describe_fcs

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"


def make_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """Group with sub-commands, like ``bat``."""

    register(app)
    return app


@pytest.fixture()
def tube(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    events = rng.uniform(0, 1000, size=(250, 5)).astype(np.float32)
    names = ["FSC-A", "SSC-A", "FITC-A", "PE-A", "Time"]
    markers = [None, None, "CD63", "CD203c", None]
    spill = (["FITC-A", "PE-A"], np.array([[1.0, 0.125], [0.03125, 1.0]]))
    return write_fcs(tmp_path / "P1_allergen_10.fcs", events, names, markers, spillover=spill,
                     keywords={"$CYT": "FACSCanto II", "$DATE": "01-JAN-2026"})


def test_describe(tube: Path) -> None:
    info = describe_fcs(tube)
    assert info["version"] == "3.1"
    assert info["cytometer"] == "FACSCanto II"
    assert info["n_events"] == 250 and info["n_datasets"] == 1
    kinds = {c["pnn"]: (c["kind"], c["marker"]) for c in info["channels"]}
    assert kinds == {"FSC-A": ("scatter", None), "SSC-A": ("scatter", None), "FITC-A": ("fluorescence", "CD63"),
                     "PE-A": ("fluorescence", "CD203c"), "Time": ("time", None)}
    assert info["spillover"]["channels"] == ["FITC-A", "PE-A"]
    assert info["spillover"]["matrix"] == [[1.0, 0.125], [0.03125, 1.0]]
    assert info["warnings"] == []


def test_inspect_table(tube: Path) -> None:
    result = CliRunner().invoke(make_app(), ["inspect", str(tube)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("FACSCanto II", "250", "FITC-A", "CD63", "CD203c", "spillover", "0.1250"):
        assert text in result.output


def test_inspect_json(tube: Path) -> None:
    result = CliRunner().invoke(make_app(), ["inspect", str(tube), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["n_events"] == 250
    assert [c["pnn"] for c in info["channels"]] == ["FSC-A", "SSC-A", "FITC-A", "PE-A", "Time"]


def test_inspect_refused_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.fcs"
    bad.write_bytes(b"FCS3.1    ")
    result = CliRunner().invoke(make_app(), ["inspect", str(bad)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and "broken.fcs" in lines[0] and "HEADER" in lines[0]
    assert "Traceback" not in result.output


def test_inspect_missing_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(make_app(), ["inspect", str(tmp_path / "nope.fcs")])
    assert result.exit_code == 2
    assert "not found" in result.stderr


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real FCS corpus not found at {CORPUS}")
def test_inspect_data_sets_and_warnings() -> None:
    path = CORPUS / "instruments/fcsparser/GuavaMuse/Guava Muse.fcs"
    result = CliRunner().invoke(make_app(), ["inspect", str(path), "--json", "--dataset", "2"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["n_datasets"] == 4 and info["dataset"] == 2 and info["n_events"] == 111496
    assert any("4 data sets" in w for w in info["warnings"])
    table = CliRunner().invoke(make_app(), ["inspect", str(CORPUS / "instruments/flowkit/test_comp_example.fcs")],
                               env={"COLUMNS": "160"})
    assert table.exit_code == 0
    assert "off-by-one" in table.output and "spillover (SPILL): 14x14" in table.output


def test_channel_kinds() -> None:
    from bat_analysis.io.inspect import channel_kind

    assert channel_kind("Time", True) == "time"
    assert [channel_kind(n, False) for n in ("FSC-A", "SS INT", "Width", "Event Count", "Time MSW", "FL1-A",
                                                 "BV421-A")] == ["scatter", "scatter", "other", "other", "other",
                                                                 "fluorescence", "fluorescence"]


HOSTILE = "[/bold] [red]red[/red] \x1b[31mESC\x1b[0m \x9b2J \x07"


@pytest.fixture()
def hostile_tube(tmp_path: Path) -> Path:
    """A file whose keywords and marker labels hold rich markup and terminal escape sequences."""
    rng = np.random.default_rng(2)
    events = rng.uniform(0, 1000, size=(50, 3)).astype(np.float32)
    return write_fcs(tmp_path / "hostile.fcs", events, ["FSC-A", "FITC-A", "Time"], [None, "CD63 " + HOSTILE, None],
                     keywords={"$CYT": "Canto " + HOSTILE, "$OP": HOSTILE, "$SRC": "[bold]src"})


def test_inspect_prints_keyword_text_as_data(hostile_tube: Path) -> None:
    """Trust item 7: rich markup in a keyword used to crash 'bat inspect' ([/bold]) or be obeyed ([red]);
    escape sequences reached the terminal. Now every keyword is printed literally, controls escaped."""
    result = CliRunner().invoke(make_app(), ["inspect", str(hostile_tube)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out
    visible = "[/bold] [red]red[/red] \\x1b[31mESC\\x1b[0m \\x9b2J \\x07"
    assert f"Canto {visible}" in out and "[bold]src" in out
    assert out.count(visible) >= 3  # $CYT, $OP and the channel's $PnS


def test_inspect_json_keeps_exact_values_without_raw_escapes(hostile_tube: Path) -> None:
    result = CliRunner().invoke(make_app(), ["inspect", str(hostile_tube), "--json"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x9b" not in result.stdout
    info = json.loads(result.stdout)
    assert info["cytometer"] == "Canto " + HOSTILE and info["acquisition"]["$OP"] == HOSTILE
    assert info["channels"][1]["pns"] == "CD63 " + HOSTILE


def test_refusal_message_is_printed_safely(tmp_path: Path) -> None:
    bad = tmp_path / "bad\x1b[31m[red].fcs"
    bad.write_bytes(b"FCS3.1    ")
    result = CliRunner().invoke(make_app(), ["inspect", str(bad)])
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr and "bad\\x1b[31m[red].fcs" in result.stderr
