"""Table exports of a run: ``tubes.csv``, ``patients.csv``, ``results.xlsx`` (with an "about" sheet), Parquet.

Every file is written atomically (a temporary file in the same folder, then renamed over the target), so a
run killed while writing leaves either the previous file or the new one, never half of one. CSVs use fixed
float formatting (8 significant digits), ``\\n`` line ends and the row order given, so that two runs on the
same inputs give byte-identical files whatever the number of workers.

The CSVs keep every value exactly (a layout cell ``=1+1`` is written ``=1+1``: a spreadsheet program opening
the CSV may evaluate it). ``results.xlsx`` is the file to open in a spreadsheet: its text cells are stored as
text, never as formulas, and characters a workbook cannot hold are written as visible escapes.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import BatError
from .textsafe import for_xlsx

FLOAT_FORMAT = "{:.8g}"


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: Path | str, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: Path | str, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def format_cell(value: Any) -> str:
    """One CSV cell: empty for missing, integers as integers, floats with 8 significant digits."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0.0:
            return "0"
        return FLOAT_FORMAT.format(v)
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return ""
    except ImportError:  # pandas is a hard dependency; this only keeps the function usable alone
        pass
    return str(value)


def _csv_field(text: str) -> str:
    """One CSV field, quoted when it holds a comma, a quote, a line feed or a carriage return (the csv
    module leaves a bare CR unquoted when lines end with LF, and readers then split the row there)."""
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_line(cells: list[str]) -> str:
    if len(cells) == 1 and cells[0] == "":
        return '""\n'  # an empty line would be read as no row
    return ",".join(_csv_field(c) for c in cells) + "\n"


def table_to_csv(df: Any) -> str:
    """A DataFrame as CSV text with the project's fixed formatting; text values are kept exactly (no
    escaping of ``=`` or control characters: see the module docstring)."""
    lines = [_csv_line([str(c) for c in df.columns])]
    lines += [_csv_line([format_cell(v) for v in row]) for row in df.itertuples(index=False, name=None)]
    return "".join(lines)


def write_csv(df: Any, target: Path | str) -> Path:
    return atomic_write_text(target, table_to_csv(df))


def write_xlsx(target: Path | str, sheets: Mapping[str, Any], about: Mapping[str, Any]) -> Path:
    """An Excel workbook with one sheet per table plus an ``about`` sheet (key, value rows).

    Numbers stay numbers; every string is a text cell, never a formula or an error value (``=HYPERLINK(..)``,
    ``+1``, ``@x``, ``#N/A`` are shown as written), and control characters a workbook cannot hold are
    written as escapes (``\\x07``; see ``textsafe.for_xlsx``). The CSV tables keep the exact values."""
    import pandas as pd

    about_rows = [(str(k), format_cell(v) if not isinstance(v, str) else v) for k, v in about.items()]
    frames = {**sheets, "about": pd.DataFrame(about_rows, columns=["item", "value"])}
    with atomic_path(target) as tmp:
        with pd.ExcelWriter(tmp, engine="openpyxl") as xl:
            for name, df in frames.items():
                _xlsx_safe_frame(df).to_excel(xl, sheet_name=name, index=False)
                _strings_as_text(xl.sheets[name])
    return Path(target)


def _xlsx_safe_frame(df: Any) -> Any:
    """``df`` with its text (column names included) storable in a workbook (``textsafe.for_xlsx``)."""
    from pandas.api import types

    out = df.rename(columns=lambda c: for_xlsx(c) if isinstance(c, str) else c)
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if not (types.is_numeric_dtype(col) or types.is_datetime64_any_dtype(col)):  # text, mixed, category
            out.isetitem(i, col.astype(object).map(for_xlsx, na_action="ignore"))
    return out


def _strings_as_text(sheet: Any) -> None:
    """Store every string cell of an openpyxl ``sheet`` as text: openpyxl makes a string starting with
    ``=`` a formula and ``#N/A``-like strings error values; a table's text is data, never either."""
    for row in sheet.iter_rows():
        for cell in row:
            if isinstance(cell.value, str):
                cell.data_type = "s"


def write_parquet(df: Any, target: Path | str) -> Path:
    """A Parquet file of the table (needs pyarrow: ``pip install 'bat-analysis[parquet]'``)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise BatError("Parquet output needs the pyarrow package", field="--parquet",
                       expected="pip install 'bat-analysis[parquet]'") from exc
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(target)


def write_tables(out_dir: Path | str, tubes: Any, patients: Any, about: Mapping[str, Any], *,
                 parquet: bool = False) -> list[Path]:
    """Write tubes.csv, patients.csv, results.xlsx (and Parquet files when asked) into ``out_dir``."""
    out = Path(out_dir)
    paths = [write_csv(tubes, out / "tubes.csv"), write_csv(patients, out / "patients.csv"),
             write_xlsx(out / "results.xlsx", {"tubes": tubes, "patients": patients}, about)]
    if parquet:
        paths += [write_parquet(tubes, out / "tubes.parquet"), write_parquet(patients, out / "patients.parquet")]
    return paths
