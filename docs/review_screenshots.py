"""Make the README's screenshots of `bat review`: the queue (docs/review_queue.png) and a tube with its
basophil gate being edited (docs/review_workbench.png), from a simulated patient (a few tubes already
reviewed), in Debian's chromium driven by playwright (no browser is downloaded).

    PYTHONPATH=. python docs/review_screenshots.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def until(page, expression: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > end:
            shown = page.evaluate("document.getElementById('message').textContent")
            raise SystemExit(f"still false after {timeout_s:g} s: {expression} (message: {shown!r})")
        page.wait_for_timeout(50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from bat_analysis.pipeline import RunOptions, run
    from bat_analysis.simulate import simulate_experiment
    from bat_analysis.workbench._server import make_workbench

    with tempfile.TemporaryDirectory() as tmp:
        exp = simulate_experiment(f"{tmp}/data", n_patients=1, n_events=60000, seed=4, n_concentrations=5)
        run(RunOptions(data_dir=exp.out_dir, layout=exp.layout_path, out=f"{tmp}/out", workers=1, quiet=True,
                       reports=False))
        from bat_analysis.workbench._session import ReviewSession

        session = ReviewSession(f"{tmp}/out")
        tubes = session.queue()["tubes"]
        for t, action in zip(tubes[-3:], ("accept", "accept", "exclude")):
            session.decide(t["id"], action, reviewer="Jane Doe", reason="sample clotted" if action == "exclude" else "")
        bench = make_workbench(f"{tmp}/out", reviewer="Jane Doe")
        bench.serve_in_thread()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(bench.url)
                page.wait_for_selector("#queue li")
                until(page, "state.tube !== null && document.querySelector('#curves svg') !== null"
                            " && [...document.images].every((i) => i.complete && i.naturalWidth > 0)")
                page.screenshot(path=str(HERE / "review_queue.png"), clip={"x": 0, "y": 0, "width": 1500,
                                                                             "height": 1000})
                tube = page.evaluate("state.queue.find((t) => t.condition === 'allergen' && t.n_basophils > 100).id")
                if page.evaluate("state.current") != tube:  # clicking the open tube would open it again
                    page.click(f'#queue li[data-id="{tube}"]')
                until(page, f"state.tube && state.tube.id === {tube} && document.querySelector('#curves svg')"
                            " && !document.getElementById('patient').textContent.includes('scoring')")
                fig = page.locator("figure[data-gate=basophils]")
                fig.scroll_into_view_if_needed()
                handle = page.locator("figure[data-gate=basophils] circle.vertex").nth(0).bounding_box()
                x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
                page.mouse.move(x, y)
                page.mouse.down()
                page.mouse.move(x - 40, y + 25, steps=5)
                page.mouse.up()
                until(page, "(document.querySelector('#patient .label') || {}).textContent.endsWith('with your edit')")
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(HERE / "review_workbench.png"), full_page=True)
                browser.close()
        finally:
            bench.stop()
    print(f"wrote {HERE / 'review_queue.png'} and {HERE / 'review_workbench.png'}")


if __name__ == "__main__":
    main()
