"""Per-patient PDF report (``reports/<patient>.pdf``), laid out for A4 print with matplotlib's PdfPages.

Page 1 is the summary (identity, run, class with its reason, metrics, dose-response curves drawn as
vectors), then the tables of tubes and QC, the flags in plain words and the audit trail, then the gating
pages: every tube's gates and activation-marker histogram (the report's PNGs, embedded at their full resolution).
All text (patient, allergen and file names, reasons) is drawn literally, never as mathtext
(:func:`~bat_analysis.report.plots.literal_text`), with control characters shown as escapes
(``textsafe.visible``; a line feed in a table cell would otherwise shift every row below it).
"""

from __future__ import annotations

import functools
import io
import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from .._fileio import atomic_path  # noqa: E402
from .._textsafe import visible  # noqa: E402
from .plots import draw_dose_response, literal_text  # noqa: E402
from ._views import (PATIENT_COLUMNS, QC_HEADERS, TUBE_COLUMNS, PatientView, RunView, TubeView,  # noqa: E402
                    fmt_value, point_intervals, present_columns, qc_rows)

A4 = (8.27, 11.69)
MARGIN = 0.55  # inches
LINE = 0.18  # inches per line of 8-pt text
SUMMARY_CHARS = 600  # QC reasons on the summary page are cut here; the Flags section lists them all
STATUS_COLOURS = {"pass": "#2e7d32", "warn": "#ef8f00", "fail": "#c62828"}
SHORT = {"concentration": "conc.", "pretreatment": "arm", "n_basophils": "basophils",
         "cd63_threshold": "CD63 thr.", "pct_cd63": "%CD63+", "net_pct_cd63": "net %", "si_cd63": "SI",
         "cd203c_mfi": "CD203c MFI", "si_cd203c": "SI CD203c", "qc_status": "QC",
         "acq. QC removed %": "acq. QC %", "spillover": "spill."}


class _Flow:
    """Top-to-bottom layout of text, tables and plots over A4 pages (inches from the top margin)."""

    def __init__(self, pdf: PdfPages, footer: str) -> None:
        self.pdf = pdf
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
        """A table split over pages as needed; the header row repeats on each page.

        Drawn as one multi-line text per column (rows on the font's line pitch, see
        :func:`_line_metrics_em`) plus
        one collection of rules: a few text objects per table instead of one per cell, which is what
        made matplotlib's own ``Axes.table`` slow to lay out and write."""
        ascent, descent, gap = _line_metrics_em()
        row_h = (ascent + descent + gap) * size / 72.0
        rows = [[visible(fmt_value(c)) for c in r] for r in rows]
        headers = [visible(str(h)) for h in headers]
        width = A4[0] - 2 * MARGIN
        fracs = list(col_widths) if col_widths else [1.0 / len(headers)] * len(headers)
        lefts = np.concatenate([[0.0], np.cumsum(fracs)]) * width
        i = 0
        while i < len(rows) or (i == 0 and not rows):
            self.ensure(2 * row_h)
            n = max(1, min(len(rows) - i, int(self.room / row_h) - 1))
            chunk = rows[i:i + n]
            self._table_chunk(headers, chunk, lefts, row_h, size, status_col)
            self.y += row_h * (len(chunk) + 1) + 0.1
            i += n
            if not rows:
                break

    def _table_chunk(self, headers: Sequence[str], chunk: Sequence[Sequence[str]], lefts: np.ndarray,
                     row_h: float, size: float, status_col: int | None) -> None:
        from matplotlib.collections import LineCollection
        from matplotlib.patches import Rectangle
        from matplotlib.transforms import Bbox, TransformedBbox

        assert self.fig is not None
        fig, top = self.fig, self.y
        n_rows = len(chunk) + 1
        fx = [(MARGIN + x) / A4[0] for x in lefts]
        fy = [self._fy(top + k * row_h) for k in range(n_rows + 1)]
        fig.add_artist(Rectangle((fx[0], fy[1]), fx[-1] - fx[0], fy[0] - fy[1], transform=fig.transFigure,
                                 facecolor="0.93", edgecolor="none", zorder=0))
        rules = [[(fx[0], y), (fx[-1], y)] for y in fy] + [[(x, fy[0]), (x, fy[-1])] for x in fx]
        fig.add_artist(LineCollection(rules, colors="0.7", linewidths=0.3, transform=fig.transFigure,
                                      zorder=1))
        ascent, _, gap = _line_metrics_em()
        pad = 0.04  # inches between a cell's left rule and its text
        baseline = [self._fy(top + k * row_h + (ascent + gap / 2) * size / 72.0) for k in range(n_rows)]
        for c, header in enumerate(headers):
            x = (MARGIN + lefts[c] + pad) / A4[0]
            clip = TransformedBbox(Bbox([[fx[c], fy[-1]], [fx[c + 1], fy[0]]]), fig.transFigure)
            texts = [fig.text(x, baseline[0], str(header), fontsize=size, fontweight="bold", va="baseline")]
            if c == status_col:
                texts += [fig.text(x, baseline[k], row[c], fontsize=size, va="baseline",
                                   color=STATUS_COLOURS.get(row[c], "black")) for k, row in enumerate(chunk, 1)]
            elif chunk:
                column = "\n".join(row[c] for row in chunk)
                if column.strip():
                    texts.append(fig.text(x, fy[1], column, fontsize=size, va="top", ha="left",
                                          multialignment="left"))
            for text in texts:  # a long cell is cut at its column's edge, not written over the next one
                text.set_clip_box(clip)

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


def _widths(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[float]:
    """Column widths proportional to their longest cell (header included), within limits."""
    lens = [max([len(str(h))] + [len(fmt_value(r[i])) for r in rows]) for i, h in enumerate(headers)]
    lens = [min(max(n, 3), 40) + 2 for n in lens]  # + cell padding
    total = float(sum(lens))
    return [n / total for n in lens]


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
        rows = [[run.label(c).replace("_", " ")] + [r.get(c) for r in view.patient_rows] for c in cols]
        headers = ["metric"] + allergens
        flow.table(headers, rows, size=7.5, col_widths=_widths(headers, rows))
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
    headers = [run.label(SHORT.get(c, c)) for c in cols]
    rows = [[r.get(c) for c in cols] for r in view.tube_rows]
    flow.table(headers, rows, col_widths=_widths(headers, rows), size=6.5,
               status_col=cols.index("qc_status") if "qc_status" in cols else None)
    flow.gap()
    flow.text("Quality control", size=11, weight="bold")
    qc_table = qc_rows(view.tubes)
    headers = [run.label(SHORT.get(h, h)) for h in QC_HEADERS]
    flow.table(headers, qc_table, col_widths=_widths(headers, qc_table), size=6.5, status_col=9)
    flow.gap()
    flow.text("Flags", size=11, weight="bold")
    flagged = [t for t in view.tubes if t.flags]
    if not flagged and not view.patient_flags:
        flow.text("No flags.")
    for t in flagged:
        flow.text(f"{t.result.tube.file} — QC {t.qc_status}", size=8, weight="bold",
                  colour=STATUS_COLOURS.get(t.qc_status, "black"))
        for f in t.flags:
            label = "QC rule" if f.severity == "qc" else f.severity
            flow.text(f"[{label}] {f.code}: {f.message}", size=7.5, indent=0.15,
                      colour=STATUS_COLOURS.get(f.severity, "black"), width=120)
    if view.patient_flags:
        flow.text("dose–response", size=8, weight="bold")
        for f in view.patient_flags:
            flow.text(f"[{f.severity}] {f.code}: {f.message}", size=7.5, indent=0.15,
                      colour=STATUS_COLOURS.get(f.severity, "black"), width=120)
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


def _tube_block(flow: _Flow, tube: TubeView, ncols: int = 3) -> None:
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
        canvas = flow.canvas()
        pixels = [_rgb(png.data) for png in images[row * ncols:(row + 1) * ncols]]
        y0 = MARGIN + flow.y
        if len({p.shape for p in pixels}) == 1:  # one image per row of plots: a third of the PDF objects
            x0 = MARGIN
            canvas.imshow(np.concatenate(pixels, axis=1), interpolation="none",
                          extent=(x0, x0 + img_w * len(pixels), y0 + img_h, y0), aspect="auto")
        else:
            for col, rgb in enumerate(pixels):
                x0 = MARGIN + col * img_w
                canvas.imshow(rgb, interpolation="none", extent=(x0, x0 + img_w, y0 + img_h, y0), aspect="auto")
        flow.y += img_h
    flow.gap(0.15)


def _rgb(png: bytes) -> np.ndarray:
    """A PNG as 8-bit RGB (no alpha: the PDF then needs no soft mask, no rescaling)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"))


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
