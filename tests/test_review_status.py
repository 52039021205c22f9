"""Review decisions reach the results: the review-status columns of tubes.csv / patients.csv and the review
gallery (after ``bat run`` and ``bat report``), an excluded tube dropped from scoring, and the patient's
dose-response curves as the workbench returns them."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from bat_analysis.workbench._app import create_app
from bat_analysis.workbench._session import ReviewSession

PORT = 5814
TOKEN = "status-token"
SAME = {"X-Bat-Token": TOKEN, "Origin": f"http://127.0.0.1:{PORT}"}
REVIEW_TUBE_COLUMNS = ["review_status", "reviewed_by", "reviewed_at"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    return simulate_experiment(tmp_path_factory.mktemp("rs_data"), n_patients=1, n_events=3000, seed=11,
                               n_concentrations=5, basophil_pct=(2.5, 3.0))  # ~80 basophils a tube


@pytest.fixture
def out(run_copy):
    """A copy of the module's stored run (conftest.py) that the test may change."""
    return run_copy


def client(out, reviewer="Jane Doe"):
    c = TestClient(create_app(ReviewSession(out), token=TOKEN, port=PORT, reviewer=reviewer),
                   base_url=f"http://127.0.0.1:{PORT}")
    assert c.get(f"/?token={TOKEN}").status_code == 200
    return c


def rerun(experiment, out, *extra):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    r = CliRunner().invoke(app, ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path), "--out",
                                 str(out), "--workers", "1", *extra])
    assert r.exit_code == 0, r.output
    return r


def queue(c):
    return c.get("/api/queue").json()["tubes"]


def shrunk(geometry):
    v = geometry["vertices"]
    cx, cy = sum(p[0] for p in v) / len(v), sum(p[1] for p in v) / len(v)
    return {"type": "polygon", "vertices": [[cx + (x - cx) * 0.6, cy + (y - cy) * 0.6] for x, y in v]}


# ---------------------------------------------------------------------------------------------- item 1
def test_the_patient_preview_returns_both_arms_dose_responses_as_numbers(out):
    from bat_analysis.analysis.dose_response import four_pl

    c = client(out)
    tubes = queue(c)
    allergen = next(t for t in tubes if t["condition"] == "allergen" and t["pretreatment"] == "none")
    p = c.post(f"/api/tubes/{allergen['id']}/patient", json={}, headers=SAME).json()
    (curves,) = [x for x in p["curves"] if x["allergen"] == allergen["allergen"]]
    assert [a["arm"] for a in curves["arms"]] == ["none", "omalizumab"]
    session = ReviewSession(out)
    fit = session.stored.scores.fits[(allergen["patient"], allergen["allergen"], "none")]
    none = curves["arms"][0]["now"]
    # the measured points are the fit's, one per concentration, each naming its tube
    assert [q["conc"] for q in none["points"]] == pytest.approx(list(fit.concentrations))
    assert [q["pct"] for q in none["points"]] == pytest.approx(list(fit.y))
    assert {q["file"] for q in none["points"]} == set(fit.files)
    # the curve is the fitted 4PL at the concentrations given
    assert fit.fitted and len(none["curve"]) == 60
    xs = np.log10([q[0] for q in none["curve"]])
    expected = four_pl(xs, fit.params["bottom"], fit.params["top"], fit.params["log_ec50"], fit.params["hill"])
    assert [q[1] for q in none["curve"]] == pytest.approx(list(expected))
    assert curves["arms"][0]["stored"] == none  # nothing edited: now is as stored
    for arm in curves["arms"]:  # an EC50 that is not accepted comes with the fit's reason, as in the reports
        (f,) = [ft for (pt, al, a), ft in session.stored.scores.fits.items()
                if (pt, al, a) == (allergen["patient"], allergen["allergen"], arm["arm"])]
        assert arm["now"]["reason"] == ("" if f.status == "ok" else f.ec50_reason) and (f.status == "ok"
                                                                                      or arm["now"]["reason"])
    # an edit that empties one tube's basophil gate changes the curve now, not the stored one
    g = next(g for g in c.get(f"/api/tubes/{allergen['id']}").json()["gates"] if g["name"] == "basophils")
    empty = {"type": "polygon", "vertices": [[0.0, 0.0], [0.001, 0.0], [0.001, 0.001]]}
    edited = c.post(f"/api/tubes/{allergen['id']}/patient", json={"gate": g["name"], "geometry": empty},
                    headers=SAME).json()
    (e_curves,) = [x for x in edited["curves"] if x["allergen"] == allergen["allergen"]]
    assert e_curves["arms"][0]["stored"] == none
    assert e_curves["arms"][0]["now"] != none


def test_the_page_draws_the_curves_with_its_own_script_only(out):
    c = client(out)
    js = c.get("/static/workbench.js").text
    assert "curvePlot" in js and "innerHTML" not in js and "http" not in js.replace("http://www.w3.org/2000/svg", "")


# ---------------------------------------------------------------------------------------------- items 2, 3
def test_a_plain_run_writes_review_columns_after_every_other_column(stored_run):
    tubes = pd.read_csv(stored_run / "tubes.csv", keep_default_na=False)
    patients = pd.read_csv(stored_run / "patients.csv", keep_default_na=False)
    assert list(tubes.columns[-3:]) == REVIEW_TUBE_COLUMNS
    assert list(patients.columns[-2:]) == ["signed_off_by", "signed_off_at"]
    assert set(tubes["review_status"]) == {"automated"} and set(tubes["reviewed_by"]) == {""}
    assert set(patients["signed_off_by"]) == {""}


def decide_some(c):
    """Correct one allergen tube's gate, exclude another, accept the rest, sign the patient off."""
    tubes = queue(c)
    allergens = [t for t in tubes if t["condition"] == "allergen" and t["pretreatment"] == "none"]
    corrected, excluded = allergens[1], allergens[2]
    g = next(g for g in c.get(f"/api/tubes/{corrected['id']}").json()["gates"] if g["name"] == "basophils")
    assert c.post(f"/api/tubes/{corrected['id']}/decision",
                  json={"action": "correct", "reason": "too wide", "gate": g["name"],
                        "geometry": shrunk(g["geometry"])}, headers=SAME).status_code == 200
    assert c.post(f"/api/tubes/{excluded['id']}/decision", json={"action": "exclude", "reason": "clogged"},
                  headers=SAME).status_code == 200
    for t in tubes:
        if t["id"] not in (corrected["id"], excluded["id"]):
            assert c.post(f"/api/tubes/{t['id']}/decision", json={"action": "accept"}, headers=SAME).status_code == 200
    assert c.post("/api/patients/signoff", json={"patient": corrected["patient"]}, headers=SAME).status_code == 200
    return corrected, excluded


def test_bat_report_and_a_plain_run_show_the_decisions_in_the_tables_and_the_gallery(experiment, out):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    c = client(out)
    corrected, excluded = decide_some(c)
    before = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file")
    # bat report: tables and gallery from the store, the log as it is now (the correction not gated yet)
    r = CliRunner().invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file")
    patients = pd.read_csv(out / "patients.csv", keep_default_na=False)
    assert tubes.loc[corrected["file"], "review_status"] == "correction_pending"
    assert tubes.loc[excluded["file"], "review_status"] == "excluded"
    assert tubes.loc[excluded["file"], "qc_status"] == "fail"
    assert "EXCLUDED_BY_REVIEWER" in tubes.loc[excluded["file"], "qc_flags"]
    others = tubes.drop(index=[corrected["file"], excluded["file"]])
    assert set(others["review_status"]) == {"accepted"} and set(others["reviewed_by"]) == {"Jane Doe"}
    assert all(x.startswith("20") for x in tubes["reviewed_at"])
    assert set(patients["signed_off_by"]) == {"Jane Doe"} and all(patients["signed_off_at"])
    assert tubes.loc[corrected["file"], "n_basophils"] == before.loc[corrected["file"], "n_basophils"]
    gallery = (out / "review" / "index.html").read_text(encoding="utf-8")
    assert 'data-review="excluded"' in gallery and "review: correction pending" in gallery
    assert "review: accepted by Jane Doe" in gallery
    # a plain bat run: the correction applied, the statuses kept
    rerun(experiment, out)
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file")
    assert tubes.loc[corrected["file"], "review_status"] == "corrected"
    assert tubes.loc[corrected["file"], "n_basophils"] < before.loc[corrected["file"], "n_basophils"]
    assert tubes.loc[excluded["file"], "review_status"] == "excluded"
    assert set(pd.read_csv(out / "patients.csv", keep_default_na=False)["signed_off_by"]) == {"Jane Doe"}
    gallery = (out / "review" / "index.html").read_text(encoding="utf-8")
    assert "review: corrected by Jane Doe" in gallery and 'data-review="excluded"' in gallery


def test_an_excluded_tube_is_dropped_from_the_fit_and_the_class(experiment, out):
    c = client(out)
    tubes = queue(c)
    series = [t for t in tubes if t["condition"] == "allergen" and t["pretreatment"] == "none"]
    top = max(series, key=lambda t: t["concentration"])
    patient, allergen = top["patient"], top["allergen"]
    fits = ReviewSession(out).stored.scores.fits
    assert top["file"] in fits[(patient, allergen, "none")].files
    # the preview already drops it
    assert c.post(f"/api/tubes/{top['id']}/decision", json={"action": "exclude", "reason": "clogged"},
                  headers=SAME).status_code == 200
    p = c.post(f"/api/tubes/{top['id']}/patient", json={}, headers=SAME).json()
    (curves,) = [x for x in p["curves"] if x["allergen"] == allergen]
    assert top["file"] not in {q["file"] for q in curves["arms"][0]["now"]["points"]}
    assert top["file"] in {q["file"] for q in curves["arms"][0]["stored"]["points"]}
    rerun(experiment, out, "--no-reports")
    after = ReviewSession(out).stored.scores
    fit = after.fits[(patient, allergen, "none")]
    assert top["file"] not in fit.files and len(fit.files) == len(series) - 1
    assert any(top["file"] in reason and "excluded by Jane Doe" in reason for _, reason in fit.excluded)
    row = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file").loc[top["file"]]
    assert row["review_status"] == "excluded" and row["qc_status"] == "fail" and row["pct_cd63"] != ""
    # reverting the exclusion brings it back
    assert c.post(f"/api/tubes/{top['id']}/decision", json={"action": "revert", "reason": "was fine"},
                  headers=SAME).status_code == 200
    rerun(experiment, out, "--no-reports")
    assert top["file"] in ReviewSession(out).stored.scores.fits[(patient, allergen, "none")].files


def test_an_excluded_negative_control_is_no_reference(experiment, out):
    c = client(out)
    neg = next(t for t in queue(c) if t["condition"] == "negative_control" and t["pretreatment"] == "none")
    assert c.post(f"/api/tubes/{neg['id']}/decision", json={"action": "exclude", "reason": "spilled"},
                  headers=SAME).status_code == 200
    rerun(experiment, out, "--no-reports")
    scores = ReviewSession(out).stored.scores
    assert neg["file"] not in scores.references[(neg["patient"], "none")]
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False)
    arm = tubes[tubes["pretreatment"] == "none"]
    assert "THRESHOLD_FROM_OTHER_ARM" in ";".join(arm[arm["file"] != neg["file"]]["qc_flags"])


def test_review_status_of_each_kind_of_decision():
    from bat_analysis.review._status import add_review_columns

    def e(i, kind, action, file=None, gate=None, patient=None, who="A"):
        target = {"gate": ("gate", file, gate), "tube": ("tube", file, ""), "patient": ("patient", patient, "")}[kind]
        return {"id": i, "kind": kind, "action": action, "file": file, "gate": gate, "patient": patient,
                "reviewer": who, "decided_at": f"2026-01-0{i}T00:00:00Z", "reason": "r", "target": target}

    log = [e(1, "tube", "accept", "a.fcs"), e(2, "gate", "apply", "b.fcs", "basophils", who="B"),
           e(3, "tube", "accept", "b.fcs"), e(4, "tube", "exclude", "c.fcs"),
           e(5, "gate", "apply", "d.fcs", "basophils"),
           e(6, "tube", "accept", "e.fcs"), e(7, "tube", "withdraw", "e.fcs"), e(8, "patient", "signoff", patient="P"),
           e(9, "patient", "signoff", patient="Q"), e(10, "patient", "withdraw", patient="Q")]
    tubes = pd.DataFrame({"file": ["a.fcs", "b.fcs", "c.fcs", "d.fcs", "e.fcs", "f.fcs"], "review_status": "old"})
    patients = pd.DataFrame({"patient": ["P", "Q"], "allergen": ["x", "x"]})
    t, p = add_review_columns(tubes, patients, log, applied={2})
    assert list(t["review_status"]) == ["accepted", "corrected", "excluded", "correction_pending", "automated",
                                        "automated"]
    assert list(t["reviewed_by"]) == ["A", "B", "A", "A", "", ""]
    assert list(t.columns) == ["file"] + REVIEW_TUBE_COLUMNS
    assert list(p["signed_off_by"]) == ["A", ""] and list(p["signed_off_at"]) == ["2026-01-08T00:00:00Z", ""]


def test_a_reviewer_name_is_text_in_the_tables_and_the_gallery(out):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    evil = '<img src=x onerror="alert(1)">,=HYPERLINK("x")'
    c = client(out, reviewer=evil)
    tube = queue(c)[0]
    assert c.post(f"/api/tubes/{tube['id']}/decision", json={"action": "accept"}, headers=SAME).status_code == 200
    r = CliRunner().invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file")
    assert tubes.loc[tube["file"], "reviewed_by"] == evil  # the CSV keeps the value exactly
    gallery = (out / "review" / "index.html").read_text(encoding="utf-8")
    assert "<img src=x" not in gallery and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in gallery
    from openpyxl import load_workbook

    sheet = load_workbook(out / "results.xlsx")["tubes"]
    head = [cell.value for cell in sheet[1]]
    col = head.index("reviewed_by")
    cells = [row[col] for row in sheet.iter_rows(min_row=2)]
    assert {cell.data_type for cell in cells if cell.value} == {"s"}  # text, never a formula


def test_the_tube_page_shows_an_exclusion_at_once_and_its_revert(experiment, out):
    c = client(out)
    t = next(t for t in queue(c) if t["condition"] == "allergen")
    assert "EXCLUDED_BY_REVIEWER" not in {f["code"] for f in c.get(f"/api/tubes/{t['id']}").json()["flags"]}
    c.post(f"/api/tubes/{t['id']}/decision", json={"action": "exclude", "reason": "clogged"}, headers=SAME)
    shown = c.get(f"/api/tubes/{t['id']}").json()
    (flag,) = [f for f in shown["flags"] if f["code"] == "EXCLUDED_BY_REVIEWER"]
    assert shown["qc"] == "fail" and flag["severity"] == "fail" and "excluded by Jane Doe" in flag["message"]
    assert "clogged" in flag["message"]
    # after a run the flag comes from the store; reverted in the page, it goes at once
    rerun(experiment, out, "--no-reports")
    c2 = client(out)
    assert "EXCLUDED_BY_REVIEWER" in {f["code"] for f in c2.get(f"/api/tubes/{t['id']}").json()["flags"]}
    c2.post(f"/api/tubes/{t['id']}/decision", json={"action": "revert", "reason": "was fine"}, headers=SAME)
    assert "EXCLUDED_BY_REVIEWER" not in {f["code"] for f in c2.get(f"/api/tubes/{t['id']}").json()["flags"]}


def test_a_later_decision_on_a_patients_tubes_voids_its_sign_off():
    """A sign-off approves the results as they were: a later decision on one of the patient's tubes, gates or
    thresholds needs a new sign-off; decisions on another patient's tubes do not touch it."""
    from bat_analysis.review._status import signoffs

    def entry(i, kind, a, b="", action="apply"):
        return {"id": i, "target": (kind, a, b), "action": action, "reviewer": "JD", "decided_at": f"t{i}"}

    patient_of = {"P1_a.fcs": "P1", "P1_b.fcs": "P1", "P2_a.fcs": "P2"}
    log = [entry(1, "tube", "P1_a.fcs", action="accept"), entry(2, "patient", "P1", action="signoff"),
           entry(3, "patient", "P2", action="signoff"), entry(4, "tube", "P2_a.fcs", action="accept")]
    assert set(signoffs(log, patient_of)) == {"P1"}  # P2's tube was decided after its sign-off
    assert set(signoffs(log)) == {"P1", "P2"}  # without the tubes' patients, only withdrawals count
    later = [*log, entry(5, "gate", "P1_b.fcs", "basophils")]
    assert signoffs(later, patient_of) == {}
    threshold = [*log, entry(5, "threshold", "P1", "none")]
    assert signoffs(threshold, patient_of) == {}
    again = [*later, entry(6, "patient", "P1", action="signoff")]
    assert signoffs(again, patient_of)["P1"]["id"] == 6


def test_a_tube_excluded_after_the_sign_off_clears_it_in_the_tables(out):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    c = client(out)
    corrected, excluded = decide_some(c)  # ... and the patient signed off
    tube = next(t for t in queue(c) if t["patient"] == corrected["patient"] and t["id"] != excluded["id"]
                and t["id"] != corrected["id"])
    assert c.get(f"/api/tubes/{tube['id']}").json()["signoff"]
    assert c.post(f"/api/tubes/{tube['id']}/decision", json={"action": "exclude", "reason": "bubble"},
                  headers=SAME).status_code == 200
    assert not c.get(f"/api/tubes/{tube['id']}").json()["signoff"]
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    patients = pd.read_csv(out / "patients.csv", keep_default_na=False)
    assert set(patients.loc[patients["patient"] == corrected["patient"], "signed_off_by"]) == {""}
