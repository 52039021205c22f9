"""The concentration-unit registry (analysis/_units.py) against pint's default registry."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pint
import pytest

from bat_analysis.analysis import _units
from bat_analysis.analysis._units import UnitProblem, convert, parse_unit

SPELLINGS = ("pg/mL", "ng/mL", "ng/ml", "µg/mL", "μg/mL", "ug/mL", "mcg/mL", "mg/mL", "mg/L", "g/L", "g/dL",
             "ng/µL", "ng/cc", "kg/m**3", "fg/mL", "nmol/L", "nM", "µM", "pM", "mM", "mmol/L", "µmol/mL",
             "ng per mL", "ng / mL", "ng·mL**-1")


def _line(text: str) -> str:
    return re.sub(r"\s+", " ", text.split("#")[0]).strip()


def test_every_definition_is_pints_own():
    default = Path(pint.__file__).with_name("default_en.txt").read_text(encoding="utf-8")
    lines = {_line(t) for t in default.splitlines()}
    for definition in _units._METRIC_DEFINITIONS:
        assert _line(definition) in lines, definition


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_concentrations_parse_as_pints_default_registry_does(spelling):
    full = pint.UnitRegistry(autoconvert_offset_to_baseunit=False)
    expected = full.parse_units(_units._normalise(spelling))
    unit, kind = parse_unit(spelling)
    assert dict(unit.dimensionality) == dict(expected.dimensionality)
    assert kind in ("mass", "substance")
    reference = {"mass": "nanogram / milliliter", "substance": "nanomole / liter"}[kind]
    ours = (1.0 * unit).to(reference).magnitude
    theirs = (1.0 * expected).to(reference).magnitude
    assert math.isclose(ours, theirs, rel_tol=1e-12), (spelling, ours, theirs)


def test_conversions_between_spellings():
    assert convert(1.0, "mcg/mL", "ng/mL") == 1000.0
    assert convert(1.0, "g/dL", "mg/mL") == 10.0
    assert convert(1.0, "µM", "nmol/L") == 1000.0
    assert convert(1.0, "ng/µL", "µg/mL") == 1.0


@pytest.mark.parametrize("bad", ["drops", "mL", "%", "ng", "ng/mL/s", "lb", "mg/gal", "1:1000"])
def test_what_is_not_a_concentration_is_refused(bad):
    with pytest.raises(UnitProblem):
        parse_unit(bad)


@pytest.mark.parametrize(("written", "usual"), [("NG/ML", "ng/mL"), ("Ug/Ml", "µg/mL"), ("MG/DL", "mg/dL"),
                                                ("NM", "nM"), ("mm", "mM"), ("NMOL/L", "nmol/L"), ("PG / ML", "pg/mL")])
def test_a_usual_spelling_in_other_capitals_is_read_as_it(written, usual):
    assert parse_unit(written)[1] == parse_unit(usual)[1]
    assert convert(1.0, written, usual) == 1.0 and convert(1.0, usual, written) == 1.0


def test_what_capitals_do_not_make_a_usual_spelling_stays_refused():
    for bad in ("NG", "ML", "KG/M", "DROPS", "NG/ML/S"):
        with pytest.raises(UnitProblem):
            parse_unit(bad)
