"""Concentration units of allergen tubes (docs/method.md, "Concentration units").

A layout's ``unit`` cell is parsed with pint into a concentration unit of one of these kinds:

* mass per volume (pg/mL, ng/mL, µg/mL, mg/mL, mg/L, ...), all interconvertible;
* amount of substance per volume (nmol/L, µM, ...), interconvertible among themselves;
* an allergen activity per volume: SQ-U/mL (``SQ-U``, ``SQU``, ``SQ``), BU/mL (``BU``), AU/mL (``AU``),
  kU/L (``kU``, ``kUA``, ``U``, ``UA``). Each activity is its own dimension: SQ-U converts only to SQ-U
  (e.g. SQ-U/mL ↔ SQ-U/L), never to BU, AU, kU or a mass.

A cell that is no concentration unit as written, but one of the usual mass or amount spellings (``ng/mL``,
``mg/dL``, ``nM``, ...) but for capitals, is read as that spelling: ``NG/ML`` (a sheet typed in capitals),
``Ug/Ml``, ``NM`` (nanomolar: a length is no concentration).

``parse_unit`` gives the parsed unit (or raises ``UnitProblem`` saying what was expected);
``reference_units`` chooses, per patient × allergen, the unit its numbers are reported in (the most common
unit of the untreated arm's tubes, a tie going to the unit of the lowest concentration; all its tubes when
there is no untreated arm); ``convert`` expresses a concentration in another unit, rounded to 12 significant digits so
that 0.1 µg/mL becomes exactly 100 ng/mL (the same experiment written in one unit gives the same numbers).
A tube without a unit converts only to "no unit" (numbers are then taken as they are).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

__all__ = ["UnitProblem", "parse_unit", "convert", "convertible", "canonical", "reference_unit", "reference_units",
           "EXPECTED_UNITS"]

EXPECTED_UNITS = ("a mass per volume such as pg/mL, ng/mL, µg/mL or mg/mL, or an allergen activity per volume: "
                  "SQ-U/mL, BU/mL, BAU/mL, AU/mL or kU/L")

# activity spellings (case-insensitive, whole token) → the registry's unit of its own dimension
_ACTIVITY_TOKENS = {
    "sq-u": "sq_unit", "sq_u": "sq_unit", "squ": "sq_unit", "sq": "sq_unit", "sq-e": "sq_unit",
    "bu": "bioequivalent_unit", "bau": "bioequivalent_allergy_unit",
    "au": "allergy_unit",
    "ku": "kiloallergen_unit", "kua": "kiloallergen_unit", "u": "allergen_unit", "ua": "allergen_unit",
}
_ACTIVITY_DEFINITIONS = (
    "sq_unit = [sq_activity]",
    "bioequivalent_unit = [bu_activity]",
    "bioequivalent_allergy_unit = [bau_activity]",
    "allergy_unit = [au_activity]",
    "allergen_unit = [ku_activity]",
)
_ACTIVITY_LABEL = {"[sq_activity]": "SQ-U", "[bu_activity]": "BU", "[bau_activity]": "BAU", "[au_activity]": "AU",
                   "[ku_activity]": "kU"}
_MAX_UNIT_CHARS = 40


class UnitProblem(ValueError):
    """A unit cell that is not a concentration unit, or two units that do not convert into each other."""


# The registry holds only what a concentration is written with: pint's own definitions (its default_en.txt) of
# the decimal prefixes, the metre, gram, mole, litre, cubic centimetre and molar. Building pint's whole default
# registry takes ~0.12 s of CPU in every run before its first tube is gated; this one ~4 ms.
# tests/test_analysis_units.py checks these definitions against pint's default registry.
_METRIC_DEFINITIONS = (
    "quecto- = 1e-30 = q-", "ronto- = 1e-27 = r-", "yocto- = 1e-24 = y-", "zepto- = 1e-21 = z-",
    "atto- = 1e-18 = a-", "femto- = 1e-15 = f-", "pico- = 1e-12 = p-", "nano- = 1e-9 = n-",
    "micro- = 1e-6 = µ- = μ- = u- = mu- = mc-", "milli- = 1e-3 = m-", "centi- = 1e-2 = c-", "deci- = 1e-1 = d-",
    "deca- = 1e+1 = da- = deka-", "hecto- = 1e2 = h-", "kilo- = 1e3 = k-", "mega- = 1e6 = M-", "giga- = 1e9 = G-",
    "tera- = 1e12 = T-", "peta- = 1e15 = P-", "exa- = 1e18 = E-", "zetta- = 1e21 = Z-", "yotta- = 1e24 = Y-",
    "ronna- = 1e27 = R-", "quetta- = 1e30 = Q-",
    "meter = [length] = m = metre", "gram = [mass] = g", "mole = [substance] = mol",
    "liter = decimeter ** 3 = l = L = ℓ = litre", "cubic_centimeter = centimeter ** 3 = cc",
    "molar = mole / liter = M",
)


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    import pint

    ureg = pint.UnitRegistry(None, autoconvert_offset_to_baseunit=False)
    for line in _METRIC_DEFINITIONS + _ACTIVITY_DEFINITIONS:
        ureg.define(line)
    return ureg


def _normalise(text: str) -> str:
    """The cell in pint's words: µ/μ/u as micro, activity tokens as the registry's names, ``per`` as /."""
    t = text.strip().replace("μ", "µ").replace("µ", "u").replace("·", "*")
    t = re.sub(r"\s*/\s*", "/", t)
    t = re.sub(r"(?i)\bper\b", "/", t)

    def token(m: re.Match[str]) -> str:
        return _ACTIVITY_TOKENS.get(m.group(0).casefold(), m.group(0))

    # an activity token stands before a '/', at the start, and is not part of a longer word
    return re.sub(r"(?i)(?<![A-Za-z_])(sq[-_]?u|sq-e|sq|bau|bu|au|kua|ku|ua|u)(?=\s*(/|\*|$))", token, t)


def _dimension_kind(dims: dict[str, float]) -> str | None:
    """'mass', 'substance' or an activity label when ``dims`` is that per volume, else None."""
    d = dict(dims)
    if d.pop("[length]", None) != -3 or len(d) != 1:
        return None
    (name, power), = d.items()
    if power != 1:
        return None
    if name == "[mass]":
        return "mass"
    if name == "[substance]":
        return "substance"
    return _ACTIVITY_LABEL.get(name)


# the usual spellings of mass and amount concentrations, matched regardless of capitals when a cell is not a
# concentration unit as written ("NG/ML" from a sheet in capitals; "ug/ml"): none of them is another's but for case
_USUAL_SPELLINGS = ("pg/mL", "ng/mL", "ug/mL", "mg/mL", "g/mL", "pg/L", "ng/L", "ug/L", "mg/L", "g/L", "ng/uL",
                    "ug/uL", "mg/dL", "g/dL", "pmol/L", "nmol/L", "umol/L", "mmol/L", "pM", "nM", "uM", "mM")
_BY_FOLDED = {s.casefold(): s for s in _USUAL_SPELLINGS}


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> tuple[Any, str]:
    if len(text) > _MAX_UNIT_CHARS:
        raise UnitProblem(f"{text[:_MAX_UNIT_CHARS]!r}… is too long for a unit")
    try:
        return _parse_as_written(text, _normalise(text))
    except UnitProblem:
        usual = _BY_FOLDED.get(_normalise(text).casefold())
        if usual is None:
            raise
        return _parse_as_written(text, usual)


def _parse_as_written(text: str, spelling: str) -> tuple[Any, str]:
    """(unit, kind) of ``spelling`` (pint's words for the cell ``text``), or the UnitProblem naming ``text``."""
    ureg = _registry()
    try:
        unit = ureg.parse_units(spelling)
    except Exception as exc:  # pint raises its own errors, and also AttributeError/TypeError/ValueError on junk
        raise UnitProblem(f"{text!r} is not a unit ({type(exc).__name__})") from None
    kind = _dimension_kind(dict(unit.dimensionality))
    if kind is None:
        raise UnitProblem(f"{text!r} is not a concentration unit (it is {unit.dimensionality or 'a number'})")
    return unit, kind


def parse_unit(text: str | None) -> tuple[Any, str] | None:
    """(pint unit, kind) of a unit cell: kind is ``mass``, ``substance``, ``SQ-U``, ``BU``, ``BAU``, ``AU`` or ``kU``
    (each a per-volume concentration); None for an empty cell. Raises ``UnitProblem``."""
    if text is None or not text.strip():
        return None
    return _parse(text.strip())


def convertible(unit: str | None, to: str | None) -> bool:
    """Whether a concentration in ``unit`` can be written in ``to`` (both parsed without problem)."""
    a, b = parse_unit(unit), parse_unit(to)
    if a is None or b is None:
        return a is None and b is None
    return a[1] == b[1]


def convert(value: float, unit: str | None, to: str | None) -> float:
    """``value`` in ``unit`` written in ``to``, to 12 significant digits; unchanged when the units are the
    same text. Raises ``UnitProblem`` when they do not convert."""
    if (unit or "").strip() == (to or "").strip():
        return float(value)
    if not convertible(unit, to):
        raise UnitProblem(f"{unit or 'no unit'!r} cannot be converted to {to or 'no unit'!r}")
    a, b = parse_unit(unit), parse_unit(to)
    assert a is not None and b is not None
    factor = float((1.0 * a[0]).to(b[0]).magnitude)
    return float(f"{float(value) * factor:.12g}")


def reference_unit(points: Iterable[tuple[str | None, bool, float]]) -> str | None:
    """The unit a patient's allergen is reported in, from its tubes' (unit, untreated?, concentration): the
    most common unit among the untreated tubes (all tubes when none is untreated), a tie going to the unit of
    the lowest concentration (then to the unit's text): independent of the order the tubes come in."""
    pts = [((u or "").strip() or None, bool(n), float(c)) for u, n, c in points]
    pool = [p for p in pts if p[1]] or pts
    if not pool:
        return None
    counts = Counter(p[0] for p in pool)
    best = max(counts.values())

    def lowest(unit: str | None) -> tuple[float, str]:
        try:
            return min(canonical(p[2], unit)[1] for p in pool if p[0] == unit), unit or ""
        except UnitProblem:  # not a unit: the layout reports it; order it last
            return float("inf"), unit or ""

    return min((u for u in counts if counts[u] == best), key=lowest)


def reference_units(tubes: Iterable[Any]) -> dict[tuple[str, str], str | None]:
    """(patient, allergen) → ``reference_unit`` of its allergen tubes (``records.Tube``)."""
    points: dict[tuple[str, str], list[tuple[str | None, bool, float]]] = {}
    for t in tubes:
        if t.condition == "allergen" and t.concentration is not None:
            points.setdefault((t.patient, t.allergen or ""), []).append(
                (t.unit, t.pretreatment == "none", t.concentration))
    return {k: reference_unit(v) for k, v in points.items()}


def canonical(value: float, unit: str | None) -> tuple[str, float]:
    """(kind, ``value`` in the kind's base unit to 12 significant digits): equal for equal concentrations
    written in different units (1 µg/mL and 1000 ng/mL). Raises ``UnitProblem``."""
    parsed = parse_unit(unit)
    if parsed is None:
        return "", float(value)
    factor = float((1.0 * parsed[0]).to_base_units().magnitude)
    return parsed[1], float(f"{float(value) * factor:.12g}")
