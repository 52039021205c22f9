"""Text from the inputs made safe for a workbook, a terminal, rich and a file name (bat_analysis._textsafe)."""

from __future__ import annotations

import json
import os

import pytest
from rich.console import Console

from bat_analysis._textsafe import (MULTILINE_UNSAFE, for_terminal, for_xlsx, in_font, json_for_terminal,
                                    rich_text, safe_filename)


def test_terminal_text_escapes_controls_and_keeps_unicode() -> None:
    assert for_terminal("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert for_terminal("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert for_terminal("a\x9bb\x7fc") == "a\\x9bb\\x7fc"  # C1 CSI and DEL
    assert for_terminal("evil\u202etxt.fcs") == "evil\\u202etxt.fcs"  # right-to-left override
    assert for_terminal("line\nnext\tx\r") == "line\\nnext\\tx\\r"
    assert for_terminal("line\nnext\x1b[2J", multiline=True) == "line\nnext\\x1b[2J"
    assert for_terminal("Müller, 花粉 – CD63 µg/mL") == "Müller, 花粉 – CD63 µg/mL"
    assert for_terminal(3.5) == "3.5"


def test_rich_text_is_never_markup() -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(rich_text("[/bold] [red]x[/red] \x1b[31m"))
    assert console.export_text().strip() == "[/bold] [red]x[/red] \\x1b[31m"


def test_json_for_terminal_keeps_the_data() -> None:
    data = {"pns": "a\x1b[31m\x9b\u202eb", "ok": "Müller"}
    document = json_for_terminal(json.dumps(data, ensure_ascii=False, indent=2))
    assert "\x1b" not in document and "\x9b" not in document and "\u202e" not in document
    assert "Müller" in document
    assert json.loads(document) == data


def test_xlsx_text_escapes_only_what_a_workbook_cannot_hold() -> None:
    assert for_xlsx("a\x07b\x00c\x1b[1m") == "a\\x07b\\x00c\\x1b[1m"
    assert for_xlsx("tab\tlf\ncr\r=1+1 +1 -1 @x µ") == "tab\tlf\ncr\r=1+1 +1 -1 @x µ"
    assert for_xlsx(1.5) == 1.5 and for_xlsx(None) is None


@pytest.mark.parametrize("name", ["P01", "P-01_a.b", "x.fcs", "Patient_7", "BAT-202401", "P01-abcdef"])
def test_plain_names_are_kept(name: str) -> None:
    assert safe_filename(name) == name


def _valid(stem: str, tmp_path) -> None:
    assert 0 < len(stem.encode("utf-8")) <= 100
    assert "/" not in stem and "\\" not in stem and "\x00" not in stem and not stem.startswith(".")
    (tmp_path / f"{stem}.html").write_text("ok")  # the file system takes it
    assert (tmp_path / f"{stem}.html").read_text() == "ok"


@pytest.mark.parametrize("name", ["x" * 300, "..", ".", "/", "../../etc/passwd", "a/b", "a\\b", "", " ",
                                  "CON", "nul.txt", "com1", "\x1b[31m", "<script>alert(1)</script>",
                                  "$x^2$", "Müller", "花粉" * 200, "P01-abcdef", ".hidden", "\ud800"])
def test_any_identifier_gives_a_valid_file_name(name: str, tmp_path) -> None:
    stem = safe_filename(name)
    _valid(stem, tmp_path)
    assert stem.split(".")[0].lower() not in {"con", "nul", "com1", "prn", "aux"}


def test_distinct_identifiers_give_distinct_names() -> None:
    long_a, long_b = "P" * 300 + "a", "P" * 300 + "b"
    names = ["a b", "a/b", "a_b", "a\\b", "a:b", long_a, long_b, "..", ".", "CON", "con", "P01-abcdef",
             safe_filename("a b"), "Müller", "M_ller"]
    stems = [safe_filename(n) for n in names]
    assert len(set(stems)) == len(names), dict(zip(names, stems))
    assert safe_filename(long_a) == safe_filename(long_a)  # stable


def test_bounded_length_can_be_chosen() -> None:
    stem = safe_filename("gate " * 30, max_bytes=40)
    assert len(stem) <= 40 and stem.startswith("gate_gate")


@pytest.mark.skipif(os.name != "posix", reason="the NAME_MAX check is for POSIX file systems")
def test_long_id_fits_name_max_with_extension_and_temporary_prefix(tmp_path) -> None:
    stem = safe_filename("é" * 300)
    (tmp_path / f".{stem}.pdf.tmpabcdef").write_text("ok")


def test_a_plain_name_never_equals_a_hashed_one() -> None:
    hashed = safe_filename("a b")
    assert hashed.startswith("a_b~") and len(hashed) == len("a_b~") + 8
    assert safe_filename(hashed) != hashed  # an ID spelled like a hashed name is itself hashed


def test_in_font_escapes_what_the_font_cannot_draw_and_keeps_the_rest() -> None:
    held = frozenset("abc P01µ-")
    assert in_font("abc P01", held) == "abc P01"
    assert in_font("P01 花", held) == "P01 \\u82b1"
    assert in_font("a\x1bb", held) == "a\\x1bb"  # a control character, escaped whatever the font holds
    assert in_font("a\nb", held, MULTILINE_UNSAFE) == "a\nb"  # a kept line feed is not a glyph
    assert in_font("a\nb", held) == "a\\nb"
    assert in_font("", held) == ""
