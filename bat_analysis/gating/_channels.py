"""Which of a file's channels each template dimension and panel marker is (one rule for gating and export).

:func:`resolve_channels` maps a template's gating dimensions (scatter names of :data:`SCATTER_DIMS`, panel
markers) to a sample's channels: scatter by :func:`bat_analysis.io.markers.find_scatter`, the time channel
by :func:`bat_analysis.io.markers.find_time`, markers by their name and aliases
(:func:`bat_analysis.io.markers.resolve_marker`). What may be missing is decided here, once:

* a scatter dimension the population gate uses must be found (``MarkerError``); another one that is
  absent gives a ``SCATTER_CHANNEL_MISSING`` warning and the gates on it are not applied;
* no time channel gives a ``NO_TIME_CHANNEL`` warning (acquisition QC is skipped);
* a marker that is required by the panel or used by a gate must be found (``MarkerError``); an optional
  marker that is absent is left out. Exchanging gates (export to FlowJo / Gating-ML, edited gates read
  back) needs only the gates' dimensions (``panel=False``): the panel's other markers are not looked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MarkerError
from ..records import Flag
from .templates import SCATTER_DIMS, Template

__all__ = ["resolve_channels"]


def resolve_channels(sample: Any, template: Template, source: str, *, panel: bool = True
                     ) -> tuple[dict[str, Any], list[Flag]]:
    """Channel of every gate dimension and (with ``panel``) panel marker, and warnings about those left out.

    ``sample`` has ``channels`` (:class:`bat_analysis.io.fcs.Channel`); ``source`` names the file in
    messages. Returns ``{dimension or marker: channel}`` and the flags described in the module docstring.
    """
    from ..io.markers import find_scatter, find_time, resolve_marker

    needed = {d for g in template.gates for d in g.dims}
    found: dict[str, Any] = {}
    flags: list[Flag] = []
    for dim in sorted(needed & set(SCATTER_DIMS)):
        if dim == "Time":
            ch = find_time(sample.channels)
            if ch is None:
                flags.append(Flag("NO_TIME_CHANNEL", "warn",
                                  f"{Path(source).name}: no time channel; acquisition QC skipped"))
                continue
            found[dim] = ch
        else:
            kind, measure = dim.split("-")
            try:
                found[dim] = find_scatter(sample.channels, kind, measure, source=source)
            except MarkerError as exc:
                if dim in template.gate(template.population).dims:
                    raise
                flags.append(Flag("SCATTER_CHANNEL_MISSING", "warn",
                                  f"{Path(source).name}: no {dim} channel; gates on it are not applied "
                                  f"({str(exc).splitlines()[0]})"))
    for marker, spec in template.panel.items():
        if not panel and marker not in needed:
            continue
        try:
            found[marker] = resolve_marker(sample.channels, marker, (marker, *spec.aliases), source=source)
        except MarkerError:
            if spec.required or marker in needed:
                raise
    return found, flags
