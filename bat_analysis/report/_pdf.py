"""Per-patient PDF report (``reports/<patient>.pdf``), laid out for A4 print with matplotlib's PdfPages.

Page 1 is the summary (identity, run, class with its reason, metrics, dose-response curves drawn as
vectors), then the tables of tubes and QC, the flags in plain words and the audit trail, then the gating
pages: every tube's gates and activation-marker histogram, two plots across (the report's PNGs, embedded as they
are: their own compressed data is the PDF's image stream). Table cells wrap, measured with the font's advances;
flags are grouped by severity and code (``views.flag_groups``).
All text (patient, allergen and file names, reasons) is drawn literally, never as mathtext
(:func:`~bat_analysis.report.plots.literal_text`), with control characters shown as escapes
(``textsafe.visible``; a line feed in a table cell would otherwise shift every row below it).
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

from matplotlib.artist import Artist  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from .._fileio import atomic_path  # noqa: E402
from .._textsafe import visible  # noqa: E402
from .plots import draw_dose_response, literal_text  # noqa: E402
from ._views import (PATIENT_COLUMNS, QC_HEADERS, TUBE_COLUMNS, PatientView, RunView, TubeView,  # noqa: E402
                    concentration_unit, flag_groups, fmt_value, point_intervals, present_columns, qc_rows,
                    tube_table_note)

A4 = (8.27, 11.69)
MARGIN = 0.55  # inches
LINE = 0.18  # inches per line of 8-pt text
SUMMARY_CHARS = 600  # QC reasons on the summary page are cut here; the Flags section lists them all
STATUS_COLOURS = {"pass": "#2e7d32", "warn": "#ef8f00", "fail": "#c62828"}
CELL_PAD = 0.03  # inches between a cell's rules and its text
IMAGES_PER_ROW = 2  # gating plots per row of a page: 3.6 in wide, their type at its size (tick labels 8 pt)


class _Flow:
    """Top-to-bottom layout of text, tables and plots over A4 pages (inches from the top margin)."""

    def __init__(self, pdf: PdfPages, footer: str) -> None:
        self.pdf = pdf
        self.embedded = _EmbeddedPngs(pdf)
        self.footer = visible(footer)
        self.fig: Figure | None = None
        self._canvas: Any = None
        self.y = 0.0
        self.page = 0

    @property
    def room(self) -> float:
        return A4[1] - 2 * MARGIN - self.y

    def new_page(self) -> None:
        self.finish_page()
        self.fig = Figure(figsize=A4)
        self._canvas = None
        self.y = 0.0
        self.page += 1

    def finish_page(self) -> None:
        if self.fig is not None:
            self.fig.text(0.5, 0.25 / A4[1], f"{self.footer} — page {self.page}", ha="center", fontsize=7,
                          color="0.4")
            self.pdf.savefig(self.fig)
            self.fig = None

    def ensure(self, height: float) -> None:
        if self.fig is None or height > self.room:
            self.new_page()

    def _fy(self, inches_from_top: float) -> float:
        return 1.0 - (MARGIN + inches_from_top) / A4[1]

    def text(self, text: str, *, size: float = 8.0, weight: str = "normal", colour: str = "black",
             width: int = 110, indent: float = 0.0) -> None:
        lines = []
        for para in str(text).split("\n"):
            lines += textwrap.wrap(visible(para), width) or [""]
        step = LINE * size / 8.0
        for line in lines:
            self.ensure(step)
            assert self.fig is not None
            self.fig.text((MARGIN + indent) / A4[0], self._fy(self.y + step * 0.8), line, fontsize=size,
                          fontweight=weight, color=colour, va="baseline")
            self.y += step

    def gap(self, inches: float = 0.12) -> None:
        self.y += inches

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, size: float = 6.5,
              col_widths: Sequence[float] | None = None, status_col: int | None = None) -> None:
        """A table split over pages as needed; the header row repeats on each page. A cell longer than its
        column wraps onto more lines (at spaces, underscores, dots, hyphens, slashes; inside a word only when
        one word is wider than the column): nothing is cut.

        Drawn as one multi-line text per column (lines on the font's line pitch, see :func:`_line_metrics_em`,
        a row as tall as its tallest cell) plus one collection of rules: a few text objects per table instead
        of one per cell, which is what made matplotlib's own ``Axes.table`` slow to lay out and write."""
        ascent, descent, gap = _line_metrics_em()
        line_h = (ascent + descent + gap) * size / 72.0
        width = A4[0] - 2 * MARGIN
        fracs = list(col_widths) if col_widths else [1.0 / len(headers)] * len(headers)
        lefts = np.concatenate([[0.0], np.cumsum(fracs)]) * width
        room = [(lefts[c + 1] - lefts[c] - 2 * CELL_PAD) * 72.0 for c in range(len(headers))]  # points
        head = [_wrap(visible(str(h)), room[c], size, bold=True) for c, h in enumerate(headers)]
        body = [[_wrap(visible(fmt_value(v)), room[c], size) for c, v in enumerate(r)] for r in rows]
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
            chunk = body[i:i + n]
            self._table_chunk(head, chunk, lefts, line_h, size, status_col)
            self.y += used + 0.1
            i += max(n, 1)
            if not body:
                break

    def _table_chunk(self, head: Sequence[list[str]], chunk: Sequence[Sequence[list[str]]], lefts: np.ndarray,
                     line_h: float, size: float, status_col: int | None) -> None:
        from matplotlib.collections import LineCollection
        from matplotlib.patches import Rectangle

        assert self.fig is not None
        fig, top = self.fig, self.y
        heights = [max(len(cell) for cell in head)] + [max(len(cell) for cell in row) for row in chunk]  # lines
        starts = np.concatenate([[0], np.cumsum(heights)])  # first line of each row, then the end
        fx = [(MARGIN + x) / A4[0] for x in lefts]
        fy = [self._fy(top + k * line_h) for k in starts]
        fig.add_artist(Rectangle((fx[0], fy[1]), fx[-1] - fx[0], fy[0] - fy[1], transform=fig.transFigure,
                                 facecolor="0.93", edgecolor="none", zorder=0))
        rules = [[(fx[0], y), (fx[-1], y)] for y in fy] + [[(x, fy[0]), (x, fy[-1])] for x in fx]
        fig.add_artist(LineCollection(rules, colors="0.7", linewidths=0.3, transform=fig.transFigure,
                                      zorder=1))
        for c, header in enumerate(head):
            x = (MARGIN + lefts[c] + CELL_PAD) / A4[0]
            fig.text(x, fy[0], "\n".join(header), fontsize=size, fontweight="bold", va="top", ha="left",
                     multialignment="left")
            if c == status_col:
                for k, row in enumerate(chunk, 1):
                    fig.text(x, fy[k], "\n".join(row[c]), fontsize=size, va="top",
                             color=STATUS_COLOURS.get(row[c][0] if row[c] else "", "black"))
            elif chunk:
                lines: list[str] = []
                for k, row in enumerate(chunk, 1):
                    lines += row[c] + [""] * (heights[k] - len(row[c]))
                if any(line.strip() for line in lines):
                    fig.text(x, fy[1], "\n".join(lines), fontsize=size, va="top", ha="left", multialignment="left")

    def image(self, png: Any, left: float, top: float, width: float, height: float) -> None:
        """A report PNG (``Png``) over a box in inches from the page's top-left corner: its own data embedded
        when the PDF writer allows (:class:`_EmbeddedPngs`), else its decoded pixels."""
        assert self.fig is not None
        idat = _idat(png.data) if self.embedded.hooked else None
        if idat is not None:
            box = (left / A4[0], 1.0 - (top + height) / A4[1], width / A4[0], height / A4[1])
            self.fig.add_artist(_PngImage(_PngData(png.width, png.height, idat), box))
        else:
            self.canvas().imshow(_rgb(png.data), interpolation="none", extent=(left, left + width, top + height, top),
                                 aspect="auto")

    def canvas(self) -> Any:
        """One invisible axes over the whole page in inches from the top-left corner (for images)."""
        assert self.fig is not None
        if self._canvas is None:
            ax = self.fig.add_axes([0, 0, 1, 1])
            ax.set_xlim(0, A4[0])
            ax.set_ylim(A4[1], 0)
            ax.set_axis_off()
            self._canvas = ax
        return self._canvas

    def axes(self, height: float, width: float | None = None, left: float = 0.0) -> Any:
        self.ensure(height)
        assert self.fig is not None
        w = width or (A4[0] - 2 * MARGIN)
        ax = self.fig.add_axes([(MARGIN + left) / A4[0], self._fy(self.y + height), w / A4[0],
                                height / A4[1]])
        return ax


@functools.cache
def _font(bold: bool) -> Any:
    from matplotlib.font_manager import FontProperties, findfont, get_font

    return get_font(findfont(FontProperties(weight="bold" if bold else "normal")))


@functools.lru_cache(maxsize=8192)
def _text_width_pt(text: str, size: float, bold: bool = False) -> float:
    """Width of one line of text in points, from the font's advances (as matplotlib lays it out)."""
    from matplotlib import ft2font

    no_hinting = ft2font.LoadFlags.NO_HINTING if hasattr(ft2font, "LoadFlags") else ft2font.LOAD_NO_HINTING
    font = _font(bold)
    font.set_size(size, 72)
    font.set_text(text, 0.0, flags=no_hinting)  # unhinted: the advances the PDF's text is laid out with
    return font.get_width_height()[0] / 64.0 * 1.02  # + 2% for rounding and the bold weight's variants


_BREAK = re.compile(r"[^\s_./\-]*(?:[\s_./\-]+|$)")


def _wrap(text: str, room_pt: float, size: float, bold: bool = False) -> list[str]:
    """``text`` as lines no wider than ``room_pt`` points: broken after spaces, ``_ . / -`` where possible,
    inside a word only when the word alone is wider than the room. Line feeds in ``text`` are kept."""
    out: list[str] = []
    cap = max(1, int(room_pt / (0.2 * size)) + 1)  # most characters a line can hold (no glyph is below 0.2 em)
    for para in text.split("\n"):
        if _text_width_pt(para, size, bold) <= room_pt:
            out.append(para)
            continue
        line = ""
        for token in (t for t in _BREAK.findall(para) if t):
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


@functools.cache
def _line_metrics_em() -> tuple[float, float, float]:
    """Ascender, descender and line gap of the text font, in font sizes (its OS/2 typographic metrics).

    matplotlib steps multi-line text (line spacing "normal") by exactly their sum, and puts the first
    baseline ascender + gap/2 below the top: a table column drawn as one text falls on a row pitch."""
    from matplotlib.font_manager import FontProperties, findfont, get_font

    font = get_font(findfont(FontProperties()))
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
        cells = [visible(fmt_value(r[i])) for r in rows]
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
    by_allergen: dict[str, dict[str, Any]] = {}
    intervals = point_intervals(view.tube_rows)
    for (allergen, arm), fit in sorted(view.fits.items()):
        by_allergen.setdefault(allergen, {})[arm] = fit
    if by_allergen:
        flow.gap()
        flow.ensure(0.3 + 3.7)  # keep the heading with its first plot
        flow.text(f"Dose–response (%{run.marker}+ of {run.population}; both arms)", size=11, weight="bold")
    for allergen, fits in by_allergen.items():
        flow.ensure(3.4)
        flow.gap(0.3)  # the axes title sits above the axes
        ax = flow.axes(2.9, width=6.0, left=0.6)
        draw_dose_response(fits, ax, title=allergen, intervals=intervals, marker=run.marker,
                           population=run.population)
        flow.y += 2.9 + 0.5  # tick labels and axis label below
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
                  colour=STATUS_COLOURS.get(g.severity, "black"), width=120)
        for where, what in g.lines():
            flow.text(f"{where}: {what}", size=7, indent=0.15, width=130)
    flow.gap()
    flow.text("Audit trail", size=11, weight="bold")
    for key, value in run.audit_items(view):
        if isinstance(value, dict):
            flow.text(f"{key}:", size=7.5, weight="bold")
            for k, v in value.items():
                flow.text(f"{k}  {fmt_value(v)}", size=6.5, indent=0.15, width=140)
        elif isinstance(value, list):
            flow.text(f"{key}:", size=7.5, weight="bold")
            for item in value:
                text = "; ".join(f"{k}: {fmt_value(v)}" for k, v in item.items() if v not in (None, ""))
                flow.text(text, size=6.5, indent=0.15, width=140)
        else:
            flow.text(f"{key}: {fmt_value(value)}", size=7.5, width=140)


def _tube_block(flow: _Flow, tube: TubeView, ncols: int = IMAGES_PER_ROW) -> None:
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
    nrows = math.ceil(len(images) / ncols)
    notes = [f"{f.code}: {f.message}" for f in tube.flags][:3]
    notes += [f"gate {g} manually adjusted{': ' + r if r else ''}" for g, r in tube.adjusted.items()]
    flow.ensure(0.3 + LINE * len(notes) + nrows * img_h)
    flow.text(f"{t.file} — {', '.join(desc)} — QC {tube.qc_status}", size=8.5, weight="bold",
              colour=STATUS_COLOURS.get(tube.qc_status, "black"))
    for note in notes:
        flow.text(note, size=6.5, colour="0.3", indent=0.1, width=140)
    for row in range(nrows):
        flow.ensure(img_h)
        y0 = MARGIN + flow.y
        for col, png in enumerate(images[row * ncols:(row + 1) * ncols]):
            x0 = MARGIN + col * img_w
            flow.image(png, x0, y0, img_w, img_h)
        flow.y += img_h
    flow.gap(0.15)


def _rgb(png: bytes) -> np.ndarray:
    """A PNG as 8-bit RGB (no alpha: the PDF then needs no soft mask, no rescaling)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"))


def _idat(png: bytes) -> bytes | None:
    """The compressed pixel stream (IDAT chunks) of an 8-bit RGB, non-interlaced PNG; None for any other PNG."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, out = 8, []
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">L4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and (data[8], data[9], data[12]) != (8, 2, 0):  # bit depth, RGB, no interlace
            return None
        if kind == b"IDAT":
            out.append(data)
        pos += 12 + length
    return b"".join(out) or None


class _PngData:
    """Stands for a report PNG among matplotlib's images of a PDF: its size (``shape``, as matplotlib reads an
    image's) and its compressed rows (the PNG's IDAT data)."""

    def __init__(self, width: int, height: int, idat: bytes) -> None:
        self.shape = (height, width, 3)
        self.idat = idat


class _EmbeddedPngs:
    """The plots' own PNG data written into the PDF as they are: no decoding, no second encoding.

    matplotlib's PDF writer stores an RGB image as a PNG's IDAT stream (Flate with PNG predictors), which it makes
    by encoding the pixels it was given. A report PNG already is that stream: :class:`_PngImage` hands matplotlib
    a :class:`_PngData` in place of pixels, and the writer's ``_unpack``/``_writeImg`` (wrapped here) write its
    IDAT data as the image's stream. ``hooked`` is False when this matplotlib's PDF writer lacks those methods;
    the pages then draw decoded pixels (``imshow``) as before."""

    def __init__(self, pdf: PdfPages) -> None:
        ensure = getattr(pdf, "_ensure_file", None)  # matplotlib opens the PdfFile on the first page
        file = ensure() if callable(ensure) else getattr(pdf, "_file", None)
        self.written = 0
        self.hooked = all(callable(getattr(file, m, None)) for m in ("_unpack", "_writeImg", "beginStream",
                                                                      "endStream", "reserveObject"))
        if self.hooked:
            self._file = file
            self._unpack, self._write_img = file._unpack, file._writeImg
            file._unpack = self.unpack
            file._writeImg = self.write_img

    def unpack(self, image: Any) -> Any:
        return (image, None) if isinstance(image, _PngData) else self._unpack(image)

    def write_img(self, data: Any, id: Any, smask: Any = None) -> None:
        if not isinstance(data, _PngData):
            self._write_img(data, id, smask)
            return
        from matplotlib.backends.backend_pdf import Name

        height, width, _ = data.shape
        obj = {"Type": Name("XObject"), "Subtype": Name("Image"), "Width": width, "Height": height,
               "ColorSpace": Name("DeviceRGB"), "BitsPerComponent": 8}
        file = self._file
        file.beginStream(id, file.reserveObject("length of image stream"), obj,
                         png={"Predictor": 10, "Colors": 3, "Columns": width})
        file.currentstream.write(data.idat)
        file.endStream()
        self.written += 1


class _PngImage(Artist):
    """A report PNG on a PDF page, over ``box`` (left, bottom, width, height in figure fractions), written from
    the PNG's own data (see :class:`_EmbeddedPngs`)."""

    def __init__(self, data: _PngData, box: tuple[float, float, float, float]) -> None:
        super().__init__()
        self.data, self.box = data, box

    def draw(self, renderer: Any) -> None:
        from matplotlib.transforms import Affine2D

        x0, y0, w, h = self.box
        (px, py), (qx, qy) = self.figure.transFigure.transform([(x0, y0), (x0 + w, y0 + h)])
        gc = renderer.new_gc()
        renderer.draw_image(gc, px, py, self.data, Affine2D().scale(qx - px, qy - py))
        gc.restore()


@literal_text()
def write_patient_pdf(path: Path, view: PatientView, run: RunView) -> Path:
    """Write the patient's PDF (summary, tables, flags, audit trail, gating pages) atomically."""
    meta = {"Title": visible(f"BAT report — patient {view.patient}"), "Creator": "bat_analysis",
            "Subject": "Basophil activation test"}
    with atomic_path(path) as tmp, PdfPages(tmp, metadata=meta) as pdf:
        flow = _Flow(pdf, f"BAT report — patient {view.patient}")
        _summary(flow, view, run)
        _tables(flow, view, run)
        flow.new_page()
        flow.text("Gating, tube by tube", size=11, weight="bold")
        flow.text("Each plot is the parent population's density with the gate drawn on it (orange dashed: "
                  f"manually adjusted); the last plot of a tube is its {run.marker} histogram with the threshold "
                  "and the negative control overlaid.", size=7, colour="0.3", width=130)
        flow.gap(0.1)
        for tube in view.tubes:
            if tube.images:
                _tube_block(flow, tube)
        flow.finish_page()
    return path


__all__ = ["write_patient_pdf"]
