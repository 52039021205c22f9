"""bat review in a real headless Chromium (playwright driving Debian's chromium; no browser is downloaded):
drag the basophil gate's corners with the mouse, see the count change, add and remove a corner, save with a
reason, restart the server and see the decision, drag the CD63 threshold on a negative control; no console
errors, no request to another host."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium)"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from bat_analysis.pipeline import RunOptions, run
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(tmp_path_factory.mktemp("wbb_data"), n_patients=1, n_events=4000, seed=8,
                              n_concentrations=2, basophil_pct=(2.5, 3.0))  # ~100 basophils a tube
    out = tmp_path_factory.mktemp("wbb_out")
    run(RunOptions(data_dir=exp.out_dir, layout=exp.layout_path, out=out, workers=1, quiet=True, reports=False))
    return out


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Watched:
    """A page with its console errors, failed requests and requests to other hosts collected."""

    def __init__(self, browser, bench):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        own = f"127.0.0.1:{bench.port}"
        self.page.on("request", lambda r: self.foreign.append(r.url)
                     if urlsplit(r.url).netloc != own and not r.url.startswith("data:") else None)
        self.page.goto(bench.url)

    def close(self):
        self.context.close()


def until(page, expression: str, timeout_s: float = 30.0) -> None:
    """Wait until a JavaScript expression is true (page.wait_for_function evaluates strings in the page,
    which the workbench's Content-Security-Policy forbids; page.evaluate goes through the debugger)."""
    import time

    end = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > end:
            shown = page.evaluate("(document.getElementById('message') || {}).textContent")
            raise AssertionError(f"still false after {timeout_s:g} s: {expression} (message shown: {shown!r})")
        page.wait_for_timeout(50)


def start(out, reviewer=None):
    from bat_analysis.workbench._server import make_workbench

    bench = make_workbench(out, reviewer=reviewer)
    bench.serve_in_thread()
    return bench


def test_drag_a_vertex_save_and_find_the_decision_after_a_restart(results, browser, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(results, out)
    bench = start(out)
    try:
        w = Watched(browser, bench)
        page = w.page
        page.wait_for_selector("figure[data-gate=basophils] circle.vertex")
        # the reviewer's name, asked once
        page.fill("#reviewer-name", "Jane Doe")
        page.click("#reviewer-set")
        until(page, "document.getElementById('reviewer').textContent === 'Jane Doe'")
        # open a tube with basophils enough to see a change
        until(page, "state.tube !== null")  # the first tube of the queue is open
        tube_id = page.evaluate("state.queue.find((t) => t.n_basophils > 30).id")
        if page.evaluate("state.tube.id") != tube_id:
            page.click(f'#queue li[data-id="{tube_id}"]')
            until(page, f"state.tube && state.tube.id === {tube_id}")
        page.wait_for_selector("figure[data-gate=basophils] circle.vertex")
        before = int(page.text_content("#n-basophils"))
        page.locator("figure[data-gate=basophils]").scroll_into_view_if_needed()
        # drag every vertex of the gate halfway towards its centre, with the mouse
        n = page.locator("figure[data-gate=basophils] circle.vertex").count()
        for i in range(n):  # positions read anew each time: the patient's box above may have grown
            until(page, "!document.getElementById('patient').textContent.includes('scoring')")
            boxes = [page.locator("figure[data-gate=basophils] circle.vertex").nth(k).bounding_box() for k in range(n)]
            cx = sum(b["x"] + b["width"] / 2 for b in boxes) / n
            cy = sum(b["y"] + b["height"] / 2 for b in boxes) / n
            x, y = boxes[i]["x"] + boxes[i]["width"] / 2, boxes[i]["y"] + boxes[i]["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move((x + cx) / 2, (y + cy) / 2, steps=5)
            page.mouse.up()
            until(page, "document.getElementById('message').textContent.startsWith('re-gated')")
            page.evaluate("document.getElementById('message').textContent = ''")
        after = int(page.text_content("#n-basophils"))
        assert after < before
        # a corner added on an edge (double-click), then removed (right-click): same gate, same count
        a, b = (page.locator("figure[data-gate=basophils] circle.vertex").nth(i).bounding_box() for i in (0, 1))
        mx = (a["x"] + b["x"] + a["width"]) / 2
        my = (a["y"] + b["y"] + a["height"]) / 2
        page.mouse.dblclick(mx, my)
        until(page, f"document.querySelectorAll('figure[data-gate=basophils] circle.vertex').length === {n + 1}")
        until(page, "document.getElementById('message').textContent.startsWith('re-gated')")
        page.evaluate("document.getElementById('message').textContent = ''")
        added = page.locator('figure[data-gate=basophils] circle.vertex[data-index="1"]').bounding_box()
        page.mouse.click(added["x"] + added["width"] / 2, added["y"] + added["height"] / 2, button="right")
        until(page, f"document.querySelectorAll('figure[data-gate=basophils] circle.vertex').length === {n}")
        until(page, "document.getElementById('message').textContent.startsWith('re-gated')")
        assert int(page.text_content("#n-basophils")) == after
        # the patient is scored again with the edit: its class per allergen
        until(page, "(document.querySelector('#patient .label') || {}).textContent"
                    " === `Patient ${state.tube.patient}, with your edit`")
        assert page.locator("#patient-classes li").count() >= 1
        page.fill("#reason", "eosinophils were included")
        page.click("#save")
        until(page, "document.getElementById('message').textContent === 'correct saved'")
        assert "eosinophils were included" in page.text_content("#history")
        assert "Jane Doe" in page.text_content("#history")
        assert w.errors == [] and w.foreign == []
        w.close()
    finally:
        bench.stop()

    # a new launch (new port and token; the reviewer given as with --reviewer): the decision comes from the log
    bench = start(out, reviewer="Jane Doe")
    try:
        w = Watched(browser, bench)
        page = w.page
        page.wait_for_selector("#queue li")
        until(page, "state.queue.length > 0")  # the page's script is running
        page.click(f'#queue li[data-id="{tube_id}"]')
        until(page, f"state.tube && state.tube.id === {tube_id}")
        page.wait_for_selector(f'#history[data-tube="{tube_id}"] li')
        assert "review: reviewed (corrected: basophils)" in page.text_content("#tube-meta")
        assert int(page.text_content("#n-basophils")) == after
        assert "eosinophils were included" in page.text_content("#history")
        # keyboard: the corrected tube is now last in the queue (reviewed): p moves to the one before it,
        # n back, p again, a accepts it
        assert page.evaluate("state.queue[state.queue.length - 1].id") == tube_id
        seen = []
        for key in "pnp":
            page.locator("body").press(key)
            until(page, f"state.tube && state.tube.id !== {seen[-1] if seen else tube_id}"
                        " && document.getElementById('tube-title').textContent === state.tube.file")
            seen.append(page.evaluate("state.tube.id"))
        assert seen[1] == tube_id and seen[0] == seen[2] != tube_id
        until(page, f"state.tube && state.tube.id !== {tube_id}")
        nxt = page.evaluate("state.tube.id")
        page.locator("body").press("a")
        until(page, "document.getElementById('message').textContent === 'accept saved'")
        assert "review: reviewed" in page.text_content("#tube-meta")
        # the CD63 threshold dragged on a negative control's histogram, then saved with a reason
        neg = page.evaluate("state.queue.find((t) => t.condition === 'negative_control').id")
        page.click(f'#queue li[data-id="{neg}"]')
        until(page, f"state.tube && state.tube.id === {neg} && document.querySelector('line.threshold.draggable')")
        until(page, "!document.getElementById('patient').textContent.includes('scoring')")
        pct_before = page.text_content("#pct-cd63")
        page.locator("#histogram").scroll_into_view_if_needed()
        line = page.locator("line.threshold").bounding_box()
        x, y = line["x"] + line["width"] / 2, line["y"] + line["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x - 60, y, steps=5)
        page.mouse.up()
        until(page, "document.getElementById('message').textContent.startsWith('threshold moved')")
        assert float(page.text_content("#pct-cd63")) > float(pct_before)
        page.fill("#reason", "bimodal negative control")
        page.click("#save-threshold")
        until(page, "document.getElementById('message').textContent === 'threshold saved'")
        assert w.errors == [] and w.foreign == []
        w.close()
    finally:
        bench.stop()
    from bat_analysis.store import ResultStore

    with ResultStore.in_folder(out, create=False) as store:
        log = store.correction_log()
    assert [(e["kind"], e["action"], e["reviewer"]) for e in log] == [
        ("gate", "apply", "Jane Doe"), ("tube", "accept", "Jane Doe"), ("tube", "accept", "Jane Doe"),
        ("threshold", "apply", "Jane Doe")]
    assert log[-1]["value"] < log[-1]["before"] and log[-1]["reason"] == "bimodal negative control"
    assert log[-1]["file"] != log[0]["file"] and nxt != tube_id


# ------------------------------------------------------------------------------------------------ a session
@pytest.fixture(scope="module")
def small_plate(tmp_path_factory):
    """One patient, one arm, five tubes (negative control, anti-FcεRI, fMLP, two allergen concentrations)."""
    from bat_analysis.pipeline import RunOptions, run
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(tmp_path_factory.mktemp("wbs_data"), n_patients=1, n_events=4000, seed=8,
                              n_concentrations=2, arms=("none",), basophil_pct=(2.5, 3.0))
    out = tmp_path_factory.mktemp("wbs_out")
    run(RunOptions(data_dir=exp.out_dir, layout=exp.layout_path, out=out, workers=1, quiet=True, reports=False))
    return exp, out


def message(page) -> str:
    return page.evaluate("document.getElementById('message').textContent")


def open_tube(page, file: str) -> int:
    until(page, "state.queue.length > 0")  # the queue's rows are in the page before the script has read it
    tube = page.evaluate(f"state.queue.find((t) => t.file === {file!r}).id")
    if page.evaluate("state.current") != tube:  # a click on the open tube would open it again
        page.click(f'#queue li[data-id="{tube}"]')
    until(page, f"state.tube && state.tube.id === {tube} && document.getElementById('tube-title').textContent"
                f" === {file!r}")
    until(page, "!document.getElementById('patient').textContent.includes('scoring')")
    return tube


def drag(page, selector: str, dx: float, dy: float, expect: str = "re-gated") -> None:
    """Drag the element with the mouse by (dx, dy) pixels and wait for the page to say ``expect``."""
    page.evaluate("document.getElementById('message').textContent = ''")
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y + dy, steps=6)
    page.mouse.up()
    until(page, f"document.getElementById('message').textContent.startsWith({expect!r})")


def decide(page, button: str, reason: str, expect: str) -> None:
    page.fill("#reason", reason)
    page.click(button)
    until(page, f"document.getElementById('message').textContent === {expect!r}")


def inward(page, gate: str, i: int) -> tuple[float, float]:
    """Pixels that move corner ``i`` of a gate a third of the way to the gate's centre."""
    n = page.locator(f"figure[data-gate={gate}] circle.vertex").count()
    boxes = [page.locator(f"figure[data-gate={gate}] circle.vertex").nth(k).bounding_box() for k in range(n)]
    cx, cy = sum(b["x"] for b in boxes) / n, sum(b["y"] for b in boxes) / n
    return (cx - boxes[i]["x"]) / 3, (cy - boxes[i]["y"]) / 3


def test_a_session_of_ten_decisions_survives_a_restart_and_a_rerun(small_plate, browser, tmp_path):
    """Ten decisions made with the mouse and keyboard, each with its reason: two basophil-gate corrections of
    one tube (the second replaces the first), a range gate's side dragged, a cells-gate corner dragged, the
    CD63 threshold dragged, an exclusion, two accepts, a revert, the patient's sign-off. A new launch shows
    them all; a plain ``bat run`` on the folder applies them (counts, threshold, review columns)."""
    from typer.testing import CliRunner

    import pandas as pd
    from bat_analysis.cli import app
    from bat_analysis.store import ResultStore

    exp, results = small_plate
    out = tmp_path / "out"
    shutil.copytree(results, out)
    low, high = "P01_none_allergen_birch_0.01.fcs", "P01_none_allergen_birch_100.fcs"
    neg, fmlp, fceri = "P01_none_negative_control.fcs", "P01_none_fmlp.fcs", "P01_none_anti_fceri.fcs"
    reasons = {}
    bench = start(out, reviewer="Jane Doe")
    try:
        w = Watched(browser, bench)
        page = w.page
        page.wait_for_selector("#queue li")
        until(page, "state.tube !== null")
        # 1, 2: the basophil gate of the high-concentration tube, corrected twice
        open_tube(page, high)
        for k, why in ((0, "eosinophils were included"), (1, "still too wide at the top")):
            dx, dy = inward(page, "basophils", k)
            drag(page, f"figure[data-gate=basophils] circle.vertex[data-index=\"{k}\"]", dx, dy)
            shown = int(page.text_content("#n-basophils"))
            decide(page, "#save", why, "correct saved")
            reasons.setdefault(high, []).append(why)
        high_count = int(page.text_content("#n-basophils"))
        assert high_count == shown
        # 3: the margin gate's (a range) right side dragged to the left
        open_tube(page, low)
        margin_before = page.evaluate("state.tube.gate_counts.find((g) => g.name === 'margin').count")
        drag(page, "figure[data-gate=margin] line.side[data-side=xmax]", -60, 0)
        assert page.evaluate("state.edited.type") == "range"
        decide(page, "#save", "debris at the high FSC edge", "correct saved")
        reasons[low] = ["debris at the high FSC edge"]
        assert page.evaluate("state.tube.gate_counts.find((g) => g.name === 'margin').count") < margin_before
        # 4: the CD63 threshold dragged on the negative control; 5: its cells gate corrected
        open_tube(page, neg)
        drag(page, "line.threshold.draggable", -50, 0, expect="threshold moved")
        decide(page, "#save-threshold", "bimodal negative control", "threshold saved")
        dx, dy = inward(page, "cells", 0)
        drag(page, "figure[data-gate=cells] circle.vertex[data-index=\"0\"]", dx, dy)
        decide(page, "#save", "cells gate cut into the lymphocytes", "correct saved")
        reasons[neg] = ["bimodal negative control", "cells gate cut into the lymphocytes"]
        # 6: fMLP excluded; 7: anti-FcεRI accepted
        open_tube(page, fmlp)
        decide(page, "#exclude", "sample clotted", "exclude saved")
        reasons[fmlp] = ["sample clotted"]
        open_tube(page, fceri)
        decide(page, "#accept", "checked against the plate map", "accept saved")
        reasons[fceri] = ["checked against the plate map"]
        # 8: the margin correction reverted; 9: the tube accepted with the keyboard
        open_tube(page, low)
        decide(page, "#revert", "the automated margin was right", "revert saved")
        page.fill("#reason", "automated gates fine")
        page.evaluate("document.activeElement.blur()")  # keys act when no field has the focus
        page.keyboard.press("a")
        until(page, "document.getElementById('message').textContent === 'accept saved'")
        reasons[low] += ["the automated margin was right", "automated gates fine"]
        # 10: the patient signed off
        decide(page, "#signoff", "reviewed and approved by JD", "patient P01 signed off")
        assert "0 left to review" in page.text_content("#counts")
        assert w.errors == [] and w.foreign == []
        w.close()
    finally:
        bench.stop()
    with ResultStore.in_folder(out, create=False) as store:
        log = store.correction_log()
    # the 10 decisions (a saved gate correction is logged with the tube's acceptance; a revert withdraws both)
    assert [(e["kind"], e["action"]) for e in log] == [
        ("gate", "apply"), ("tube", "accept"), ("gate", "apply"), ("tube", "accept"),
        ("gate", "apply"), ("tube", "accept"),
        ("threshold", "apply"), ("gate", "apply"), ("tube", "accept"),
        ("tube", "exclude"), ("tube", "accept"),
        ("gate", "withdraw"), ("tube", "withdraw"), ("tube", "accept"),
        ("patient", "signoff")]
    assert {e["reviewer"] for e in log} == {"Jane Doe"}

    def check_page(expect_count: int) -> None:
        bench = start(out)
        try:
            w = Watched(browser, bench)
            page = w.page
            page.wait_for_selector("#queue li")
            assert "0 left to review" in page.text_content("#counts")
            for file, whys in reasons.items():
                tube = open_tube(page, file)
                page.wait_for_selector(f'#history[data-tube="{tube}"] li')  # this tube's, not the last one's
                history = page.text_content("#history")
                for why in whys:
                    if why != "bimodal negative control":  # a threshold is the patient's, not the tube's
                        assert why in history, (file, why)
                assert "patient signed off by Jane Doe" in page.text_content("#tube-meta")
            open_tube(page, high)
            assert int(page.text_content("#n-basophils")) == expect_count
            assert "corrected: basophils" in page.text_content("#tube-meta")
            open_tube(page, fmlp)
            assert "review: excluded" in page.text_content("#tube-meta")
            assert w.errors == [] and w.foreign == []
            w.close()
        finally:
            bench.stop()

    check_page(high_count)  # a restart: everything is read back from the log
    args = ["run", str(exp.out_dir), "--layout", str(exp.layout_path), "--out", str(out), "--workers", "1",
            "--no-reports"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "3 reviewer corrections from the store applied." in again.output
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False).set_index("file")
    assert tubes.loc[high, "n_basophils"] == high_count
    assert dict(tubes["review_status"]) == {high: "corrected", low: "accepted", neg: "corrected",
                                            fmlp: "excluded", fceri: "accepted"}
    assert set(tubes["reviewed_by"]) == {"Jane Doe"}
    assert tubes.loc[fmlp, "qc_status"] == "fail" and "EXCLUDED_BY_REVIEWER" in tubes.loc[fmlp, "qc_flags"]
    threshold = next(e for e in log if e["kind"] == "threshold")["value"]
    assert list(tubes["cd63_threshold"]) == pytest.approx([threshold] * 5, rel=1e-6)
    patients = pd.read_csv(out / "patients.csv", keep_default_na=False)
    assert set(patients["signed_off_by"]) == {"Jane Doe"}
    check_page(high_count)  # and after the re-run, the same


def test_a_row_clicked_before_the_queue_is_read_opens_and_stays_open(small_plate, browser, tmp_path, monkeypatch):
    """The queue's rows are in the page before the script has read the queue: a click on one then opens
    that tube, and the first tube of the queue does not replace it when the queue arrives (slowed here)."""
    import time

    from bat_analysis.workbench._session import ReviewSession

    real = ReviewSession.queue

    def slow(self, **filters):
        if filters:  # the API's call (the page itself is built with an unfiltered one)
            time.sleep(2.0)
        return real(self, **filters)

    monkeypatch.setattr(ReviewSession, "queue", slow)
    _, results = small_plate
    bench = start(results)
    try:
        w = Watched(browser, bench)
        page = w.page
        page.wait_for_selector("body[data-ready]")
        assert page.evaluate("state.queue.length") == 0  # not read yet
        rows = page.locator("#queue li")
        last = rows.nth(rows.count() - 1).get_attribute("data-id")
        assert last != rows.nth(0).get_attribute("data-id")
        rows.nth(rows.count() - 1).click()
        until(page, "state.queue.length > 0")
        until(page, f"state.tube && state.tube.id === {int(last)}")
        page.wait_for_timeout(300)
        assert page.evaluate("state.tube.id") == int(last) and page.evaluate("state.current") == int(last)
        assert w.errors == [] and w.foreign == []
        w.close()
    finally:
        bench.stop()


def test_the_time_gate_end_dragged_over_its_histogram_regates_and_is_saved(results, browser, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(results, out)
    bench = start(out, reviewer="Jane Doe")
    try:
        w = Watched(browser, bench)
        page = w.page
        until(page, "state.tube !== null")
        # a tube with basophils enough that half the acquisition's time keeps clearly fewer
        tube_id = page.evaluate("state.queue.find((t) => t.n_basophils > 100).id")
        if page.evaluate("state.tube.id") != tube_id:
            page.click(f'#queue li[data-id="{tube_id}"]')
            until(page, f"state.tube && state.tube.id === {tube_id}")
        fig = "figure[data-gate=acquisition_qc]"
        page.wait_for_selector(f"{fig} line.side[data-side=max]", state="attached")  # a vertical line: no width
        until(page, "!document.getElementById('patient').textContent.includes('scoring')")
        assert page.locator(f"{fig} path.bars").count() == 1 and page.locator(f"{fig} rect.window").count() == 1
        before = int(page.text_content("#n-basophils"))
        page.locator(fig).scroll_into_view_if_needed()
        plot = page.locator(f"{fig} svg").bounding_box()
        end = page.locator(f"{fig} line.side[data-side=max]").bounding_box()
        x, y = end["x"] + end["width"] / 2, end["y"] + end["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(plot["x"] + 0.5 * plot["width"], y, steps=6)  # the acquisition's second half left out
        page.mouse.up()
        until(page, "document.getElementById('message').textContent.startsWith('re-gated')")
        assert page.evaluate("state.editedGate") == "acquisition_qc"
        assert page.evaluate("state.edited.type") == "range"
        after = int(page.text_content("#n-basophils"))
        assert after < before
        shaded = page.locator(f"{fig} rect.window").bounding_box()
        assert abs(shaded["x"] + shaded["width"] - (plot["x"] + 0.5 * plot["width"])) < 4
        page.fill("#reason", "unstable flow at the end of the acquisition")
        page.click("#save")
        until(page, "document.getElementById('message').textContent === 'correct saved'")
        assert "(corrected: acquisition_qc)" in page.text_content("#tube-meta")
        assert int(page.text_content("#n-basophils")) == after
        # drawn again from the saved correction: the kept span ends where it was dropped
        page.wait_for_selector(f"{fig} line.side[data-side=max]", state="attached")
        again = page.locator(f"{fig} line.side[data-side=max]").bounding_box()
        assert abs(again["x"] + again["width"] / 2 - (plot["x"] + 0.5 * plot["width"])) < 4
        assert w.errors == [] and w.foreign == []
        w.close()
    finally:
        bench.stop()
    from bat_analysis.store import ResultStore

    with ResultStore.in_folder(out, create=False) as store:
        entry = next(e for e in store.correction_log() if e["kind"] == "gate")
    assert entry["gate"] == "acquisition_qc" and entry["reviewer"] == "Jane Doe"
    assert entry["reason"] == "unstable flow at the end of the acquisition" and entry["value"]["type"] == "range"
