"""``bat cohort`` end to end: the demo, a BAT run joined with a clinical sheet, the clinical sheet's checks and
every bad input (exit 2, a located message)."""

from __future__ import annotations

import csv
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bat_analysis.cli import app
from bat_analysis.cohort import _clinical as clinical
from bat_analysis.cohort.run import demo_inputs, run_cohort
from bat_analysis.errors import BatError, ProblemsError

runner = CliRunner()
OUTPUTS = ("roc.csv", "roc_tests.csv", "associations.csv", "strata.csv", "longitudinal.csv", "table1.csv",
           "cohort.html", "cohort.pdf")


def _bat(*args: str):
    return runner.invoke(app, list(args))


def _write(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _header(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[0].split(",")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort_demo")
    result = _bat("cohort", "--demo", "--patients", "80", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_every_output_with_the_contract_columns(demo):
    for name in OUTPUTS:
        assert (demo / name).is_file(), name
    assert _header(demo / "roc.csv") == ["predictor", "outcome", "n_positive", "n_negative", "auroc", "auroc_ci_low",
                                         "auroc_ci_high", "direction", "cutoff", "sensitivity", "specificity"]
    assert _header(demo / "associations.csv")[:9] == ["predictor", "outcome", "n", "or_per_sd", "or_ci_low",
                                                      "or_ci_high", "p_value", "q_value", "covariates"]
    roc = pd.read_csv(demo / "roc.csv")
    assert list(roc["predictor"]) == ["auc_inhibition_pct", "ec50_shift_log10", "sige_total_ige_ratio_pct"]
    assert len(pd.read_csv(demo / "roc_tests.csv")) == 3
    assert set(pd.read_csv(demo / "strata.csv")["stratification"]) == {"sige_total_ige_ratio_pct>=10", "sige_class"}
    longi = pd.read_csv(demo / "longitudinal.csv")
    assert set(longi["variable"]) == {"ACT", "FEV1_pct"} and set(longi["week"]) == {12, 24, 48}
    assert (demo / "demo_run" / "patients.csv").is_file() and (demo / "clinical.csv").is_file()
    assert not list(demo.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_report_is_self_contained_and_shows_the_csv_numbers(demo):
    page = (demo / "cohort.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", page)
    assert page.count("src='data:image/png;base64,") == 4  # ROC, forest, strata, trajectories
    roc = pd.read_csv(demo / "roc.csv", dtype=str)
    for v in roc["auroc_ci_low"]:
        assert v in page
    assert (demo / "cohort.pdf").read_bytes()[:5] == b"%PDF-"


def test_hostile_text_is_escaped_and_not_mathtext(tmp_path):
    opts = demo_inputs(tmp_path / "in", 40, 3)
    sheet = pd.read_csv(opts.clinical, dtype=str)
    sheet = sheet.rename(columns={"bmi": "<script>alert(1)</script>$\\notacommand{x}$"})
    sheet["sex"] = sheet["sex"].replace({"F": "<img src=x onerror=alert(1)>"})
    sheet.to_csv(opts.clinical, index=False)
    opts.covariates = ["sex"]
    opts.predictors = ["auc_inhibition_pct", "<script>alert(1)</script>$\\notacommand{x}$"]
    opts.out = tmp_path / "out"
    run_cohort(opts)  # parsed as mathtext, the unknown command would raise ValueError while drawing
    page = (opts.out / "cohort.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<img src=x" not in page
    assert html.escape("<script>alert(1)</script>") in page


def test_mismatched_ids_are_listed_and_the_rest_analysed(tmp_path):
    opts = demo_inputs(tmp_path / "in", 40, 1)
    sheet = pd.read_csv(opts.clinical, dtype=str)
    sheet.loc[0, "patient"] = "p0001"  # case differs from the results' P0001
    sheet.loc[1, "patient"] = "X999"
    sheet.to_csv(opts.clinical, index=False)
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "2 patient(s) in the clinical sheet but not in the results: X999, p0001" in result.output
    assert "2 patient(s) in the results but not in the clinical sheet: P0001, P0002" in result.output
    assert "'p0001' differs from result ID 'P0001' only in letter case" in result.output
    assert "38 patients analysed" in result.output
    assert "P0001, P0002" in (tmp_path / "out" / "cohort.html").read_text(encoding="utf-8")


def test_no_matching_id_is_an_error_listing_both_sides(tmp_path):
    opts = demo_inputs(tmp_path / "in", 8, 1)
    _write(opts.clinical, [["patient", "response"], ["A", "yes"], ["B", "no"]])
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "error: no patient ID of the clinical sheet matches the results" in result.output
    assert "in the clinical sheet but not in the results: A, B" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_non_numeric_predictor_is_a_located_error(tmp_path):
    opts = demo_inputs(tmp_path / "in", 20, 1)
    sheet = pd.read_csv(opts.clinical, dtype=str)
    sheet.loc[4, "bmi"] = "obese"
    sheet.loc[6, "bmi"] = "27,5"  # a decimal comma is a number
    sheet.to_csv(opts.clinical, index=False)
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--predictors", "auc_inhibition_pct,bmi",
                  "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0].startswith("error: ") and "column 'bmi' has 1 value(s) that are not numbers" in lines[0]
    assert "row 6, column 'bmi': 'obese' is not a number" in result.output  # header is row 1
    assert not (tmp_path / "out" / "roc.csv").exists()


def test_non_numeric_result_is_located_in_patients_csv(tmp_path):
    opts = demo_inputs(tmp_path / "in", 20, 1)
    results = pd.read_csv(opts.results[0] / "patients.csv", dtype=str)
    results.loc[9, "auc_inhibition_pct"] = "n.d."
    results.to_csv(opts.results[0] / "patients.csv", index=False)
    sheet = pd.read_csv(opts.clinical, dtype=str).iloc[::-1]  # another row order than the results
    sheet.to_csv(opts.clinical, index=False)
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert str(opts.results[0] / "patients.csv") in result.output.splitlines()[0]
    assert "row 11, column 'auc_inhibition_pct': 'n.d.' is not a number" in result.output


def test_output_folder_that_is_a_file(tmp_path):
    opts = demo_inputs(tmp_path / "in", 8, 1)
    (tmp_path / "out").write_text("x")
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "the output folder is a file" in result.output
    assert "Traceback" not in result.output


def test_single_class_outcome_is_a_clear_error(tmp_path):
    opts = demo_inputs(tmp_path / "in", 20, 1)
    sheet = pd.read_csv(opts.clinical, dtype=str)
    sheet["response"] = "yes"
    sheet.to_csv(opts.clinical, index=False)
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "the outcome 'response' has a single class among the joined patients" in result.output
    assert "expected both positive and negative patients" in result.output


@pytest.mark.parametrize("args, message", [
    (["--outcome", "nope", "--positive", "yes"], "outcome column 'nope' is missing"),
    (["--outcome", "response", "--positive", "maybe"], "no patient has outcome 'response' = 'maybe'"),
    (["--outcome", "response", "--positive", "yes", "--predictors", "crp"], "column(s) 'crp' not found"),
    (["--outcome", "response", "--positive", "yes", "--covariates", "age,smoker"], "column(s) 'smoker' not found"),
    (["--outcome", "response", "--positive", "yes", "--group", "arm"], "column(s) 'arm' not found"),
    (["--outcome", "response", "--positive", "yes", "--id-column", "subject"], "no ID column 'subject'"),
    (["--outcome", "response", "--positive", "yes", "--stratify", "open('x')"], "--stratify"),
    (["--outcome", "response", "--positive", "yes", "--group", "sex", "--stratify", "age>=40"], None),
    (["--outcome", "response"], "missing --positive"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    opts = demo_inputs(tmp_path / "in", 30, 2)
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical),
                  "--out", str(tmp_path / "out"), *args)
    if message is None:  # a valid call among the bad ones: the parametrisation itself is sound
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output.splitlines()[0]
    assert "Traceback" not in result.output


def test_missing_results_folder_and_sheet(tmp_path):
    opts = demo_inputs(tmp_path / "in", 8, 1)
    result = _bat("cohort", "--results", str(tmp_path / "none"), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "no patients.csv in the results folder" in result.output
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(tmp_path / "x.csv"), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "clinical sheet not found" in result.output
    (tmp_path / "x.ods").write_bytes(b"PK")
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(tmp_path / "x.ods"), "--outcome",
                  "response", "--positive", "yes", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "unknown clinical sheet type '.ods'" in result.output


def test_clinical_sheet_problems_are_all_listed(tmp_path):
    path = _write(tmp_path / "c.csv", [["Patient", "age"], ["P1", "3"], ["", "4"], ["P2", "5"], ["P1", "6"]])
    with pytest.raises(ProblemsError) as exc:
        clinical.read_clinical(path)
    assert exc.value.problems == ["row 3, column 'Patient': the patient ID is blank (expected an ID)",
                                  "rows 2, 5, column 'Patient': patient 'P1' appears more than once "
                                  "(expected one row per patient)"]
    _write(tmp_path / "d.csv", [["patient", "age", "AGE"], ["P1", "3", "4"]])
    with pytest.raises(ProblemsError, match="column 'AGE' appears more than once"):
        clinical.read_clinical(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(BatError, match="the clinical sheet is empty"):
        clinical.read_clinical(tmp_path / "e.csv")
    (tmp_path / "f.xlsx").write_bytes(b"not a zip")
    with pytest.raises(BatError, match="cannot read the workbook"):
        clinical.read_clinical(tmp_path / "f.xlsx")


def test_xlsx_semicolon_csv_and_formula_text_are_read(tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["patient", "age", "note"])
    ws.append(["P1", 41, "=1+1"])
    ws.append([None, None, None])
    ws.append(["P2", 37.5, None])
    wb.save(tmp_path / "c.xlsx")
    df = clinical.read_clinical(tmp_path / "c.xlsx")
    assert list(df["patient"]) == ["P1", "P2"] and list(df["age"]) == ["41", "37.5"]
    assert list(df[clinical.ROW]) == [2, 4]
    (tmp_path / "s.csv").write_text("patient;age\nP1;41,5\n", encoding="latin-1")
    df = clinical.read_clinical(tmp_path / "s.csv")
    assert clinical.numeric(df, "age")[0] == 41.5


def test_derived_columns_use_the_immunocap_limits():
    limits = ["0.34", "0.35", "0.69", "0.7", "3.49", "3.5", "17.4", "17.5", "49.9", "50", "99", "100", "500", ""]
    df = pd.DataFrame({"patient": [f"P{i}" for i in range(len(limits))], "sIgE": limits,
                       "total_IgE": ["100"] * len(limits), "age": ["11", "12", "17", "18", "64", "65", "90"] * 2})
    out, added = clinical.derive_columns(df)
    assert added == ["sige_class", "sige_total_ige_ratio_pct", "age_group"]
    assert list(out["sige_class"]) == ["0", "1", "1", "2", "2", "3", "3", "4", "4", "5", "5", "6", "6", ""]
    assert out["sige_total_ige_ratio_pct"].iloc[10] == "99"
    assert list(out["age_group"])[:7] == ["<12", "12-17", "12-17", "18-64", "18-64", ">=65", ">=65"]


def test_results_with_several_allergens_need_allergen(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "patients.csv", [["patient", "allergen", "auc_inhibition_pct"], ["P1", "birch", "80"],
                                  ["P1", "cat", "10"], ["P2", "birch", "30"]])
    with pytest.raises(ProblemsError, match=r"patient 'P1' has results for birch, cat \(give --allergen NAME"):
        clinical.read_results([run])
    df = clinical.read_results([run], allergen="Cat")
    assert list(df["patient"]) == ["P1"] and list(df["auc_inhibition_pct"]) == ["10"]
    with pytest.raises(ProblemsError, match="patient 'P2' is in both"):
        clinical.read_results([run, _copy_run(run, tmp_path / "r2")],
                              allergen="birch")


def _copy_run(run: Path, dest: Path) -> Path:
    dest.mkdir()
    (dest / "patients.csv").write_bytes((run / "patients.csv").read_bytes())
    return dest


@pytest.mark.slow
def test_a_bat_run_joined_with_a_clinical_sheet(tmp_path):
    """The bundled sample experiment gated and scored by the pipeline, then joined with a clinical sheet."""
    from bat_analysis.pipeline import RunOptions, run, sample_data

    data = sample_data(tmp_path / "sample", quiet=True)
    run(RunOptions(data_dir=data, layout=data / "layout.csv", out=tmp_path / "run", workers=1, quiet=True,
                   reports=False))
    patients = pd.read_csv(tmp_path / "run" / "patients.csv")
    ids = sorted(patients["patient"])
    assert len(ids) >= 3
    inh = dict(zip(patients["patient"], patients["auc_inhibition_pct"]))
    # the clinical responders are the two patients with the highest in-vitro inhibition, plus an unknown patient
    ranked = sorted(ids, key=lambda p: -inh[p])
    rows = [["patient", "response", "age", "sex"]]
    rows += [[p, "yes" if p in ranked[:2] else "no", 30 + 5 * i, "FM"[i % 2]] for i, p in enumerate(ids)]
    rows += [["P77", "no", 50, "F"]]
    sheet = _write(tmp_path / "clinical.csv", rows)
    result = _bat("cohort", "--results", str(tmp_path / "run"), "--clinical", str(sheet), "--outcome", "response",
                  "--positive", "yes", "--out", str(tmp_path / "cohort"))
    assert result.exit_code == 0, result.output
    assert "1 patient(s) in the clinical sheet but not in the results: P77" in result.output
    roc = pd.read_csv(tmp_path / "cohort" / "roc.csv").set_index("predictor")
    row = roc.loc["auc_inhibition_pct"]
    assert (row["n_positive"], row["n_negative"]) == (2, len(ids) - 2)
    assert row["auroc"] == 1.0 and row["direction"] == "higher"
    assert row["cutoff"] == pytest.approx(inh[ranked[1]], rel=1e-6)
    for name in OUTPUTS:
        assert (tmp_path / "cohort" / name).is_file()
    t1 = pd.read_csv(tmp_path / "cohort" / "table1.csv")
    assert str(t1.iloc[0]["overall"]) == str(len(ids))
    assert np.isfinite(pd.read_csv(tmp_path / "cohort" / "roc_tests.csv")["auroc_a"]).all()


def test_a_typo_in_a_numeric_covariate_is_located_not_turned_into_categories(tmp_path):
    opts = demo_inputs(tmp_path / "in", 20, 1)
    sheet = pd.read_csv(opts.clinical, dtype=str)
    sheet.loc[2, "bmi"] = "2O.5"
    sheet.to_csv(opts.clinical, index=False)
    result = _bat("cohort", "--results", str(opts.results[0]), "--clinical", str(opts.clinical), "--outcome",
                  "response", "--positive", "yes", "--covariates", "bmi,sex", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "row 4, column 'bmi': '2O.5' is not a number" in result.output


def test_followup_without_baseline_and_unknown_patients_are_named(tmp_path):
    opts = demo_inputs(tmp_path / "in", 30, 1)
    fu = pd.read_csv(opts.outcomes_over_time, dtype=str)
    fu = fu[~((fu["patient"] == "P0003") & (fu["week"] == "0"))]
    fu = pd.concat([fu, pd.DataFrame([["Z1", "0", "ACT", "12"]], columns=fu.columns)])
    fu.to_csv(opts.outcomes_over_time, index=False)
    opts.out = tmp_path / "out"
    summary = run_cohort(opts)
    assert any("follow-up sheet not among the joined patients (left out): Z1" in n for n in summary.notes)
    longi = summary.tables["longitudinal"]
    assert longi["model"].str.contains("1 patient(s) without a week-0 value left out: P0003", regex=False).all()
