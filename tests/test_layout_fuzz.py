"""Fuzzing the layout reader: generated and mutated layout sheets (CSV in any dialect and encoding, XLSX with
typed cells, damaged bytes) either become valid Tubes or are refused with one LayoutError whose every problem
names its row; never another exception or a hang. Example counts are bounded to keep CI fast; set
``BAT_FUZZ_EXAMPLES`` (examples per test) for a longer run."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import re
import signal
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bat_analysis.errors import LayoutError
from bat_analysis.io.fcs_write import write_fcs
from bat_analysis.io.layout import read_layout
from bat_analysis.records import CONDITIONS, PRETREATMENTS, Tube

EXAMPLES = int(os.environ.get("BAT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_SECONDS = 20.0
LOCATED = re.compile(r"^(row \d+|file '|data folder )")


class Hang(AssertionError):
    """The code under test ran longer than the time limit."""


@contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail (instead of blocking the suite) when the body runs longer than ``seconds``."""
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"no answer after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------- the check
def check(path: Path, data_dir: Path | None, n_body_rows: int) -> list[Tube] | LayoutError:
    """Read ``path``: valid Tubes, or a LayoutError whose problems are all located; anything else fails."""
    with no_hang():
        try:
            tubes = read_layout(path, data_dir, check_files=data_dir is not None)
        except LayoutError as exc:
            assert exc.source == str(path), exc.source
            assert str(exc).startswith(str(path))
            if exc.problems:
                assert f"{len(exc.problems)} problem(s)" in str(exc) or len(exc.problems) == 1, str(exc)
                for p in exc.problems:
                    assert isinstance(p, str) and LOCATED.match(p), p
            else:
                assert "cannot read" in str(exc), str(exc)
            return exc
    assert isinstance(tubes, list) and len(tubes) <= n_body_rows
    assert len({t.file for t in tubes}) == len(tubes)
    for t in tubes:
        assert isinstance(t, Tube) and t.file.strip() and t.patient.strip()
        assert t.condition in CONDITIONS and t.pretreatment in PRETREATMENTS
        if t.condition == "allergen":
            assert t.allergen and t.concentration is not None
            assert math.isfinite(t.concentration) and t.concentration > 0
        else:
            assert t.allergen is None and t.concentration is None and t.unit is None
        if data_dir is not None:
            assert (data_dir / t.file).is_file()
    return tubes


# ------------------------------------------------------------------------------------------- sheets
HEADER = ["file", "patient", "condition", "allergen", "concentration", "unit", "pretreatment", "well"]
FILES = ["a.fcs", "b.fcs", "c.fcs", "d.fcs", "e.fcs"]
GOOD = [
    ["a.fcs", "P1", "negative_control", "", "", "", "none", "A1"],
    ["b.fcs", "P1", "anti_fceri", "", "", "", "none", "A2"],
    ["c.fcs", "P1", "allergen", "birch", "0.1", "ng/mL", "none", "A3"],
    ["d.fcs", "P1", "allergen", "birch", "1", "ng/mL", "none", "A4"],
    ["e.fcs", "P1", "fmlp", "", "", "", "omalizumab", "A5"],
]
CELLS = [
    "", " ", "a.fcs", "b.fcs", "A.FCS", "missing.fcs", "../a.fcs", "sub/c.fcs", "P1", "P2", "p1",
    "negative_control", "Negative control", "NEG", "medium", "anti-FcεRI", "anti_ige", "fMLP", "allergen",
    "ALLERGEN", "alergen", "none", "None", "omalizumab", "Xolair", "rituximab", "birch", "Bet v 1",
    "0", "0.1", "1", "10", "0,5", "1.000,5", "1e3", "-1", "nan", "NaN", "inf", "-inf", "1e400", "ten", "½",
    "\u0661\u0662", "1_000", "0x10", " 5 ", "5 ng/mL", "ng/mL", "µg/L", "\ufeff", "\x00", "\u200b", "=1/0",
    '"', "'", ",", ";", "\t", "\n", "\r\n", "é", "\u2603",
]
COLUMN_NAMES = [*HEADER, "File", " PATIENT ", "Condition", "concentration ", "Pre-treatment", "pre treatment",
                "notes", "", "\ufefffile", "file;patient", "Unit"]
cell = st.one_of(st.sampled_from(CELLS), st.text(max_size=10))


def _edit(grid: list[list[Any]], op: tuple) -> None:
    """Apply one mutation to ``grid`` (header row first) in place; indices wrap around."""
    kind = op[0]
    if kind == "set":
        _, r, c, value = op
        row = grid[r % len(grid)]
        c = c % (len(row) + 2)
        row.extend([""] * (c + 1 - len(row)))
        row[c] = value
    elif kind == "drop_col":
        for row in grid:
            if row:
                del row[op[1] % len(row)]
    elif kind == "dup_col":
        for row in grid:
            if row:
                c = op[1] % len(row)
                row.insert(c, row[c])
    elif kind == "swap_cols":
        for row in grid:
            if len(row) > 1:
                i, j = op[1] % len(row), op[2] % len(row)
                row[i], row[j] = row[j], row[i]
    elif kind == "drop_row" and len(grid) > 1:
        del grid[op[1] % len(grid)]
    elif kind == "dup_row":
        r = op[1] % len(grid)
        grid.insert(r, list(grid[r]))
    elif kind == "insert_row":
        grid.insert(op[1] % (len(grid) + 1), list(op[2]))
    elif kind == "truncate_row":
        row = grid[op[1] % len(grid)]
        del row[op[2] % (len(row) + 1):]


index = st.integers(0, 20)
edit = st.one_of(
    st.tuples(st.just("set"), index, index, cell),
    st.tuples(st.just("set"), st.just(0), index, st.sampled_from(COLUMN_NAMES)),
    st.tuples(st.just("set"), index, index, st.one_of(
        st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
        st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1)), st.none())),
    st.tuples(st.sampled_from(["drop_col", "dup_col", "drop_row", "dup_row"]), index),
    st.tuples(st.just("swap_cols"), index, index),
    st.tuples(st.just("truncate_row"), index, index),
    st.tuples(st.just("insert_row"), index, st.lists(cell, max_size=10)),
)
random_grid = st.lists(st.lists(cell, max_size=10), max_size=8)


@st.composite
def grids(draw: st.DrawFn) -> list[list[Any]]:
    """A sheet: the good layout with a few mutations, or random cells."""
    if draw(st.integers(0, 3)) == 0:
        return draw(random_grid)
    grid = [list(HEADER)] + [list(r) for r in GOOD]
    for op in draw(st.lists(edit, max_size=6)):
        _edit(grid, op)
    return grid


dialects = st.fixed_dictionaries({
    "delimiter": st.sampled_from([",", ";", "\t", "|"]),
    "quoting": st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    "lineterminator": st.sampled_from(["\n", "\r\n", "\r"]),
    "encoding": st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-32-be"]),
})


def csv_bytes(grid: list[list[Any]], dialect: dict[str, Any]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=dialect["delimiter"], quoting=dialect["quoting"],
                        lineterminator=dialect["lineterminator"])
    writer.writerows([["" if v is None else v for v in row] for row in grid])
    return buf.getvalue().encode(dialect["encoding"], errors="replace")


def _xlsx_value(v: Any) -> Any:
    if isinstance(v, str):
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        return ILLEGAL_CHARACTERS_RE.sub("", v) or None
    return v


def xlsx_bytes(grid: list[list[Any]], sheet_title: str, before: int) -> bytes:
    """A workbook with ``before`` other sheets ahead of the layout sheet named ``sheet_title``."""
    import openpyxl

    book = openpyxl.Workbook()
    first = book.active
    first.title = "notes"
    first.append(["this is not the layout"])
    for i in range(1, before):
        book.create_sheet(f"other{i}").append([i])
    ws = book.create_sheet(sheet_title) if before else first
    if not before:
        ws.delete_rows(1)
        ws.title = sheet_title
    for row in grid:
        ws.append([_xlsx_value(v) for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the files the good layout names (tiny valid FCS files)."""
    folder = tmp_path_factory.mktemp("layout_fuzz_data")
    for name in FILES:
        write_fcs(folder / name, np.ones((3, 2), dtype=np.float32), ["FSC-A", "SSC-A"])
    return folder


def _write(content: bytes, suffix: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / f"layout{suffix}"
    path.write_bytes(content)
    return tmp, path


# ------------------------------------------------------------------------------------------- fuzz tests
def test_the_unmutated_sheet_reads_in_every_form(data_dir: Path) -> None:
    grid = [HEADER] + GOOD
    for content, suffix in [(csv_bytes(grid, {"delimiter": d, "quoting": csv.QUOTE_MINIMAL, "lineterminator": "\r\n",
                                               "encoding": e}), ".csv")
                            for d in ",;\t" for e in ("utf-8", "utf-8-sig", "latin-1")] + [
                               (xlsx_bytes(grid, "Layout", 2), ".xlsx"), (xlsx_bytes(grid, "Sheet", 0), ".xlsx")]:
        tmp, path = _write(content, suffix)
        with tmp:
            tubes = check(path, data_dir, len(GOOD))
            assert isinstance(tubes, list) and [t.file for t in tubes] == FILES, (suffix, tubes)


@FUZZ
@given(grid=grids(), dialect=dialects, on_disk=st.booleans())
def test_mutated_csv(data_dir: Path, grid: list[list[Any]], dialect: dict[str, Any], on_disk: bool) -> None:
    tmp, path = _write(csv_bytes(grid, dialect), ".csv")
    with tmp:
        check(path, data_dir if on_disk else None, len(grid))


@FUZZ
@given(grid=grids(), dialect=dialects, suffix=st.sampled_from([".csv", ".tsv", ".txt"]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
       cut=st.floats(0, 1), prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf", b"\xff\xfe",
                                                     b"\x00", b"sep=;\n"]))
def test_damaged_csv_bytes(data_dir: Path, grid: list[list[Any]], dialect: dict[str, Any], suffix: str,
                           edits: list[tuple[float, int]], cut: float, prefix: bytes) -> None:
    content = bytearray(prefix + csv_bytes(grid, dialect))
    for where, value in edits:
        if content:
            content[int(where * len(content))] = value
    tmp, path = _write(bytes(content[: max(1, int(cut * len(content)))] if cut < 1 else content), suffix)
    with tmp:
        check(path, data_dir, len(content) + 1)


@FUZZ
@given(grid=grids(), sheet_title=st.sampled_from(["layout", "Layout", "LAYOUT", "Sheet1", "plate"]),
       before=st.integers(0, 2), on_disk=st.booleans())
def test_mutated_xlsx(data_dir: Path, grid: list[list[Any]], sheet_title: str, before: int, on_disk: bool) -> None:
    tmp, path = _write(xlsx_bytes(grid, sheet_title, before), ".xlsx")
    with tmp:
        check(path, data_dir if on_disk else None, len(grid))


def test_empty_files_and_blank_sheets(data_dir: Path) -> None:
    for content, suffix in [(b"", ".csv"), (b"\xef\xbb\xbf", ".csv"), (b" \r\n\t\n", ".csv"), (b"\x00", ".csv"),
                            (b"file,patient,condition\n", ".csv"), (xlsx_bytes([], "layout", 0), ".xlsx"),
                            (xlsx_bytes([], "layout", 1), ".xlsx"), (b"", ".xlsx")]:
        tmp, path = _write(content, suffix)
        with tmp:
            result = check(path, data_dir, 1)
            assert isinstance(result, LayoutError) or result == [], (content[:20], suffix, result)


# ------------------------------------------------------------------------------------------- damaged workbooks
def _rezip(content: bytes, damage: Any) -> bytes:
    """The workbook ``content`` with each member's bytes passed through ``damage(name, data)``."""
    src = zipfile.ZipFile(io.BytesIO(content))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, damage(info.filename, src.read(info.filename)))
    return out.getvalue()


def test_truncated_sheet_xml_is_a_layout_error(data_dir: Path) -> None:
    good = xlsx_bytes([HEADER] + GOOD, "layout", 0)
    bad = _rezip(good, lambda name, data: data[: len(data) // 2] if name.endswith("sheet1.xml") else data)
    tmp, path = _write(bad, ".xlsx")
    with tmp:
        result = check(path, data_dir, len(GOOD))
    assert isinstance(result, LayoutError) and "cannot read the workbook" in str(result), result


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_xlsx_bytes(data_dir: Path, edits: list[tuple[float, int]]) -> None:
    content = bytearray(xlsx_bytes([HEADER] + GOOD, "layout", 0))
    for where, value in edits:
        content[int(where * len(content))] = value
    tmp, path = _write(bytes(content), ".xlsx")
    with tmp:
        check(path, data_dir, len(GOOD))


def _damage_member(member: str, edits: list[tuple[float, int]], cut: float) -> bytes:
    """The good workbook, still a well-formed zip, with the XML of ``member`` cut and overwritten."""
    def damage(name: str, data: bytes) -> bytes:
        if name != member:
            return data
        out = bytearray(data[: max(1, int(cut * len(data)))])
        for where, value in edits:
            out[int(where * len(out))] = value
        return bytes(out)

    return _rezip(xlsx_bytes([HEADER] + GOOD, "layout", 0), damage)


xml_edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(b'<>/"=& x0\xff\x00')),
                     min_size=1, max_size=4)


@FUZZ
@given(edits=xml_edits, cut=st.floats(0.2, 1))
def test_damaged_sheet_xml(data_dir: Path, edits: list[tuple[float, int]], cut: float) -> None:
    tmp, path = _write(_damage_member("xl/worksheets/sheet1.xml", edits, cut), ".xlsx")
    with tmp:
        check(path, data_dir, len(GOOD))


def _no_escape(path: Path) -> LayoutError | list[Tube]:
    """``check``, with an escaping exception turned into an AssertionError naming it (damaged workbook XML)."""
    try:
        return check(path, None, len(GOOD))
    except AssertionError:
        raise
    except Exception as exc:  # report which exception escaped read_layout
        raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc}") from exc


def test_damaged_workbook_xml_is_a_layout_error() -> None:
    tmp, path = _write(_damage_member("xl/workbook.xml", [(0.0, ord("<"))], 0.5), ".xlsx")
    with tmp:
        result = _no_escape(path)
    assert isinstance(result, LayoutError) and "cannot read the workbook" in str(result), result


@settings(FUZZ, derandomize=True, phases=[Phase.explicit, Phase.generate])  # stable examples, no shrinking
@given(member=st.sampled_from(["xl/workbook.xml", "xl/styles.xml", "xl/_rels/workbook.xml.rels",
                               "[Content_Types].xml", "docProps/core.xml", "_rels/.rels"]),
       edits=xml_edits, cut=st.floats(0.2, 1))
def test_damaged_workbook_parts(member: str, edits: list[tuple[float, int]], cut: float) -> None:
    tmp, path = _write(_damage_member(member, edits, cut), ".xlsx")
    with tmp:
        _no_escape(path)


# ------------------------------------------------------------------------------------------- exact properties
CONDITION_SPELLINGS = {"negative_control": ["negative_control", "Negative control", "NEG", "medium", "nc"],
                       "anti_fceri": ["anti_fceri", "anti-FcεRI", "Anti FceRI"], "fmlp": ["fMLP", "fmlf"],
                       "anti_ige": ["anti-IgE", "aIgE"], "allergen": ["allergen", "Allergen", "ALLERGEN"]}
PRETREATMENT_SPELLINGS = {"none": ["", "none", "None", "untreated"], "omalizumab": ["omalizumab", "Xolair", "OMA"]}
ident = st.text(alphabet="ABCDEFGHJKabcxyz0123456789_-é ü.", min_size=1, max_size=8).map(str.strip).filter(bool)


@st.composite
def valid_layouts(draw: st.DrawFn) -> tuple[list[str], list[list[str]], list[Tube]]:
    """A valid layout: header (shuffled columns, varied spellings, extra columns), rows, and the Tubes it means."""
    patients = draw(st.lists(ident, min_size=1, max_size=3, unique=True))
    rows: list[dict[str, str]] = []
    tubes: list[Tube] = []
    units: dict[tuple[str, str], str] = {}  # one unit per patient and allergen (both arms): units must convert
    for patient in patients:
        for arm in draw(st.lists(st.sampled_from(PRETREATMENTS), min_size=1, max_size=2, unique=True)):
            for cond in draw(st.lists(st.sampled_from(CONDITIONS[:4]), max_size=4, unique=True)):
                rows.append({"patient": patient, "condition": draw(st.sampled_from(CONDITION_SPELLINGS[cond])),
                             "pretreatment": draw(st.sampled_from(PRETREATMENT_SPELLINGS[arm]))})
                tubes.append(Tube(file="", patient=patient, condition=cond, pretreatment=arm))
            for allergen in draw(st.lists(ident, max_size=2, unique=True)):
                if (patient, allergen) not in units:
                    units[(patient, allergen)] = draw(st.sampled_from(["ng/mL", "µg/L", "SQ-U/mL", ""]))
                unit = units[(patient, allergen)]
                concs = draw(st.lists(st.floats(1e-4, 1e4), min_size=2, max_size=4, unique_by=lambda x: f"{x:.6g}"))
                for c in concs:
                    text = draw(st.sampled_from([f"{c:.6g}", f"{c:.6e}", f"{c:.4f}".replace(".", ",")]))
                    value = float(text.replace(",", "."))
                    if value <= 0 or value in [t.concentration for t in tubes if t.patient == patient and
                                               t.pretreatment == arm and t.allergen == allergen]:
                        continue
                    rows.append({"patient": patient,
                                 "condition": draw(st.sampled_from(CONDITION_SPELLINGS["allergen"])),
                                 "pretreatment": draw(st.sampled_from(PRETREATMENT_SPELLINGS[arm])),
                                 "allergen": allergen, "concentration": text, "unit": unit})
                    tubes.append(Tube(file="", patient=patient, condition="allergen", pretreatment=arm,
                                      allergen=allergen, concentration=value, unit=unit or None))
    # a series that lost points to rounding above is dropped from both
    counts: dict[tuple, int] = {}
    for t in tubes:
        if t.allergen:
            counts[(t.patient, t.pretreatment, t.allergen)] = counts.get((t.patient, t.pretreatment, t.allergen), 0) + 1
    keep = [not t.allergen or counts[(t.patient, t.pretreatment, t.allergen)] >= 2 for t in tubes]
    rows = [r for r, k in zip(rows, keep) if k]
    tubes = [t for t, k in zip(tubes, keep) if k]
    extra = draw(st.lists(st.sampled_from(["well", "Notes", "operator"]), max_size=2, unique=True))
    columns = draw(st.permutations(HEADER[:7] + extra))
    header = [draw(st.sampled_from([c, c.upper(), c.title(), f" {c} "])) for c in columns]
    body, out = [], []
    for i, (r, t) in enumerate(zip(rows, tubes)):
        r = {**r, "file": f"t{i:03d}.fcs", **{e: draw(st.sampled_from(["", "x", f"{i}"])) for e in extra}}
        body.append([r.get(c, "") for c in columns])
        out.append(Tube(file=r["file"], patient=t.patient, condition=t.condition, pretreatment=t.pretreatment,
                        allergen=t.allergen, concentration=t.concentration, unit=t.unit,
                        extra=tuple((e.casefold(), r[e]) for e in columns if e in extra)))
    return header, body, out


def _comparable(t: Tube) -> tuple:
    return (t.file, t.patient, t.condition, t.pretreatment, t.allergen, t.concentration, t.unit,
            tuple((k, v) for k, v in t.extra if k in ("well", "notes", "operator")))


@FUZZ
@given(layout=valid_layouts(), dialect=dialects, kind=st.sampled_from(["csv", "xlsx"]))
def test_valid_layout_reads_back_exactly_in_any_dialect(layout: tuple, dialect: dict[str, Any], kind: str) -> None:
    header, body, expected = layout
    if kind == "xlsx":
        content, suffix = xlsx_bytes([header] + body, "layout", 1), ".xlsx"
    else:
        # encodings the reader is meant to read (UTF-8 with or without BOM, else Latin-1)
        if dialect["encoding"] not in ("utf-8", "utf-8-sig", "latin-1"):
            dialect = {**dialect, "encoding": "utf-8"}
        content, suffix = csv_bytes([header] + body, dialect), ".csv"
    tmp, path = _write(content, suffix)
    with tmp:
        result = check(path, None, len(body))
        assert not isinstance(result, LayoutError), str(result)
        assert [_comparable(t) for t in result] == [_comparable(t) for t in expected]


@FUZZ
@given(layout=valid_layouts(), picks=st.lists(st.integers(0, 200), min_size=1, max_size=4),
       defects=st.lists(st.sampled_from(["condition", "pretreatment", "patient", "concentration", "file"]),
                        min_size=4, max_size=4), kind=st.sampled_from(["csv", "xlsx"]))
def test_every_defective_row_is_reported_at_once(layout: tuple, picks: list[int], defects: list[str],
                                                 kind: str) -> None:
    header, body, expected = layout
    controls = [i for i, t in enumerate(expected) if t.condition != "allergen"]
    if not controls:
        return
    columns = [h.strip().casefold() for h in header]
    bad_rows = sorted({controls[p % len(controls)] for p in picks})
    bad_value = {"condition": "medium-ish", "pretreatment": "rituximab", "patient": "", "concentration": "ten",
                 "file": ""}
    for n, i in enumerate(bad_rows):
        column = defects[n % len(defects)]
        body[i][columns.index(column)] = bad_value[column]
    grid = [header] + body
    content, suffix = ((xlsx_bytes(grid, "layout", 0), ".xlsx") if kind == "xlsx" else
                       (csv_bytes(grid, {"delimiter": ";", "quoting": csv.QUOTE_MINIMAL, "lineterminator": "\n",
                                         "encoding": "utf-8"}), ".csv"))
    tmp, path = _write(content, suffix)
    with tmp:
        result = check(path, None, len(body))
    assert isinstance(result, LayoutError)
    reported = {int(m.group(1)) for p in result.problems for m in [re.match(r"row (\d+)", p)] if m}
    assert reported == {i + 2 for i in bad_rows}, (result.problems, bad_rows)
    assert len(result.problems) == len(bad_rows)
