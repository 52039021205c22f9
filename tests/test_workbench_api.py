"""bat review's API: the token, Host and same-origin checks, escaping, re-gating with an edited gate, and
decisions appended to the store's corrections log (and applied by the next plain ``bat run``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from bat_analysis.store import ResultStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # newer Starlette prefers httpx2; httpx works
    from starlette.testclient import TestClient

from bat_analysis.workbench._app import create_app
from bat_analysis.workbench._session import ReviewSession

PORT = 5813
TOKEN = "s3cret-token"
EVIL = "<script>alert(1)</script>"
SAME = {"X-Bat-Token": TOKEN, "Origin": f"http://127.0.0.1:{PORT}"}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(tmp_path_factory.mktemp("wb_data"), n_patients=1, n_events=3000, seed=5,
                              n_concentrations=2, basophil_pct=(2.5, 3.0))  # ~80 basophils a tube
    layout = pd.read_csv(exp.layout_path, dtype=str, keep_default_na=False)
    layout["patient"] = EVIL  # a patient id that would run as script if it were rendered unescaped
    layout.to_csv(exp.layout_path, index=False)
    return exp


@pytest.fixture
def out(run_copy):
    """A copy of the module's stored run (conftest.py) that the test may change."""
    return run_copy


def client(out: Path, reviewer: str | None = None) -> TestClient:
    app = create_app(ReviewSession(out), token=TOKEN, port=PORT, reviewer=reviewer)
    c = TestClient(app, base_url=f"http://127.0.0.1:{PORT}")
    assert c.get(f"/?token={TOKEN}").status_code == 200  # sets the cookie, redirects to the bare page
    return c


def basophil_gate(c: TestClient, tube: int = 0) -> dict:
    t = c.get(f"/api/tubes/{tube}").json()
    return next(g for g in t["gates"] if g["name"] == t["population"])


def shrunk(gate: dict) -> dict:
    """The gate's polygon pulled halfway towards its centre (fewer basophils)."""
    v = gate["geometry"]["vertices"]
    cx, cy = sum(p[0] for p in v) / len(v), sum(p[1] for p in v) / len(v)
    return {"type": "polygon", "vertices": [[cx + (x - cx) * 0.5, cy + (y - cy) * 0.5] for x, y in v]}


def test_every_request_needs_the_token(out):
    app = create_app(ReviewSession(out), token=TOKEN, port=PORT)
    c = TestClient(app, base_url=f"http://127.0.0.1:{PORT}")
    for path in ("/", "/api/queue", "/api/tubes/0", "/static/workbench.js", "/?token=wrong"):
        r = c.get(path)
        assert r.status_code == 403 and "bat review" in r.text, path
    first = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/api/queue").status_code == 200  # the cookie from now on
    c.cookies.clear()
    c.cookies.set("bat_review_token", "forged")
    assert c.get("/api/queue").status_code == 403


def test_a_foreign_host_is_refused(out):
    c = client(out)
    for host in ("evil.example:5813", "127.0.0.1:9999", "localhost", "127.0.0.1"):
        r = c.get("/api/queue", headers={"Host": host})
        assert r.status_code == 403 and "127.0.0.1" in r.text, host
    assert c.get("/api/queue", headers={"Host": f"localhost:{PORT}"}).status_code == 200


def test_a_change_needs_the_token_header_and_this_origin(out):
    c = client(out)
    body = {"action": "accept"}
    c.post("/api/reviewer", json={"name": "Jane Doe"}, headers=SAME)
    refused = [
        {},  # no CSRF header
        {"X-Bat-Token": "wrong", "Origin": SAME["Origin"]},
        {"X-Bat-Token": TOKEN},  # neither Origin nor Sec-Fetch-Site
        {"X-Bat-Token": TOKEN, "Origin": "http://evil.example"},
        {"X-Bat-Token": TOKEN, "Sec-Fetch-Site": "cross-site"},
        {"X-Bat-Token": TOKEN, "Origin": f"http://localhost:{PORT}"},  # another origin than the Host's
    ]
    for headers in refused:
        assert c.post("/api/tubes/0/decision", json=body, headers=headers).status_code == 403, headers
    with ResultStore.in_folder(out, create=False) as store:
        assert store.correction_log() == []
    assert c.post("/api/tubes/0/decision", json=body,
                  headers={"X-Bat-Token": TOKEN, "Sec-Fetch-Site": "same-origin"}).status_code == 200


def test_text_is_escaped_and_only_own_scripts_are_allowed(out):
    c = client(out)
    page = c.get("/")
    assert EVIL not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "http" not in page.text.replace(f"http://127.0.0.1:{PORT}", "")  # nothing from another host
    js = c.get("/static/workbench.js").text
    assert "innerHTML" not in js and "http" not in js.replace("http://www.w3.org/2000/svg", "")
    assert c.get("/api/tubes/0").json()["patient"] == EVIL  # as data, in JSON
    assert c.get("/static/..%2Fsession.py").status_code == 404
    assert c.get("/static/session.py").status_code == 404


def test_queue_orders_filters_and_counts(out):
    c = client(out)
    q = c.get("/api/queue").json()
    order = ["failed", "flagged", "unreviewed", "reviewed"]
    groups = [t["group"] for t in q["tubes"]]
    assert groups == sorted(groups, key=order.index)
    assert q["counts"]["total"] == len(q["tubes"]) == q["counts"]["left"]
    first = q["tubes"][0]["id"]
    c.post(f"/api/tubes/{first}/decision", json={"action": "accept"}, headers=SAME)  # no reviewer yet
    c.post("/api/reviewer", json={"name": "Jane Doe"}, headers=SAME)
    assert c.post(f"/api/tubes/{first}/decision", json={"action": "accept"}, headers=SAME).status_code == 200
    q2 = c.get("/api/queue").json()
    assert q2["tubes"][-1]["id"] == first and q2["tubes"][-1]["review"] == "reviewed"
    assert q2["counts"]["left"] == q["counts"]["left"] - 1
    assert [t["id"] for t in c.get("/api/queue?status=reviewed").json()["tubes"]] == [first]
    assert c.get("/api/queue", params={"patient": "nobody"}).json()["tubes"] == []
    assert len(c.get("/api/queue", params={"patient": EVIL}).json()["tubes"]) == q["counts"]["total"]


def test_a_tube_has_its_gates_density_and_numbers(out):
    c = client(out)
    t = c.get("/api/tubes/0").json()
    assert t["n_basophils"] > 0 and t["pct_cd63"] is not None and t["qc"] in ("pass", "warn", "fail")
    g = basophil_gate(c)
    assert g["name"] == t["population"] and len(g["geometry"]["vertices"]) >= 3
    png = c.get(f"/api/tubes/0/gates/{g['index']}/density.png")
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.get("/api/tubes/999").status_code == 400
    assert c.get("/api/tubes/0/gates/99/density.png").status_code == 400


def test_regate_with_an_edited_gate_changes_the_count(out):
    c = client(out)
    g = basophil_gate(c)
    before = c.get("/api/tubes/0").json()["n_basophils"]
    same = c.post("/api/tubes/0/regate", json={"gate": g["name"], "geometry": {
        "type": "polygon", "vertices": g["geometry"]["vertices"]}}, headers=SAME).json()
    assert same["n_basophils"] == before
    smaller = c.post("/api/tubes/0/regate", json={"gate": g["name"], "geometry": shrunk(g)}, headers=SAME).json()
    assert 0 <= smaller["n_basophils"] < before
    assert {"pct_cd63", "qc", "threshold", "flags"} <= set(smaller)
    bad = c.post("/api/tubes/0/regate", json={"gate": g["name"], "geometry": {"type": "polygon",
                                                                             "vertices": [[0, 0]]}}, headers=SAME)
    assert bad.status_code == 400 and "geometry" in bad.json()["error"]
    assert c.post("/api/tubes/0/regate", json={"gate": "nope", "geometry": shrunk(g)},
                  headers=SAME).status_code == 400
    assert c.post("/api/tubes/0/regate", content=b"not json", headers=SAME).status_code == 400


def test_decisions_are_logged_with_who_when_why_and_geometry(out):
    c = client(out, reviewer="Jane Doe")
    g = basophil_gate(c)
    geo = shrunk(g)
    no_reason = c.post("/api/tubes/0/decision", json={"action": "correct", "gate": g["name"], "geometry": geo},
                       headers=SAME)
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]
    r = c.post("/api/tubes/0/decision", json={"action": "correct", "reason": "eosinophils were included",
                                              "gate": g["name"], "geometry": geo}, headers=SAME)
    assert r.status_code == 200 and r.json()["tube"]["review"] == "reviewed"
    c.post("/api/tubes/1/decision", json={"action": "exclude", "reason": "clogged"}, headers=SAME)
    with ResultStore.in_folder(out, create=False) as store:
        log = store.correction_log()
        active = store.active_corrections()
    gate_entry, accept, exclude = log
    assert (gate_entry["action"], gate_entry["kind"], gate_entry["gate"]) == ("apply", "gate", g["name"])
    assert gate_entry["value"]["vertices"] == geo["vertices"]
    assert gate_entry["before"]["vertices"] == g["geometry"]["vertices"]
    assert gate_entry["reviewer"] == "Jane Doe" and gate_entry["reason"] == "eosinophils were included"
    assert gate_entry["source"] == "bat review" and gate_entry["version"] and gate_entry["decided_at"]
    assert gate_entry["input_sha256"] and gate_entry["template_sha256"]
    assert (accept["kind"], accept["action"]) == ("tube", "accept")
    assert (exclude["kind"], exclude["action"], exclude["reason"]) == ("tube", "exclude", "clogged")
    assert [e["id"] for e in active] == [gate_entry["id"]]  # accept/exclude are records, not corrections
    # the state survives a restart (derived from the log)
    c2 = client(out)
    t0, t1 = c2.get("/api/tubes/0").json(), c2.get("/api/tubes/1").json()
    assert t0["corrected_gates"] == [g["name"]] and t1["review"] == "excluded"
    assert basophil_gate(c2)["geometry"]["vertices"] == geo["vertices"]
    # revert withdraws the correction and the decision
    r = c.post("/api/tubes/0/decision", json={"action": "revert", "reason": "automated gate was right"},
               headers=SAME)
    assert r.status_code == 200 and r.json()["tube"]["review"] == "unreviewed"
    with ResultStore.in_folder(out, create=False) as store:
        assert store.active_corrections() == []
        assert [e["action"] for e in store.correction_log()[-2:]] == ["withdraw", "withdraw"]
    assert c.post("/api/tubes/0/decision", json={"action": "revert", "reason": "again"},
                  headers=SAME).status_code == 400


def test_a_plain_bat_run_applies_a_workbench_correction(experiment, out):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    c = client(out, reviewer="Jane Doe")
    tube_id = next(t["id"] for t in c.get("/api/queue").json()["tubes"] if t["n_basophils"] > 20)
    g = basophil_gate(c, tube_id)
    geo = shrunk(g)
    expected = c.post(f"/api/tubes/{tube_id}/regate", json={"gate": g["name"], "geometry": geo},
                      headers=SAME).json()["n_basophils"]
    file = c.get(f"/api/tubes/{tube_id}").json()["file"]
    before = pd.read_csv(out / "tubes.csv").set_index("file").loc[file, "n_basophils"]
    assert expected < before
    assert c.post(f"/api/tubes/{tube_id}/decision", json={"action": "correct", "reason": "too wide",
                                                          "gate": g["name"], "geometry": geo},
                  headers=SAME).status_code == 200
    args = ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path), "--out", str(out),
            "--workers", "1", "--no-reports"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    tubes = pd.read_csv(out / "tubes.csv").set_index("file")
    assert tubes.loc[file, "n_basophils"] == expected
    assert "1 reviewer correction from the store applied." in again.output


def test_bat_review_refuses_a_folder_without_a_run(tmp_path):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    r = CliRunner().invoke(app, ["review", str(tmp_path), "--no-browser"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output


def test_edits_regate_from_the_cached_sample_not_the_file(out, monkeypatch):
    import bat_analysis.io.fcs as fcs

    reads = []
    real = fcs.read_fcs
    monkeypatch.setattr(fcs, "read_fcs", lambda path, *a, **kw: reads.append(path) or real(path, *a, **kw))
    session = ReviewSession(out)
    session.samples.size = 2
    t = session.tube(0)
    g = next(g for g in t["gates"] if g["name"] == t["population"])
    for _ in range(3):
        session.regate(0, g["name"], shrunk(g))
    assert len(reads) == 1  # read once, then from memory
    for tube_id in (1, 2, 0):  # two other tubes push tube 0 out of a cache of two
        session.regate(tube_id, g["name"], shrunk(g))
    assert len(reads) == 4 and len(session.samples) == 2


def test_export_writes_the_corrections_in_force_as_an_overrides_file(experiment, out, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    c = client(out, reviewer="Jane Doe")
    g = basophil_gate(c)
    geo = shrunk(g)
    c.post("/api/tubes/0/decision", json={"action": "correct", "reason": "too wide", "gate": g["name"],
                                          "geometry": geo}, headers=SAME)
    c.post("/api/tubes/1/decision", json={"action": "exclude", "reason": "clogged"}, headers=SAME)
    dest = tmp_path / "review.yaml"
    r = CliRunner().invoke(app, ["review", str(out), "--export", str(dest)])
    assert r.exit_code == 0 and "1 correction written" in r.output, r.output
    doc = yaml.safe_load(dest.read_text(encoding="utf-8"))
    file = c.get("/api/tubes/0").json()["file"]
    assert doc == {"corrections": [{"tube": file, "gate": g["name"], "geometry": geo, "reviewer": "Jane Doe",
                                    "reason": "too wide"}]}
    with ResultStore.in_folder(out, create=False) as store:
        n_before = len(store.correction_log())
    again = CliRunner().invoke(app, ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path),
                                     "--out", str(out), "--workers", "1", "--no-reports", "--overrides", str(dest)])
    assert again.exit_code == 0, again.output
    with ResultStore.in_folder(out, create=False) as store:
        assert len(store.correction_log()) == n_before  # already in force: nothing logged twice
    missing = CliRunner().invoke(app, ["review", str(tmp_path / "nothing"), "--export", str(dest)])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")


def test_a_patient_is_signed_off_once_every_tube_is_reviewed(out):
    c = client(out, reviewer="Jane Doe")
    tubes = c.get("/api/queue").json()["tubes"]
    early = c.post("/api/patients/signoff", json={"patient": EVIL}, headers=SAME)
    assert early.status_code == 400 and "not reviewed yet" in early.json()["error"]
    assert c.post("/api/patients/signoff", json={"patient": "nobody"}, headers=SAME).status_code == 400
    for t in tubes:
        assert c.post(f"/api/tubes/{t['id']}/decision", json={"action": "accept"}, headers=SAME).status_code == 200
    assert c.post("/api/patients/signoff", json={"patient": EVIL}, headers=SAME).status_code == 200
    assert c.get("/api/tubes/0").json()["signoff"].startswith("signed off by Jane Doe on ")
    no_reason = c.post("/api/patients/signoff", json={"patient": EVIL, "action": "withdraw"}, headers=SAME)
    assert no_reason.status_code == 400
    assert c.post("/api/patients/signoff", json={"patient": EVIL, "action": "withdraw", "reason": "re-check P01"},
                  headers=SAME).status_code == 200
    assert c.get("/api/tubes/0").json()["signoff"] is None
    with ResultStore.in_folder(out, create=False) as store:
        log = store.correction_log()
        assert store.active_corrections() == []  # decisions, not corrections: no run applies them
    assert [(e["kind"], e["action"]) for e in log[-2:]] == [("patient", "signoff"), ("patient", "withdraw")]
    assert log[-2]["reason"] == "reviewed and approved" and log[-2]["patient"] == EVIL


def test_a_reason_longer_than_the_limit_is_refused(out):
    c = client(out, reviewer="Jane Doe")
    r = c.post("/api/tubes/0/decision", json={"action": "exclude", "reason": "x" * 5000}, headers=SAME)
    assert r.status_code == 400 and r.json()["field"] == "reason"


def test_the_patient_preview_scores_the_patient_again_with_the_edit(out):
    c = client(out)
    as_is = c.post("/api/tubes/0/patient", json={}, headers=SAME).json()
    assert as_is["patient"] == EVIL and as_is["now"]
    assert [(r["allergen"], r["class"]) for r in as_is["now"]] == [(r["allergen"], r["class"]) for r in as_is["stored"]]
    allergen = next(t["id"] for t in c.get("/api/queue").json()["tubes"] if t["condition"] == "allergen")
    g = basophil_gate(c, allergen)
    empty = {"type": "polygon", "vertices": [[0.0, 0.0], [0.001, 0.0], [0.001, 0.001]]}  # no basophils
    edited = c.post(f"/api/tubes/{allergen}/patient", json={"gate": g["name"], "geometry": empty},
                    headers=SAME).json()
    assert [r["allergen"] for r in edited["now"]] == [r["allergen"] for r in as_is["now"]]
    assert edited["now"] != as_is["now"]  # a tube without basophils changes the patient's result


def test_the_threshold_dragged_on_a_negative_control_is_logged_and_applied_by_bat_run(experiment, out):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    c = client(out, reviewer="Jane Doe")
    tubes = c.get("/api/queue").json()["tubes"]
    neg = next(t for t in tubes if t["condition"] == "negative_control")
    other = next(t for t in tubes if t["condition"] == "allergen")
    assert c.get(f"/api/tubes/{other['id']}/histogram").json()["editable"] is False
    h = c.get(f"/api/tubes/{neg['id']}/histogram").json()
    assert h["editable"] and len(h["counts"]) == len(h["edges"]) - 1 and h["threshold"] > 0
    lower = h["edges"][0] + 0.5 * (h["threshold_scale"] - h["edges"][0])
    preview = c.post(f"/api/tubes/{neg['id']}/threshold", json={"threshold": lower}, headers=SAME).json()
    assert preview["threshold"] < h["threshold"] and preview["before"] == h["threshold"]
    assert preview["pct_cd63"] > c.get(f"/api/tubes/{neg['id']}").json()["pct_cd63"]
    refused = c.post(f"/api/tubes/{other['id']}/decision", json={"action": "threshold", "threshold": lower,
                                                                  "reason": "x"}, headers=SAME)
    assert refused.status_code == 400
    saved = c.post(f"/api/tubes/{neg['id']}/decision", json={"action": "threshold", "threshold": lower,
                                                              "reason": "bimodal negative control"}, headers=SAME)
    assert saved.status_code == 200 and saved.json()["tube"]["threshold"] == preview["threshold"]
    with ResultStore.in_folder(out, create=False) as store:
        (entry,) = store.active_corrections()
    assert (entry["kind"], entry["patient"], entry["pretreatment"]) == ("threshold", EVIL, neg["pretreatment"])
    assert entry["value"] == preview["threshold"] and entry["before"] == h["threshold"]
    args = ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path), "--out", str(out),
            "--workers", "1", "--no-reports"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    arm = pd.read_csv(out / "tubes.csv")
    arm = arm[arm["pretreatment"] == neg["pretreatment"]]
    assert list(arm["cd63_threshold"]) == pytest.approx([preview["threshold"]] * len(arm), rel=1e-6)


def test_a_websocket_never_reaches_the_application():
    import asyncio

    from bat_analysis.workbench._app import TOKEN_COOKIE, Guard

    reached, sent = [], []

    async def inner(scope, receive, send):
        reached.append(scope["type"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    scope = {"type": "websocket", "path": "/api/queue", "query_string": b"",
             "headers": [(b"host", f"127.0.0.1:{PORT}".encode()), (b"cookie", f"{TOKEN_COOKIE}={TOKEN}".encode())]}
    asyncio.run(Guard(inner, token=TOKEN, port=PORT)(scope, receive, send))
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]


def test_every_2d_polygon_and_range_gate_is_editable_and_a_range_side_regates(experiment, out):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    c = client(out, reviewer="Jane Doe")
    t = c.get("/api/tubes/0").json()
    kinds = {g["name"]: (g["geometry"]["type"], g["editable"]) for g in t["gates"]}
    assert all(editable for kind, editable in kinds.values() if kind == "polygon")
    ranges = [g for g in t["gates"] if g["geometry"]["type"] == "range" and len(g["dims"]) == 2]
    assert ranges and all(g["editable"] for g in ranges)
    g = ranges[0]
    i = next(k for k, v in enumerate(g["geometry"]["maxs"]) if v is not None)
    lo = g["geometry"]["mins"][i] if g["geometry"]["mins"][i] is not None else g["extent"][2 * i]
    maxs = list(g["geometry"]["maxs"])
    maxs[i] = lo + 0.5 * (maxs[i] - lo)  # the side dragged halfway in
    geo = {"type": "range", "mins": g["geometry"]["mins"], "maxs": maxs}
    n = c.post("/api/tubes/0/regate", json={"gate": g["name"], "geometry": geo}, headers=SAME).json()
    count = {x["name"]: x["count"] for x in n["gate_counts"]}
    assert count[g["name"]] < g["count"]
    assert n["geometry"] == {"type": "range", "mins": geo["mins"], "maxs": maxs}
    bad = c.post("/api/tubes/0/regate", json={"gate": g["name"], "geometry": {"type": "range", "mins": [None],
                                                                                "maxs": [1.0]}}, headers=SAME)
    assert bad.status_code == 400 and bad.json()["field"] == "geometry"
    assert c.post("/api/tubes/0/decision", json={"action": "correct", "reason": "debris edge", "gate": g["name"],
                                                 "geometry": geo}, headers=SAME).status_code == 200
    file = c.get("/api/tubes/0").json()["file"]
    args = ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path), "--out", str(out),
            "--workers", "1", "--no-reports"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file")
    assert tubes.loc[file, "review_status"] == "corrected" and tubes.loc[file, "n_basophils"] == n["n_basophils"]


def test_the_time_gate_is_drawn_over_its_histogram_and_an_end_dragged_regates(experiment, out):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    c = client(out, reviewer="Jane Doe")
    t = c.get("/api/tubes/0").json()
    g = next(x for x in t["gates"] if x["name"] == "acquisition_qc")
    line = g["timeline"]
    assert g["editable"] and g["dims"] == ["Time"] and len(line["edges"]) == len(line["counts"]) + 1
    assert sum(line["counts"]) == g["parent_count"] == t["n_events"]  # every event, in its time bin
    [[lo, hi]] = line["windows"]  # a clean acquisition: one kept window
    assert line["edges"][0] <= lo < hi <= line["edges"][-1]
    geo = {"type": "range", "mins": [lo], "maxs": [lo + 0.5 * (hi - lo)]}  # the end dragged halfway in
    n = c.post("/api/tubes/0/regate", json={"gate": "acquisition_qc", "geometry": geo}, headers=SAME).json()
    count = {x["name"]: x["count"] for x in n["gate_counts"]}
    assert 0.3 * g["count"] < count["acquisition_qc"] < 0.7 * g["count"]
    assert n["n_basophils"] < t["n_basophils"] and n["geometry"] == geo
    two_d = c.post("/api/tubes/0/regate", json={"gate": "acquisition_qc", "geometry": {
        "type": "range", "mins": [lo, 0.0], "maxs": [hi, 1.0]}}, headers=SAME)
    assert two_d.status_code == 400 and two_d.json()["field"] == "geometry"
    assert c.post("/api/tubes/0/decision", json={"action": "correct", "reason": "the end of the acquisition "
                                                 "was unstable", "gate": "acquisition_qc", "geometry": geo},
                  headers=SAME).status_code == 200
    with ResultStore.in_folder(out, create=False) as store:
        entry = next(e for e in store.correction_log() if e["kind"] == "gate")
    assert (entry["gate"], entry["value"], entry["reviewer"]) == ("acquisition_qc", geo, "Jane Doe")
    assert entry["before"]["type"] == "range" and entry["before"]["maxs"] == [hi]
    args = ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path), "--out", str(out),
            "--workers", "1", "--no-reports"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    file = c.get("/api/tubes/0").json()["file"]
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file")
    assert tubes.loc[file, "review_status"] == "corrected" and tubes.loc[file, "n_basophils"] == n["n_basophils"]
    # the run set the gate as corrected and drew it over a histogram of every event: still shown, still editable
    g2 = next(x for x in client(out).get("/api/tubes/0").json()["gates"] if x["name"] == "acquisition_qc")
    assert g2["method"] == "override" and g2["editable"] and g2["count"] == count["acquisition_qc"]
    assert g2["timeline"]["windows"] == [[lo, geo["maxs"][0]]]
    assert sum(g2["timeline"]["counts"]) == g2["parent_count"]


def test_a_stored_time_histogram_that_does_not_hold_together_is_not_drawn():
    from types import SimpleNamespace

    from bat_analysis.workbench._session import timeline

    def record(edges, counts, dims=("Time",)):
        return SimpleNamespace(dims=dims, density=counts, density_edges=None if edges is None else (edges,))

    span = {"type": "range", "mins": [0.0], "maxs": [2.0]}
    assert timeline(record([0.0, 1.0, 2.0], [5, 7]), span) == {"edges": [0.0, 1.0, 2.0], "counts": [5.0, 7.0],
                                                              "windows": [[0.0, 2.0]]}
    for edges, counts in (([0.0, 2.0, 1.0], [5, 7]), ([0.0, 1.0], [5, 7]), ([0.0, float("nan"), 2.0], [5, 7]),
                          ([0.0, 1.0, 2.0], [5, float("inf")]), ([0.0], []), (None, [5, 7])):
        assert timeline(record(edges, counts), span) is None, (edges, counts)
    assert timeline(record([0.0, 1.0, 2.0], [5, 7], dims=("FSC-A", "SSC-A")), span) is None
    # a union of ranges (acquisition QC's kept segments): one window each, open ends as None
    union = {"type": "boolean", "op": "or", "members": [{"type": "range", "mins": [None], "maxs": [0.5]},
                                                         {"type": "range", "mins": [1.5], "maxs": [2.0]}]}
    assert timeline(record([0.0, 1.0, 2.0], [5, 7]), union)["windows"] == [[None, 0.5], [1.5, 2.0]]
    # anything else is drawn but not editable: no windows
    for geo in ({"type": "boolean", "op": "and", "members": union["members"]},
                {"type": "boolean", "op": "or", "members": [{"type": "polygon", "vertices": [[0, 0]]}]},
                {"type": "boolean", "op": "or", "members": []},
                {"type": "range", "mins": ["<b>"], "maxs": [1.0]},
                {"type": "range", "mins": [0.0, 1.0], "maxs": [1.0, 2.0]}):
        line = timeline(record([0.0, 1.0, 2.0], [5, 7]), geo)
        assert line is not None and line["windows"] is None, geo
