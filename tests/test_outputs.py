"""Table exports: fixed formatting, atomic writes, the xlsx 'about' sheet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bat_analysis.fileio import atomic_path
from bat_analysis.outputs import format_cell, table_to_csv, write_tables


@pytest.mark.parametrize("value, text", [
    (None, ""), (float("nan"), ""), (pd.NA, ""), (np.float32("nan"), ""), (True, "true"), (np.bool_(False), "false"),
    (3, "3"), (np.int64(120000), "120000"), (5.0, "5"), (-0.0, "0"), (12.345678912, "12.345679"),
    (0.000123456789, "0.00012345679"), (1.5e12, "1.5e+12"), (float("inf"), "inf"), ("a;b", "a;b"),
])
def test_format_cell(value, text):
    assert format_cell(value) == text


def test_csv_is_stable_and_quoted():
    df = pd.DataFrame({"file": ["a,1.fcs", "b.fcs"], "pct": [1 / 3, np.nan], "n": [1, 2],
                       "flags": ["X;Y", ""]})
    text = table_to_csv(df)
    assert text == 'file,pct,n,flags\n"a,1.fcs",0.33333333,1,X;Y\nb.fcs,,2,\n'
    assert table_to_csv(df.copy()) == text


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "tubes.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new fi")
            raise RuntimeError("killed while writing")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tubes.csv"]  # no temporary left behind
    with atomic_path(target) as tmp:
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"


def test_write_tables_with_about_sheet(tmp_path):
    tubes = pd.DataFrame({"file": ["a.fcs"], "pct_cd63": [10.25]})
    patients = pd.DataFrame({"patient": ["P1"], "class": ["responder"]})
    about = {"version": "0.1.0", "template": "bat_ccr3_cd63", "sha256 a.fcs": "ab" * 32, "date (UTC)": "2026"}
    paths = write_tables(tmp_path, tubes, patients, about, parquet=True)
    assert sorted(p.name for p in paths) == ["patients.csv", "patients.parquet", "results.xlsx", "tubes.csv",
                                             "tubes.parquet"]
    sheets = pd.read_excel(tmp_path / "results.xlsx", sheet_name=None)
    assert list(sheets) == ["tubes", "patients", "about"]
    assert dict(zip(sheets["about"]["item"], sheets["about"]["value"]))["sha256 a.fcs"] == "ab" * 32
    assert sheets["tubes"]["pct_cd63"].iloc[0] == 10.25
    assert pd.read_parquet(tmp_path / "patients.parquet").equals(patients)
