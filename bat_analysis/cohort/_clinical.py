"""Clinical sheets and run results, read, checked and joined per patient for ``bat cohort``.

Contract:

- ``read_sheet(path, what=...)`` reads a CSV (``,``/``;``/tab, UTF-8 or Latin-1) or XLSX sheet into a DataFrame of
  stripped text cells (nothing is evaluated: a cell starting with ``=`` is text). Rows are numbered as a spreadsheet
  shows them (header = row 1) in the column ``ROW``; blank rows are skipped. Column names are kept as written
  (stripped). An unreadable, empty or unknown file raises ``BatError`` naming the file.
- ``read_clinical(path, id_column)`` also checks the ID column: present, no blank and no duplicate IDs; every problem
  at once in one ``ProblemsError`` (row, column, what was expected).
- ``read_results(run_dirs, allergen)`` reads each run folder's ``patients.csv`` (not the SQLite store), one row per
  patient: with several allergens per patient ``allergen`` must name one (otherwise a ``ProblemsError`` lists the
  patients and their allergens); a patient in two runs is an error naming both runs. Adds the derived in-vitro
  column ``cd_sens_ratio`` = ``cd_sens_none / cd_sens_omalizumab`` when both exist (how many times the omalizumab
  arm's CD-sens falls), and ``class_rank`` = 0 / 1 / 2 for ``non_responder`` / ``partial_responder`` / ``responder``
  (blank for any other class, e.g. ``not_evaluable``), so that the class can be used as an ordinal predictor.
- ``join(results, clinical)`` → ``(merged, Mismatches)``: an inner join on the patient ID (exact match after
  stripping). ``Mismatches.only_in_clinical`` / ``only_in_results`` list the IDs on one side only (with a note when
  an ID differs only by letter case); an empty intersection is a ``ProblemsError`` with both lists.
- ``numeric(df, column, source)`` converts a column to float: blank, ``NA``, ``n/a`` → NaN; a decimal comma is
  accepted; any other text is a located error (``row N, column C: 'x' is not a number``), every bad cell at once.
  ``check_text_or_numbers`` refuses the same way a column that is mostly numbers with a few text cells (a covariate
  is either numbers or categories).
- ``derive_columns(df)`` adds, when their inputs exist (names matched case-insensitively):
  ``sige_total_ige_ratio_pct`` = 100 × sIgE (kUA/L, column ``sige``) / total IgE (kU/L, column ``total_ige``) — the
  ratio Zhang et al. stratify at ≥ 10% and > 16% (both in kU/L, IgE's international unit; 1 kU/L = 2.4 ng/mL);
  ``sige_class`` 0–6 by the ImmunoCAP class limits 0.35, 0.7, 3.5, 17.5, 50 and 100 kUA/L (Thermo Fisher Phadia,
  ImmunoCAP Specific IgE directions for use: class 0 < 0.35, 1 0.35–< 0.70, 2 0.70–< 3.5, 3 3.5–< 17.5,
  4 17.5–< 50, 5 50–< 100, 6 ≥ 100); ``age_group`` from ``age`` in years: ``<12`` (children), ``12-17``
  (adolescents; ICH E11 paediatric age classes), ``18-64`` (adults), ``>=65`` (older adults, WHO). A derived column
  never replaces a column of the same name in the sheet.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import BatError, ProblemsError
from ..io.layout import parse_decimal

__all__ = ["ROW", "Mismatches", "read_sheet", "read_clinical", "read_results", "join", "numeric",
           "derive_columns", "find_column", "columns_text",
           "is_numeric", "check_text_or_numbers", "SIGE_CLASS_LIMITS", "AGE_GROUPS", "MISSING_TOKENS"]

ROW = "__row__"
SIGE_CLASS_LIMITS = (0.35, 0.7, 3.5, 17.5, 50.0, 100.0)  # kUA/L, ImmunoCAP classes 1..6 start here
AGE_GROUPS = ((12.0, "<12"), (18.0, "12-17"), (65.0, "18-64"), (math.inf, ">=65"))
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null", "-", "."})
CLASS_RANK = {"non_responder": "0", "partial_responder": "1", "responder": "2"}
MAX_CELLS = 5_000_000  # a sheet larger than this is refused rather than read into memory


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value).strip()


def _read_csv_rows(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if not text.strip():
        return []
    first = text.lstrip("\r\n").splitlines()[0]
    delimiter = max(",;\t", key=first.count)  # the header's most frequent separator (comma on a tie)
    try:
        return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise BatError(f"cannot read the sheet as CSV ({exc})", source=str(path)) from exc


def _read_xlsx_rows(path: Path) -> list[list[str]]:
    import zipfile
    import zlib

    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    damaged = (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, EOFError, NotImplementedError,
               zipfile.BadZipFile, zlib.error, SyntaxError, InvalidFileException)
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except damaged as exc:
        raise BatError(f"cannot read the workbook ({type(exc).__name__}: {exc})", source=str(path)) from exc
    try:
        rows = []
        for row in book.worksheets[0].iter_rows(values_only=True):
            rows.append([_cell_text(v) for v in row])
            if len(rows) * max(len(rows[0]), 1) > MAX_CELLS:
                raise BatError("the sheet is too large", source=str(path), expected=f"at most {MAX_CELLS} cells")
    except damaged as exc:
        raise BatError(f"cannot read the workbook's first sheet ({type(exc).__name__}: {exc})",
                       source=str(path)) from exc
    finally:
        book.close()
    return rows


def read_sheet(path: str | Path, *, what: str = "clinical sheet") -> pd.DataFrame:
    """A CSV or XLSX sheet as text cells, with spreadsheet row numbers in ``ROW`` (see the module contract)."""
    path = Path(path)
    if not path.is_file():
        raise BatError(f"{what} not found", source=str(path), expected="an existing .csv or .xlsx file")
    suffix = path.suffix.casefold()
    try:
        if suffix in (".xlsx", ".xlsm"):
            rows = _read_xlsx_rows(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            rows = _read_csv_rows(path)
        else:
            raise BatError(f"unknown {what} type {path.suffix!r}", source=str(path),
                           expected="a .csv, .tsv, .txt or .xlsx file")
    except OSError as exc:
        raise BatError(f"cannot read the {what}: {exc.strerror}", source=str(path)) from exc
    if not rows or not any(c.strip() for c in rows[0]):
        raise BatError(f"the {what} is empty", source=str(path), field="row 1",
                       expected="a header row naming the columns")
    header = [c.strip() for c in rows[0]]
    problems = []
    seen: dict[str, int] = {}
    for j, name in enumerate(header):
        if not name:
            continue
        key = name.casefold()
        if key in seen:
            problems.append(f"row 1: column {name!r} appears more than once (expected each column once)")
        seen[key] = j
    if problems:
        raise ProblemsError(f"the {what} has {len(problems)} problem(s)", source=str(path), problems=problems)
    keep = [j for j, name in enumerate(header) if name]
    records = []
    for i, values in enumerate(rows[1:], start=2):
        cells = [_cell_text(v) for v in values]
        if not any(cells):
            continue
        rec = {header[j]: (cells[j] if j < len(cells) else "") for j in keep}
        rec[ROW] = i
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=[header[j] for j in keep] + [ROW])


def columns_text(df: pd.DataFrame, limit: int = 12) -> str:
    """The columns of ``df`` for a message: the first ``limit`` names, then how many more."""
    names = [str(c) for c in df.columns if c != ROW]
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def find_column(df: pd.DataFrame, name: str) -> str | None:
    """The column of ``df`` named ``name`` (case-insensitively, spaces and dashes as ``_``), or None."""
    def norm(s: str) -> str:
        return re.sub(r"[\s\-]+", "_", s.strip().casefold())

    wanted = norm(name)
    for c in df.columns:
        if c != ROW and norm(str(c)) == wanted:
            return str(c)
    return None


def read_clinical(path: str | Path, id_column: str = "patient") -> pd.DataFrame:
    """The clinical sheet with its ID column renamed ``patient`` and checked (see the module contract)."""
    df = read_sheet(path, what="clinical sheet")
    col = find_column(df, id_column)
    if col is None:
        raise BatError(f"the clinical sheet has no ID column {id_column!r}", source=str(path), field="row 1",
                       expected=f"a column {id_column!r} (or give --id-column); columns found: "
                                + ", ".join(repr(c) for c in df.columns if c != ROW))
    problems = []
    ids = df[col].astype(str).str.strip()
    for row, value in zip(df[ROW], ids):
        if not value:
            problems.append(f"row {row}, column {col!r}: the patient ID is blank (expected an ID)")
    dup = ids[ids.ne("") & ids.duplicated(keep=False)]
    for value in sorted(set(dup)):
        rows = ", ".join(str(r) for r in df.loc[ids.eq(value), ROW])
        problems.append(f"rows {rows}, column {col!r}: patient {value!r} appears more than once "
                        "(expected one row per patient)")
    if problems:
        raise ProblemsError(f"the clinical sheet has {len(problems)} problem(s)", source=str(path),
                            problems=problems)
    df = df.drop(columns=[col]).assign(patient=ids.values)
    other = [c for c in df.columns if c not in ("patient", ROW)]
    if "patient" in other:
        raise BatError("the clinical sheet has a second column named 'patient'", source=str(path),
                       field="row 1", expected="one ID column")
    return df[["patient"] + other + [ROW]]


def read_results(run_dirs: Iterable[str | Path], allergen: str | None = None) -> pd.DataFrame:
    """Per-patient in-vitro results of one or more run folders (see the module contract)."""
    frames = []
    problems: list[str] = []
    origin: dict[str, str] = {}
    for run in run_dirs:
        run = Path(run)
        path = run / "patients.csv"
        if not path.is_file():
            raise BatError("no patients.csv in the results folder", source=str(run),
                           expected="a folder written by 'bat run' (holding patients.csv)")
        df = read_sheet(path, what="results table")
        for c in ("patient", "allergen"):
            if c not in df.columns:
                raise BatError(f"column {c!r} is missing", source=str(path), field="row 1",
                               expected="the patients.csv columns written by 'bat run'")
        if allergen is not None:
            df = df[df["allergen"].str.casefold() == allergen.strip().casefold()]
        several = df.groupby("patient")["allergen"].agg(lambda s: sorted(set(s)))
        for pid, alls in several.items():
            if len(alls) > 1:
                problems.append(f"{path}: patient {pid!r} has results for {', '.join(alls)} "
                                "(give --allergen NAME to choose one)")
        for pid in df["patient"]:
            if pid in origin and origin[pid] != str(path):
                problems.append(f"patient {pid!r} is in both {origin[pid]} and {path} (expected each patient "
                                "in one run; give the runs of one study)")
            origin.setdefault(pid, str(path))
        frames.append(df.assign(results_file=str(path)))
    if problems:
        raise ProblemsError(f"the results have {len(problems)} problem(s)", problems=problems)
    if not frames:
        raise BatError("no results folder given", field="--results", expected="one or more run folders")
    out = pd.concat(frames, ignore_index=True)
    if out.empty:
        what = f" for allergen {allergen!r}" if allergen else ""
        raise BatError(f"the results hold no patient{what}", field="--allergen" if allergen else "--results",
                       expected="patients.csv rows")
    if "cd_sens_none" in out.columns and "cd_sens_omalizumab" in out.columns and "cd_sens_ratio" not in out:
        num = numeric(out, "cd_sens_none", "patients.csv")
        den = numeric(out, "cd_sens_omalizumab", "patients.csv")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where((den > 0) & np.isfinite(num), num / den, np.nan)
        out["cd_sens_ratio"] = [_cell_text(float(v)) for v in ratio]
    if "class" in out.columns and "class_rank" not in out.columns:
        out["class_rank"] = out["class"].map(lambda c: CLASS_RANK.get(str(c).strip(), ""))
    return out


@dataclass
class Mismatches:
    only_in_clinical: list[str] = field(default_factory=list)
    only_in_results: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.only_in_clinical:
            out.append(f"{len(self.only_in_clinical)} patient(s) in the clinical sheet but not in the results: "
                       + ", ".join(self.only_in_clinical))
        if self.only_in_results:
            out.append(f"{len(self.only_in_results)} patient(s) in the results but not in the clinical sheet: "
                       + ", ".join(self.only_in_results))
        return out + self.notes


def join(results: pd.DataFrame, clinical: pd.DataFrame) -> tuple[pd.DataFrame, Mismatches]:
    """Patients present on both sides, clinical columns first; and the IDs found on one side only."""
    res_ids = set(results["patient"])
    cli_ids = set(clinical["patient"])
    mm = Mismatches(sorted(cli_ids - res_ids), sorted(res_ids - cli_ids))
    folded = {}
    for pid in mm.only_in_results:
        folded.setdefault(pid.casefold(), pid)
    for pid in mm.only_in_clinical:
        if pid.casefold() in folded:
            mm.notes.append(f"clinical ID {pid!r} differs from result ID {folded[pid.casefold()]!r} only in "
                            "letter case (IDs are matched exactly)")
    if not res_ids & cli_ids:
        raise ProblemsError("no patient ID of the clinical sheet matches the results", problems=mm.lines()
                            or ["both sides are empty"])
    res = results.drop(columns=[ROW], errors="ignore")
    overlap = [c for c in res.columns if c != "patient" and c in clinical.columns]
    res = res.rename(columns={c: f"{c}_results" for c in overlap})
    merged = clinical.merge(res, on="patient", how="inner", validate="one_to_one")
    return merged.reset_index(drop=True), mm


def _to_float(text: object) -> float | None:
    if text is None:
        return math.nan
    if isinstance(text, (int, float, np.integer, np.floating)) and not isinstance(text, bool):
        return float(text)
    t = str(text).strip()
    if t.casefold() in MISSING_TOKENS:
        return math.nan
    return parse_decimal(t)


def numeric(df: pd.DataFrame, column: str, source: str | None = None) -> np.ndarray:
    """Column ``column`` as floats (blank → NaN); a non-number is a located error (see the module contract)."""
    if column not in df.columns:
        raise BatError(f"column {column!r} is missing", source=source, field=column,
                       expected="a column of that name in the clinical sheet or the results")
    values = []
    problems = []
    rows = df[ROW] if ROW in df.columns else pd.Series(range(2, len(df) + 2), index=df.index)
    for row, cell in zip(rows, df[column]):
        v = _to_float(cell)
        if v is None:
            problems.append(f"row {row}, column {column!r}: {str(cell)[:40]!r} is not a number "
                            "(expected a number such as 12.5, or blank when missing)")
            v = math.nan
        values.append(v)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ProblemsError(f"column {column!r} has {len(problems)} value(s) that are not numbers",
                            source=source, problems=shown)
    return np.asarray(values, dtype=float)


def is_numeric(df: pd.DataFrame, column: str) -> bool:
    """Whether every non-blank cell of ``column`` reads as a number (and at least one does)."""
    vals = [_to_float(c) for c in df[column]]
    return all(v is not None for v in vals) and any(v is not None and not math.isnan(v) for v in vals)


def check_text_or_numbers(df: pd.DataFrame, column: str, source: str | None = None) -> None:
    """A column is either numbers or text: mostly numbers with a few text cells is taken for typos and refused
    with the text cells located (a typo such as ``4O`` in an age would otherwise turn it into categories)."""
    vals = [_to_float(c) for c in df[column]]
    n_text = sum(v is None for v in vals)
    n_num = sum(v is not None and not math.isnan(v) for v in vals)
    if n_text and n_num > n_text:
        numeric(df, column, source)


def sige_class(value: float) -> float:
    """ImmunoCAP class 0–6 of a specific IgE in kUA/L (NaN stays NaN)."""
    if not math.isfinite(value):
        return math.nan
    return float(int(np.searchsorted(SIGE_CLASS_LIMITS, value, side="right")))


def age_group(age: float) -> str:
    if not math.isfinite(age):
        return ""
    for upper, label in AGE_GROUPS:
        if age < upper:
            return label
    return AGE_GROUPS[-1][1]


def derive_columns(df: pd.DataFrame, source: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Add the derived columns whose inputs exist; returns (frame, names added). See the module contract."""
    out = df.copy()
    added = []
    sige = find_column(out, "sige")
    total = find_column(out, "total_ige")
    if sige is not None and "sige_class" not in out.columns:
        s = numeric(out, sige, source)
        out["sige_class"] = [_cell_text(sige_class(v)) for v in s]
        added.append("sige_class")
    if sige is not None and total is not None and "sige_total_ige_ratio_pct" not in out.columns:
        s = numeric(out, sige, source)
        t = numeric(out, total, source)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(t > 0, 100.0 * s / t, np.nan)
        out["sige_total_ige_ratio_pct"] = [_cell_text(float(v)) for v in ratio]
        added.append("sige_total_ige_ratio_pct")
    age = find_column(out, "age")
    if age is not None and "age_group" not in out.columns:
        a = numeric(out, age, source)
        out["age_group"] = [age_group(v) for v in a]
        added.append("age_group")
    return out, added
