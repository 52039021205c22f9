"""Describe an FCS file for people and scripts: version, cytometer, events, data sets, channels, spillover."""

from __future__ import annotations

import os
from typing import Any

from .fcs import FcsSample, read_fcs
from .markers import find_time, label_words, parse_scatter_name

_ACQUISITION_KEYS = ("$DATE", "$BTIM", "$ETIM", "$SRC", "$FIL", "TUBE NAME", "$SMNO", "$OP", "$INST")


_OTHER_WORDS = {"time", "count", "width", "event", "pulse", "hdr", "msw", "lsw", "index", "sort", "gate", "tof"}


def channel_kind(pnn: str, is_time: bool) -> str:
    """``"time"``, ``"scatter"``, ``"other"`` (width, counters, secondary time words) or ``"fluorescence"``."""
    if is_time:
        return "time"
    if parse_scatter_name(pnn) is not None:
        return "scatter"
    if _OTHER_WORDS & set(label_words(pnn)):
        return "other"
    return "fluorescence"


def describe_sample(sample: FcsSample) -> dict[str, Any]:
    """A JSON-serialisable description of a read ``FcsSample``."""
    kw = sample.keywords
    time_ch = find_time(sample.channels)
    channels = []
    for c in sample.channels:
        channels.append({
            "index": c.index + 1,
            "pnn": c.pnn,
            "pns": c.pns,
            "marker": c.marker,
            "kind": channel_kind(c.pnn, time_ch is not None and c.index == time_ch.index),
            "range": c.range,
            "bits": c.bits,
            "gain": c.gain,
            "log_decades": c.log_decades,
        })
    spill: dict[str, Any] | None = None
    if sample.spillover is not None:
        spill = {
            "keyword": sample.spillover.keyword,
            "channels": list(sample.spillover.channels),
            "matrix": [[float(v) for v in row] for row in sample.spillover.matrix],
        }
    return {
        "file": str(sample.path),
        "version": sample.version,
        "cytometer": sample.cytometer,
        "n_events": sample.n_events,
        "n_channels": len(sample.channels),
        "n_datasets": sample.n_datasets,
        "dataset": sample.dataset,
        "datatype": kw.get("$DATATYPE", "").strip().upper(),
        "byteorder": kw.get("$BYTEORD", "").strip(),
        "acquisition": {k: kw[k].strip() for k in _ACQUISITION_KEYS if k in kw and kw[k].strip()},
        "channels": channels,
        "spillover": spill,
        "spillover_error": sample.spillover_error,
        "warnings": list(sample.warnings),
    }


def describe_fcs(path: str | os.PathLike[str], *, dataset: int = 0) -> dict[str, Any]:
    """Read ``path`` and describe it (raises ``FcsFormatError`` for a file it refuses)."""
    return describe_sample(read_fcs(path, dataset=dataset))


def render_description(info: dict[str, Any]) -> None:
    """Print a description made by ``describe_fcs`` as rich tables.

    Everything read from the file (names, keywords, markers, warnings) is printed as data: as
    ``textsafe.rich_text`` (never parsed as rich markup, control characters and escape sequences shown
    escaped)."""
    from rich.console import Console
    from rich.table import Table

    from .._textsafe import rich_text as text

    console = Console()
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("file", text(info["file"]))
    summary.add_row("version", text(f"FCS {info['version']}"))
    summary.add_row("cytometer", text(info["cytometer"] or "-"))
    summary.add_row("events", f"{info['n_events']:,}")
    summary.add_row("data sets", f"{info['n_datasets']} (showing {info['dataset']})")
    summary.add_row("data", text(f"{info['datatype']}, byte order {info['byteorder'] or '-'}"))
    for key, value in info["acquisition"].items():
        summary.add_row(text(key), text(value))
    console.print(summary)

    table = Table(title="channels")
    for name in ("#", "$PnN", "$PnS", "marker", "kind", "range", "bits", "gain", "log decades"):
        table.add_column(name, justify="right" if name in ("#", "range", "bits", "gain", "log decades") else "left",
                         overflow="fold")
    for c in info["channels"]:
        table.add_row(str(c["index"]), text(c["pnn"]), text(c["pns"] or ""), text(c["marker"] or ""),
                      "fluor" if c["kind"] == "fluorescence" else c["kind"],
                      f"{c['range']:g}", "" if c["bits"] is None else str(c["bits"]), f"{c['gain']:g}",
                      f"{c['log_decades']:g}")
    console.print(table)

    spill = info["spillover"]
    if spill is not None and len(spill["channels"]) > 8:
        off = [abs(v) for i, row in enumerate(spill["matrix"]) for j, v in enumerate(row) if i != j]
        console.print(text(f"spillover ({spill['keyword']}): {len(spill['channels'])}x{len(spill['channels'])} "
                           f"over {', '.join(spill['channels'])}; largest off-diagonal {max(off, default=0.0):.4f} "
                           f"(--json for the matrix)"))
    elif spill is not None:
        st = Table(title=text(f"spillover ({spill['keyword']})"))
        st.add_column("")
        for name in spill["channels"]:
            st.add_column(text(name), justify="right")
        for name, row in zip(spill["channels"], spill["matrix"]):
            st.add_row(text(name), *(f"{v:.4f}" for v in row))
        console.print(st)
    else:
        console.print(text("spillover: " + (info["spillover_error"] or "none")))
    for w in info["warnings"]:
        console.print(text("warning: ", style="yellow") + text(w))
