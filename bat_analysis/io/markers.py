"""Logical markers, their aliases, and resolution of markers, scatter and time channels in an FCS file.

A *panel* maps each logical marker (``CCR3``) to the names labs give it (``CD193``). Resolution looks at
``$PnS`` first, then ``$PnN``, case-insensitively, and tolerates decorations such as ``"CD193 (CCR3)"``,
``"CD63-FITC"``, ``"BV421-A :: CCR3"`` or ``"FITC-A <CD63>"``: a label matches an alias when the alias's
words appear, contiguously, among the label's words (``HLA-DR`` matches ``HLADR APC`` and ``HLA DR-APC``
but ``CD3`` never matches ``CD34``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from ..errors import MarkerError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .fcs import Channel

#: The markers of the usual BAT panels and the names they go by.
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "CCR3": ("CCR3", "CD193"),
    "CD203c": ("CD203c", "ENPP3", "CD203"),
    "HLA-DR": ("HLA-DR", "HLA DR", "HLADR", "MHCII", "MHC-II", "MHC II"),
    "CD63": ("CD63", "LAMP-3", "LAMP3"),
    "CD123": ("CD123", "IL3RA", "IL-3RA", "IL3R"),
    "CD107a": ("CD107a", "LAMP-1", "LAMP1"),
    "avidin": ("avidin", "AV"),
    "CD45": ("CD45",),
    "CD3": ("CD3",),
    "CD294": ("CD294", "CRTH2", "CRTh2"),
    "FceRI": ("FceRI", "FcERIa", "FcεRI", "FcERI", "FcER1"),
    "IgE": ("IgE",),
    "CD14": ("CD14",),
    "CD16": ("CD16",),
    "CD19": ("CD19",),
    "CD41": ("CD41",),
    "viability": ("viability", "live dead", "livedead", "7-AAD", "7AAD", "DAPI", "PI"),
}

_WORD = re.compile(r"[a-z0-9\u00c0-\uffff]+")
_MAX_WINDOW = 4


@lru_cache(maxsize=4096)
def _words(label: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(label.casefold()))


def label_words(label: str) -> list[str]:
    """Lower-case alphanumeric words of a channel label (``"BV421-A :: CCR3"`` -> ``bv421 a ccr3``)."""
    return list(_words(label))


def label_matches(label: str, alias: str) -> bool:
    """Whether ``alias`` names ``label``: the alias's words, joined, equal a contiguous run of the label's words."""
    words = _words(label)
    target = "".join(_words(alias))
    if not words or not target:
        return False
    for i in range(len(words)):
        joined = ""
        for j in range(i, min(len(words), i + _MAX_WINDOW)):
            joined += words[j]
            if joined == target:
                return True
            if len(joined) >= len(target):
                break
    return False


@dataclass(frozen=True)
class Panel:
    """Logical markers and their aliases, e.g. ``Panel({"CCR3": ("CCR3", "CD193")})``."""

    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ALIASES))

    def names_for(self, marker: str) -> tuple[str, ...]:
        """The marker's own name followed by its aliases (case-insensitive lookup of the marker)."""
        for key, names in self.aliases.items():
            if key.casefold() == marker.casefold():
                return (key, *[n for n in names if n != key])
        for key, names in self.aliases.items():  # an alias given instead of the logical name
            if any(n.casefold() == marker.casefold() for n in names):
                return (marker, key, *[n for n in names if n.casefold() != marker.casefold() and n != key])
        return (marker,)

    def identify(self, channel: Channel) -> str | None:
        """The logical marker a channel carries according to its ``$PnS`` (else ``$PnN``), or None."""
        for label in (channel.pns, channel.pnn):
            if not label:
                continue
            found = [m for m, names in self.aliases.items()
                     if any(label_matches(label, n) for n in (m, *names))]
            if len(found) == 1:
                return found[0]
            if found:
                return None
        return None


DEFAULT_PANEL = Panel()


def describe_channels(channels: Sequence[Channel]) -> str:
    """``"FSC-A, FITC-A (CD63), ..."``: the channels of a file, for error messages."""
    return ", ".join(f"{c.pnn} ({c.pns})" if c.pns else c.pnn for c in channels)


def _prefer_area(matches: list[Channel]) -> list[Channel]:
    """Among several matching channels, keep the area (-A) ones when the others are height/width."""
    area = [c for c in matches if c.pnn.upper().endswith("-A")]
    return area if area else matches


def resolve_marker(channels: Sequence[Channel], marker: str, aliases: Iterable[str] | None = None, *,
                   source: str | None = None) -> Channel:
    """The one channel carrying ``marker`` (or one of ``aliases``; default: the default panel's aliases).

    ``$PnS`` is matched first, then ``$PnN``. When several channels match and only one is an area
    (``-A``) channel, that one is taken. Raises ``MarkerError`` (listing the file's channels) when the
    marker is absent or ambiguous.
    """
    names = tuple(aliases) if aliases is not None else DEFAULT_PANEL.names_for(marker)
    if marker not in names:
        names = (marker, *names)
    for attr in ("pns", "pnn"):
        matches = [c for c in channels
                   if getattr(c, attr) and any(label_matches(getattr(c, attr), n) for n in names)]
        if len(matches) > 1:
            matches = _prefer_area(matches)
        if len(matches) == 1:
            return matches[0]
        if matches:
            which = ", ".join(f"{c.pnn} ({c.pns})" if c.pns else c.pnn for c in matches)
            raise MarkerError(f"marker {marker!r} is ambiguous: it matches {which}; the file has "
                              f"channels {describe_channels(channels)}",
                              source=source, field=f"${'PnS' if attr == 'pns' else 'PnN'}",
                              expected=f"exactly one channel named {' | '.join(names)}")
    raise MarkerError(f"marker {marker!r} not found; the file has channels {describe_channels(channels)}",
                      source=source, field="$PnS/$PnN",
                      expected=f"a channel named {' | '.join(names)}")


_SCATTER_KIND = {"fsc": "FSC", "fs": "FSC", "forward": "FSC", "ssc": "SSC", "ss": "SSC", "side": "SSC"}
_MEASURE = {"a": "A", "area": "A", "int": "A", "integral": "A", "h": "H", "height": "H", "peak": "H",
            "pk": "H", "w": "W", "width": "W", "tof": "W"}
_SCALE_WORDS = {"lin", "log", "linear"}
_COMPOUND = re.compile(r"^(lin|log)?([ahw])(lin|log)?$")


@dataclass(frozen=True)
class ScatterName:
    """How a channel name reads as a scatter parameter: kind (FSC/SSC), measure (A/H/W or None), log?"""

    kind: str
    measure: str | None
    log: bool
    extra: int


def parse_scatter_name(pnn: str) -> ScatterName | None:
    """Recognise ``FSC-A``, ``SSC-H``, ``FS INT``, ``SS PEAK``, ``FSC-Height``, ``FSC LinA``, ``SSC-HLog``..."""
    words = label_words(pnn)
    if not words:
        return None
    first = words[0]
    if first in ("fsc", "ssc"):
        kind, rest = _SCATTER_KIND[first], words[1:]
    elif first in ("fs", "ss") and (len(words) == 1 or words[1] in _MEASURE or words[1] in _SCALE_WORDS):
        kind, rest = _SCATTER_KIND[first], words[1:]
    elif first in ("forward", "side") and len(words) > 1 and words[1] == "scatter":
        kind, rest = _SCATTER_KIND[first], words[2:]
    else:
        return None
    measure: str | None = None
    log = False
    extra = 0
    for w in rest:
        if w in _MEASURE and measure is None:
            measure = _MEASURE[w]
        elif w in _SCALE_WORDS:
            log = log or w == "log"
        elif (m := _COMPOUND.match(w)) and measure is None:
            measure = m.group(2).upper()
            log = log or "log" in (m.group(1) or "", m.group(3) or "")
        else:
            extra += 1
    return ScatterName(kind, measure, log, extra)


def find_scatter(channels: Sequence[Channel], kind: str, measure: str = "A", *,
                 source: str | None = None) -> Channel:
    """The scatter channel of ``kind`` (``"FSC"``/``"SSC"``) and ``measure`` (``"A"``, ``"H"``, ``"W"``).

    A channel without a stated measure (``FSC``, ``FS``) stands for any measure when no explicit one exists.
    Linear channels are preferred to log ones, plain names to ones with extra words (``SSC-B-A``).
    """
    kind = kind.upper()
    measure = measure.upper()
    parsed = [(c, parse_scatter_name(c.pnn)) for c in channels]
    of_kind = [(c, s) for c, s in parsed if s is not None and s.kind == kind]
    exact = [(c, s) for c, s in of_kind if s.measure == measure]
    pool = exact or [(c, s) for c, s in of_kind if s.measure is None]
    if not pool:
        raise MarkerError(f"no {kind}-{measure} scatter channel; the file has channels {describe_channels(channels)}",
                          source=source, field="$PnN", expected=f"a channel such as {kind}-{measure}")
    best = min((s.extra, s.log) for _, s in pool)
    chosen = [c for c, s in pool if (s.extra, s.log) == best]
    if len(chosen) > 1:
        raise MarkerError(f"{kind}-{measure} is ambiguous: {', '.join(c.pnn for c in chosen)}",
                          source=source, field="$PnN", expected=f"one {kind}-{measure} channel")
    return chosen[0]


def is_time_name(pnn: str) -> bool:
    """Whether a ``$PnN`` names the time channel (``Time``, ``TIME``, ``HDR-T``, ``Time (s)``)."""
    words = label_words(pnn)
    if not words:
        return False
    if words[0] == "time" and all(w in ("s", "ms", "sec", "seconds", "us", "a", "lin") for w in words[1:]):
        return True
    return words == ["hdr", "t"]


def find_time(channels: Sequence[Channel]) -> Channel | None:
    """The time channel, or None. An exact ``Time``/``TIME`` wins over other spellings."""
    found = [c for c in channels if is_time_name(c.pnn)]
    exact = [c for c in found if c.pnn.strip().casefold() == "time"]
    if exact:
        return exact[-1]
    return found[0] if found else None
