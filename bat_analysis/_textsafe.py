"""Text from the inputs made safe for where it goes: a workbook cell, a terminal, rich, a file name.

Every string that comes from an input (layout cells, file names, FCS keywords such as ``$PnS``, template
names, error messages quoting them) is *data*. This module is the one place that decides how such text is
shown where it could otherwise act as something else:

- :func:`visible` writes control characters as escapes (``\\x1b``, ``\\x07``, ``\\u202e``); ordinary
  Unicode, letters of every script included, is kept as it is. The reports use it for text drawn in
  PDFs and plots (a font has no glyph for a control character; a line feed would break a table row).
- :func:`in_font` writes, after :func:`visible`, every character a font has no glyph for as its ``\\uNNNN``
  escape (a CJK ideograph in a patient ID drawn with DejaVu Sans): a PDF would otherwise leave it out of the
  line, a plot would draw an empty box, and two IDs could look alike. The PDF and the plots each give the
  characters their font holds.
- :func:`for_xlsx` makes a cell value storable in an ``.xlsx`` file: the control characters XML 1.0 cannot
  hold (C0 but tab, LF, CR; lone surrogates; U+FFFE, U+FFFF) are written as escapes by :func:`visible`,
  everything else is kept exactly. The workbook writer also stores every string as a string cell, never a
  formula (``outputs.write_xlsx``): ``=HYPERLINK(...)``, ``+1``, ``-1``, ``@x`` stay literal text.
- :func:`for_terminal` makes text printable on a terminal: every C0 and C1 control character (ESC, and so
  every ANSI escape sequence, included), DEL, bidirectional overrides and line separators are written as
  escapes, so nothing in a file can move the cursor, recolour, retitle or reorder the terminal. With
  ``multiline=True`` line feeds and tabs are kept (multi-line error messages, YAML), nothing else.
- :func:`rich_text` is a ``rich.text.Text`` holding :func:`for_terminal` text: rich prints it as it is,
  never as markup (``[/bold]`` in a keyword is shown, not parsed).
- :func:`json_for_terminal` escapes, inside a JSON document, the characters :func:`for_terminal` would
  escape; the document stays valid JSON with exactly the same data.
- :func:`safe_filename` maps any identifier to a valid, bounded file name (see its docstring).

Nothing here changes the data kept in the CSV tables, the results store or JSON: those keep the exact values.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# XML 1.0 cannot hold these (openpyxl refuses them with IllegalCharacterError)
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# bidirectional embeddings, overrides and isolates; line and paragraph separators
_TERMINAL_FORMAT = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_TERMINAL_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff{_TERMINAL_FORMAT}]")
MULTILINE_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff{_TERMINAL_FORMAT}]")
_JSON_UNSAFE = re.compile(f"[\x7f-\x9f\ud800-\udfff{_TERMINAL_FORMAT}]")  # json.dumps escapes C0 itself
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escaped(ch: str) -> str:
    """One character written as its escape: ``\\t``, ``\\n``, ``\\r``, ``\\xNN``, ``\\uNNNN``."""
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape(match: re.Match[str]) -> str:
    return escaped(match.group(0))


def visible(text: str, pattern: re.Pattern[str] = _TERMINAL_UNSAFE) -> str:
    """``text`` with every character matched by ``pattern`` (by default: every control character) written
    as an escape: ``\\t``, ``\\n``, ``\\r``, ``\\xNN``, ``\\uNNNN``."""
    return pattern.sub(_escape, text)


def in_font(text: str, held: frozenset[str] | set[str], pattern: re.Pattern[str] = _TERMINAL_UNSAFE) -> str:
    """``text`` as a font holding the characters ``held`` can show it: the characters ``pattern`` matches (see
    :func:`visible`) and every character not in ``held`` written as escapes (a line feed kept when ``pattern``
    keeps it: it is not drawn as a glyph)."""
    if not pattern.search(text) and held.issuperset(text.replace("\n", "")):
        return text
    return "".join(escaped(ch) if pattern.match(ch) or (ch not in held and ch != "\n") else ch for ch in text)


def for_xlsx(value: Any) -> Any:
    """A cell value an ``.xlsx`` file can store: strings without XML-illegal characters (escaped visibly);
    other values unchanged."""
    if isinstance(value, str):
        return _XML_ILLEGAL.sub(_escape, value)
    return value


def for_terminal(text: Any, *, multiline: bool = False) -> str:
    """``str(text)`` safe to print on a terminal: control characters and escape sequences escaped visibly
    (line feeds kept when ``multiline``)."""
    return visible(str(text), MULTILINE_UNSAFE if multiline else _TERMINAL_UNSAFE)


def rich_text(text: Any, style: str = "") -> Any:
    """A ``rich.text.Text`` of :func:`for_terminal` text: printed as data, never parsed as markup."""
    from rich.text import Text

    return Text(for_terminal(text), style=style)


def json_for_terminal(document: str) -> str:
    """A JSON document (from ``json.dumps``) with terminal-unsafe characters written as ``\\uNNNN``
    escapes. ``json.dumps`` already escapes C0 controls; this adds C1 controls, DEL, lone surrogates and
    bidirectional controls, which can only occur inside strings: the parsed data are unchanged."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", document)


# ------------------------------------------------------------------------------------------------ file names
FILENAME_MAX_BYTES = 100
HASH_CHARS = 8
HASH_MARK = "~"  # never in a name kept as it is: a plain name cannot equal another identifier's hashed one
_FILENAME_KEEP = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_filename(identifier: str, *, max_bytes: int = FILENAME_MAX_BYTES, fallback: str = "file") -> str:
    """A valid file name (stem) for any ``identifier``, distinct for distinct identifiers.

    Kept as it is when it already is a plain name: ASCII letters, digits, ``.``, ``_``, ``-``, not starting
    or ending with ``.`` or ``_``, not a reserved device name (``CON``, ``NUL.txt``, ``COM1``, ...) and at
    most ``max_bytes`` long. Otherwise every run of other characters (path separators, spaces, ``..``,
    non-ASCII letters, controls) becomes ``_``, the result is cut to leave room, and ``~`` + the first 8
    hex digits of the SHA-256 of the full identifier are appended: two identifiers that differ only in the
    characters replaced, or only after the cut, get different names, and as ``~`` is never kept, no plain
    name equals a hashed one. The result is never empty, never longer than ``max_bytes`` (ASCII, so bytes =
    characters), never starts with a dot and contains no path separator. (Names differing only in case
    stay distinct names, which a case-insensitive file system does not tell apart: the layout refuses patient
    IDs spelt so, ``io.layout.tubes_from_rows``.)
    """
    text = str(identifier)
    safe = _FILENAME_KEEP.sub("_", text).strip("._") or fallback
    if safe == text and len(safe) <= max_bytes and safe.split(".")[0].lower() not in _RESERVED:
        return safe
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    room = max(1, max_bytes - HASH_CHARS - 2)  # a "_" may be added to a reserved name
    head = safe[:room].rstrip("._") or fallback[:room]
    first, dot, rest = head.partition(".")
    if first.lower() in _RESERVED:  # Windows reserves "NUL" and "NUL.anything"
        head = f"{first}_{dot}{rest}"
    return f"{head}{HASH_MARK}{digest}"


__all__ = ["visible", "MULTILINE_UNSAFE", "for_xlsx", "for_terminal", "rich_text", "json_for_terminal",
           "safe_filename", "FILENAME_MAX_BYTES"]
