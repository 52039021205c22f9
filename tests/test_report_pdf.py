"""The per-patient PDF (bat_analysis.report._pdf): plots embedded with their own PNG data (RGB and palette PNGs),
any other PNG still shown, each plot's texts printed under it, the dose-response curves the HTML report's, text
written literally, the file replaced atomically; the cut fonts for a document they hold, the whole fonts for the
whole document otherwise, the same pages either way. Read back with pdfplumber (text, images) and pypdfium2
(pixels)."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bat_analysis.analysis.score import score_experiment
from test_report import RUN_INFO, make_experiment

pdfplumber = pytest.importorskip("pdfplumber")


def _view(patient: str = "P01") -> tuple[Any, Any]:
    from bat_analysis.report._views import RunView, patient_views, tube_views

    results, scores = make_experiment(1)
    if patient != "P01":
        results = [replace(r, tube=replace(r.tube, patient=patient)) for r in results]
        scores = score_experiment(results)
    run = RunView(dict(RUN_INFO))
    (view,) = patient_views(tube_views(results, scores, run), scores).values()
    return view, run


def _pixels(height: int, width: int) -> np.ndarray:
    """A picture with distinct halves and a gradient: upside down or with a wrong palette it differs."""
    rng = np.random.default_rng(5)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[: height // 2] = (200, 40, 40)
    rgb[height // 2:] = (30, 90, 220)
    rgb[:, : width // 4, 1] = np.linspace(0, 250, height, dtype=np.uint8)[:, None]
    rgb[rng.random((height, width)) < 0.02] = (10, 10, 10)
    return rgb


def _png(rgb: np.ndarray, mode: str, **save: Any) -> bytes:
    from PIL import Image

    img = Image.fromarray(rgb, "RGB")
    if mode == "P":
        img = img.quantize(colors=64, dither=Image.Dither.NONE)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def _chunks(png: bytes) -> list[bytes]:
    import struct

    pos, kinds = 8, []
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">L4s", png[pos:pos + 8])
        kinds.append(kind)
        pos += 12 + length
    return kinds


def _write(tmp_path: Path, pngs: list[Any], *, patient: str = "P01") -> Path:
    from bat_analysis.report._pdf import write_patient_pdf

    view, run = _view(patient)
    for i, tube in enumerate(view.tubes):
        tube.images = list(pngs) if i == 0 else []
    return write_patient_pdf(tmp_path / "p.pdf", view, run)


def _shown(pdf_path: Path, image: dict[str, Any]) -> np.ndarray:
    """The pixels of ``image`` (a pdfplumber image) as the page shows it, at the image's own resolution."""
    pdfium = pytest.importorskip("pypdfium2")
    scale = image["srcsize"][0] / image["width"]
    page = pdfium.PdfDocument(pdf_path)[image["page_number"] - 1].render(scale=scale).to_pil().convert("RGB")
    x, y = round(image["x0"] * scale), round(image["top"] * scale)
    return np.asarray(page)[y:y + image["srcsize"][1], x:x + image["srcsize"][0]].astype(int)


def test_palette_and_rgb_pngs_are_embedded_with_their_own_data(tmp_path: Path) -> None:
    """An 8-bit palette PNG (colour type 3) is written as an /Indexed image over its PLTE, an RGB PNG as
    DeviceRGB, both with the PNG's IDAT data as their stream (no decoding, no second encoding), shown right."""
    from PIL import Image

    from bat_analysis.report._pdf import _idat
    from bat_analysis.report.plots import Png

    palette = _png(_pixels(120, 160), "P")
    rgb = _png(_pixels(120, 160)[::-1, ::-1].copy(), "RGB")  # a tube's plots share one size
    assert b"PLTE" in _chunks(palette) and b"tRNS" not in _chunks(palette)
    with Image.open(io.BytesIO(palette)) as img:
        assert img.mode == "P"
    path = _write(tmp_path, [Png("gate", "palette", palette, 160, 120), Png("activation", "rgb", rgb, 160, 120)])
    with pdfplumber.open(path) as pdf:
        images = [im for page in pdf.pages for im in page.images]
        assert [im["srcsize"] for im in images] == [(160, 120), (160, 120)]
        raw = [im["stream"].get_rawdata() for im in images]
        assert raw == [_idat(palette), _idat(rgb)] and None not in raw
        space = images[0]["stream"]["ColorSpace"]
        assert space[0].name == "Indexed" and space[1].name == "DeviceRGB" and space[2] == 63
        assert images[1]["stream"]["ColorSpace"].name == "DeviceRGB"
        parms = images[0]["stream"]["DecodeParms"]
        assert parms["Predictor"] >= 10 and parms["Colors"] == 1 and parms["Columns"] == 160
        for image, png in zip(images, (palette, rgb)):
            with Image.open(io.BytesIO(png)) as img:
                source = np.asarray(img.convert("RGB")).astype(int)
            shown = _shown(path, image)
            assert np.abs(shown - source[:shown.shape[0], :shown.shape[1]]).mean() < 8
            assert np.abs(shown - source[::-1][:shown.shape[0], :shown.shape[1]]).mean() > 30


@pytest.mark.parametrize("mode, save", [("RGBA", {}), ("L", {}), ("I;16", {}), ("P", {"transparency": 0})])
def test_any_other_png_is_still_shown(tmp_path: Path, mode: str, save: dict[str, Any]) -> None:
    """A PNG the PDF cannot take as it is (alpha, grey, 16 bits, a transparent palette entry) is decoded and
    encoded by fpdf2: the plot is in the PDF at its size all the same, with the same pixels."""
    from PIL import Image

    from bat_analysis.report._pdf import _idat
    from bat_analysis.report.plots import Png

    rgb = _pixels(60, 80)
    png = _png(rgb, mode, **save)
    assert _idat(png) is None
    path = _write(tmp_path, [Png("gate", mode, png, 80, 60)])
    with pdfplumber.open(path) as pdf:
        (image,) = [im for page in pdf.pages for im in page.images]
        assert image["srcsize"] == (80, 60)
        if mode == "P":  # its transparent entry kept as a soft mask
            assert "SMask" in image["stream"].attrs
    with Image.open(io.BytesIO(png)) as img:
        source = np.asarray(img.convert("RGB")).astype(int)
    if mode in ("RGBA", "L"):  # (a transparent palette entry shows the page's white through it)
        assert np.abs(_shown(path, image) - source).mean() < 8


def _with_header(png: bytes, **fields: int) -> bytes:
    """``png`` with IHDR fields changed (depth, colour, interlace) and its CRC made right again."""
    import struct
    import zlib

    names = ("width", "height", "depth", "colour", "compression", "filter", "interlace")
    values = dict(zip(names, struct.unpack(">LLBBBBB", png[16:29])), **fields)
    data = struct.pack(">LLBBBBB", *(values[n] for n in names))
    return png[:16] + data + struct.pack(">L", zlib.crc32(b"IHDR" + data)) + png[33:]


def test_only_8_bit_non_interlaced_rgb_or_palette_pngs_are_taken_as_they_are() -> None:
    from bat_analysis.report._pdf import _idat, _png_image

    rgb = _png(_pixels(20, 30), "RGB")
    palette = _png(_pixels(20, 30), "P")
    assert _png_image(rgb)["cs"] == "DeviceRGB" and _png_image(palette)["cs"] == "Indexed"
    assert _png_image(palette)["pal"] and len(_png_image(palette)["pal"]) % 3 == 0
    assert _idat(_with_header(rgb, interlace=1)) is None and _idat(_with_header(palette, depth=4)) is None
    assert _idat(_with_header(rgb, colour=6)) is None
    assert _idat(rgb[:40]) is None and _idat(b"GIF89a") is None  # truncated, not a PNG
    no_palette = re.sub(rb"\x00\x00..PLTE.*?(?=\x00\x00..IDAT)", b"", palette, flags=re.DOTALL)
    assert b"PLTE" not in no_palette and _idat(no_palette) is None


def test_each_plots_texts_are_printed_under_it_literally(tmp_path: Path) -> None:
    """The texts a plot's marks print (Png.texts: counts, method notes, percentages, legend entries) are text in
    the PDF, under their own plot, control characters shown as escapes, never read as mathtext."""
    from bat_analysis.report.plots import Png

    png = _png(_pixels(90, 150), "RGB")
    first = ("1 234 of 56 789 (2.2%)", "manually adjusted: $\\alpha$ eosinophils\x1b[31m inside")
    second = ("this tube: 45.1% CD63+ (n=812)", "negative control: 2.0% CD63+ (n=790)\nthreshold 592.5")
    path = _write(tmp_path, [Png("gate", "basophils", png, 150, 90, first),
                             Png("activation", "CD63", png, 150, 90, second)])
    with pdfplumber.open(path) as pdf:
        page = next(p for p in pdf.pages if p.images)
        left, right = sorted(page.images, key=lambda im: im["x0"])
        under = {side: _lines_under(page, image) for side, image in (("left", left), ("right", right))}
    assert under["left"] == ["1 234 of 56 789 (2.2%)", "manually adjusted: $\\alpha$ eosinophils\\x1b[31m inside"]
    assert under["right"] == ["this tube: 45.1% CD63+ (n=812)", "negative control: 2.0% CD63+ (n=790)",
                              "threshold 592.5"]


def _lines_under(page: Any, image: dict[str, Any]) -> list[str]:
    """The lines of text under ``image`` and within its width (above the page's footer), top to bottom."""
    chars = [c for c in page.chars if image["bottom"] - 0.5 <= c["top"] < page.height - 36
             and image["x0"] <= c["x0"] and c["x1"] <= image["x1"] + 0.5]
    rows: dict[int, list[dict[str, Any]]] = {}
    for c in chars:
        rows.setdefault(round(c["top"]), []).append(c)
    return [_joined(sorted(rows[top], key=lambda c: c["x0"])) for top in sorted(rows)]


def _joined(chars: list[dict[str, Any]]) -> str:
    out = ""
    for a, b in zip([None, *chars], chars):
        if a is not None and b["x0"] - a["x1"] > 0.5 * (b["x1"] - b["x0"]) and not out.endswith(" "):
            out += " "
        out += b["text"]
    return out


def test_a_long_plot_text_wraps_to_its_plot(tmp_path: Path) -> None:
    from bat_analysis.report.plots import Png

    png = _png(_pixels(90, 150), "RGB")
    reason = "manually adjusted: " + "eosinophils and debris inside the gate " * 8
    path = _write(tmp_path, [Png("gate", "basophils", png, 150, 90, (reason,)),
                             Png("gate", "cells", png, 150, 90, ("right",))])
    with pdfplumber.open(path) as pdf:
        page = next(p for p in pdf.pages if p.images)
        left, right = sorted(page.images, key=lambda im: im["x0"])
        lines = _lines_under(page, left)
        mine = [c for c in page.chars if left["bottom"] <= c["top"] < page.height - 36 and c["x0"] < right["x0"]]
    assert re.sub(r"\s", "", "".join(lines)) == re.sub(r"\s", "", reason) and len(lines) > 2
    assert max(c["x1"] for c in mine) <= left["x1"]  # every character under its own plot


def test_text_is_written_as_it_is(tmp_path: Path) -> None:
    """A patient ID is text: '{nb}' (fpdf2's page-count alias elsewhere) and '$...$' stay as written; a
    20,000-character ID wraps over lines and pages without being cut."""
    patient = "{nb} $x^2$ " + "x" * 20_000
    path = _write(tmp_path, [], patient=patient)
    with pdfplumber.open(path) as pdf:
        first = pdf.pages[0].extract_text()
        pages = [p.extract_text().splitlines() for p in pdf.pages]
        outside = [c for p in pdf.pages for c in p.chars if c["x0"] < 0 or c["x1"] > p.width]
    text = re.sub(r"\s", "", "".join("".join(lines[:-1]) for lines in pages))  # without the footers
    assert "{nb} $x^2$" in first
    assert re.sub(r"\s", "", f"BAT report — patient {patient}") in text
    assert not outside  # the footer's ID is cut to the page, with its page number
    assert all(lines[-1].startswith("BAT report — patient {nb} $x^2$") and lines[-1].endswith(f"… — page {n}")
               for n, lines in enumerate(pages, 1))


def test_the_dose_response_curves_are_the_html_reports_images(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary page shows each allergen's curves as the PNG the HTML report shows (its own data)."""
    from bat_analysis.report import _pdf, render_reports
    from bat_analysis.report._pdf import _idat

    results, scores = make_experiment(1)
    captured: list[Any] = []
    real = _pdf.write_patient_pdf

    def keep(path: Path, view: Any, run: Any) -> Path:
        captured.append(view)
        return real(path, view, run)

    monkeypatch.setattr(_pdf, "write_patient_pdf", keep)
    paths = render_reports(tmp_path, results, scores, RUN_INFO, gallery=False, workers=1)
    (view,) = captured
    assert view.curves
    with pdfplumber.open(paths.pdf["P01"]) as pdf:
        raw = [im["stream"].get_rawdata() for page in pdf.pages[:2] for im in page.images]
        summary = pdf.pages[0].extract_text()
    assert raw[:len(view.curves)] == [_idat(c.data) for c in view.curves]
    assert "Dose–response" in summary


def test_a_failure_while_writing_leaves_the_previous_pdf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bat_analysis.report import _pdf

    path = _write(tmp_path, [])
    before = path.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("layout failed")

    monkeypatch.setattr(_pdf, "_tables", broken)
    with pytest.raises(RuntimeError):
        _write(tmp_path, [])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["p.pdf"]


# ------------------------------------------------------------------------------ the cut fonts (issue 14)
def _fonts_added(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The font files each new document is given (fpdf2's ``add_font``), one list per document."""
    from fpdf import FPDF

    added: list[list[str]] = []
    real = FPDF.add_font

    def add_font(self: Any, family: str, style: str = "", fname: Any = None, **kw: Any) -> Any:
        if not getattr(self, "_seen_by_test", False):
            self._seen_by_test = True
            added.append([])
        added[-1].append(str(fname))
        return real(self, family, style, fname, **kw)

    monkeypatch.setattr(FPDF, "add_font", add_font)
    return added


def _plot_with(texts: tuple[str, ...]) -> Any:
    from bat_analysis.report.plots import Png

    return Png("gate", "basophils", _png(_pixels(90, 150), "RGB"), 150, 90, texts)


def _text_of(path: Path) -> str:
    with pdfplumber.open(path) as pdf:
        return "\n".join(page.extract_text() for page in pdf.pages)


def _font_names(path: Path) -> set[str]:
    with pdfplumber.open(path) as pdf:
        return {c["fontname"] for page in pdf.pages for c in page.chars}


def test_a_usual_report_is_written_with_the_cut_fonts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The characters the reports write themselves (a count's thin space, "≥", "−", "ε", "µ", "—", "·") and
    Latin names are all in the cut fonts: the document is given the cut DejaVu Sans (a few hundred glyphs), not
    the whole font files; its text is all there, in the two faces of one font."""
    from bat_analysis.report._pdf import _font_file

    added = _fonts_added(monkeypatch)
    texts = ("60\u2009000 of 61\u2009500 (97.6%)", "anti-FcεRI net 3.1% ≥ 2 % − µg/mL · Zoë Łukasz — ok")
    path = _write(tmp_path, [_plot_with(texts)])
    whole = {_font_file(False), _font_file(True)}
    assert added and all(len(files) == 2 and not whole & set(files) for files in added)  # (and the measuring's)
    text = _text_of(path)
    for expected in ("BAT report — patient P01", "ε", "≥", "−", "µg/mL", "Zoë Łukasz — ok"):
        assert expected in text
    assert _font_names(path) == {"MPDFAA+DejaVuSansBook", "MPDFAA+DejaVuSansBold"}


@pytest.mark.parametrize("patient, reason", [
    ("Пациент-7 Ա", "eosinophils inside"),  # the patient ID (title, footer, every table)
    ("P01", "gate redrawn 😀 — Ծ ջ"),  # a reviewer's reason, on the last page only
])
def test_a_character_the_cut_fonts_lack_gives_the_whole_document_the_whole_fonts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patient: str, reason: str) -> None:
    """One character outside the cut fonts (Cyrillic, Armenian, an emoji), wherever it is, and the whole document
    is laid out again with the whole font files: its text is extracted exactly, in the same two faces (never a
    document half in one font, half in another)."""
    from bat_analysis.report._pdf import _font_file, write_patient_pdf
    from bat_analysis.report._views import RunView

    view, _ = _view(patient)
    adjustment = {**RUN_INFO["manual_adjustments"][0], "reason": reason}  # type: ignore[index]
    run = RunView({**RUN_INFO, "manual_adjustments": [adjustment]})
    added = _fonts_added(monkeypatch)
    path = write_patient_pdf(tmp_path / "p.pdf", view, run)
    assert added[-1] == [_font_file(False), _font_file(True)]
    text = re.sub(r"\s", "", _text_of(path))
    assert re.sub(r"\s", "", f"BAT report — patient {patient}") in text and re.sub(r"\s", "", reason) in text
    assert _font_names(path) == {"MPDFAA+DejaVuSansBook", "MPDFAA+DejaVuSansBold"}


def test_a_character_no_font_holds_is_shown_as_its_escape_never_dropped(tmp_path: Path) -> None:
    """DejaVu Sans has no CJK ideographs: a patient ID or a reason written in them is shown as escapes
    (``\\u60a3``), as control characters are, instead of being left out of the line (a shortened ID)."""
    from bat_analysis.report._pdf import write_patient_pdf
    from bat_analysis.report._views import RunView

    view, _ = _view("患者-7")
    adjustment = {**RUN_INFO["manual_adjustments"][0], "reason": "门控 redrawn"}  # type: ignore[index]
    path = write_patient_pdf(tmp_path / "p.pdf", view, RunView({**RUN_INFO, "manual_adjustments": [adjustment]}))
    text = re.sub(r"\s", "", _text_of(path))
    assert "BATreport—patient\\u60a3\\u8005-7" in text and "\\u95e8\\u63a7redrawn" in text
    assert "patient-7" not in text


def test_the_cut_fonts_have_the_whole_fonts_advances_and_draw_the_same_pages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every character the cut fonts hold has the whole font's advance (regular and bold): text is measured, and
    so wrapped, the same with either; a report written with the whole fonts has the same characters at the same
    places and the same pixels."""
    pdfium = pytest.importorskip("pypdfium2")
    from bat_analysis.report import _pdf

    for bold in (False, True):
        cut, whole = _pdf._measure(False), _pdf._measure(True)
        cut.set_font(_pdf.FONT, "B" if bold else "", 10)
        whole.set_font(_pdf.FONT, "B" if bold else "", 10)
        assert len(_pdf._held()) > 500
        widths = [(cut.get_string_width(c), whole.get_string_width(c)) for c in sorted(_pdf._held())]
        assert all(a == b for a, b in widths) and sum(a > 0 for a, _ in widths) > 500
    view, run = _view()
    view.tubes[0].images = [_plot_with(("60\u2009000 of 61\u2009500 (97.6%)", "≥ 2% − ε µ " * 12))]
    pages = {}
    for whole in (False, True):
        _pdf._text_width_pt.cache_clear()
        if whole:  # the cut fonts hold nothing: the whole fonts measure and draw everything
            monkeypatch.setattr(_pdf, "_held", lambda: frozenset())
        path = tmp_path / f"{whole}.pdf"
        path.write_bytes(_pdf._pdf_bytes("BAT report — patient P01", view, run))
        with pdfplumber.open(path) as pdf:
            chars = [(c["text"], c["fontname"], round(c["size"], 3), round(c["x0"], 3), round(c["top"], 3))
                     for page in pdf.pages for c in page.chars]
        shown = [np.asarray(page.render(scale=1.5).to_pil()) for page in pdfium.PdfDocument(path)]
        pages[whole] = chars, shown
    _pdf._text_width_pt.cache_clear()
    assert pages[False][0] == pages[True][0] and len(pages[False][0]) > 1000
    assert len(pages[False][1]) == len(pages[True][1])
    assert all(np.array_equal(a, b) for a, b in zip(pages[False][1], pages[True][1]))


@pytest.mark.parametrize("word", ["ABCDEFGHIJ", "АБВГДЕЖЗИЙ"])  # cut fonts; the whole fonts (Cyrillic)
def test_a_long_unbreakable_file_name_wraps_inside_its_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            word: str) -> None:
    """A 300-character file name with nowhere to break is wrapped inside its word, within its table cell and the
    page, whichever fonts the document takes."""
    from bat_analysis.report._pdf import _font_file, write_patient_pdf
    from bat_analysis.report._views import RunView, patient_views, tube_views

    results, _ = make_experiment(1)
    name = "P01" + word * 30 + ".fcs"
    results[0] = replace(results[0], tube=replace(results[0].tube, file=name))
    scores = score_experiment(results)
    run = RunView(dict(RUN_INFO))
    (view,) = patient_views(tube_views(results, scores, run), scores).values()
    added = _fonts_added(monkeypatch)
    path = write_patient_pdf(tmp_path / "p.pdf", view, run)
    assert (added[-1] == [_font_file(False), _font_file(True)]) == (word != "ABCDEFGHIJ")
    with pdfplumber.open(path) as pdf:
        page = next(p for p in pdf.pages if "Metrics per tube" in p.extract_text())
        upright = [e for e in page.edges if e["orientation"] == "v"]
        first = min(upright, key=lambda e: e["top"])  # the table of tubes, the page's first
        rules = sorted({round(e["x0"], 2) for e in upright if abs(e["top"] - first["top"]) < 0.1})
        in_column = [c for c in page.chars if first["top"] <= c["top"] < first["bottom"] and c["x0"] < rules[1]]
        outside = [c for p in pdf.pages for c in p.chars if c["x0"] < 0 or c["x1"] > p.width]
    column = "".join(c["text"] for c in sorted(in_column, key=lambda c: (round(c["top"]), c["x0"])))
    assert name in re.sub(r"\s", "", column) and len({round(c["top"]) for c in in_column}) > 5 and not outside
    assert rules[0] < min(c["x0"] for c in in_column) and max(c["x1"] for c in in_column) < rules[1]


def test_the_cut_fonts_files_go_with_their_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut fonts are written for each document into a temporary folder, removed once it is written (or not)."""
    import tempfile

    from bat_analysis.report import _pdf

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    added = _fonts_added(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    _write(out, [])
    assert added and all(Path(f).parent.parent == tmp_path / "tmp" for f in added[-1])
    monkeypatch.setattr(_pdf, "_tables", lambda *a: (_ for _ in ()).throw(RuntimeError("layout failed")))
    with pytest.raises(RuntimeError):
        _write(out, [])
    assert list((tmp_path / "tmp").iterdir()) == []


def test_without_a_temporary_folder_the_whole_fonts_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No temporary folder for the cut fonts (none writable, or full): the report is written all the same, with
    the whole font files, and a warning says why."""
    import errno
    import tempfile

    from bat_analysis.report._pdf import _font_file

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", full)
    added = _fonts_added(monkeypatch)
    with pytest.warns(RuntimeWarning, match="whole font files.*No space left on device"):
        path = _write(tmp_path, [])
    assert added[-1] == [_font_file(False), _font_file(True)]
    assert "BAT report — patient P01" in _text_of(path)
