"""Experiment layouts: which FCS file is which tube (patient, condition, arm, allergen, concentration).

``read_layout`` reads the layout sheet of DESIGN.md from CSV or XLSX; ``tubes_from_pattern`` annotates the
files of a folder from their names or an FCS keyword with a regular expression's named groups. Both check
every row and report every problem at once in one ``LayoutError`` (row, column, what was expected).
Rows are numbered as a spreadsheet shows them: the header is row 1, the first tube row 2.

A row's ``file`` must name a regular file inside the data folder (``io.paths.resolve_data_file``: no absolute
path, no ``..`` out of it, no link to a file outside it, unless ``allow_outside_data_dir``; no FIFO, device,
folder or /proc file ever); each refusal is a located problem like the others. ``skip_missing`` lets rows whose
file does not exist through (the caller records those tubes as failed); ``check_unlisted`` makes FCS files of
the folder that no row names a problem, and ``unlisted_files`` lists them for a caller that only warns.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis._units import EXPECTED_UNITS, UnitProblem, canonical, convertible, reference_unit
from ..errors import BatError, DataFileError, LayoutError
from ..records import CONDITIONS, PRETREATMENTS, Tube
from ._paths import open_regular_file, resolve_data_file

__all__ = ["read_layout", "tubes_from_pattern", "tubes_from_rows", "unlisted_files", "LAYOUT_COLUMNS",
           "REQUIRED_COLUMNS", "REPLICATE_COLUMN", "FCS_SUFFIXES"]

LAYOUT_COLUMNS: tuple[str, ...] = ("file", "patient", "condition", "allergen", "concentration", "unit",
                                   "pretreatment")
REQUIRED_COLUMNS: tuple[str, ...] = ("file", "patient", "condition")
# optional column kept in Tube.extra (and so in tubes.csv): replicate tubes of one condition differ in it
REPLICATE_COLUMN = "replicate"
FCS_SUFFIXES: tuple[str, ...] = (".fcs", ".lmd")

# spellings a technician may use, mapped to the canonical values (after lower-casing and _ for space/-)
_CONDITION_SYNONYMS = {
    "negative_control": "negative_control", "negative": "negative_control", "neg": "negative_control",
    "neg_control": "negative_control", "nc": "negative_control", "medium": "negative_control",
    "buffer": "negative_control", "unstimulated": "negative_control", "background": "negative_control",
    "anti_fceri": "anti_fceri", "anti_fcεri": "anti_fceri", "fceri": "anti_fceri", "anti_fceria": "anti_fceri",
    "anti_fc?ri": "anti_fceri",  # ε lost by a legacy 8-bit export
    "anti_ige": "anti_ige", "aige": "anti_ige",
    "fmlp": "fmlp", "fmlf": "fmlp",
    "allergen": "allergen",
}
# the pretreatment column's spellings: a tube's arm (the word the code uses; the column keeps "pretreatment")
_ARM_SYNONYMS = {"none": "none", "": "none", "no": "none", "untreated": "none", "omalizumab": "omalizumab",
                          "oma": "omalizumab", "xolair": "omalizumab"}


def _norm_token(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip().casefold())


def _norm_column(name: object) -> str:
    return _norm_token(str(name)) if name is not None else ""


def _cell_text(value: object) -> str:
    """A cell as text: numbers without a spurious '.0', None as ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value).strip()


def _read_csv(path: Path, fh: io.BufferedIOBase) -> tuple[list[str], list[list[str]]]:
    try:
        data = fh.read()
    except OSError as exc:
        raise LayoutError(f"cannot read the layout sheet: {exc.strerror}", source=str(path)) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as read_text gave
    if not text.strip():
        raise LayoutError("the layout sheet is empty", source=str(path),
                          problems=["row 1: expected a header row " + ", ".join(LAYOUT_COLUMNS)])
    first = text.splitlines()[0]
    delimiter = max(",;\t|", key=first.count)  # the header's most frequent separator (comma on a tie)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = list(reader)
    except csv.Error as exc:  # e.g. a cell over the csv module's 131,072-character limit
        raise LayoutError(f"the layout sheet cannot be read as CSV ({exc})", source=str(path),
                          problems=[f"line {reader.line_num}: expected delimited text"]) from None
    return rows[0], rows[1:]


def _read_xlsx(path: Path, fh: io.BufferedIOBase, sheet: str | None) -> tuple[list[str], list[list[str]]]:
    import zipfile
    import zlib
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    # what openpyxl raises for a damaged workbook, on opening or (read-only sheets are parsed lazily) on reading;
    # SyntaxError covers the XML parsers' errors (xml.etree's ParseError and lxml's XMLSyntaxError)
    damaged = (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, EOFError, NotImplementedError,
               zipfile.BadZipFile, zlib.error, SyntaxError, InvalidFileException)
    if not openpyxl.DEFUSEDXML:  # openpyxl parses the sheets with defusedxml (entities refused) only when it can
        raise LayoutError("XLSX layouts are read only with defusedxml (OPENPYXL_DEFUSEDXML is off?)",
                          source=str(path), problems=["save the sheet as .csv, or let openpyxl use defusedxml"])
    try:
        book = openpyxl.load_workbook(fh, read_only=True, data_only=True)
    except damaged as exc:
        raise LayoutError(f"cannot read the workbook ({type(exc).__name__}: {exc})", source=str(path)) from exc
    try:
        if sheet is not None:
            if sheet not in book.sheetnames:
                raise LayoutError(f"no sheet named {sheet!r}", source=str(path),
                                  problems=[f"sheets in the workbook: {', '.join(book.sheetnames)}"])
            ws = book[sheet]
        else:
            named = [n for n in book.sheetnames if n.casefold() == "layout"]
            ws = book[named[0]] if named else book.worksheets[0]
        values = [[_cell_text(v) for v in row] for row in ws.iter_rows(values_only=True)]
    except damaged as exc:
        raise LayoutError(f"cannot read the workbook's sheet ({type(exc).__name__}: {exc})",
                          source=str(path)) from exc
    finally:
        book.close()
    if not values:
        raise LayoutError("the layout sheet is empty", source=str(path),
                          problems=["row 1: expected a header row " + ", ".join(LAYOUT_COLUMNS)])
    return values[0], values[1:]


def parse_decimal(text: str) -> float | None:
    """A finite number written in a sheet cell, accepting a decimal comma (``2,5``) and spaces; None when it is
    not one. Used for layout concentrations and clinical sheets alike."""
    t = text.strip().replace(" ", "")
    if re.fullmatch(r"[+-]?\d+,\d+", t):
        t = t.replace(",", ".")
    try:
        value = float(t)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _fcs_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.casefold() in FCS_SUFFIXES
                  and not p.name.startswith("."))


def unlisted_files(data_dir: str | os.PathLike[str], files: Sequence[str]) -> list[str]:
    """Names of the FCS files of ``data_dir`` (not its sub-folders) that no entry of ``files`` names, in name
    order: a cytometer export's compensation and unstained tubes, typically."""
    folder = Path(data_dir)
    if not folder.is_dir():
        return []

    def real(path: Path) -> Path:
        try:
            return path.resolve()
        except (OSError, RuntimeError, ValueError):  # a link loop (RuntimeError before Python 3.13) or a NUL in
            # the name (ValueError; reported by the row's own check): the name stands for itself
            return path.absolute()

    listed = {real(folder / f) for f in files}
    return [p.name for p in _fcs_files(folder) if real(p) not in listed]


@dataclass
class _RowValues:
    """One layout row's values after their own checks (None where a value was refused)."""

    file: str
    patient: str
    condition: str | None
    arm: str | None  # the tube's pretreatment: the column ``pretreatment``, canonical spelling
    allergen: str | None = None
    concentration: float | None = None
    unit: str | None = None
    extra: list[tuple[str, str]] = field(default_factory=list)


def _row_values(label: str, row: Mapping[str, str], extra_columns: Sequence[str],
                problems: list[str]) -> _RowValues:
    """File, patient, condition and arm of a row, its allergen concentration or a control's stray values."""
    v = _RowValues(row.get("file", "").strip(), row.get("patient", "").strip(), None, None)
    if not v.file:
        problems.append(f"{label}, column 'file': empty (expected an FCS file name)")
    if not v.patient:
        problems.append(f"{label}, column 'patient': empty (expected a patient identifier)")
    raw_condition = row.get("condition", "")
    v.condition = _CONDITION_SYNONYMS.get(_norm_token(raw_condition))
    if v.condition is None:
        problems.append(f"{label}, column 'condition': {raw_condition!r} is not a known condition "
                        f"(expected one of {', '.join(CONDITIONS)})")
    raw_arm = row.get("pretreatment", "")
    v.arm = _ARM_SYNONYMS.get(_norm_token(raw_arm))
    if v.arm is None:
        problems.append(f"{label}, column 'pretreatment': {raw_arm!r} is not a known pretreatment "
                        f"(expected one of {', '.join(PRETREATMENTS)}, or empty for none)")
    v.allergen = row.get("allergen", "").strip() or None
    v.unit = row.get("unit", "").strip() or None
    v.extra = [(c, row.get(c, "")) for c in extra_columns]
    raw_conc = row.get("concentration", "").strip()
    if v.condition == "allergen":
        _allergen_values(label, v, raw_conc, problems)
    else:
        _control_values(label, v, raw_conc, problems)
    return v


def _allergen_values(label: str, v: _RowValues, raw_conc: str, problems: list[str]) -> None:
    """An allergen row needs the allergen's name and a concentration > 0."""
    if v.allergen is None:
        problems.append(f"{label}, column 'allergen': empty on an allergen row (expected the allergen's name)")
    if not raw_conc:
        problems.append(f"{label}, column 'concentration': empty on an allergen row "
                        "(expected a number > 0)")
        return
    v.concentration = parse_decimal(raw_conc)
    if v.concentration is None:
        problems.append(f"{label}, column 'concentration': {raw_conc!r} is not a number "
                        "(expected a number > 0)")
    elif v.concentration <= 0:
        problems.append(f"{label}, column 'concentration': {raw_conc} is not positive "
                        "(expected a number > 0; concentrations are compared on a log scale)")
        v.concentration = None
    try:
        canonical(1.0, v.unit)
    except UnitProblem as exc:
        problems.append(f"{label}, column 'unit': {exc} (expected {EXPECTED_UNITS})")


def _control_values(label: str, v: _RowValues, raw_conc: str, problems: list[str]) -> None:
    """A control row's concentration, unit and allergen are kept as extra columns (``control_*``), not used."""
    if raw_conc:
        value = parse_decimal(raw_conc)
        if value is None or value < 0:
            problems.append(f"{label}, column 'concentration': {raw_conc!r} (expected empty, or a number "
                            f">= 0, on a {v.condition or 'control'} row)")
        v.extra.append(("control_concentration", raw_conc))
        if v.unit:
            v.extra.append(("control_unit", v.unit))
    v.unit = None  # a unit belongs to an allergen concentration
    if v.allergen:
        v.extra.append(("control_allergen", v.allergen))
        v.allergen = None


def _file_problems(label: str, file: str, folder: Path | None, seen_files: dict[str, str], *,
                   skip_missing: bool, allow_outside_data_dir: bool) -> list[str]:
    """The same file on two rows; a file outside the data folder, not a regular file, or missing."""
    problems = []
    key_file = file.casefold() if os.name == "nt" else file
    if key_file in seen_files:
        problems.append(f"{label}, column 'file': {file!r} is already listed on {seen_files[key_file]} "
                        "(expected each file once)")
    else:
        seen_files[key_file] = label
    if folder is None:
        return problems
    try:
        resolve_data_file(folder, file, allow_outside=allow_outside_data_dir)
    except DataFileError as exc:
        if exc.kind != "missing":
            problems.append(f"{label}, column 'file': {file!r} {exc.detail} (expected {exc.expected})")
        elif not skip_missing:
            hint = ""
            if folder.is_dir():
                near = [p.name for p in _fcs_files(folder) if p.name.casefold() == file.casefold()
                        or p.stem.casefold() == file.casefold()]
                if near:
                    hint = f"; did you mean {near[0]!r}?"
            problems.append(f"{label}, column 'file': {file!r} not found in {folder}{hint} "
                            "(expected an existing FCS file; or run with --skip-missing to record "
                            "its tube as failed)")
    return problems


def _series_problems(series: Mapping[tuple[str, str, str], list[tuple[str, float, str | None]]]) -> list[str]:
    """Allergen series (patient × allergen × arm) with a single concentration (compared in one unit), and
    tubes of a patient's allergen whose unit does not convert to the allergen's reference unit
    (``analysis.units.reference_unit``: the untreated arm's most common unit)."""
    problems = []
    by_allergen: dict[tuple[str, str], list[tuple[str, str, float, str | None]]] = defaultdict(list)
    for (patient, allergen, arm), points in series.items():
        where = ", ".join(p[0] for p in points)
        if len({canonical(p[1], p[2]) for p in points}) < 2:
            problems.append(f"{where}: the allergen series of patient {patient}, allergen {allergen}, arm {arm} "
                            "has a single concentration (expected at least two for a dose-response)")
        by_allergen[(patient, allergen)] += [(p[0], arm, p[1], p[2]) for p in points]
    for (patient, allergen), points in by_allergen.items():
        ref = reference_unit([(p[3], p[1] == "none", p[2]) for p in points])
        ref_row = next(p[0] for p in points if (p[3] or None) == ref)
        for label, _arm, _conc, unit in points:
            if not convertible(unit, ref):
                problems.append(f"{label}, column 'unit': {unit or 'no unit'!r} cannot be converted to "
                                f"{ref or 'no unit'!r}, the unit of allergen {allergen} for patient {patient} "
                                f"({ref_row}) (expected a unit of the same kind: mass per volume, or the same "
                                "allergen activity unit)")
    return problems


def _patient_problem(label: str, patient: str, spellings: dict[str, tuple[str, str]]) -> list[str]:
    """A patient ID written as another row's but for capitals (or Unicode composition: "é" as one character or as
    "e" and an accent): the same patient to a spreadsheet and to the file systems of Windows and macOS, where
    one's report would replace the other's. The first spelling seen is kept in ``spellings``."""
    key = unicodedata.normalize("NFC", patient).casefold()
    first, where = spellings.setdefault(key, (patient, label))
    if first == patient:
        return []
    return [f"{label}, column 'patient': {patient!r} is written as {first!r} ({where}) but for capitals or accents "
            "(expected one spelling per patient: spreadsheets, Windows and macOS take the two for one, and one "
            "report would replace the other)"]


def _unlisted_problems(folder: Path, files: Sequence[str]) -> list[str]:
    """A missing data folder, or FCS files of it that no row names."""
    if not folder.is_dir():
        return [f"data folder {folder} does not exist (expected the folder of the FCS files)"]
    return [f"file {name!r} is in {folder} but on no row (expected a row for every FCS file of the folder)"
            for name in unlisted_files(folder, list(files))]


def tubes_from_rows(
    rows: Sequence[tuple[str, Mapping[str, str]]],
    *,
    data_dir: str | os.PathLike[str] | None,
    source: str,
    extra_columns: Sequence[str] = (),
    check_unlisted: bool = True,
    skip_missing: bool = False,
    allow_outside_data_dir: bool = False,
) -> list[Tube]:
    """Validate annotated rows (label such as ``"row 3"``, {column: text}) into Tubes, or raise LayoutError.

    ``data_dir``: folder of the FCS files (None: do not look at the disk). Problems checked: empty file or
    patient, a patient ID spelt two ways that differ only in capitals or accents' composition, file missing on disk (unless ``skip_missing``), a file outside the data folder (unless
    ``allow_outside_data_dir``) or that is not a regular file, FCS files in the folder without a row
    (``check_unlisted``), the same file twice, the same tube twice (patient, arm, condition, allergen,
    concentration and ``replicate`` label: replicate tubes need that column, each with its own label),
    unknown condition or pretreatment,
    missing/non-numeric/non-positive concentration or missing allergen on allergen rows, a unit that is not a
    concentration unit (``analysis._units``), a unit that does not convert to the unit of the patient's
    allergen, and allergen series (patient × allergen × arm) with a single concentration. Concentrations
    are compared after conversion (1 µg/mL is 1000 ng/mL).
    """
    problems: list[str] = []
    tubes: list[Tube] = []
    folder = Path(data_dir) if data_dir is not None else None
    seen_files: dict[str, str] = {}
    seen_keys: dict[tuple, str] = {}
    series: dict[tuple[str, str, str], list[tuple[str, float, str | None]]] = defaultdict(list)

    spellings: dict[str, tuple[str, str]] = {}  # patient ID folded (see _patient_problem) -> (as first written, row)
    for label, row in rows:
        before = len(problems)
        v = _row_values(label, row, extra_columns, problems)
        if v.patient:
            problems += _patient_problem(label, v.patient, spellings)
        if v.file:
            problems += _file_problems(label, v.file, folder, seen_files, skip_missing=skip_missing,
                                       allow_outside_data_dir=allow_outside_data_dir)
        if len(problems) > before:
            continue
        assert v.condition is not None and v.arm is not None
        replicate = dict(v.extra).get(REPLICATE_COLUMN, "").strip()
        key = (v.patient, v.condition, v.arm, v.allergen,
               canonical(v.concentration, v.unit) if v.concentration is not None else None, replicate)
        if key in seen_keys:
            what = f"{v.patient} {v.arm} {v.condition}" + (
                f" {v.allergen} {v.concentration:g}" if v.allergen else "")
            if replicate:
                problems.append(f"{label}, column '{REPLICATE_COLUMN}': the same tube ({what}, replicate "
                                f"{replicate!r}) as {seen_keys[key]} (expected replicate tubes numbered apart)")
            else:
                problems.append(f"{label}: the same tube ({what}) as {seen_keys[key]} "
                                "(expected one file per patient, arm, condition and concentration; replicate "
                                f"tubes are numbered apart in a '{REPLICATE_COLUMN}' column)")
            continue
        seen_keys[key] = label
        if v.condition == "allergen":
            assert v.allergen is not None and v.concentration is not None
            series[(v.patient, v.allergen, v.arm)].append((label, v.concentration, v.unit))
        tubes.append(Tube(file=v.file, patient=v.patient, condition=v.condition, pretreatment=v.arm,
                          allergen=v.allergen, concentration=v.concentration, unit=v.unit, extra=tuple(v.extra)))

    problems += _series_problems(series)
    if folder is not None and check_unlisted:
        problems += _unlisted_problems(folder, list(seen_files))
    if problems:
        raise LayoutError(f"the layout has {len(problems)} problem(s)", source=source, problems=problems)
    return tubes


def read_layout(path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None, *,
                sheet: str | None = None, check_files: bool = True, check_unlisted: bool = True,
                skip_missing: bool = False, allow_outside_data_dir: bool = False) -> list[Tube]:
    """Read and validate a layout sheet (``.csv``, ``.tsv``, ``.txt`` or ``.xlsx``) into Tubes, in row order.

    Columns: ``file, patient, condition`` (required), ``allergen, concentration, unit, pretreatment``
    (optional; an empty pretreatment means none; on allergen rows ``concentration`` is a positive number in the
    row's ``unit``, which the tubes keep; the arms of a patient's allergen may use different units of one
    kind, converted by the analysis to the allergen's reference unit, as
    docs/method.md, "Concentration units" says); ``replicate`` (optional) labels replicate tubes of one
    condition and concentration (duplicates and triplicates, each its own row and file; without it a repeated
    tube is refused); other columns, ``replicate`` among them, are carried into ``Tube.extra``.
    Column names are matched case-insensitively. ``data_dir`` (default: the sheet's folder) is where the
    files are looked for; ``check_files=False`` skips the disk checks. ``check_unlisted=False`` accepts FCS
    files of the folder that no row names (``unlisted_files`` lists them); ``skip_missing`` accepts rows whose
    file does not exist; ``allow_outside_data_dir`` accepts files outside the data folder (absolute paths,
    ``..``, links). Raises ``LayoutError`` listing every problem found.
    """
    path = Path(path)
    suffix = path.suffix.casefold()
    if suffix == ".xls":
        raise LayoutError("legacy .xls workbooks are not read", source=str(path),
                          problems=["save the sheet as .xlsx or .csv"])
    if suffix not in (".xlsx", ".xlsm", ".csv", ".tsv", ".txt"):
        raise LayoutError(f"unknown layout sheet type {path.suffix!r}", source=str(path),
                          problems=["expected a .csv, .tsv, .txt or .xlsx file"])
    try:
        fh = open_regular_file(path)
    except FileNotFoundError:
        raise LayoutError("layout sheet not found", source=str(path)) from None
    except DataFileError as exc:
        raise LayoutError(f"the layout sheet {exc.detail}", source=str(path),
                          problems=["expected a CSV or XLSX file"]) from None
    except OSError as exc:
        raise LayoutError(f"cannot read the layout sheet: {exc.strerror or exc}", source=str(path)) from None
    with fh:
        if suffix in (".xlsx", ".xlsm"):
            header, body = _read_xlsx(path, fh, sheet)
        else:
            header, body = _read_csv(path, fh)
    columns = [_norm_column(c) for c in header]
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    for c in missing:
        problems.append(f"row 1: column {c!r} is missing (expected columns {', '.join(LAYOUT_COLUMNS)}; "
                        f"found {', '.join(repr(h) for h in header)})")
    dup = sorted({c for c in columns if c and columns.count(c) > 1})
    for c in dup:
        problems.append(f"row 1: column {c!r} appears more than once (expected each column once)")
    if problems:
        raise LayoutError(f"the layout has {len(problems)} problem(s)", source=str(path), problems=problems)
    extra_columns = [c for c in columns if c and c not in LAYOUT_COLUMNS]
    rows: list[tuple[str, dict[str, str]]] = []
    for i, values in enumerate(body, start=2):
        cells = [_cell_text(v) for v in values]
        if not any(cells):
            continue  # blank line
        record = {columns[j]: cells[j] if j < len(cells) else "" for j in range(len(columns)) if columns[j]}
        if len(cells) > len(columns) and any(cells[len(columns):]):
            record["__overflow__"] = "1"
        rows.append((f"row {i}", record))
    overflow = [label for label, r in rows if r.pop("__overflow__", None)]
    folder = (Path(data_dir) if data_dir is not None else path.parent) if check_files else None
    try:
        tubes = tubes_from_rows(rows, data_dir=folder, source=str(path), extra_columns=extra_columns,
                                check_unlisted=check_unlisted, skip_missing=skip_missing,
                                allow_outside_data_dir=allow_outside_data_dir)
    except LayoutError as exc:
        problems = exc.problems + [f"{label}: more cells than header columns (expected {len(columns)})"
                                   for label in overflow]
        raise LayoutError(f"the layout has {len(problems)} problem(s)", source=str(path),
                          problems=problems) from None
    if overflow:
        raise LayoutError(f"the layout has {len(overflow)} problem(s)", source=str(path),
                          problems=[f"{label}: more cells than header columns (expected {len(columns)})"
                                    for label in overflow])
    return tubes


def tubes_from_pattern(
    data_dir: str | os.PathLike[str],
    pattern: str | re.Pattern[str],
    *,
    source: str = "filename",
    defaults: Mapping[str, str] | None = None,
) -> list[Tube]:
    """Annotate every FCS file of ``data_dir`` from its name or a keyword, without a layout sheet.

    ``pattern`` is a regular expression searched in the file name (``source="filename"``) or in the value
    of an FCS TEXT keyword (``source="TUBE NAME"``, ``"$SRC"``, …). Its named groups give the layout's
    columns (``patient``, ``condition``, ``pretreatment``, ``allergen``, ``concentration``, ``unit``); other
    named groups become extra columns. ``defaults`` fills columns no group captured (e.g. ``unit``).
    Example for ``P01_omalizumab_allergen_birch_0.1.fcs``:
    ``(?P<patient>P\\d+)_(?P<pretreatment>none|omalizumab)_(?P<condition>[a-z_]+?)(_(?P<allergen>[a-z]+)_(?P<concentration>[\\d.]+))?\\.fcs$``.
    Files are taken in name order; problems are reported all at once like ``read_layout``'s.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise LayoutError("data folder not found", source=str(folder))
    try:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    except re.error as exc:
        raise LayoutError(f"invalid pattern: {exc}", source=str(folder),
                          problems=[f"pattern {pattern!r}: {exc}"]) from None
    groups = list(regex.groupindex)
    if "patient" not in groups and "patient" not in (defaults or {}):
        raise LayoutError("the pattern has no (?P<patient>...) group", source=str(folder),
                          problems=["expected named groups patient and condition (or defaults for them)"])
    if "condition" not in groups and "condition" not in (defaults or {}):
        raise LayoutError("the pattern has no (?P<condition>...) group", source=str(folder),
                          problems=["expected named groups patient and condition (or defaults for them)"])
    extra_columns = [g for g in groups if g not in LAYOUT_COLUMNS]
    rows: list[tuple[str, dict[str, str]]] = []
    problems: list[str] = []
    files = _fcs_files(folder)
    if not files:
        raise LayoutError("no FCS files in the folder", source=str(folder),
                          problems=[f"expected files ending in {', '.join(FCS_SUFFIXES)}"])
    for path in files:
        try:
            resolve_data_file(folder, path.name)
        except DataFileError as exc:  # a link out of the folder, or to a FIFO or device: never read
            problems.append(f"file {path.name!r}: {exc.detail} (expected {exc.expected})")
            continue
        if source == "filename":
            text = path.name
        else:
            from .fcs import read_fcs_keywords

            try:
                keywords = read_fcs_keywords(path)
            except BatError as exc:
                problems.append(f"file {path.name!r}: cannot read its keywords ({str(exc).splitlines()[0]})")
                continue
            text = keywords.get(source.upper())
            if text is None:
                problems.append(f"file {path.name!r}, keyword {source!r}: absent (expected a keyword to match "
                                "the pattern against)")
                continue
        match = regex.search(text)
        if match is None:
            problems.append(f"file {path.name!r}: {text!r} does not match the pattern {regex.pattern!r}")
            continue
        record = {k: v for k, v in (defaults or {}).items()}
        record.update({k: v for k, v in match.groupdict().items() if v is not None})
        record["file"] = path.name
        rows.append((f"file {path.name!r}", record))
    try:
        tubes = tubes_from_rows(rows, data_dir=folder, source=str(folder), extra_columns=extra_columns,
                                check_unlisted=False)
    except LayoutError as exc:
        problems.extend(exc.problems)
    if problems:
        raise LayoutError(f"annotating the files found {len(problems)} problem(s)", source=str(folder),
                          problems=problems)
    return tubes
