"""Layout sheets (CSV, XLSX) and pattern annotation: valid sheets become Tubes, and every problem of a bad
sheet is reported at once, naming its row and column."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from guards import no_hang

from bat_analysis.errors import LayoutError
from bat_analysis.io.fcs_write import write_fcs
from bat_analysis.io.layout import read_layout, tubes_from_pattern, unlisted_files
from bat_analysis.io._paths import OUTSIDE_HINT as OUTSIDE
from bat_analysis.io._paths import resolve_data_file

HEADER = ["file", "patient", "condition", "allergen", "concentration", "unit", "pretreatment", "well"]
GOOD = [
    ["P1_neg.fcs", "P1", "negative_control", "", "", "", "none", "A1"],
    ["P1_fceri.fcs", "P1", "anti_fceri", "", "", "", "none", "A2"],
    ["P1_birch_1.fcs", "P1", "allergen", "birch", "0.1", "ng/mL", "none", "A3"],
    ["P1_birch_2.fcs", "P1", "allergen", "birch", "1", "ng/mL", "none", "A4"],
    ["P1_oma_neg.fcs", "P1", "Negative control", "", "", "", "Omalizumab", "A5"],
    ["P1_oma_birch_1.fcs", "P1", "allergen", "birch", "0.1", "ng/mL", "omalizumab", "A6"],
    ["P1_oma_birch_2.fcs", "P1", "allergen", "birch", "1", "ng/mL", "omalizumab", "A7"],
]


def _fcs(folder: Path, names: list[str], keywords: dict[str, dict[str, str]] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_fcs(folder / name, np.ones((3, 2)), ["FSC-A", "SSC-A"], keywords=(keywords or {}).get(name))


def _csv(path: Path, rows: list[list[str]], header: list[str] = HEADER, delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _xlsx(path: Path, rows: list[list[object]], header: list[str] = HEADER, title: str = "layout") -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    book.active.title = "notes"
    book.active.append(["this sheet is not the layout"])
    ws = book.create_sheet(title)
    ws.append(header)
    for row in rows:
        ws.append([None if v == "" else v for v in row])
    book.save(path)
    return path


def test_good_csv(tmp_path: Path) -> None:
    _fcs(tmp_path, [r[0] for r in GOOD])
    tubes = read_layout(_csv(tmp_path / "layout.csv", GOOD))
    assert [t.file for t in tubes] == [r[0] for r in GOOD]
    neg = tubes[4]
    assert (neg.condition, neg.pretreatment, neg.allergen, neg.concentration) == (
        "negative_control", "omalizumab", None, None)
    allergen = tubes[3]
    assert (allergen.allergen, allergen.concentration, allergen.unit, allergen.arm) == ("birch", 1.0, "ng/mL", "none")
    assert allergen.extra_dict == {"well": "A4"}


def test_good_xlsx_with_numbers_and_layout_sheet(tmp_path: Path) -> None:
    _fcs(tmp_path / "data", [r[0] for r in GOOD])
    rows = [[*r[:4], float(r[4]) if r[4] else "", *r[5:]] for r in GOOD]
    tubes = read_layout(_xlsx(tmp_path / "plate.xlsx", rows), tmp_path / "data")
    assert [t.concentration for t in tubes] == [None, None, 0.1, 1.0, None, 0.1, 1.0]
    assert tubes[0].extra_dict == {"well": "A1"}


def test_semicolon_csv_decimal_comma_synonyms_blank_pretreatment(tmp_path: Path) -> None:
    rows = [["a.fcs", "P2", "NEG", "", "", "", "", ""], ["b.fcs", "P2", "allergen", "cat", "0,5", "ug/L", "", ""],
            ["c.fcs", "P2", "Allergen", "cat", "5", "ug/L", "none", ""], ["d.fcs", "P2", "fMLP", "", "", "", "", ""]]
    _fcs(tmp_path, ["a.fcs", "b.fcs", "c.fcs", "d.fcs"])
    tubes = read_layout(_csv(tmp_path / "l.csv", rows, delimiter=";"))
    assert [(t.condition, t.pretreatment, t.concentration) for t in tubes] == [
        ("negative_control", "none", None), ("allergen", "none", 0.5), ("allergen", "none", 5.0),
        ("fmlp", "none", None)]


def test_missing_required_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "l.csv", [["a.fcs", "negative_control"]], header=["file", "condition"])
    with pytest.raises(LayoutError) as info:
        read_layout(path, check_files=False)
    assert len(info.value.problems) == 1
    assert "row 1: column 'patient' is missing" in info.value.problems[0]


BAD = [
    ["P1_neg.fcs", "P1", "negative_control", "", "", "", "none", "A1"],          # row 2 ok
    ["missing.fcs", "P1", "anti_fceri", "", "", "", "none", "A2"],              # row 3 file missing
    ["P1_neg.fcs", "P1", "fmlp", "", "", "", "none", "A3"],                     # row 4 duplicate file
    ["P1_x.fcs", "P1", "medium-ish", "", "", "", "none", "A4"],                 # row 5 unknown condition
    ["P1_y.fcs", "P1", "fmlp", "", "", "", "rituximab", "A5"],                  # row 6 unknown pretreatment
    ["P1_a1.fcs", "P1", "allergen", "birch", "ten", "ng/mL", "none", "A6"],     # row 7 non-numeric
    ["P1_a2.fcs", "P1", "allergen", "birch", "-3", "ng/mL", "none", "A7"],      # row 8 negative
    ["P1_a3.fcs", "P1", "allergen", "birch", "", "ng/mL", "none", "A8"],        # row 9 missing concentration
    ["P1_a4.fcs", "P1", "allergen", "", "1", "ng/mL", "none", "A9"],            # row 10 missing allergen
    ["P1_o1.fcs", "P1", "allergen", "birch", "1", "ng/mL", "omalizumab", "B1"],  # row 11 one-point series
    ["P1_z.fcs", "", "negative_control", "", "", "", "none", "B2"],             # row 12 empty patient
    ["P1_dup.fcs", "P1", "negative_control", "", "", "", "none", "B3"],         # row 13 same tube as row 2
]
EXPECTED = [
    "row 3, column 'file': 'missing.fcs' not found",
    "row 4, column 'file': 'P1_neg.fcs' is already listed on row 2",
    "row 5, column 'condition': 'medium-ish' is not a known condition",
    "row 6, column 'pretreatment': 'rituximab' is not a known pretreatment",
    "row 7, column 'concentration': 'ten' is not a number",
    "row 8, column 'concentration': -3 is not positive",
    "row 9, column 'concentration': empty on an allergen row",
    "row 10, column 'allergen': empty on an allergen row",
    "row 11: the allergen series of patient P1, allergen birch, arm omalizumab has a single concentration",
    "row 12, column 'patient': empty",
    "row 13: the same tube (P1 none negative_control) as row 2",
    "file 'unlisted.fcs' is in",
]


def _check_all_problems(exc: LayoutError) -> None:
    problems = exc.problems
    for want in EXPECTED:
        assert sum(want in p for p in problems) == 1, (want, problems)
    assert len(problems) == len(EXPECTED), problems
    assert f"{len(EXPECTED)} problem(s)" in str(exc)


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_every_problem_reported_at_once(tmp_path: Path, kind: str) -> None:
    files = [r[0] for r in BAD if r[0] != "missing.fcs"] + ["unlisted.fcs"]
    _fcs(tmp_path, sorted(set(files)))
    path = _csv(tmp_path / "l.csv", BAD) if kind == "csv" else _xlsx(tmp_path / "l.xlsx", BAD)
    with pytest.raises(LayoutError) as info:
        read_layout(path)
    _check_all_problems(info.value)
    assert info.value.source == str(path)


def test_extra_cells_and_blank_lines(tmp_path: Path) -> None:
    _fcs(tmp_path, ["a.fcs"])
    path = tmp_path / "l.csv"
    path.write_text("file,patient,condition\n\na.fcs,P1,negative_control,surplus\n", encoding="utf-8")
    with pytest.raises(LayoutError) as info:
        read_layout(path)
    assert info.value.problems == ["row 3: more cells than header columns (expected 3)"]


def test_mixed_units_in_a_series(tmp_path: Path) -> None:
    """Mass-per-volume units of one series convert into each other (compared after conversion); an activity
    unit does not convert to a mass: a located problem naming the row, the column and the reference row."""
    rows = [["a.fcs", "P1", "allergen", "cat", "1", "ng/mL", "none", ""],
            ["b.fcs", "P1", "allergen", "cat", "10", "ug/mL", "none", ""]]
    tubes = read_layout(_csv(tmp_path / "ok.csv", rows), check_files=False)
    assert [(t.concentration, t.unit) for t in tubes] == [(1.0, "ng/mL"), (10.0, "ug/mL")]  # kept as written
    rows = [["a.fcs", "P1", "allergen", "cat", "1", "ng/mL", "none", ""],
            ["b.fcs", "P1", "allergen", "cat", "10", "ng/mL", "none", ""],
            ["c.fcs", "P1", "allergen", "cat", "1", "µg/mL", "omalizumab", ""],
            ["d.fcs", "P1", "allergen", "cat", "10", "BU/mL", "omalizumab", ""]]
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "l.csv", rows), check_files=False)
    assert info.value.problems == [
        "row 5, column 'unit': 'BU/mL' cannot be converted to 'ng/mL', the unit of allergen cat for patient P1 "
        "(row 2) (expected a unit of the same kind: mass per volume, or the same allergen activity unit)"]


def test_unknown_unit_is_a_located_problem(tmp_path: Path) -> None:
    rows = [["a.fcs", "P1", "allergen", "cat", "1", "ng/mL", "none", ""],
            ["b.fcs", "P1", "allergen", "cat", "10", "ng/mL", "none", ""],
            ["c.fcs", "P1", "allergen", "cat", "1", "drops", "omalizumab", ""],
            ["d.fcs", "P1", "allergen", "cat", "10", "mL", "omalizumab", ""]]
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "l.csv", rows), check_files=False)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("row 4, column 'unit': 'drops' is not a unit")
    assert problems[1].startswith("row 5, column 'unit': 'mL' is not a concentration unit")
    assert all("expected a mass per volume such as" in p and "SQ-U/mL" in p for p in problems)


def test_same_concentration_in_two_units_is_the_same_tube(tmp_path: Path) -> None:
    rows = [["a.fcs", "P1", "allergen", "cat", "1", "ug/mL", "none", ""],
            ["b.fcs", "P1", "allergen", "cat", "1000", "ng/mL", "none", ""],
            ["c.fcs", "P1", "allergen", "cat", "10", "ug/mL", "none", ""]]
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "l.csv", rows), check_files=False)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("row 3: the same tube")


def test_unknown_sheet_type_and_missing_sheet(tmp_path: Path) -> None:
    other = tmp_path / "layout.ods"
    other.write_text("x")
    with pytest.raises(LayoutError, match="unknown layout sheet type"):
        read_layout(other)
    with pytest.raises(LayoutError, match="layout sheet not found"):
        read_layout(tmp_path / "absent.csv")
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"not a zip")
    with pytest.raises(LayoutError, match="cannot read the workbook"):
        read_layout(broken)


PATTERN = (r"(?P<patient>P\d+)_(?P<pretreatment>none|omalizumab)_(?P<condition>[a-z_]+?)"
           r"(_(?P<allergen>[a-z]+)_(?P<concentration>[\d.]+))?\.fcs$")


def test_tubes_from_file_names(tmp_path: Path) -> None:
    names = ["P1_none_negative_control.fcs", "P1_none_allergen_cat_0.1.fcs", "P1_none_allergen_cat_10.fcs",
             "P1_omalizumab_fmlp.fcs"]
    _fcs(tmp_path, names)
    tubes = tubes_from_pattern(tmp_path, PATTERN, defaults={"unit": "ng/mL"})
    by_file = {t.file: t for t in tubes}
    assert set(by_file) == set(names)
    t = by_file["P1_none_allergen_cat_10.fcs"]
    assert (t.patient, t.condition, t.allergen, t.concentration, t.unit) == ("P1", "allergen", "cat", 10.0, "ng/mL")
    assert by_file["P1_omalizumab_fmlp.fcs"].pretreatment == "omalizumab"
    assert by_file["P1_omalizumab_fmlp.fcs"].unit is None  # unit only on allergen tubes


def test_tubes_from_keyword_with_problems(tmp_path: Path) -> None:
    keywords = {"a.fcs": {"TUBE NAME": "P7|negative_control|run2"}, "b.fcs": {"TUBE NAME": "P7|fmlp|run2"},
                "c.fcs": {"TUBE NAME": "garbage"}, "d.fcs": {}}
    _fcs(tmp_path, list(keywords), keywords)
    pattern = r"^(?P<patient>P\d+)\|(?P<condition>[a-z_]+)\|(?P<run>\w+)$"
    with pytest.raises(LayoutError) as info:
        tubes_from_pattern(tmp_path, pattern, source="TUBE NAME")
    problems = info.value.problems
    assert len(problems) == 2
    assert "file 'c.fcs': 'garbage' does not match" in problems[0]
    assert "file 'd.fcs', keyword 'TUBE NAME': absent" in problems[1]
    (tmp_path / "c.fcs").unlink()
    (tmp_path / "d.fcs").unlink()
    tubes = tubes_from_pattern(tmp_path, pattern, source="TUBE NAME")
    assert [(t.file, t.patient, t.condition, t.extra_dict) for t in tubes] == [
        ("a.fcs", "P7", "negative_control", {"run": "run2"}), ("b.fcs", "P7", "fmlp", {"run": "run2"})]


def test_pattern_without_patient_group(tmp_path: Path) -> None:
    _fcs(tmp_path, ["a.fcs"])
    with pytest.raises(LayoutError, match="no \\(\\?P<patient>"):
        tubes_from_pattern(tmp_path, r"(?P<condition>\w+)")
    with pytest.raises(LayoutError, match="invalid pattern"):
        tubes_from_pattern(tmp_path, r"(?P<patient>")


def test_simulated_experiment_layout_reads_back(tmp_path: Path) -> None:
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(tmp_path, n_patients=2, n_events=500, seed=3, n_concentrations=3)
    tubes = read_layout(exp.layout_path)
    assert tubes == exp.tubes
    by_name = tubes_from_pattern(tmp_path, PATTERN, defaults={"unit": "ng/mL"})
    assert {(t.file, t.patient, t.condition, t.pretreatment, t.allergen, t.concentration) for t in by_name} == {
        (t.file, t.patient, t.condition, t.pretreatment, t.allergen, t.concentration) for t in tubes}


def test_damaged_workbook_is_a_layout_error(tmp_path: Path) -> None:
    import io
    import zipfile

    _fcs(tmp_path, [r[0] for r in GOOD])
    good = _xlsx(tmp_path / "good.xlsx", GOOD).read_bytes()
    src = zipfile.ZipFile(io.BytesIO(good))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, data[: len(data) // 2] if item.filename.endswith("sheet2.xml") else data)
    (tmp_path / "good.xlsx").unlink()
    damaged = tmp_path / "damaged.xlsx"
    damaged.write_bytes(buf.getvalue())
    with pytest.raises(LayoutError, match="cannot read the workbook"):
        read_layout(damaged)


def test_pipe_delimited_latin1_csv_with_lost_epsilon(tmp_path: Path) -> None:
    _fcs(tmp_path, ["a.fcs", "b.fcs"])
    text = "file|patient|condition\na.fcs|Pé|anti-Fc?RI\nb.fcs|Pé|negative control\n"
    (tmp_path / "l.csv").write_bytes(text.encode("latin-1"))
    tubes = read_layout(tmp_path / "l.csv")
    assert [(t.patient, t.condition) for t in tubes] == [("Pé", "anti_fceri"), ("Pé", "negative_control")]


# ---------------------------------------------------------------- files outside DATA_DIR, and files that are not files


def _hostile_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder with one good file, and a regular file outside it."""
    data = tmp_path / "plate1"
    _fcs(data, ["good.fcs"])
    outside = tmp_path / "secret.fcs"
    outside.write_bytes(b"SECRET first bytes")
    return data, outside


def _rows(*files: str) -> list[list[str]]:
    return [["good.fcs", "P1", "negative_control", "", "", "", "none", ""]] + [
        [f, f"P{i + 2}", "negative_control", "", "", "", "none", ""] for i, f in enumerate(files)]


def test_files_out_of_the_data_folder_are_located_problems_all_at_once(tmp_path: Path) -> None:
    data, outside = _hostile_folder(tmp_path)
    (data / "link_out.fcs").symlink_to(outside)
    rows = _rows("../secret.fcs", "sub/../../secret.fcs", str(outside), "link_out.fcs", "absent.fcs")
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "layout.csv", rows), data)
    problems = info.value.problems
    assert problems == [
        f"row 3, column 'file': '../secret.fcs' climbs out of the data folder {data} with '..' (expected {OUTSIDE})",
        f"row 4, column 'file': 'sub/../../secret.fcs' climbs out of the data folder {data} with '..' "
        f"(expected {OUTSIDE})",
        f"row 5, column 'file': {str(outside)!r} is an absolute path, outside the data folder {data} "
        f"(expected {OUTSIDE})",
        f"row 6, column 'file': 'link_out.fcs' is a link to {outside.resolve()}, outside the data folder {data} "
        f"(expected {OUTSIDE})",
        f"row 7, column 'file': 'absent.fcs' not found in {data} (expected an existing FCS file; or run with "
        "--skip-missing to record its tube as failed)",
    ]


def test_a_link_inside_the_data_folder_is_followed(tmp_path: Path) -> None:
    data, _ = _hostile_folder(tmp_path)
    _fcs(data / "raw", ["0001.fcs"])
    (data / "P2_neg.fcs").symlink_to(Path("raw") / "0001.fcs")
    tubes = read_layout(_csv(tmp_path / "layout.csv", _rows("P2_neg.fcs", "raw/0001.fcs")[:2]), data)
    assert [t.file for t in tubes] == ["good.fcs", "P2_neg.fcs"]
    assert resolve_data_file(data, "P2_neg.fcs") == (data / "raw" / "0001.fcs").resolve()


def test_allow_outside_data_dir_reads_an_outside_regular_file(tmp_path: Path) -> None:
    data, outside = _hostile_folder(tmp_path)
    (data / "link_out.fcs").symlink_to(outside)
    rows = _rows("../secret.fcs", "link_out.fcs")
    with pytest.raises(LayoutError):
        read_layout(_csv(tmp_path / "layout.csv", rows), data)
    tubes = read_layout(_csv(tmp_path / "layout.csv", rows), data, allow_outside_data_dir=True)
    assert [t.file for t in tubes] == ["good.fcs", "../secret.fcs", "link_out.fcs"]
    tubes = read_layout(_csv(tmp_path / "abs.csv", _rows(str(outside))), data, allow_outside_data_dir=True)
    assert tubes[1].file == str(outside)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX feature")
def test_a_fifo_in_the_data_folder_is_refused_not_waited_on(tmp_path: Path) -> None:
    data, _ = _hostile_folder(tmp_path)
    os.mkfifo(data / "pipe.fcs")
    os.mkdir(data / "folder.fcs")
    with no_hang(10, "reading a FIFO or /proc file"), pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "layout.csv", _rows("pipe.fcs", "folder.fcs")), data,
                    allow_outside_data_dir=True)
    assert info.value.problems == [
        "row 3, column 'file': 'pipe.fcs' is a FIFO (named pipe), not a regular file "
        "(expected an FCS file, which is a regular file)",
        "row 4, column 'file': 'folder.fcs' is a folder (directory), not a regular file "
        "(expected an FCS file, which is a regular file)",
    ]
    os.mkfifo(tmp_path / "layout_pipe.csv")  # the layout sheet itself
    with no_hang(10, "reading a FIFO or /proc file"), pytest.raises(LayoutError, match="the layout sheet is a FIFO"):
        read_layout(tmp_path / "layout_pipe.csv", data)


@pytest.mark.skipif(not Path("/proc/self/pagemap").exists(), reason="no /proc/self/pagemap on this system")
def test_a_proc_file_is_not_a_regular_file_even_when_outside_files_are_allowed(tmp_path: Path) -> None:
    data, _ = _hostile_folder(tmp_path)
    (data / "pagemap.fcs").symlink_to("/proc/self/pagemap")
    with no_hang(10, "reading a FIFO or /proc file"), pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "layout.csv", _rows("/proc/self/pagemap", "pagemap.fcs")), data,
                    allow_outside_data_dir=True)
    assert info.value.problems == [
        f"row {row}, column 'file': {name!r} is a file of the kernel (/proc, /sys), not a regular file "
        "(expected an FCS file, which is a regular file)" for row, name in ((3, "/proc/self/pagemap"),
                                                                           (4, "pagemap.fcs"))]


def test_a_nul_character_in_a_file_name_is_a_located_problem(tmp_path: Path) -> None:
    """A NUL in the 'file' cell (a damaged sheet) is reported like any other bad entry, with or without
    --allow-outside-data-dir, instead of escaping as Python's ValueError("embedded null byte")."""
    data, _ = _hostile_folder(tmp_path)
    for allow in (False, True):
        with pytest.raises(LayoutError) as info:
            read_layout(_csv(tmp_path / "layout.csv", _rows("a\x00b.fcs")), data, allow_outside_data_dir=allow)
        assert info.value.problems == [
            "row 3, column 'file': 'a\\x00b.fcs' contains a NUL character, which no file name can hold "
            "(expected the name of an FCS file in the data folder)"]


def test_unlisted_files_can_be_accepted_and_missing_files_skipped(tmp_path: Path) -> None:
    data, _ = _hostile_folder(tmp_path)
    _fcs(data, ["comp_FITC.fcs", "unstained.fcs"])
    path = _csv(tmp_path / "layout.csv", _rows("absent.fcs"))
    with pytest.raises(LayoutError) as info:
        read_layout(path, data)
    assert [p.split(" (")[0] for p in info.value.problems] == [
        f"row 3, column 'file': 'absent.fcs' not found in {data}",
        f"file 'comp_FITC.fcs' is in {data} but on no row", f"file 'unstained.fcs' is in {data} but on no row"]
    tubes = read_layout(path, data, check_unlisted=False, skip_missing=True)
    assert [t.file for t in tubes] == ["good.fcs", "absent.fcs"]
    assert unlisted_files(data, [t.file for t in tubes]) == ["comp_FITC.fcs", "unstained.fcs"]


def test_pattern_annotation_never_reads_a_link_out_of_the_folder(tmp_path: Path, monkeypatch) -> None:
    import bat_analysis.io.fcs as fcs

    data, outside = _hostile_folder(tmp_path)
    (data / "P9_none_fmlp.fcs").symlink_to(outside)
    read = []
    real = fcs.read_fcs_keywords
    monkeypatch.setattr(fcs, "read_fcs_keywords", lambda p, **kw: read.append(Path(p).name) or real(p, **kw))
    with pytest.raises(LayoutError) as info:
        tubes_from_pattern(data, r"(?P<patient>\w+)", source="$FIL", defaults={"condition": "fmlp"})
    assert any(p.startswith("file 'P9_none_fmlp.fcs': is a link to") for p in info.value.problems), \
        info.value.problems
    assert read == ["good.fcs"]


def test_a_loop_of_links_is_a_located_problem(tmp_path: Path) -> None:
    data, _ = _hostile_folder(tmp_path)
    (data / "loop.fcs").symlink_to("loop.fcs")
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "layout.csv", _rows("loop.fcs")), data)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("row 3, column 'file': 'loop.fcs' cannot be followed to a file")


def test_replicate_tubes_need_the_replicate_column(tmp_path: Path) -> None:
    """Duplicate and triplicate tubes are accepted when a 'replicate' column numbers them apart (each kept as
    its own tube); without the column, or with the same label twice, a repeated tube is a located problem."""
    header = HEADER + ["replicate"]
    rows = [["n1.fcs", "P1", "negative_control", "", "", "", "none", "", "1"],
            ["n2.fcs", "P1", "negative_control", "", "", "", "none", "", "2"],
            ["a1.fcs", "P1", "allergen", "cat", "1", "ng/mL", "none", "", "1"],
            ["a2.fcs", "P1", "allergen", "cat", "1", "ng/mL", "none", "", "2"],
            ["a3.fcs", "P1", "allergen", "cat", "0.001", "µg/mL", "none", "", "3"],
            ["b1.fcs", "P1", "allergen", "cat", "10", "ng/mL", "none", "", ""]]
    tubes = read_layout(_csv(tmp_path / "ok.csv", rows, header), check_files=False)
    assert [t.replicate for t in tubes] == ["1", "2", "1", "2", "3", ""]
    assert tubes[0].extra_dict["replicate"] == "1"  # carried into tubes.csv like any extra column
    dup = rows[:3] + [["a2.fcs", "P1", "allergen", "cat", "1", "ng/mL", "none", "", "1"]] + rows[5:]
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "dup.csv", dup, header), check_files=False)
    assert info.value.problems == ["row 5, column 'replicate': the same tube (P1 none allergen cat 1, replicate "
                                   "'1') as row 4 (expected replicate tubes numbered apart)"]
    without = [r[:-1] for r in rows]
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "no.csv", without), check_files=False)
    assert len(info.value.problems) == 3
    assert info.value.problems[0] == (
        "row 3: the same tube (P1 none negative_control) as row 2 (expected one file per patient, arm, condition "
        "and concentration; replicate tubes are numbered apart in a 'replicate' column)")


def test_a_patient_spelt_two_ways_is_a_located_problem(tmp_path: Path) -> None:
    """IDs that differ only in capitals, or in how an accent is composed, are one patient to a spreadsheet and to
    the file systems of Windows and macOS (one report would replace the other): refused, naming both rows."""
    rows = [["a.fcs", "P01", "negative_control", "", "", "", "none", ""],
            ["b.fcs", "p01", "anti_fceri", "", "", "", "none", ""],
            ["c.fcs", "Zoé", "negative_control", "", "", "", "none", ""],
            ["d.fcs", "Zoe\u0301", "anti_fceri", "", "", "", "none", ""],
            ["e.fcs", "P01", "fmlp", "", "", "", "none", ""]]
    with pytest.raises(LayoutError) as info:
        read_layout(_csv(tmp_path / "l.csv", rows), check_files=False)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("row 3, column 'patient': 'p01' is written as 'P01' (row 2) but for capitals")
    assert problems[1].startswith("row 5, column 'patient': 'Zoe\u0301' is written as 'Zoé' (row 4)")
