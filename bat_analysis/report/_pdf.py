"""Per-patient PDF report (``reports/<patient>.pdf``), laid out for A4 print with fpdf2.

Page 1 is the summary (identity, run, class with its reason, metrics, the dose-response curves: the HTML report's
images, ``PatientView.curves``), then the tables of tubes and QC, the flags in plain words and the audit trail,
then the gating pages: every tube's gates and activation-marker histogram, two plots across, each with the texts
its marks print (``Png.texts``: counts, method notes, percentages, legend entries) as small text under it.
Table cells and lines wrap, measured with the embedded font's own advances (DejaVu Sans, matplotlib's); nothing
is cut. Flags are grouped by severity and code (``views.flag_groups``).

The text font is DejaVu Sans (regular and bold), embedded as fpdf2 embeds a TrueType font: cut to the glyphs the
document uses. fpdf2 parses the font files it is given for every document: the whole DejaVu files (~6,000 glyphs
each) took ~60 ms of the ~82 ms of CPU a 14-tube patient's PDF took. So a document is written with *cut fonts*
when they hold every character it writes: DejaVu Sans and Sans Bold cut once per process (:func:`_cut_fonts`,
fontTools' subsetter, ~50 ms; outlines, hinting, advances and names kept) to ``_CUT_CHARS``: ASCII, Latin-1,
Latin Extended-A, Greek, general punctuation (the thin space of the plots' counts, dashes, quotes), super- and
subscripts, Windows-1252's punctuation and the symbols the reports write (≥ ≤ − × µ → ...), ~600 characters. The
same patient's PDF then takes ~44 ms, the first of a process ~116 ms instead of ~136 ms, and it is the same
document, byte for byte but for its date and ID (fpdf2 cuts either font to the same glyphs). A document with a
character the cut fonts lack (a patient ID or a reviewer's reason in Cyrillic, Armenian, an emoji) is laid out
again with the whole font files, decided once for the whole document (:func:`_pdf_bytes`): never a document
half in one font program, half in another. Text is measured (:func:`_text_width_pt`) with the cut fonts when
they hold the text, else with the whole fonts: the advances are the same. fpdf2 reads fonts from files: the cut
fonts are written into a temporary folder for each document and removed with it (:func:`_font_files`; where no
temporary folder can hold them, the whole font files serve, with a warning).
The PDF standard fonts (Helvetica: no parsing, embedding nor cutting, ~21 ms a document) were measured and not
taken: they hold Windows-1252 only, and every report writes characters outside it (the thin space of a plot's
counts, "≥" of a responder's class reason, "ε" of anti-FcεRI), so no real report could be written with them.

All text (patient, allergen and file names, reasons) is written literally: fpdf2 places strings as they are
(no mathtext, no markup; its page-count alias ``{nb}`` is switched off), with control characters shown as
escapes (``textsafe.visible``; a line feed in a table cell would otherwise shift every row below it), and so
are characters DejaVu Sans has no glyph for (CJK ideographs, most emoji), which fpdf2 would leave out of the line
(:func:`_shown`): nothing of a patient ID or a reason is lost.

The plots are embedded as they are: an 8-bit, non-interlaced RGB (PNG colour type 2) or palette (type 3, its
PLTE as an ``/Indexed /DeviceRGB`` lookup) PNG without transparency or colour profile is written with its own
IDAT data as the image stream (Flate with PNG predictors), never decoded nor compressed again
(:func:`_png_image`, handed to fpdf2 through its image cache, ``FPDF.image_cache``). Any other PNG is given to
fpdf2 as bytes, which decodes it with Pillow and encodes it again.
The document is built in memory and written atomically (``atomic_open``).
"""

from __future__ import annotations

import functools
import math
import re
import struct
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from fpdf import FPDF
from fpdf.image_datastructures import RasterImageInfo

from .._fileio import atomic_open
from .._textsafe import in_font, visible
from ._views import (PATIENT_COLUMNS, QC_HEADERS, TUBE_COLUMNS, PatientView, RunView, TubeView,
                     concentration_unit, flag_groups, fmt_value, present_columns, qc_rows, tube_table_note)

A4 = (8.27, 11.69)
MARGIN = 0.55  # inches
LINE = 0.18  # inches per line of 8-pt text
SUMMARY_CHARS = 600  # QC reasons on the summary page are cut here; the Flags section lists them all
STATUS_COLOURS = {"pass": "#2e7d32", "warn": "#ef8f00", "fail": "#c62828"}
CELL_PAD = 0.03  # inches between a cell's rules and its text
IMAGES_PER_ROW = 2  # gating plots per row of a page: 3.6 in wide, their type at its size (tick labels 8 pt)
PLOT_TEXT_SIZE = 6.0  # points: the texts of a plot's marks, under it
CURVE_WIDTH = 5.2  # inches: a dose-response curve on the summary page
FONT = "DejaVu"
_FONT_FILES = {False: "DejaVuSans.ttf", True: "DejaVuSans-Bold.ttf"}  # matplotlib's, as the plots use
# The characters the cut fonts are cut to (those of them DejaVu Sans has): ASCII, Latin-1, Latin Extended-A,
# Greek, general punctuation (thin space, dashes, quotes), super- and subscripts, Windows-1252's punctuation, and
# the symbols the reports and the names of units and markers write
_CUT_CHARS = ("".join(chr(c) for c in (*range(0x20, 0x7F), *range(0xA0, 0x180), *range(0x370, 0x400),
                                       *range(0x2000, 0x20A0)))
              + bytes(range(0x80, 0xA0)).decode("cp1252", "ignore") + "−±×÷≤≥≈≠√∞∆∑µ←↑→↓↔⇒ℓ℃№™")


def _font_file(bold: bool) -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / _FONT_FILES[bold])


@functools.cache
def _cut_fonts() -> tuple[tuple[bytes, bytes], frozenset[str]]:
    """DejaVu Sans and Sans Bold cut to ``_CUT_CHARS`` as TrueType data (regular, bold), and the characters both
    hold. fontTools' subsetter keeps the glyphs' outlines, hinting and advances, and copies the glyphs as they
    are (their bounds, which do not change, are not computed again: that took half the time); the OpenType layout
    tables, which fpdf2 drops when it embeds a font, are dropped here already (cutting them took 4/5 of it)."""
    import io

    from fontTools import subset
    from fontTools.ttLib import TTFont

    data, held = [], []
    for bold in (False, True):
        options = subset.Options(notdef_outline=True, recommended_glyphs=True, name_IDs=["*"],
                                 name_languages=["*"], glyph_names=True)
        options.drop_tables += ["FFTM", "GDEF", "GPOS", "GSUB", "MATH", "hdmx", "meta"]
        font = TTFont(_font_file(bold), lazy=True, recalcBBoxes=False, recalcTimestamp=False)
        cutter = subset.Subsetter(options)
        cutter.populate(unicodes=[ord(c) for c in _CUT_CHARS])
        cutter.subset(font)
        held.append({chr(c) for c in font.getBestCmap()})
        out = io.BytesIO()
        font.save(out)
        font.close()
        data.append(out.getvalue())
    return (data[0], data[1]), frozenset(held[0] & held[1])


def _held() -> frozenset[str]:
    """The characters the cut fonts hold."""
    return _cut_fonts()[1]


@functools.cache
def _whole_held() -> frozenset[str]:
    """The characters both whole DejaVu fonts hold (read once per process, only for text the cut fonts lack)."""
    from fontTools.ttLib import TTFont

    sets = []
    for bold in (False, True):
        font = TTFont(_font_file(bold), lazy=True)
        try:
            sets.append({chr(c) for c in font.getBestCmap()})
        finally:
            font.close()
    return frozenset(sets[0] & sets[1])


def _shown(text: str) -> str:
    """``text`` as the PDF writes it: control characters as escapes (``textsafe.visible``), and so is a character
    the text font has no glyph for (CJK ideographs, most emoji: fpdf2 would leave it out of the line, and a
    patient ID would lose letters), as ``\\uNNNN``."""
    text = visible(text)
    return text if _held().issuperset(text) else in_font(text, _whole_held())


@contextmanager
def _font_files(whole: bool) -> Iterator[dict[bool, str]]:
    """The text font's files (regular, bold) for one document: matplotlib's DejaVu Sans files (``whole``), or the
    cut fonts (:func:`_cut_fonts`) written to a temporary folder that is removed when the document is done (the
    whole files, with a warning, when no temporary folder can hold them: the same document, only slower)."""
    folder = None if whole else _cut_font_folder()
    if folder is None:
        yield {bold: _font_file(bold) for bold in (False, True)}
        return
    with folder:
        yield {bold: str(Path(folder.name) / _FONT_FILES[bold]) for bold in (False, True)}


def _cut_font_folder() -> tempfile.TemporaryDirectory[str] | None:
    """A new temporary folder holding the cut fonts; None (and a warning) when none can be written."""
    try:
        folder = tempfile.TemporaryDirectory(prefix="bat-pdf-fonts-")
    except OSError as exc:
        problem: OSError = exc
    else:
        try:
            for bold, data in zip((False, True), _cut_fonts()[0]):
                (Path(folder.name) / _FONT_FILES[bold]).write_bytes(data)
            return folder
        except OSError as exc:
            folder.cleanup()
            problem = exc
    warnings.warn(f"the PDF reports are written with the whole font files, more slowly: no temporary folder could "
                  f"hold the cut ones ({problem})", RuntimeWarning, stacklevel=2)
    return None


def _document(title: str, fonts: dict[bool, str]) -> FPDF:
    """An empty A4 document in points with the text font (regular and bold, from the ``fonts`` files), literal
    text, absolute layout."""
    pdf = FPDF(unit="pt", format=(A4[0] * 72.0, A4[1] * 72.0))
    pdf.set_auto_page_break(False)
    pdf.alias_nb_pages(None)  # "{nb}" in a patient ID is text, not the page count
    for bold in (False, True):
        pdf.add_font(FONT, "B" if bold else "", fonts[bold])
    pdf.set_title(title)
    pdf.set_creator("bat_analysis")
    pdf.set_subject("Basophil activation test")
    return pdf


@functools.cache
def _rgb255(colour: str) -> tuple[int, int, int]:
    """A matplotlib colour ("0.3", "#2e7d32", "black") as 0-255 RGB."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return round(r * 255), round(g * 255), round(b * 255)


class _NotHeld(Exception):
    """A line has a character the document's fonts (the cut fonts) do not hold."""


class _Flow:
    """Top-to-bottom layout of text, tables and plots over A4 pages (inches from the top margin). ``held``: the
    characters the document's fonts hold (a line with another raises :class:`_NotHeld`), None for all."""

    def __init__(self, pdf: Any, footer: str, held: frozenset[str] | None = None) -> None:
        self.pdf = pdf
        self.held = held
        room = (A4[0] - 2 * MARGIN) * 72.0 - _text_width_pt(" — page 9999", 7.0)
        self.footer = _first_line(_shown(footer), room, 7.0)  # a long patient ID is cut here, not off the page
        self.open = False
        self.y = 0.0
        self.page = 0
        self._style: tuple[bool, float] | None = None
        self._colour: str | None = None

    @property
    def room(self) -> float:
        return A4[1] - 2 * MARGIN - self.y

    def new_page(self) -> None:
        self.finish_page()
        self.pdf.add_page()
        self.open = True
        self.y = 0.0
        self.page += 1

    def finish_page(self) -> None:
        if self.open:
            footer = f"{self.footer} — page {self.page}"
            x = (A4[0] * 72.0 - _text_width_pt(footer, 7.0)) / 2
            self.put(x / 72.0, A4[1] - 0.25, footer, 7.0, colour="0.4")
            self.open = False

    def ensure(self, height: float) -> None:
        if not self.open or height > self.room:
            self.new_page()

    def put(self, x: float, baseline: float, line: str, size: float, *, bold: bool = False,
            colour: str = "black") -> None:
        """One line of text at ``x``, ``baseline`` (inches from the page's top-left corner), as it is."""
        if self.held is not None and not self.held.issuperset(line):
            raise _NotHeld(line)
        if self._style != (bold, size):
            self.pdf.set_font(FONT, "B" if bold else "", size)
            self._style = (bold, size)
        if self._colour != colour:
            self.pdf.set_text_color(*_rgb255(colour))
            self._colour = colour
        self.pdf.text(x * 72.0, baseline * 72.0, line)

    def text(self, text: str, *, size: float = 8.0, weight: str = "normal", colour: str = "black",
             indent: float = 0.0) -> None:
        """Text wrapped to the page's width (at spaces; inside a word only when it alone is wider)."""
        bold = weight == "bold"
        room = (A4[0] - 2 * MARGIN - indent) * 72.0
        lines = [line for para in str(text).split("\n") for line in _wrap(_shown(para), room, size, bold, _WORDS)]
        step = LINE * size / 8.0
        for line in lines:
            self.ensure(step)
            if line:
                self.put(MARGIN + indent, MARGIN + self.y + step * 0.8, line, size, bold=bold, colour=colour)
            self.y += step

    def gap(self, inches: float = 0.12) -> None:
        self.y += inches

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, size: float = 6.5,
              col_widths: Sequence[float] | None = None, status_col: int | None = None) -> None:
        """A table split over pages as needed; the header row repeats on each page. A cell longer than its
        column wraps onto more lines (at spaces, underscores, dots, hyphens, slashes; inside a word only when
        one word is wider than the column): nothing is cut. Lines fall on the font's line pitch
        (:func:`_line_metrics_em`), a row as tall as its tallest cell."""
        ascent, descent, gap = _line_metrics_em()
        line_h = (ascent + descent + gap) * size / 72.0
        width = A4[0] - 2 * MARGIN
        fracs = list(col_widths) if col_widths else [1.0 / len(headers)] * len(headers)
        lefts = [0.0]
        for f in fracs:
            lefts.append(lefts[-1] + f * width)
        room = [(lefts[c + 1] - lefts[c] - 2 * CELL_PAD) * 72.0 for c in range(len(headers))]  # points
        head = [_wrap(_shown(str(h)), room[c], size, bold=True) for c, h in enumerate(headers)]
        body = [[_wrap(_shown(fmt_value(v)), room[c], size) for c, v in enumerate(r)] for r in rows]
        head_h = max(len(cell) for cell in head) * line_h
        i = 0
        while i < len(body) or (i == 0 and not body):
            self.ensure(head_h + line_h * (max(len(c) for c in body[i]) if body else 1))
            n, used = 0, head_h
            while i + n < len(body):
                h = max(len(c) for c in body[i + n]) * line_h
                if n and used + h > self.room:
                    break
                used += h
                n += 1
            self._table_chunk(head, body[i:i + n], lefts, line_h, size, status_col)
            self.y += used + 0.1
            i += max(n, 1)
            if not body:
                break

    def _table_chunk(self, head: Sequence[list[str]], chunk: Sequence[Sequence[list[str]]], lefts: Sequence[float],
                     line_h: float, size: float, status_col: int | None) -> None:
        """The header row (shaded) and ``chunk``'s rows at the flow's position, with their rules."""
        ascent, _, gap = _line_metrics_em()
        pdf, top = self.pdf, MARGIN + self.y
        heights = [max(len(cell) for cell in head)] + [max(len(cell) for cell in row) for row in chunk]  # lines
        tops = [top]
        for h in heights:
            tops.append(tops[-1] + h * line_h)
        xs = [MARGIN + x for x in lefts]
        pdf.set_fill_color(237)
        pdf.rect(xs[0] * 72.0, tops[0] * 72.0, (xs[-1] - xs[0]) * 72.0, (tops[1] - tops[0]) * 72.0, style="F")
        pdf.set_draw_color(179)
        pdf.set_line_width(0.3)
        for y in tops:
            pdf.line(xs[0] * 72.0, y * 72.0, xs[-1] * 72.0, y * 72.0)
        for x in xs:
            pdf.line(x * 72.0, tops[0] * 72.0, x * 72.0, tops[-1] * 72.0)
        first = (ascent + gap / 2) * size / 72.0  # the first baseline below a row's top rule
        for c, header in enumerate(head):
            x = xs[c] + CELL_PAD
            for k, line in enumerate(header):
                self.put(x, tops[0] + first + k * line_h, line, size, bold=True)
            for r, row in enumerate(chunk, 1):
                colour = (STATUS_COLOURS.get(row[c][0] if row[c] else "", "black") if c == status_col
                          else "black")
                for k, line in enumerate(row[c]):
                    if line:
                        self.put(x, tops[r] + first + k * line_h, line, size, colour=colour)

    def image(self, png: Any, left: float, top: float, width: float, height: float) -> None:
        """A report PNG (``Png``) over a box in inches from the page's top-left corner: its own data embedded
        when it is an 8-bit RGB or palette PNG (:func:`_png_image`), else decoded and encoded by fpdf2."""
        info = _png_image(png.data)
        if info is None:
            source: Any = png.data
        else:
            cache = self.pdf.image_cache.images
            source = f"\0bat-png-{len(cache) + 1}"  # a key no file can have: never read from disk
            info.update(i=len(cache) + 1, usages=0, iccp_i=None)
            cache[source] = info
        self.pdf.image(source, x=left * 72.0, y=top * 72.0, w=width * 72.0, h=height * 72.0)


@functools.cache
def _measure(whole: bool) -> FPDF:
    """A document used only to measure text with the fonts the reports embed, the whole or the cut ones (their
    advances are read when the fonts are added: the font files are closed then)."""
    with _font_files(whole) as files:
        pdf = _document("", files)
        _close_fonts(pdf)
    return pdf


def _close_fonts(pdf: Any) -> None:
    """Close the font files a document holds open (fpdf2 closes them itself once the document is output)."""
    for font in pdf.fonts.values():
        close = getattr(font, "close", None)
        if callable(close):
            close()


@functools.lru_cache(maxsize=8192)
def _text_width_pt(text: str, size: float, bold: bool = False) -> float:
    """Width of one line of text in points: the embedded font's advances, as the PDF lays the line out (read
    from the cut fonts when they hold the text, else from the whole fonts: the same advances)."""
    pdf = _measure(not _held().issuperset(text))
    pdf.set_font(FONT, "B" if bold else "", size)
    return float(pdf.get_string_width(text))


_BREAK = re.compile(r"[^\s_./\-]*(?:[\s_./\-]+|$)")  # table cells: a part and the separators after it
_WORDS = re.compile(r"\S*(?:\s+|$)")  # running text: a word and the spaces after it


def _wrap(text: str, room_pt: float, size: float, bold: bool = False,
          breaks: re.Pattern[str] = _BREAK) -> list[str]:
    """``text`` as lines no wider than ``room_pt`` points: broken after the parts ``breaks`` finds (spaces,
    ``_ . / -``) where possible, inside a part only when it alone is wider than the room. Line feeds in
    ``text`` are kept."""
    out: list[str] = []
    cap = max(1, int(room_pt / (0.2 * size)) + 1)  # most characters a line can hold (no glyph is below 0.2 em)
    for para in text.split("\n"):
        if _text_width_pt(para, size, bold) <= room_pt:
            out.append(para)
            continue
        line = ""
        for token in (t for t in breaks.findall(para) if t):
            if _text_width_pt((line + token).rstrip(), size, bold) <= room_pt:
                line += token
                continue
            if line.strip():
                out.append(line.rstrip())
            line = token.lstrip() if line.strip() else token
            while len(line) > 1 and (len(line) > cap or _text_width_pt(line.rstrip(), size, bold) > room_pt):
                # one long word: its longest prefix that fits (at least one character), by bisection
                lo, hi = 1, min(len(line) - 1, cap)
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if _text_width_pt(line[:mid], size, bold) <= room_pt else (lo, mid - 1)
                out.append(line[:lo])
                line = line[lo:]
        out.append(line.rstrip())
    return out or [""]


def _first_line(text: str, room_pt: float, size: float) -> str:
    """``text`` on one line: as it is when it fits, else its first wrapped line and "…" (a page footer)."""
    if _text_width_pt(text, size) <= room_pt:
        return text
    return _wrap(text, room_pt - _text_width_pt("…", size), size)[0] + "…"


@functools.cache
def _line_metrics_em() -> tuple[float, float, float]:
    """Ascender, descender and line gap of the text font, in font sizes (its OS/2 typographic metrics): a
    table's lines are stepped by their sum, the first baseline ascender + gap/2 below the row's top."""
    from matplotlib.ft2font import FT2Font

    font = FT2Font(_font_file(False))
    os2 = font.get_sfnt_table("OS/2")
    em = float(font.get_sfnt_table("head")["unitsPerEm"])
    if os2 is not None:
        return os2["sTypoAscender"] / em, -os2["sTypoDescender"] / em, os2["sTypoLineGap"] / em
    hhea = font.get_sfnt_table("hhea")
    return hhea["ascent"] / em, -hhea["descent"] / em, hhea["lineGap"] / em


def _widths(headers: Sequence[str], rows: Sequence[Sequence[Any]], size: float) -> list[float]:
    """Column widths (fractions of the text width): each column at least as wide as its widest unbreakable part
    (a header's longest word, a cell's longest part between ``_ . / -`` and spaces), the rest of the page shared
    in proportion to what each column would need to show its cells on one line. Longer cells wrap."""
    room = (A4[0] - 2 * MARGIN - 2 * CELL_PAD * len(headers)) * 72.0
    least, full = [], []
    for i, h in enumerate(headers):
        cells = [_shown(fmt_value(r[i])) for r in rows]
        parts = [p for c in cells for p in _BREAK.findall(c) if p.strip()]
        least.append(max([_text_width_pt(w, size, True) for w in str(h).split()]
                         + [_text_width_pt(p.rstrip(), size) for p in parts] + [6.0]) + 0.5)  # + rounding
        full.append(max([_text_width_pt(c, size) for c in cells] + [least[-1]]))
    spare = room - sum(least)
    extra = [f - m for f, m in zip(full, least)]
    if spare <= 0 or not sum(extra):
        widths = [m * room / sum(least) for m in least] if spare <= 0 else [m + spare / len(least) for m in least]
    elif sum(extra) <= spare:  # everything fits on one line: share what is left evenly
        widths = [f + (spare - sum(extra)) / len(full) for f in full]
    else:
        widths = [m + spare * e / sum(extra) for m, e in zip(least, extra)]
    pads = 2 * CELL_PAD * 72.0
    total = sum(widths) + pads * len(widths)
    return [(w + pads) / total for w in widths]


def _summary(flow: _Flow, view: PatientView, run: RunView) -> None:
    flow.new_page()
    flow.text(f"BAT report — patient {view.patient}", size=15, weight="bold")
    flow.gap(0.05)
    flow.text(run.one_line() + f" · {len(view.tubes)} tubes · allergens: {', '.join(view.allergens) or 'none'}",
              size=8, colour="0.3")
    if run.get("command"):
        flow.text(f"command: {run.get('command')}", size=7, colour="0.3")
    flow.gap()
    flow.text("Result", size=11, weight="bold")
    if not view.patient_rows:
        flow.text("No allergen series scored for this patient.")
    for r in view.patient_rows:
        cls = str(r.get("class") or "not_evaluable")
        flow.text(f"{r.get('allergen', '')}: {cls.replace('_', ' ').upper()}", size=10, weight="bold",
                  colour={"responder": "#2e7d32", "partial_responder": "#b26a00",
                          "non_responder": "#c62828"}.get(cls, "0.3"))
        if run.inhibition_text(r):
            flow.text(run.inhibition_text(r).lstrip(" ·"), size=8, indent=0.15)
        flow.text(f"reason: {fmt_value(r.get('class_reason'))}", size=8, indent=0.15)
        if r.get("qc_reasons"):
            text = str(r["qc_reasons"])
            if len(text) > SUMMARY_CHARS:
                text = text[:SUMMARY_CHARS].rsplit(" ", 1)[0] + " … (every finding is listed under Flags)"
            flow.text(f"QC {r.get('qc_status') or ''}: {text}", size=7, indent=0.15, colour="0.35")
    flow.gap()
    if view.patient_rows:
        cols = [c for c in present_columns(view.patient_rows, PATIENT_COLUMNS) if c not in ("allergen",)]
        allergens = [str(r.get("allergen", "")) for r in view.patient_rows]
        unit = concentration_unit(view.tubes)
        rows = [[run.label(c, unit)] + [r.get(c) for r in view.patient_rows] for c in cols]
        headers = ["metric"] + allergens
        flow.table(headers, rows, size=7.5, col_widths=_widths(headers, rows, 7.5))
        flow.text("EC50 in the layout's concentration unit; empty when not estimable. CD-sens = 100/EC50; "
                  f"AUC of net %{run.marker}+ over log10 concentration.", size=6.5, colour="0.35")
    if view.curves:  # the HTML report's images of the fits, one per allergen (both arms)
        flow.gap()
        h = CURVE_WIDTH * view.curves[0].height / view.curves[0].width
        flow.ensure(0.3 + h)  # keep the heading with its first plot
        flow.text(f"Dose–response (%{run.marker}+ of {run.population}; both arms)", size=11, weight="bold")
    for png in view.curves:
        h = CURVE_WIDTH * png.height / png.width
        flow.ensure(h)
        flow.image(png, MARGIN + (A4[0] - 2 * MARGIN - CURVE_WIDTH) / 2, MARGIN + flow.y, CURVE_WIDTH, h)
        flow.y += h + 0.1
    for note in view.fit_notes:
        flow.text(note, size=7)


def _tables(flow: _Flow, view: PatientView, run: RunView) -> None:
    flow.new_page()
    flow.text("Metrics per tube", size=11, weight="bold")
    cols = present_columns(view.tube_rows, TUBE_COLUMNS)
    headers = [run.label(c, concentration_unit(view.tubes)) for c in cols]
    rows = [[r.get(c) for c in cols] for r in view.tube_rows]
    flow.table(headers, rows, col_widths=_widths(headers, rows, 6.5), size=6.5,
               status_col=cols.index("qc_status") if "qc_status" in cols else None)
    flow.text(tube_table_note(run.marker), size=6.5, colour="0.35")
    flow.gap()
    flow.text("Quality control", size=11, weight="bold")
    qc_table = qc_rows(view.tubes)
    headers = [run.label(h) for h in QC_HEADERS]
    flow.table(headers, qc_table, col_widths=_widths(headers, qc_table, 6.5), size=6.5, status_col=9)
    flow.gap()
    flow.text("Flags", size=11, weight="bold")
    groups = flag_groups(view.tubes, view.patient_flags)
    if not groups:
        flow.text("No flags.")
    else:
        flow.text("Failures first, then warnings; the same finding on several tubes is listed once with its tubes.",
                  size=7, colour="0.35")
    for g in groups:  # failures, then warnings, then information
        flow.text(f"[{g.severity}] {g.heading()}", size=8, weight="bold",
                  colour=STATUS_COLOURS.get(g.severity, "black"))
        for where, what in g.lines():
            flow.text(f"{where}: {what}", size=7, indent=0.15)
    flow.gap()
    flow.text("Audit trail", size=11, weight="bold")
    for key, value in run.audit_items(view):
        if isinstance(value, dict):
            flow.text(f"{key}:", size=7.5, weight="bold")
            for k, v in value.items():
                flow.text(f"{k}  {fmt_value(v)}", size=6.5, indent=0.15)
        elif isinstance(value, list):
            flow.text(f"{key}:", size=7.5, weight="bold")
            for item in value:
                text = "; ".join(f"{k}: {fmt_value(v)}" for k, v in item.items() if v not in (None, ""))
                flow.text(text, size=6.5, indent=0.15)
        else:
            flow.text(f"{key}: {fmt_value(value)}", size=7.5)


def _plot_texts(png: Any, width: float) -> list[str]:
    """The texts a plot's marks print (``Png.texts``), as lines no wider than ``width`` inches."""
    room = (width - 2 * CELL_PAD) * 72.0
    return [line for text in png.texts for para in str(text).split("\n")
            for line in _wrap(_shown(para), room, PLOT_TEXT_SIZE)]


def _tube_block(flow: _Flow, tube: TubeView, ncols: int = IMAGES_PER_ROW) -> None:
    """A tube's heading (file, condition, QC), its first flags and manual adjustments, then its plots in rows
    of ``ncols``, each plot's texts under it."""
    t = tube.result.tube
    desc = [t.condition.replace("_", " ")]
    if t.allergen:
        desc.append(t.allergen)
    if t.concentration is not None and math.isfinite(float(t.concentration)):
        desc.append(f"{t.concentration:g} {t.unit or ''}".strip())
    desc.append(f"arm {t.pretreatment}")
    images = tube.images
    img_w = (A4[0] - 2 * MARGIN) / ncols
    img_h = img_w * (images[0].height / images[0].width) if images else 0.0
    step = LINE * PLOT_TEXT_SIZE / 8.0
    rows = [[(png, _plot_texts(png, img_w)) for png in images[i:i + ncols]] for i in range(0, len(images), ncols)]
    heights = [img_h + max(len(lines) for _, lines in row) * step + 0.05 for row in rows]
    notes = [f"{f.code}: {f.message}" for f in tube.flags][:3]
    notes += [f"gate {g} manually adjusted{': ' + r if r else ''}" for g, r in tube.adjusted.items()]
    flow.ensure(0.3 + LINE * len(notes) + sum(heights))
    flow.text(f"{t.file} — {', '.join(desc)} — QC {tube.qc_status}", size=8.5, weight="bold",
              colour=STATUS_COLOURS.get(tube.qc_status, "black"))
    for note in notes:
        flow.text(note, size=6.5, colour="0.3", indent=0.1)
    for row, height in zip(rows, heights):
        flow.ensure(height)
        y0 = MARGIN + flow.y
        for col, (png, lines) in enumerate(row):
            x0 = MARGIN + col * img_w
            flow.image(png, x0, y0, img_w, img_h)
            for k, line in enumerate(lines):
                if line:
                    flow.put(x0 + CELL_PAD, y0 + img_h + (k + 0.8) * step, line, PLOT_TEXT_SIZE, colour="0.25")
        flow.y += height
    flow.gap(0.1)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_image(png: bytes) -> dict[str, Any] | None:
    """fpdf2's description of an image (its ``RasterImageInfo``) whose stream is the PNG's own IDAT data, for
    an 8-bit, non-interlaced RGB or palette PNG with neither transparency (tRNS) nor colour profile (iCCP,
    sRGB, gAMA, cHRM); None for any other PNG (or not a well-formed one), which fpdf2 then decodes itself."""
    if png[:8] != _PNG_SIGNATURE:
        return None
    pos, idat, plte, header = 8, [], None, None
    while pos + 12 <= len(png):
        length, kind = struct.unpack(">L4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if len(data) != length:
            return None
        if kind == b"IHDR":
            if length != 13:
                return None
            header = struct.unpack(">LLBBBBB", data)
        elif kind == b"PLTE":
            plte = data
        elif kind == b"IDAT":
            idat.append(data)
        elif kind in (b"tRNS", b"iCCP", b"sRGB", b"gAMA", b"cHRM"):
            return None
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        return None
    width, height, depth, colour_type, compression, filtering, interlace = header
    if depth != 8 or compression or filtering or interlace or colour_type not in (2, 3):
        return None
    info = RasterImageInfo(data=b"".join(idat), w=width, h=height, bpc=8, f="FlateDecode", iccp=None,
                           inverted=False)
    if colour_type == 2:
        info.update(cs="DeviceRGB", dpn=3, dp=f"/Predictor 10 /Colors 3 /Columns {width}")
    elif plte is not None and 3 <= len(plte) <= 768 and len(plte) % 3 == 0:
        info.update(cs="Indexed", dpn=1, pal=plte, dp=f"/Predictor 10 /Colors 1 /Columns {width}")
    else:
        return None
    return info


def _idat(png: bytes) -> bytes | None:
    """The compressed pixel stream (IDAT chunks) a PNG is embedded with, None when it is decoded instead."""
    info = _png_image(png)
    return None if info is None else info["data"]


def write_patient_pdf(path: Path, view: PatientView, run: RunView) -> Path:
    """Write the patient's PDF (summary, tables, flags, audit trail, gating pages) atomically: laid out in
    memory while the temporary file waits beside ``path`` (a failure of either is reported as one to write
    ``path``, and leaves the previous file)."""
    title = visible(f"BAT report — patient {view.patient}")
    with atomic_open(path, "wb") as fh:
        fh.write(_pdf_bytes(title, view, run))
    return Path(path)


def _pdf_bytes(title: str, view: PatientView, run: RunView) -> bytes:
    """The patient's document: with the cut fonts when they hold every character it writes, else laid out again
    with the whole fonts (decided once for the whole document)."""
    try:
        return _with_fonts(title, view, run, whole=False)
    except _NotHeld:
        return _with_fonts(title, view, run, whole=True)


def _with_fonts(title: str, view: PatientView, run: RunView, *, whole: bool) -> bytes:
    """The patient's document with the whole fonts, or the cut ones (:class:`_NotHeld` for a character they
    lack); the font files are closed (and the cut ones removed) when it is done, or fails."""
    with _font_files(whole) as files:
        pdf = _document(title, files)
        try:
            _layout(pdf, title, view, run, None if whole else _held())
            return bytes(pdf.output())
        finally:
            _close_fonts(pdf)


def _layout(pdf: Any, title: str, view: PatientView, run: RunView, held: frozenset[str] | None = None) -> None:
    """The patient's pages, in order, into ``pdf`` (``held``: as :class:`_Flow` takes it)."""
    flow = _Flow(pdf, title, held)
    _summary(flow, view, run)
    _tables(flow, view, run)
    flow.new_page()
    flow.text("Gating, tube by tube", size=11, weight="bold")
    flow.text("Each plot is the parent population's density with the gate drawn on it (orange dashed: "
              f"manually adjusted); the last plot of a tube is its {run.marker} histogram with the threshold "
              "and the negative control overlaid. Under each plot, what its marks say (counts, methods, "
              "percentages, legend).", size=7, colour="0.3")
    flow.gap(0.1)
    for tube in view.tubes:
        if tube.images:
            _tube_block(flow, tube)
    flow.finish_page()


__all__ = ["write_patient_pdf"]
