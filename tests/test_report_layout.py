"""Reports as a reader sees them (issue 14, "Reports and command line"): tables that fit a 1400 px window and wrap
in the PDF instead of being cut, headers for people with units, plots large enough to read, the gallery's plots of
a tube on one row, flags grouped by severity with the basophil count explained from the configured limits.

A simulated patient is run through the pipeline with its reports; the HTML is checked with an HTML parser and, when
Debian's chromium is at /usr/bin/chromium, in a real headless browser (playwright; no browser is downloaded); the
PDF's text and character positions are read with pdfplumber."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                                  "(apt-get install chromium)")


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated patient (both arms, long file names as a plate has them) run with its reports."""
    from bat_analysis.pipeline import RunOptions, run
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(tmp_path_factory.mktemp("layout_data"), n_patients=1, n_events=4000, seed=8,
                              n_concentrations=3)
    out = tmp_path_factory.mktemp("layout_out")
    run(RunOptions(data_dir=exp.out_dir, layout=exp.layout_path, out=out, workers=1, quiet=True, reports=True))
    return out


def _report(out: Path) -> Path:
    return next((out / "reports").glob("*.html"))


class _Tables(HTMLParser):
    """Header cells per table, and per gallery tube its image row (class, style) and image count."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[list[str]] = []
        self.rows: list[dict[str, Any]] = []
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.headers.append([])
        elif tag == "th":
            self._in_th = True
            self.headers[-1].append("")
        elif tag == "div" and "imgs" in (a.get("class") or "").split():
            self.rows.append({"class": a.get("class") or "", "style": a.get("style") or "", "imgs": 0})
        elif tag == "img" and self.rows:
            self.rows[-1]["imgs"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in_th = False

    def handle_data(self, data: str) -> None:
        if self._in_th:
            self.headers[-1][-1] += data


def _parse(path: Path) -> _Tables:
    p = _Tables()
    p.feed(path.read_text(encoding="utf-8"))
    return p


# ------------------------------------------------------------------------------------------ headers (item 3)
@pytest.mark.slow
def test_headers_are_written_for_people_with_units(run_out: Path) -> None:
    unit = str(pd.read_csv(run_out / "tubes.csv")["unit"].dropna().iloc[0])
    headers = [h for table in _parse(_report(run_out)).headers for h in table]
    assert "CD63+ (% of basophils)" in headers and f"Concentration ({unit})" in headers
    assert f"EC50, no pretreatment ({unit})" in headers and any(h.startswith("CD-sens") for h in headers)
    assert "Basophils (n)" in headers and "QC" in headers
    snake = [h for h in headers if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", h)]
    assert not snake, f"snake_case headers left: {snake}"


# ------------------------------------------------------------------------------------ PDF cells (items 2, 3)
def _column_text(page: Any, header: str, next_header: str) -> str:
    """The characters of a table column (between its header and the next header's left edge), in reading order."""
    words = page.extract_words()
    left = next(w for w in words if w["text"].lower() == header.lower())
    right = next(w for w in words if w["text"].lower() == next_header.lower() and abs(w["top"] - left["top"]) < 2)
    chars = [c for c in page.chars if c["x0"] >= left["x0"] - 1 and c["x0"] < right["x0"] - 1
             and c["top"] > left["bottom"]]
    return "".join(c["text"] for c in sorted(chars, key=lambda c: (round(c["top"]), c["x0"])))


@pytest.mark.slow
def test_pdf_table_cells_wrap_and_keep_every_character(run_out: Path) -> None:
    pdfplumber = pytest.importorskip("pdfplumber")
    files = pd.read_csv(run_out / "tubes.csv")["file"].tolist()
    assert max(len(f) for f in files) >= 35  # "P01_omalizumab_allergen_birch_0.01.fcs": longer than its column
    with pdfplumber.open(next((run_out / "reports").glob("*.pdf"))) as pdf:
        page = next(p for p in pdf.pages if "Metrics per tube" in (p.extract_text() or ""))
        column = _column_text(page, "File", "Condition")
        text = page.extract_text()
        for f in files:  # each file name whole in its own column (wrapped onto lines, never cut)
            assert f in column, f"{f} cut in the PDF's tube table"
        for line in _lines(page):  # no character drawn over another: a cut cell ran under its neighbour
            for a, b in zip(line, line[1:]):
                assert b["x0"] >= a["x1"] - 1.2, f"overlapping text in the PDF table: {a['text']!r} {b['text']!r}"
        assert "pct_cd63" not in text and "n_basophils" not in text
        assert "Concentration" in text and "CD63+ (%" in text and "threshold" in text  # headers, wrapped


def _lines(page: Any) -> list[list[dict[str, Any]]]:
    rows: dict[int, list[dict[str, Any]]] = {}
    for c in page.chars:
        if c["text"].strip():
            rows.setdefault(round(c["top"] * 2), []).append(c)
    return [sorted(r, key=lambda c: c["x0"]) for r in rows.values()]


def test_wrap_breaks_at_parts_and_inside_a_word_only_when_it_must() -> None:
    from bat_analysis.report._pdf import _text_width_pt, _wrap

    name = "P01_omalizumab_allergen_birch_0.01.fcs"
    room = _text_width_pt("P01_omalizumab_allergen_", 6.5) + 0.5
    lines = _wrap(name, room, 6.5)
    assert "".join(lines) == name and lines[0] == "P01_omalizumab_allergen_"
    assert all(_text_width_pt(line, 6.5) <= room for line in lines)
    word = "a" * 60
    lines = _wrap(word, 40.0, 6.5)
    assert "".join(lines) == word and len(lines) > 1 and all(_text_width_pt(x, 6.5) <= 40.0 for x in lines)
    assert _wrap("short", 100.0, 6.5) == ["short"]
    hostile = "x" * 20000  # a 20,000-character patient ID: lines found by bisection over a bounded prefix
    lines = _wrap(hostile, 80.0, 6.5)
    assert "".join(lines) == hostile and all(_text_width_pt(x, 6.5) <= 80.0 for x in lines)


# ------------------------------------------------------------------------------------- plot size (item 4)
def test_enlarged_plots_are_800_px_with_readable_ticks() -> None:
    """The gallery opens each plot at its PNG's size (>= 800 px wide); the report shows it at REPORT_SCALE: its
    tick labels are then >= 10 px tall (font size in points x figure dpi / 72 x display scale)."""
    import io

    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    from bat_analysis.report import _html as html
    from bat_analysis.report.plots import PngRenderer, _gate_frame

    from test_report import _gates

    renderer = PngRenderer()
    record = _gates(np.random.default_rng(1), 50000, 800)[-1]
    png = renderer.gate(record)
    with Image.open(io.BytesIO(png.data)) as img:
        assert img.size == (png.width, png.height) and img.width >= 800
    figure = Figure(figsize=renderer.size, dpi=renderer.dpi)  # the frame the renderer drew, to read its ticks
    ax = figure.add_subplot()
    _gate_frame(record, ax)
    ticks = [t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert ticks and round(figure.get_figwidth() * figure.dpi) == png.width
    tick_px_shown = min(ticks) * renderer.dpi / 72.0 * getattr(html, "REPORT_SCALE", 1.0)
    assert tick_px_shown >= 10.0, f"tick labels {tick_px_shown:.1f} px tall as the report shows them"


# --------------------------------------------------------------------------------- gallery rows (item 5)
@pytest.mark.slow
def test_gallery_puts_each_tubes_plots_in_one_grid_row(run_out: Path) -> None:
    rows = [r for r in _parse(run_out / "review" / "index.html").rows if r["imgs"]]
    assert rows and all("row" in r["class"].split() for r in rows)
    assert all(r["style"] == f"--n:{r['imgs']}" for r in rows), rows[:2]
    assert max(r["imgs"] for r in rows) >= 6


# ---------------------------------------------------------------------------------- browser (items 1, 5)
@pytest.fixture(scope="module")
def page() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


TOO_WIDE = """() => { const W = document.documentElement.clientWidth, bad = [];
  for (const el of document.querySelectorAll('body *')) { const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > W + 0.5) bad.push(`${el.tagName}.${el.className} right ${Math.round(r.right)}`); }
  return {width: W, scroll: document.documentElement.scrollWidth, bad: bad.slice(0, 8)}; }"""


@pytest.mark.slow
@needs_chromium
def test_report_and_gallery_fit_a_1400_px_window(run_out: Path, page: Any) -> None:
    for path in (_report(run_out), run_out / "review" / "index.html"):
        page.goto(path.as_uri())
        found = page.evaluate(TOO_WIDE)
        assert not found["bad"] and found["scroll"] <= 1400, (path.name, found)


@pytest.mark.slow
@needs_chromium
def test_gallery_shows_every_plot_of_a_tube_on_one_line(run_out: Path, page: Any) -> None:
    page.goto((run_out / "review" / "index.html").as_uri())
    tops = page.evaluate("""() => [...document.querySelectorAll('.tube')].map(t =>
        [...t.querySelectorAll('img')].map(i => Math.round(i.getBoundingClientRect().top)))""")
    assert tops and all(len(set(t)) == 1 for t in tops if t), tops[:3]
    assert max(len(t) for t in tops) >= 6


# ------------------------------------------------------------------------------------------ flags (item 6)
def test_basophil_count_in_words_from_the_configured_limits() -> None:
    from bat_analysis.analysis.config import QcConfig
    from bat_analysis.analysis.qc import basophil_count_words

    qc = QcConfig()
    assert basophil_count_words(qc.basophils_pass_min - 1, qc) == (
        f"{qc.basophils_pass_min - 1} basophils: fewer than the {qc.basophils_pass_min} recommended, above the "
        f"minimum of {qc.basophils_fail_below}")
    other = replace(qc, basophils_pass_min=600, basophils_fail_below=150)
    assert "fewer than the 600 recommended, above the minimum of 150" in basophil_count_words(499, other)
    assert "fewer than the minimum of 150" in basophil_count_words(120, other)


def test_flags_are_grouped_by_severity_failures_first(tmp_path: Path) -> None:
    from bat_analysis.analysis.score import score_experiment
    from bat_analysis.records import Flag
    from bat_analysis.report._html import patient_html
    from bat_analysis.report._views import RunView, flag_groups, patient_views, tube_views

    from test_report import RUN_INFO, make_experiment

    results, scores = make_experiment(1)
    qc = scores.config.qc
    low = [qc.basophils_pass_min - 1, qc.basophils_fail_below + 12, qc.basophils_fail_below + 40]
    changed = []
    for i, r in enumerate(results):
        if i < len(low):
            r = replace(r, n_basophils=low[i], flags=[Flag("LOW_BASOPHILS", "warn", f"{low[i]} basophils")])
        elif i == len(low):
            r = replace(r, flags=[Flag("NOT_GATED", "fail", "no basophil cluster")])
        else:
            r = replace(r, flags=[])
        changed.append(r)
    scores = score_experiment(changed)
    run = RunView({**RUN_INFO, "marker": "CD63"})
    views = patient_views(tube_views(changed, scores, run), scores)
    view = views["P01"]
    groups = flag_groups(view.tubes, view.patient_flags)
    assert [g.severity for g in groups] == sorted((g.severity for g in groups),
                                                  key=lambda s: {"fail": 0, "warn": 1}.get(s, 2))
    low_group = next(g for g in groups if g.code == "LOW_BASOPHILS")
    assert low_group.places == 3
    assert low_group.heading() == (f"LOW_BASOPHILS on 3 tubes: fewer than the {qc.basophils_pass_min} recommended, "
                                   f"above the minimum of {qc.basophils_fail_below}")
    assert sorted(what for _, what in low_group.lines()) == sorted(f"{n} basophils" for n in low)
    html = patient_html(view, run)
    flags = html[html.index("<h2>Flags</h2>"):html.index("<h2>Gating, tube by tube</h2>")]
    assert flags.index("NOT_GATED") < flags.index("LOW_BASOPHILS</b> on 3 tubes: fewer than the")
    assert flags.count("LOW_BASOPHILS") == 1  # one group, not one line per tube


# ------------------------------------------------------------------------------- rendering cost (PDF images)
@pytest.mark.slow
def test_pdf_embeds_the_gallery_pngs_own_data_upright(run_out: Path) -> None:
    """The PDF's plots are the gallery's PNG data as it is (no second encoding), its dose-response curves the HTML
    report's, and they show the right way up."""
    import base64

    pdfplumber = pytest.importorskip("pdfplumber")
    pdfium = pytest.importorskip("pypdfium2")
    import numpy as np
    from PIL import Image

    from bat_analysis.report._pdf import _idat

    pngs = {_idat(p.read_bytes()): p for p in (run_out / "review" / "img").glob("*.png")}
    html = _report(run_out).read_text(encoding="utf-8")
    curves = {_idat(base64.b64decode(b64))
              for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"[^>]*data-kind="dose_response"', html)}
    pdf_path = next((run_out / "reports").glob("*.pdf"))
    with pdfplumber.open(pdf_path) as pdf:
        images = [(page.page_number, im) for page in pdf.pages for im in page.images
                  if im["stream"].get_rawdata() not in curves]
        assert curves and len(images) >= len(pngs) > 0
        assert all(im["stream"].get_rawdata() in pngs for _, im in images)
        number, first = images[0]
    scale = first["srcsize"][0] / first["width"]
    page = np.asarray(pdfium.PdfDocument(pdf_path)[number - 1].render(scale=scale).to_pil().convert("RGB"))
    x, y = round(first["x0"] * scale), round(first["top"] * scale)
    shown = page[y:y + first["srcsize"][1], x:x + first["srcsize"][0]].astype(int)
    with Image.open(pngs[first["stream"].get_rawdata()]) as img:
        source = np.asarray(img.convert("RGB")).astype(int)[:shown.shape[0], :shown.shape[1]]
    assert np.abs(shown - source).mean() < 8 < np.abs(shown - source[::-1]).mean()


def test_encoded_png_reads_back_as_the_same_pixels() -> None:
    import io

    import numpy as np
    from PIL import Image

    from bat_analysis.report.plots import encode_png

    rgba = np.random.default_rng(3).integers(0, 256, size=(37, 53, 4), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(rgba))) as img:
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgba[..., :3])


def test_a_patients_fit_flags_are_counted_as_series_not_tubes() -> None:
    from bat_analysis.report._views import Notice, flag_groups

    groups = flag_groups([], [Notice("EC50_NOT_ESTIMABLE", "warn", "birch (none): EC50 not estimable: above 100"),
                              Notice("EC50_NOT_ESTIMABLE", "warn", "grass (none): EC50 not estimable: above 100"),
                              Notice("FIT_FAILED", "fail", "birch (omalizumab): no convergence")])
    assert [g.code for g in groups] == ["FIT_FAILED", "EC50_NOT_ESTIMABLE"]
    assert groups[1].heading() == "EC50_NOT_ESTIMABLE on 2 series: EC50 not estimable: above 100"


def test_event_fraction_flags_in_words_with_their_own_severity() -> None:
    """A fraction in the warning band is a warning in the reports even on a tube that fails for another reason,
    and says what its range means; the tables keep fraction_flags' short messages."""
    from bat_analysis.analysis.config import QcConfig
    from bat_analysis.analysis.qc import fraction_flags, fraction_words

    qc = replace(QcConfig(), acquisition_qc_warn_pct=8.0, acquisition_qc_fail_pct=30.0)
    fractions = {"acquisition_qc": 0.112, "margin": 0.0, "doublets": 0.0}
    assert fraction_words(fractions, qc) == {"ACQUISITION_QC": (
        "warn", "11.2% events removed by acquisition QC: at or above the warning limit of 8%, within the failure "
                "limit of 30%")}
    assert [f.message for f in fraction_flags(fractions, qc)] == ["events removed by acquisition QC 11.2% (8–30%)"]


def test_dose_response_legend_stays_inside_its_figure() -> None:
    """A long legend entry (an EC50 that is not estimable, with its reason) is wrapped to the plot's width
    instead of running past the figure's edge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bat_analysis.analysis.dose_response import analyse_series
    from bat_analysis.report.plots import draw_dose_response

    conc = [0.01, 0.1, 1.0, 10.0, 100.0]
    rising = analyse_series("P1", "birch", "none", conc, [5, 20, 50, 57, 56], [2, 17, 47, 54, 53], unit="ng/mL")
    flat = analyse_series("P1", "birch", "omalizumab", conc, [3, 3, 4, 5, 9], [0, 0, 1, 2, 6], unit="ng/mL")
    assert flat.status != "ok" and len(flat.ec50_reason or flat.status) > 30  # the long entry under test
    fig = Figure(figsize=(4.8, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.12, 0.15, 0.85, 0.75))
    draw_dose_response({"none": rising, "omalizumab": flat}, ax, title="birch")
    renderer = fig.canvas.get_renderer()
    box = ax.get_legend().get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 + 0.5, (box, fig.bbox)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("\n" in t for t in texts) and all("not estimable" in t or "EC50" in t for t in texts)
