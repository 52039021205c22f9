"""Table exports of a run: ``tubes.csv``, ``patients.csv``, ``tube_markers.csv`` (tube × scored marker),
``results.xlsx`` (with an "about" sheet), Parquet.

Every file is written by :mod:`bat_analysis._fileio` (a temporary file in the same folder, then renamed over the
target; mode 0666 & ~umask; a write failure is a ``WriteError`` naming the path, the cause and what to do), so
a run killed while writing leaves either the previous file or the new one, never half of one. :func:`write_tables`
replaces the set as a whole: every file is written to its temporary first, and the targets are only replaced
once all of them are complete (a full disk leaves the previous set, never a mix). CSVs use fixed
float formatting (8 significant digits), ``\\n`` line ends and the row order given, so that two runs on the
same inputs give byte-identical files whatever the number of workers.

The CSVs keep every value exactly (a layout cell ``=1+1`` is written ``=1+1``: a spreadsheet program opening
the CSV may evaluate it). ``results.xlsx`` is the file to open in a spreadsheet: its text cells are stored as
text, never as formulas, and characters a workbook cannot hold are written as visible escapes.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import BatError
from ._fileio import atomic_path, atomic_write_text, write_error
from ._textsafe import for_xlsx

FLOAT_FORMAT = "{:.8g}"


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


def _fill_xlsx(path: Path, sheets: Mapping[str, Any], about: Mapping[str, Any]) -> None:
    """Write the workbook to ``path``: numbers stay numbers; every string is a text cell, never a formula or
    an error value (``=HYPERLINK(..)``, ``+1``, ``@x``, ``#N/A`` are shown as written), and control
    characters a workbook cannot hold are written as escapes (``\\x07``; see ``textsafe.for_xlsx``). The CSV
    tables keep the exact values."""
    import pandas as pd

    about_rows = [(str(k), format_cell(v) if not isinstance(v, str) else v) for k, v in about.items()]
    frames = {**sheets, "about": pd.DataFrame(about_rows, columns=["item", "value"])}
    with pd.ExcelWriter(path, engine="openpyxl") as xl:
        for name, df in frames.items():
            _xlsx_safe_frame(df).to_excel(xl, sheet_name=name, index=False)
            _strings_as_text(xl.sheets[name])


def write_xlsx(target: Path | str, sheets: Mapping[str, Any], about: Mapping[str, Any]) -> Path:
    """An Excel workbook with one sheet per table plus an ``about`` sheet (key, value rows); see
    ``_fill_xlsx`` for how cells are stored."""
    with atomic_path(target) as tmp:
        _fill_xlsx(tmp, sheets, about)
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


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise BatError("Parquet output needs the pyarrow package", field="--parquet",
                       expected="pip install 'bat-analysis[parquet]'") from exc


def write_parquet(df: Any, target: Path | str) -> Path:
    """A Parquet file of the table (needs pyarrow: ``pip install 'bat-analysis[parquet]'``)."""
    _need_pyarrow()
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(target)


def write_tables(out_dir: Path | str, tubes: Any, patients: Any, about: Mapping[str, Any], *,
                 parquet: bool = False, tube_markers: Any = None) -> list[Path]:
    """Write tubes.csv, patients.csv, results.xlsx (and Parquet files when asked) and, when given,
    tube_markers.csv (one row per tube × scored marker) into ``out_dir``, as a set: the targets are replaced
    only once every file is complete (on a failure none of them is)."""
    out = Path(out_dir)
    if parquet:
        _need_pyarrow()
    paths = [out / "tubes.csv", out / "patients.csv", out / "results.xlsx"]
    if parquet:
        paths += [out / "tubes.parquet", out / "patients.parquet"]
    fills = [lambda tmp: tmp.write_bytes(table_to_csv(tubes).encode("utf-8")),
             lambda tmp: tmp.write_bytes(table_to_csv(patients).encode("utf-8")),
             lambda tmp: _fill_xlsx(tmp, {"tubes": tubes, "patients": patients}, about)]
    if parquet:
        fills += [lambda tmp: tubes.to_parquet(tmp, index=False), lambda tmp: patients.to_parquet(tmp, index=False)]
    if tube_markers is not None:
        paths.append(out / "tube_markers.csv")
        fills.append(lambda tmp: tmp.write_bytes(table_to_csv(tube_markers).encode("utf-8")))
    with ExitStack() as stack:  # on leaving, each temporary replaces its target (last one first)
        for path, fill in zip(paths, fills):
            tmp = stack.enter_context(atomic_path(path))
            try:
                fill(tmp)
            except OSError as exc:
                raise write_error(exc, path) from exc
    return paths
