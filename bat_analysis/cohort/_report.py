"""The cohort report: ``cohort.html`` (self-contained) and ``cohort.pdf`` (A4 pages drawn with matplotlib).

Contract: ``write_report(out_dir, tables, meta)`` writes both files atomically and returns their paths. ``tables``
holds the frames written as CSV (``table1``, ``roc``, ``roc_points``, ``roc_tests``, ``associations``, ``strata``,
``longitudinal``); ``meta`` holds the call (``command``, ``outcome``, ``notes`` …). The report shows Table 1, ROC
curves with their AUC and DeLong interval, a forest plot of the adjusted odds ratios, stratum bars (rate per
stratum × group) and outcome trajectories (model mean change with interval per group and week). Every number it
plots or prints is read from those frames, i.e. from the CSV files beside it.

Hostile text (column names, values, file names from the sheets) is HTML-escaped in the page; figures are PNG
``data:`` URIs so the page loads nothing from anywhere; matplotlib draws user text with ``text.parse_math`` off,
so ``$…$`` in a name is printed as it is, never interpreted as mathtext.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .._outputs import atomic_path, atomic_write_text, format_cell  # noqa: E402

A4 = (8.27, 11.69)
RC = {"text.parse_math": False, "font.size": 8, "svg.fonttype": "none"}
COLOURS = plt.get_cmap("tab10").colors


def _plain(value: float, _pos: int | None = None) -> str:
    return f"{value:g}"


def _plain_minor(value: float, _pos: int | None = None) -> str:
    mantissa = value / 10 ** np.floor(np.log10(value)) if value > 0 else 0
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


def _fig(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def roc_figure(roc: pd.DataFrame, points: pd.DataFrame) -> Figure | None:
    if roc.empty:
        return None
    with matplotlib.rc_context(RC):
        fig = _fig(5.2, 4.6)
        ax = fig.add_subplot(1, 1, 1)
        for i, r in enumerate(roc.itertuples(index=False)):
            pts = points[points["predictor"] == r.predictor]
            x = np.concatenate([[0.0], 1.0 - pts["specificity"].to_numpy(dtype=float)])
            y = np.concatenate([[0.0], pts["sensitivity"].to_numpy(dtype=float)])
            ax.plot(x, y, color=COLOURS[i % 10], lw=1.2,
                    label=f"{r.predictor}: AUC {r.auroc:.3f} ({r.auroc_ci_low:.3f}–{r.auroc_ci_high:.3f})")
            ax.plot([1 - r.specificity], [r.sensitivity], "o", color=COLOURS[i % 10], ms=4)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        ax.set_xlabel("1 − specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"ROC curves for {roc['outcome'].iloc[0]}\n(AUC with DeLong 95% CI; dot = Youden cut-off)")
        ax.legend(loc="lower right", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
    return fig


def forest_figure(assoc: pd.DataFrame) -> Figure | None:
    ok = assoc.dropna(subset=["or_per_sd"]) if not assoc.empty else assoc
    if ok.empty:
        return None
    with matplotlib.rc_context(RC):
        fig = _fig(5.2, 1.4 + 0.45 * len(ok))
        ax = fig.add_subplot(1, 1, 1)
        ys = np.arange(len(ok))[::-1]
        for y, r in zip(ys, ok.itertuples(index=False)):
            ax.plot([r.or_ci_low, r.or_ci_high], [y, y], color="#1f4e79")
            ax.plot([r.or_per_sd], [y], "s", color="#1f4e79")
        ax.axvline(1.0, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))  # the default log labels are mathtext
        ax.xaxis.set_minor_formatter(FuncFormatter(_plain_minor))
        ax.set_yticks(ys, [f"{p}\n(q = {q:.2g})" for p, q in zip(ok["predictor"], ok["q_value"])])
        cov = ok["covariates"].iloc[0]
        ax.set_xlabel("odds ratio per SD of the predictor (95% Wald CI)")
        ax.set_title(f"Odds ratios for {ok['outcome'].iloc[0]}\n"
                     + (f"adjusted for {cov.replace(';', ', ')}" if cov else "unadjusted"))
    return fig


def strata_figure(strata: pd.DataFrame) -> Figure | None:
    if strata.empty:
        return None
    names = list(dict.fromkeys(strata["stratification"]))
    with matplotlib.rc_context(RC):
        fig = _fig(5.2, 2.6 * len(names))
        for k, name in enumerate(names):
            ax = fig.add_subplot(len(names), 1, k + 1)
            part = strata[strata["stratification"] == name]
            strata_levels = list(dict.fromkeys(part["stratum"]))
            groups = list(dict.fromkeys(part["group"]))
            width = 0.8 / max(len(groups), 1)
            for j, g in enumerate(groups):
                sub = part[part["group"] == g].set_index("stratum").reindex(strata_levels)
                xs = np.arange(len(strata_levels)) + (j - (len(groups) - 1) / 2) * width
                ax.bar(xs, 100 * sub["rate"].to_numpy(dtype=float), width, color=COLOURS[j % 10], label=str(g))
                for x, e, n in zip(xs, sub["events"], sub["n"]):
                    if pd.notna(n):
                        ax.text(x, 1, f"{int(e)}/{int(n)}", ha="center", va="bottom", fontsize=6)
            ax.set_xticks(np.arange(len(strata_levels)), [str(s) for s in strata_levels])
            ax.set_ylabel("rate, %")
            p_int = part["interaction_p"].dropna()
            ax.set_title(f"{name}" + (f" (interaction p = {p_int.iloc[0]:.2g})" if len(p_int) else ""))
            ax.legend(fontsize=7)
    return fig


def trajectory_figure(longi: pd.DataFrame) -> Figure | None:
    if longi.empty:
        return None
    variables = list(dict.fromkeys(longi["variable"]))
    with matplotlib.rc_context(RC):
        fig = _fig(5.2, 2.4 * len(variables))
        for k, var in enumerate(variables):
            ax = fig.add_subplot(len(variables), 1, k + 1)
            part = longi[longi["variable"] == var]
            for j, g in enumerate(dict.fromkeys(part["group"])):
                sub = part[part["group"] == g].sort_values("week")
                w = np.concatenate([[0.0], sub["week"].to_numpy(dtype=float)])
                has_model = sub["model_change"].notna().all()
                col = "model_change" if has_model else "mean_change"
                m = np.concatenate([[0.0], sub[col].to_numpy(dtype=float)])
                ax.plot(w, m, "o-", color=COLOURS[j % 10], label=str(g), ms=3)
                if has_model:
                    lo = np.concatenate([[0.0], sub["model_ci_low"].to_numpy(dtype=float)])
                    hi = np.concatenate([[0.0], sub["model_ci_high"].to_numpy(dtype=float)])
                    ax.fill_between(w, lo, hi, color=COLOURS[j % 10], alpha=0.15, lw=0)
            ax.axhline(0, color="grey", lw=0.6, ls=":")
            ax.set_xlabel("week")
            ax.set_ylabel(f"change in {var}")
            ax.set_title(f"{var}: change from baseline (mixed model, 95% CI)")
            ax.legend(fontsize=7)
    return fig


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table_html(df: pd.DataFrame, caption: str) -> str:
    if df.empty:
        return f"<p class='empty'>{html.escape(caption)}: nothing to show.</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False, name=None))
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse;margin:1em 0;"
       "font-size:0.8em}td,th{border:1px solid #bbb;padding:2px 6px;text-align:left}caption{font-weight:bold;"
       "text-align:left}img{max-width:100%}.notes li{color:#8a4b00}")


def render_html(tables: Mapping[str, pd.DataFrame], figures: Mapping[str, Figure | None],
                meta: Mapping[str, Any]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
             "style-src 'unsafe-inline'\">",
             f"<title>Cohort analysis: {esc(str(meta.get('outcome', '')))}</title><style>{CSS}</style></head><body>",
             f"<h1>Cohort analysis: {esc(str(meta.get('outcome', '')))}</h1>",
             f"<p>{esc(str(meta.get('summary', '')))}</p>",
             f"<p><code>{esc(str(meta.get('command', '')))}</code></p>"]
    notes = meta.get("notes") or []
    if notes:
        parts.append("<h2>Notes</h2><ul class='notes'>" + "".join(f"<li>{esc(str(n))}</li>" for n in notes)
                     + "</ul>")
    sections = [("Table 1: baseline characteristics", "table1", None),
                ("ROC curves", "roc", "roc"), ("Paired DeLong tests", "roc_tests", None),
                ("Adjusted odds ratios", "associations", "forest"), ("Risk strata", "strata", "strata"),
                ("Outcomes over time", "longitudinal", "trajectory")]
    for title, key, fig_key in sections:
        parts.append(f"<h2>{esc(title)}</h2>")
        fig = figures.get(fig_key) if fig_key else None
        if fig is not None:
            parts.append(f"<img alt='{esc(title)}' src='{_png(fig)}'>")
        parts.append(_table_html(tables.get(key, pd.DataFrame()), f"{key}.csv"))
    parts.append("</body></html>")
    return "\n".join(parts)


def _text_page(pdf: PdfPages, title: str, lines: list[str]) -> None:
    per_page = 70
    for start in range(0, max(len(lines), 1), per_page):
        with matplotlib.rc_context(RC):
            fig = _fig(*A4)
            fig.text(0.06, 0.96, title, fontsize=12, weight="bold", va="top")
            fig.text(0.06, 0.93, "\n".join(lines[start:start + per_page]), family="monospace", fontsize=6.5,
                     va="top")
            pdf.savefig(fig)


def _table_lines(df: pd.DataFrame, width: int = 150) -> list[str]:
    if df.empty:
        return ["(nothing to show)"]
    cells = [[str(c) for c in df.columns]] + [[format_cell(v)[:28] for v in r]
                                              for r in df.itertuples(index=False, name=None)]
    widths = [max(len(r[j]) for r in cells) for j in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths))[:width] for r in cells]


def write_report(out_dir: str | Path, tables: Mapping[str, pd.DataFrame], meta: Mapping[str, Any]) -> list[Path]:
    """Write ``cohort.html`` and ``cohort.pdf`` into ``out_dir`` (see the module contract)."""
    out = Path(out_dir)
    figures = {"roc": roc_figure(tables["roc"], tables["roc_points"]),
               "forest": forest_figure(tables["associations"]),
               "strata": strata_figure(tables["strata"]),
               "trajectory": trajectory_figure(tables["longitudinal"])}
    html_path = atomic_write_text(out / "cohort.html", render_html(tables, figures, meta))
    pdf_path = out / "cohort.pdf"
    with atomic_path(pdf_path) as tmp:
        with PdfPages(tmp) as pdf:
            lines = [str(meta.get("summary", "")), str(meta.get("command", "")), ""] + \
                [f"note: {n}" for n in meta.get("notes") or []] + [""] + _table_lines(tables["table1"])
            _text_page(pdf, f"Cohort analysis: {meta.get('outcome', '')}", lines)
            for key in ("roc", "forest", "strata", "trajectory"):
                if figures[key] is not None:
                    pdf.savefig(figures[key])
            stats_lines = []
            for key in ("roc", "roc_tests", "associations", "strata", "longitudinal"):
                stats_lines += [f"{key}.csv"] + _table_lines(tables[key].drop(columns=["model"], errors="ignore"))\
                    + [""]
            _text_page(pdf, "Tables", stats_lines)
            info = pdf.infodict()
            info["Title"] = f"Cohort analysis: {meta.get('outcome', '')}"
            info["CreationDate"] = None
    return [html_path, pdf_path]


__all__ = ["write_report", "render_html", "roc_figure", "forest_figure", "strata_figure", "trajectory_figure"]
