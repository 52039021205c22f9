"""HTML reports: one per patient (``reports/<patient>.html``) and the review gallery (``review/index.html``).

Patient reports embed their images as base64 PNG and carry their CSS inline: they open from disk,
offline, and can be mailed as single files. The gallery, which shows every tube of a plate, links its
plots from ``review/img/`` (loaded lazily) so that it opens at once, a tube's plots on one row sharing the width
(each opens at its full 810 px on a click); its filter script is inline. Tables wrap their cells to fit the window
(1400 px and narrower); flags are grouped by severity and code, failures first (``views.flag_groups``).
:func:`render_reports` is the entry point: it builds the view models of :mod:`._views` from the tube results
and the typed ``ExperimentScores`` and renders patient by patient (:func:`render_patient`: the patient's plots,
drawn once on axes shared by its tubes, its HTML and its PDF (:mod:`._pdf`), in worker processes for large runs),
then writes the gallery from every patient's plots. A patient's pages depend only on its own tubes and scores and
the run's details, so a run renders each patient as soon as it is scored, while it gates the others
(:class:`PatientRendering`).
Each per-tube plot is a ``<figure>`` whose caption holds the words the plot carries beside its pixels
(``Png.texts``: counts, how the gate was set, percentages; the manual-adjustment note in its colour).
Every text from the inputs is HTML-escaped; file names derived from patient IDs and tube files are
made by ``textsafe.safe_filename`` (valid and distinct whatever the ID).
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .. import _pools
from ..errors import BatError
from .._fileio import atomic_write_text, create_new_file, make_dir, remove_path, replace_dir, temporary_dir
from ..records import TubeResult
from .._textsafe import safe_filename
from .plots import (ARM_LABELS, PLOT_DPI, Png, PngRenderer, SharedFrames, activation_range, fit_summary,
                    marker_values, shared_gate_limits)
from ._views import (PATIENT_COLUMNS, QC_HEADERS, TUBE_COLUMNS, FlagGroup, PatientView, RunView, TubeView,
                    activation_marker, concentration_unit, flag_groups, fmt_value, patient_views, point_intervals,
                    present_columns, qc_rows, report_filename, severity_rank, tube_table_note, tube_views)

if TYPE_CHECKING:
    from ..analysis.score import ExperimentScores

GALLERY_IMAGES = "img"  # folder of the gallery's image files, beside review/index.html
IMAGE_NAME_BYTES = 40  # the plot's part of a gallery image's name, after the tube's anchor
IMAGE_DPI = PLOT_DPI  # 810 × 675 px per plot: the enlarged image; ~225 dpi when printed two across A4
REPORT_SCALE = 0.5  # a report shows each plot at half its pixels (405 px wide; sharp on high-density screens)
OPEN_GROUP_MAX = 6  # a group of flags with more entries than this starts folded


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1400px;
padding:1em 1.5em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:.8em 0 .3em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0;max-width:100%}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f3f3f3;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.tablewrap{max-width:100%;overflow-x:auto}img{max-width:100%;height:auto}
.badge{display:inline-block;padding:1px 7px;border-radius:8px;font-size:.8em;font-weight:600;color:#fff}
.qc{background:#5c6bc0}.pass{background:#2e7d32}.warn{background:#ef8f00}.fail{background:#c62828}.none{background:#777}
.class-responder{background:#2e7d32}.class-partial_responder{background:#ef8f00}
.class-non_responder{background:#c62828}.class-not_evaluable{background:#777}
.imgs{display:flex;flex-wrap:wrap;gap:4px}.imgs img{border:1px solid #eee}
.imgs.row{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr))}.imgs.row a{display:block}
.imgs.row img{width:100%;height:auto;display:block}h3{overflow-wrap:anywhere}
figure.plot{margin:0;max-width:100%;min-width:0}figure.plot img{display:block}
figure.plot figcaption{font-size:.75em;line-height:1.3;color:#333;padding:1px 3px 3px;overflow-wrap:anywhere;
white-space:pre-line}figure.plot .cap{display:block}figure.plot .note{font-weight:600}
details.flags summary{cursor:pointer}details.flags{margin:.3em 0}
.tube{border:1px solid #ddd;border-radius:4px;padding:.4em .6em;margin:.6em 0}
.tube.adjusted{border-color:#ff7f0e}.muted{color:#666}.adj{color:#c25e00;font-weight:600}
ul.flags{margin:.2em 0 .2em 1.2em;padding:0}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
.filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ccc;z-index:2}
.filters label{margin-right:1em}
@media print{.filters{display:none}.tube{break-inside:avoid}}
"""

GALLERY_JS = """
function applyFilters(){
  var p=document.getElementById('f-patient').value, f=document.getElementById('f-flag').value,
      only=document.getElementById('f-flagged').checked, shown=0;
  document.querySelectorAll('.tube').forEach(function(el){
    var ok=(p===''||el.dataset.patient===p)&&(f===''||(' '+el.dataset.flags+' ').indexOf(' '+f+' ')>=0)
           &&(!only||el.dataset.status!=='pass');
    el.style.display=ok?'':'none'; if(ok){shown++;}
  });
  document.getElementById('f-count').textContent=shown+' tube(s) shown';
}
document.addEventListener('DOMContentLoaded',function(){
  ['f-patient','f-flag','f-flagged'].forEach(function(id){
    document.getElementById(id).addEventListener('change',applyFilters);});
  applyFilters();
});
"""


def img_tag(png: Png, *, alt: str | None = None, scale: float = 1.0, src: str | None = None) -> str:
    """An ``<img>`` with the PNG embedded as a data URI, or linked to ``src`` (loaded lazily)."""
    w, h = int(png.width * scale), int(png.height * scale)
    label = escape(alt or f"{png.kind}: {png.title}")
    if src is None:
        src = "data:image/png;base64," + base64.b64encode(png.data).decode("ascii")
        lazy = ""
    else:
        src, lazy = escape(src), ' loading="lazy"'
    return (f'<img src="{src}" width="{w}" height="{h}" alt="{label}" title="{label}"{lazy} '
            f'data-kind="{escape(png.kind)}">')


_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def plot_figure(png: Png, img: str, *, width: int | None = None) -> str:
    """A plot (``img``: its ``<img>``, possibly in a link) with the words it carries beside its pixels
    (``Png.texts``: counts, how the gate was set, percentages) as its caption, one line each, escaped; a text
    with a colour (the manual-adjustment note) is shown in it. ``width`` (px) holds the caption to the image's
    width in a wrapping row."""
    lines = []
    for text, colour in png.captions():
        style = f' style="color:{colour}"' if _COLOUR.fullmatch(colour or "") else ""
        cls = "cap note" if style else "cap"
        lines.append(f'<span class="{cls}"{style}>{escape(text)}</span>')
    caption = f"<figcaption>{''.join(lines)}</figcaption>" if lines else ""
    size = f' style="width:{int(width)}px"' if width else ""
    return f'<figure class="plot"{size}>{img}{caption}</figure>'


def breakable(text: str) -> str:
    """Escaped text with line-break opportunities after ``_`` and ``/`` (``<wbr>``): a long file name wraps
    at its parts in a narrow column instead of widening the table or breaking inside a word."""
    return text.replace("_", "_<wbr>").replace("/", "/<wbr>")


def badge(status: str | None, *, prefix: str = "") -> str:
    s = status or "none"
    css = f"{prefix}{s}" if prefix else s
    return f'<span class="badge {escape(css)}">{escape(s.replace("_", " "))}</span>'


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
          raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are trusted HTML built here)."""
    numeric = list(numeric or [False] * len(headers))
    out = ['<div class="tablewrap"><table><thead><tr>', *(f"<th>{escape(h)}</th>" for h in headers),
           "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            text = str(cell) if raw else breakable(escape(fmt_value(cell)))
            cls = ' class="num"' if i < len(numeric) and numeric[i] else ""
            out.append(f"<td{cls}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _page(title: str, body: str, *, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style>{js}</head><body>\n{body}\n</body></html>\n")


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = []
    for key, value in items:
        if isinstance(value, Mapping):
            cell = table(["item", "value"], [(k, v) for k, v in value.items()])
            rows.append((escape(key), cell))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))
            rows.append((escape(key), table(cols, [[v.get(c, "") for c in cols] for v in value])))
        else:
            rows.append((escape(key), escape(fmt_value(value))))
    return table(["", ""], rows, raw=True).replace("<thead><tr><th></th><th></th></tr></thead>", "")


def _flag_items(tube: TubeView) -> str:
    if not tube.flags:
        return '<span class="muted">no flags</span>'
    items = "".join(f"<li>{badge(f.severity)} <b>{escape(f.code)}</b>: {escape(f.message)}</li>"
                    for f in tube.flags)  # tube_views ordered them: failures, warnings, information
    return f'<ul class="flags">{items}</ul>'


def flag_group_html(group: FlagGroup, *, links: Mapping[str, str] | None = None) -> str:
    """One group of identical findings: severity, code, on how many tubes, the shared reason, then each tube
    (linked to its section when ``links`` maps its file to an anchor). Groups of up to OPEN_GROUP_MAX are unfolded."""
    links = links or {}
    items = []
    for where, what in group.lines():
        place = escape(where)
        if where in links:
            place = f'<a href="#{escape(links[where])}">{place}</a>'
        items.append(f"<li>{place}: {escape(what)}</li>")
    unfold = " open" if len(items) <= OPEN_GROUP_MAX else ""  # a long list folds: its heading says enough
    return (f'<details class="flags"{unfold} data-severity="{escape(group.severity)}"><summary>'
            f"{badge(group.severity)} <b>{escape(group.code)}</b>{escape(group.heading()[len(group.code):])}"
            f'</summary><ul class="flags">{"".join(items)}</ul></details>')


def _tube_heading(tube: TubeView) -> str:
    t = tube.result.tube
    parts = [t.condition.replace("_", " ")]
    if t.allergen:
        parts.append(t.allergen)
    if t.concentration is not None and not (isinstance(t.concentration, float) and math.isnan(t.concentration)):
        parts.append(f"{t.concentration:g} {t.unit or ''}".strip())
    parts.append(f"arm: {t.pretreatment}")
    return f"{escape(t.file)} — {escape(', '.join(parts))}"


def image_files(tube: TubeView) -> list[str]:
    """Relative paths (under ``review/``) of the gallery's image files of a tube."""
    safe = [safe_filename(p.title, max_bytes=IMAGE_NAME_BYTES, fallback=p.kind) for p in tube.images]
    return [f"{GALLERY_IMAGES}/{tube.anchor}-{i}-{name}.png" for i, name in enumerate(safe)]


def _tube_section(tube: TubeView, *, link: str | None = None, files: bool = False) -> str:
    adjusted = " adjusted" if tube.adjusted else ""
    flags = " ".join(sorted({f.code for f in tube.flags}))
    head = f"{badge(tube.qc_status)} {_tube_heading(tube)}"
    if link:
        head += f' · <a href="{escape(link)}">patient report</a>'
    adj = ""
    if tube.adjusted:
        adj = "".join(f'<div class="adj">gate {escape(g)} manually adjusted{": " + escape(r) if r else ""}</div>'
                      for g, r in tube.adjusted.items())
    thr = ""
    if tube.threshold is not None:
        refs = ", ".join(tube.negative_files) or "none"
        thr = (f'<div class="muted">threshold {escape(fmt_value(tube.threshold))} ({escape(tube.threshold_method or "")}), '
               f"negative control: {escape(refs)}</div>")
    review = str(tube.row.get("review_status") or "")  # tubes.csv's review columns (bat review's decisions)
    if files and review:
        by, at = str(tube.row.get("reviewed_by") or ""), str(tube.row.get("reviewed_at") or "")
        adj += (f'<div class="review">review: {escape(review.replace("_", " "))}'
                f'{" by " + escape(by) if by else ""}{" on " + escape(at) if at else ""}</div>')
    if files:  # gallery: one row of thumbnails sharing the width, each opening the full-size image
        imgs = "".join(plot_figure(p, f'<a href="{escape(src)}" target="_blank">'
                                   + img_tag(p, alt=f"{tube.result.tube.file}: {p.kind} {p.title}", src=src,
                                             scale=REPORT_SCALE) + "</a>")
                       for p, src in zip(tube.images, image_files(tube)))
        row = f'<div class="imgs row" style="--n:{max(1, len(tube.images))}">{imgs}</div>'
    else:
        imgs = "".join(plot_figure(p, img_tag(p, alt=f"{tube.result.tube.file}: {p.kind} {p.title}",
                                              scale=REPORT_SCALE), width=int(p.width * REPORT_SCALE))
                       for p in tube.images)
        row = f'<div class="imgs">{imgs}</div>'
    return (f'<div class="tube{adjusted}" id="{escape(tube.anchor)}" data-patient="{escape(tube.result.tube.patient)}" '
            f'data-flags="{escape(flags)}" data-status="{escape(tube.qc_status)}" data-review="{escape(review)}">'
            f"<h3>{head}</h3>{adj}{thr}{_flag_items(tube)}{row}</div>")


def patient_html(view: PatientView, run: RunView) -> str:
    """The whole per-patient report page."""
    body = [f"<h1>BAT report — patient {escape(view.patient)}</h1>"]
    unit = concentration_unit(view.tubes)
    classes = " ".join(f"{escape(str(r.get('allergen', '')))}: {badge(str(r.get('class') or 'not_evaluable'), prefix='class-')}"
                       for r in view.patient_rows)
    body.append(f"<p>{classes}</p>")
    body.append("<h2>Identity and run</h2>")
    body.append(_kv_table([("patient", view.patient), ("tubes", len(view.tubes)),
                           ("allergens", ", ".join(view.allergens) or "none"), *run.summary_items()]))
    body.append("<h2>Result</h2>")
    if view.patient_rows:
        for r in view.patient_rows:
            body.append(f"<p><b>{escape(str(r.get('allergen', '')))}</b>: "
                        f"{badge(str(r.get('class') or 'not_evaluable'), prefix='class-')}"
                        f"{escape(run.inhibition_text(r))} — "
                        f"{escape(fmt_value(r.get('class_reason')))}</p>")
            if r.get("qc_reasons"):
                findings = [x for x in str(r["qc_reasons"]).split("; ") if x]
                body.append(f'<details class="muted"><summary>QC {badge(str(r.get("qc_status") or ""))} '
                            f"{len(findings)} finding(s)</summary><ul class=\"flags\">"
                            + "".join(f"<li>{escape(x)}</li>" for x in findings) + "</ul></details>")
        cols = present_columns(view.patient_rows, PATIENT_COLUMNS)
        body.append(table([run.label(c, unit) for c in cols], [[r.get(c) for c in cols] for r in view.patient_rows],
                          numeric=[c not in ("allergen", "class", "qc_status") for c in cols]))
        body.append('<p class="muted">EC50 in the layout\'s concentration unit; empty when not estimable. '
                    f"CD-sens = 100/EC50; AUC of net %{escape(run.marker)}+ over log10 concentration.</p>")
    else:
        body.append('<p class="muted">No allergen series scored for this patient.</p>')
    body.append("<h2>Dose–response</h2>")
    if view.curves:
        body.append('<div class="imgs">' + "".join(img_tag(p, scale=REPORT_SCALE) for p in view.curves) + "</div>")
        for note in view.fit_notes:
            body.append(f'<p class="muted">{escape(note)}</p>')
    else:
        body.append('<p class="muted">No allergen series with a fit.</p>')
    body.append("<h2>Metrics per tube</h2>")
    cols = present_columns(view.tube_rows, TUBE_COLUMNS)
    body.append(table([run.label(c, unit) for c in cols], [[r.get(c) for c in cols] for r in view.tube_rows],
                      numeric=[c not in ("file", "condition", "allergen", "pretreatment", "qc_status") for c in cols]))
    body.append(f'<p class="muted">{escape(tube_table_note(run.marker))}</p>')
    body.append("<h2>Quality control</h2>")
    body.append(table([run.label(h) for h in QC_HEADERS], qc_rows(view.tubes),
                      numeric=[False, False, False] + [True] * 5 + [False] * 3))
    body.append("<h2>Flags</h2>")
    groups = flag_groups(view.tubes, view.patient_flags)
    if groups:
        body.append('<p class="muted">Failures first, then warnings; the same finding on several tubes is '
                    "listed once with its tubes.</p>")
        anchors = {t.result.tube.file: t.anchor for t in view.tubes}
        body.extend(flag_group_html(g, links=anchors) for g in groups)
    else:
        body.append('<p class="muted">No flags.</p>')
    body.append("<h2>Gating, tube by tube</h2>")
    body.append('<p class="muted">Each plot is the parent population\'s density with the gate drawn on it; '
                "orange dashed outlines were manually adjusted by a reviewer. The last plot of a tube is its "
                f"{escape(run.marker)} histogram with the threshold and the negative control overlaid.</p>")
    body.extend(_tube_section(t) for t in view.tubes)
    body.append("<h2>Audit trail</h2>")
    body.append(_kv_table(run.audit_items(view)))
    return _page(f"BAT report {view.patient}", "\n".join(body))


def gallery_html(tubes: Sequence[TubeView], run: RunView, report_links: Mapping[str, str]) -> str:
    """The review gallery: every tube's gates, flagged tubes first, filterable by patient and flag.

    Images are linked from ``review/img/`` (see :func:`write_gallery`), not embedded: a plate's gallery
    holds hundreds of plots and must open at once; the patient reports stay self-contained.
    """
    ordered = sorted(tubes, key=lambda t: (severity_rank(t.qc_status), t.order))
    patients = sorted({t.result.tube.patient for t in tubes})
    codes = sorted({f.code for t in tubes for f in t.flags})
    n_flagged = sum(1 for t in tubes if t.qc_status != "pass")
    opts_p = "".join(f'<option value="{escape(p)}">{escape(p)}</option>' for p in patients)
    opts_f = "".join(f'<option value="{escape(c)}">{escape(c)}</option>' for c in codes)
    body = [f"<h1>Gate review — {len(tubes)} tubes, {n_flagged} flagged</h1>",
            f'<p class="muted">{escape(run.one_line())}</p>',
            '<div class="filters">'
            f'<label>patient <select id="f-patient"><option value="">all</option>{opts_p}</select></label>'
            f'<label>flag <select id="f-flag"><option value="">all</option>{opts_f}</select></label>'
            '<label><input type="checkbox" id="f-flagged"> flagged only</label>'
            '<span id="f-count" class="muted"></span></div>',
            '<p class="muted">Flagged tubes (fail, then warn) come first. Orange dashed gates were manually '
            "adjusted. Each tube links to its patient report; a plot opens full size on a click.</p>"]
    groups = flag_groups(tubes)
    if groups:
        anchors = {t.result.tube.file: t.anchor for t in tubes}
        body.append("<h2>Flags by severity</h2>" + "".join(flag_group_html(g, links=anchors) for g in groups))
        body.append("<h2>Tubes</h2>")
    for t in ordered:
        link = report_links.get(t.result.tube.patient)
        body.append(_tube_section(t, link=f"{link}#{t.anchor}" if link else None, files=True))
    return _page("BAT gate review", "\n".join(body), script=GALLERY_JS)


def write_gallery(review_dir: Path, tubes: Sequence[TubeView], run: RunView,
                  report_links: Mapping[str, str]) -> Path:
    """``review/index.html`` with its images as files in ``review/img/`` (loaded lazily by the browser,
    so a plate's gallery opens at once). The image folder is replaced as a whole."""
    make_dir(review_dir)
    fresh = temporary_dir(review_dir, GALLERY_IMAGES)
    try:
        for t in tubes:
            for png, rel in zip(t.images, image_files(t)):
                create_new_file(fresh / Path(rel).name, png.data)
    except BaseException as exc:
        try:
            remove_path(fresh)
        except BatError as cleanup:
            exc.add_note(f"also: {cleanup}")
        raise
    replace_dir(fresh, review_dir / GALLERY_IMAGES)
    return write_text(review_dir / "index.html", gallery_html(tubes, run, report_links))


def write_text(path: Path, text: str) -> Path:
    """Write atomically (see :mod:`bat_analysis._fileio`) so a reader never sees half a page."""
    return atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------ entry point
@dataclass
class ReportPaths:
    """What :func:`render_reports` wrote: per-patient HTML and PDF, the gallery, and seconds per phase."""

    html: dict[str, Path] = field(default_factory=dict)
    pdf: dict[str, Path] = field(default_factory=dict)
    gallery: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """Every file written: the patients' HTML reports, their PDF reports, then the gallery."""
        return [*self.html.values(), *self.pdf.values(), *([self.gallery] if self.gallery is not None else [])]


@dataclass(frozen=True)
class Job:
    """What a drawing worker needs of one tube (a :class:`TubeView` without its table rows)."""

    result: TubeResult
    negative_values: np.ndarray | None
    threshold: float | None
    adjusted: dict[str, str]
    marker: str
    xlim: tuple[float, float] | None
    pct: float | None  # the percentages the histogram prints: tubes.csv's, from the view
    negative_pct: float | None
    population: str = "basophils"  # the gated population's name (the template's), in the histogram's title
    gate_limits: Mapping[Any, Any] = field(default_factory=dict)  # frame key -> axis limits (the patient's)


# one per process, resolution and folder of shared frames: its cached frames serve every chunk
_RENDERERS: dict[tuple[int, Path | None], PngRenderer] = {}


def _renderer(dpi: int = IMAGE_DPI, frames: Path | None = None) -> PngRenderer:
    """This process's renderer; ``frames``: a folder of frames shared with the run's other drawing processes
    (:class:`SharedFrames`)."""
    renderer = _RENDERERS.get((dpi, frames))
    if renderer is None:
        shared = None if frames is None else SharedFrames(frames)
        renderer = _RENDERERS[dpi, frames] = PngRenderer(dpi=dpi, shared=shared)
    return renderer


def _draw_chunk(jobs: list[Job], dpi: int, frames: Path | None = None) -> list[list[Png]]:
    """Worker task: the PNGs of a chunk of tubes (module-level so that it pickles)."""
    renderer = _renderer(dpi, frames)
    return [renderer.tube(j.result, negative_values=j.negative_values, threshold=j.threshold, adjusted=j.adjusted,
                          marker=j.marker, xlim=j.xlim, gate_limits=j.gate_limits, pct=j.pct,
                          negative_pct=j.negative_pct, population=j.population)
            for j in jobs]


def _marker_values(result: TubeResult, marker: str) -> np.ndarray | None:
    values = marker_values(result, marker)
    return values if values.size else None


def _ignore_ctrl_c() -> None:
    """A drawing process leaves Ctrl-C to the run, which ends it (no traceback of its own on the terminal)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool(workers: int, *, fork: bool = False) -> Any:
    """Worker processes for drawing. Spawned unless ``fork``: a caller may run threads (a Dask client) that a
    fork would copy in an unknown state; a caller that runs none that matter (a local run, whose gating workers
    are forked too) passes ``fork`` and, where the platform forks by default (Linux; not macOS or Windows, whose
    libraries do not survive a fork), its workers start at once with what it imported (no second ~1 s of
    imports each). They ignore Ctrl-C: the run that started them stops them
    (:func:`bat_analysis.pipeline.stopping_on_ctrl_c`)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if fork and multiprocessing.get_start_method() == "fork" else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_ignore_ctrl_c)


def drawing_jobs(tubes: Sequence[TubeView], population: str = "basophils") -> list[Job]:
    """One drawing job per tube. The tubes of a patient share their axes: one activation axis per marker
    (:func:`activation_range` of the patient's tubes) and one frame per gate (:func:`shared_gate_limits`),
    so that a patient's histograms and gates compare at a glance. The axes come from the patient's own tubes
    only: a patient's plots are the same whether drawn alone (``bat report --patient``, or while a run still
    gates other patients) or with the whole run."""
    groups: dict[str, list[TubeView]] = {}
    for t in tubes:
        groups.setdefault(t.result.tube.patient, []).append(t)
    jobs: dict[int, Job] = {}
    for group in groups.values():
        ranges = {m: activation_range([_marker_values(t.result, m) for t in group if t.marker == m],
                                      [t.threshold for t in group if t.marker == m])
                  for m in {t.marker for t in group}}
        limits = shared_gate_limits(t.result for t in group)
        for t in group:
            jobs[id(t)] = Job(t.result, t.negative_values, t.threshold, t.adjusted, t.marker, ranges[t.marker],
                              t.pct, t.negative_pct, population, limits)
    return [jobs[id(t)] for t in tubes]


def draw_tubes(tubes: Sequence[TubeView], *, dpi: int = IMAGE_DPI, population: str = "basophils",
               frames: Path | None = None) -> None:
    """Fill ``images`` of every tube view, in this process; the tubes of a patient share their axes
    (:func:`drawing_jobs`). Runs draw in parallel patient by patient (:func:`render_patient` in worker
    processes), not tube by tube; ``frames``: see :func:`render_patient`."""
    for t, pngs in zip(tubes, _draw_chunk(drawing_jobs(tubes, population), dpi, frames)):
        t.images = pngs


def _curves(view: PatientView, renderer: PngRenderer, run: RunView) -> None:
    by_allergen: dict[str, dict[str, Any]] = {}
    intervals = point_intervals(view.tube_rows)
    for (allergen, arm), fit in sorted(view.fits.items()):
        by_allergen.setdefault(allergen, {})[arm] = fit
        view.fit_notes.append(f"{allergen}, {ARM_LABELS.get(arm, arm)}: {fit_summary(fit)}")
    for allergen, fits in by_allergen.items():
        view.curves.append(renderer.dose_response(fits, title=allergen, intervals=intervals, marker=run.marker,
                                                  population=run.population))


def _run_view(scores: ExperimentScores, run_info: Mapping[str, Any] | None) -> RunView:
    return RunView({"marker": activation_marker(scores), "ci_level": scores.config.fit.ci_level,
                    **(run_info or {})})


@dataclass
class PatientFiles:
    """What rendering one patient made: its HTML and PDF report (None when not written), its tubes' plots
    (file -> PNGs, for the gallery) and the seconds spent drawing and writing."""

    patient: str
    html: Path | None
    pdf: Path | None
    images: dict[str, list[Png]]
    seconds: dict[str, float] = field(default_factory=dict)


def render_patient(out_dir: Path, results: Sequence[TubeResult], scores: ExperimentScores,
                   run_info: Mapping[str, Any] | None, *, pdf: bool = True, write: bool = True,
                   frames: Path | None = None) -> PatientFiles:
    """One patient's plots, and (``write``) its ``reports/<patient>.html`` and ``.pdf`` (``pdf``) under
    ``out_dir``, in this process. ``frames``: a folder where the processes drawing a run share their plots'
    frames (:class:`SharedFrames`; the plots are the same without).

    ``results`` are the patient's tubes, all of them and no other patient's; ``scores`` holds the patient's
    scores (other patients' rows and fits are ignored). The pages depend on nothing else, so a patient
    rendered on its own (in a worker, while a run gates the others) gets the report a whole-run rendering
    writes. Module-level, so that it runs in worker processes."""
    import time

    t0 = time.perf_counter()
    run = _run_view(scores, run_info)
    views = tube_views(results, scores, run)
    by_patient = patient_views(views, scores)
    if len(by_patient) != 1:
        raise ValueError(f"render_patient takes one patient's tubes, got {len(by_patient)} patients")
    patient, view = next(iter(by_patient.items()))
    draw_tubes(views, population=run.population, frames=frames)
    images = {t.result.tube.file: t.images for t in views}
    t1 = time.perf_counter()
    if not write:
        return PatientFiles(patient, None, None, images, {"draw": t1 - t0})
    _curves(view, _renderer(), run)
    t2 = time.perf_counter()
    stem = report_filename(patient)
    html = write_text(out_dir / "reports" / f"{stem}.html", patient_html(view, run))
    t3 = time.perf_counter()
    written_pdf = None
    if pdf:
        from ._pdf import write_patient_pdf

        written_pdf = write_patient_pdf(out_dir / "reports" / f"{stem}.pdf", view, run)
    t4 = time.perf_counter()
    return PatientFiles(patient, html, written_pdf, images, {"draw": t2 - t0, "html": t3 - t2, "pdf": t4 - t3})


class PatientRendering:
    """Patients' reports rendered in worker processes as soon as each patient is ready, while a run still gates
    the others; :func:`render_reports` given this object takes the patients rendered here and renders the rest.

    ``submit`` one patient at a time (its tubes and scores, as :func:`render_patient` takes them) into
    ``out_dir``, the folder :func:`render_reports` will write into. Up to ``workers`` spawned processes are
    started, on demand. A rendering that failed raises its error from :meth:`finished` (where a rendering of
    the whole run would have raised it). :meth:`close` ends the processes (queued patients are dropped).
    ``fork``: the processes are forked from the caller (see :func:`_pool`). The processes share the plots'
    frames they draw through a temporary folder in ``out_dir`` (``frames``, see :class:`SharedFrames`),
    removed by :meth:`close`."""

    def __init__(self, out_dir: Path, run_info: Mapping[str, Any] | None, *, workers: int = 2,
                 pdf: bool = True, fork: bool = False) -> None:
        self.out_dir, self.run_info, self.workers, self.pdf = Path(out_dir), dict(run_info or {}), workers, pdf
        self.fork = fork
        self.pool: Any = None
        self.frames: Path | None = None
        self.futures: dict[str, Any] = {}

    def submit(self, patient: str, results: Sequence[TubeResult], scores: ExperimentScores) -> None:
        if self.pool is None:
            make_dir(self.out_dir / "reports")
            self.frames = temporary_dir(self.out_dir, "frames")
            self.pool = _pool(self.workers, fork=self.fork)
        self.futures[patient] = self.pool.submit(render_patient, self.out_dir, list(results),
                                                 scores.for_patient(patient), self.run_info, pdf=self.pdf,
                                                 frames=self.frames)

    def finished(self) -> dict[str, PatientFiles]:
        """Wait for every patient submitted; their files by patient."""
        return {p: f.result() for p, f in self.futures.items()}

    def close(self) -> None:
        if self.pool is not None:
            _pools.shutdown(self.pool)
            self.pool = None
        if self.frames is not None:
            remove_path(self.frames)
            self.frames = None


def render_reports(out_dir: Path, results: list[TubeResult], scores: ExperimentScores, run_info: dict[str, Any], *,
                   patients: list[str] | None = None, gallery: bool | None = None,
                   pdf: bool = True, workers: int | None = None,
                   rendering: PatientRendering | None = None) -> ReportPaths:
    """Write ``reports/<patient>.html`` and ``.pdf`` and ``review/index.html`` under ``out_dir``.

    ``scores`` is the experiment's ``ExperimentScores`` (tables, fits); ``run_info`` holds version,
    template, command, date, checksums and manual adjustments. ``patients`` limits the patient reports
    (the gallery, which shows every tube, is then only rewritten when ``gallery=True``). Each patient is
    rendered by :func:`render_patient`; with ``workers`` > 1, by that many spawned processes, one patient at a
    time each. One process is the default (None). ``rendering`` holds patients already rendered into
    ``out_dir`` from the same results and scores (or still rendering, in its processes, which then render the
    rest): they are not drawn again.
    """
    import time

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    run = _run_view(scores, run_info)
    all_views = tube_views(results, scores, run)
    by_patient = patient_views(all_views, scores)
    if patients is not None:
        unknown = sorted(set(patients) - set(by_patient))
        if unknown:
            raise BatError(f"no tubes for patient(s) {', '.join(unknown)}", field="patients",
                           expected=f"one of {', '.join(sorted(by_patient))}")
    chosen = [p for p in sorted(by_patient) if patients is None or p in patients]
    with_gallery = gallery if gallery is not None else patients is None
    early = set(rendering.futures) if rendering is not None else set()
    todo = [p for p in sorted(by_patient) if p not in early and (p in chosen or with_gallery)]
    own_pool = rendering is None or rendering.pool is None
    workers = 1 if workers is None else workers
    pool = (_pool(workers) if own_pool and workers > 1 and len(todo) > 1
            else None if own_pool else rendering.pool)  # type: ignore[union-attr]
    tubes_of: dict[str, list[TubeResult]] = {}
    for r in results:
        tubes_of.setdefault(r.tube.patient, []).append(r)
    paths = ReportPaths()
    t1 = time.perf_counter()
    try:
        args = {p: (out_dir, tubes_of[p], scores if pool is None else scores.for_patient(p), run_info)
                for p in todo}
        kw: dict[str, dict[str, Any]] = {p: dict(pdf=pdf, write=p in chosen) for p in todo}
        if not own_pool and rendering is not None:  # drawn by the early rendering's processes: with their frames
            kw = {p: dict(k, frames=rendering.frames) for p, k in kw.items()}
        if pool is None:
            made = {p: render_patient(*args[p], **kw[p]) for p in todo}
        else:
            futures = {p: pool.submit(render_patient, *args[p], **kw[p]) for p in todo}
            made = {p: f.result() for p, f in futures.items()}
        if rendering is not None:
            made.update(rendering.finished())
    finally:
        if pool is not None and own_pool:
            _pools.shutdown(pool)
    t2 = time.perf_counter()
    for p in chosen:
        if made[p].html is not None:
            paths.html[p] = made[p].html  # type: ignore[assignment]
        if made[p].pdf is not None:
            paths.pdf[p] = made[p].pdf  # type: ignore[assignment]
    if with_gallery:
        for t in all_views:
            t.images = made[t.result.tube.patient].images.get(t.result.tube.file, [])
        links = {p: f"../reports/{report_filename(p)}.html" for p in by_patient}
        paths.gallery = write_gallery(out_dir / "review", all_views, run, links)
    t3 = time.perf_counter()
    phases = {k: sum(f.seconds.get(k, 0.0) for f in made.values()) for k in ("draw", "html", "pdf")}
    paths.seconds = {"prepare": t1 - t0, **phases, "patients": t2 - t1, "gallery": t3 - t2, "total": t3 - t0}
    return paths
