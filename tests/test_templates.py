"""Gating templates: shipped ones load, every validation problem is located, user panels need no code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bat_analysis.errors import TemplateError
from bat_analysis.gating.templates import (DEFAULT_TEMPLATE, list_templates, load_template, parse_template,
                                           validate_template)

SHIPPED = ("bat_ccr3_cd63", "bat_cd203c_cd63", "bat_cd123_hladr_cd63")

MINIMAL = """
schema_version: 1
name: minimal
panel:
  CCR3: [CD193]
  CD63: []
gates:
  - name: cells
    parent: null
    dims: [FSC-A, SSC-A]
    method: debris_density
  - name: basophils
    parent: cells
    dims: [CCR3, SSC-A]
    method: cluster_2d
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(TemplateError) as info:
        parse_template(text, source="t.yaml")
    return info.value.problems


def test_shipped_templates_are_listed_and_valid() -> None:
    assert set(SHIPPED) <= set(list_templates())
    assert DEFAULT_TEMPLATE == "bat_ccr3_cd63"
    for name in SHIPPED:
        t = load_template(name)
        assert t.name == name
        assert t.population == "basophils"
        assert [g.name for g in t.gates] == ["acquisition_qc", "margin", "cells", "singlets", "basophils"]
        assert len(t.sha256) == 64 and t.source_text.startswith("#")
        assert validate_template(t.source) == []


def test_panels_of_the_alternative_templates() -> None:
    assert load_template("bat_cd203c_cd63").gate("basophils").dims == ("CD203c", "SSC-A")
    t = load_template("bat_cd123_hladr_cd63")
    g = t.gate("basophils")
    assert g.dims == ("CD123", "HLA-DR") and g.params["x_side"] == "high" and g.params["y_side"] == "low"


def test_defaults_are_filled_and_typed() -> None:
    t = parse_template(MINIMAL)
    g = t.gate("basophils")
    assert g.params["bins"] == 128 and isinstance(g.params["smooth"], float)
    assert g.on_fail == "not_gated" and g.keep == "inside" and g.min_events == 0
    assert t.population == "basophils"  # the last gate by default
    assert t.transform_spec("SSC-A") == {"type": "none"}


def test_every_problem_is_reported_with_its_location() -> None:
    text = """
schema_version: 2
name: broken
colour: blue
panel:
  CCR3: [CD193]
  CD63: {aliases: LAMP3, required: maybe}
identification: [CD999]
compensation: {source: somewhere}
transforms:
  fluorescence: {type: logicle, T: 262144, W: x, M: 4.5}
  CD45: {type: linear, T: 1}
gates:
  - name: cells
    parent: null
    dims: [FSC-A, SSC-A]
    method: debris_density
    params: {bins: x, smooth: -1, colour: red}
    on_fail: fallback
  - name: singlets
    parent: basophils
    dims: [FSC-A]
    method: singlet_band
    keep: both
    min_events: -5
  - name: basophils
    parent: singlets
    dims: [CCR3, CD999]
    method: kmeans
  - name: cells
    parent: null
    dims: [FSC-A]
    method: fixed
    geometry: {type: range, min: [10], max: [5]}
analysis: {threshold: {percentile: high}}
"""
    problems = problems_of(text)
    expected = [
        "schema_version: expected 1, got 2",
        "colour: unknown section",
        "panel.CD63.aliases: expected a list of texts",
        "panel.CD63.required: expected true or false, got 'maybe'",
        "identification[0]: unknown marker 'CD999'",
        "compensation.source: expected file, none or matrix, got 'somewhere'",
        "transforms.fluorescence.W",
        "transforms.CD45: unknown dimension 'CD45'",
        "gates[0] (cells).params.bins: expected an integer, got 'x'",
        "gates[0] (cells).params.smooth: expected a value >= 0, got -1",
        "gates[0] (cells).params.colour: unknown parameter for debris_density",
        "gates[0] (cells).on_fail: is 'fallback' but the gate has no 'fallback' geometry",
        "gates[1] (singlets).dims: method singlet_band needs 2 dimension(s), got 1",
        "gates[1] (singlets).keep: expected inside or outside, got 'both'",
        "gates[1] (singlets).min_events: expected a whole number >= 0, got -5",
        "gates[2] (basophils).dims[1]: unknown dimension 'CD999'",
        "gates[2] (basophils).method: unknown method 'kmeans'",
        "gates[3] (cells).name: name 'cells' already used by gates[0]",
        "gates[3] (cells).geometry: dimension 1: min 10 must be below max 5",
        "gates[1] (singlets).parent: cycle: singlets -> basophils -> singlets",
        "analysis.threshold.percentile",
    ]
    for e in expected:
        assert any(p.startswith(e) or e in p for p in problems), f"missing {e!r} in {problems}"


def test_yaml_syntax_error_names_line_and_column() -> None:
    problems = problems_of("schema_version: 1\npanel: {CCR3: [CD193\n")
    assert len(problems) == 1 and problems[0].startswith("line ")


def test_not_a_mapping() -> None:
    assert problems_of("- a\n- b\n") == ["top level: expected a mapping, got a list"]


def test_unknown_parent_and_population() -> None:
    text = MINIMAL.replace("parent: cells", "parent: leukocytes") + "population: eosinophils\n"
    problems = problems_of(text)
    assert any(p.startswith("gates[1] (basophils).parent: unknown gate 'leukocytes'") for p in problems)
    assert any(p.startswith("population: unknown gate 'eosinophils'") for p in problems)


def test_fixed_gate_and_fallback_geometry_are_checked() -> None:
    text = MINIMAL + """  - name: cd63pos
    parent: basophils
    dims: [CD63, CCR3]
    method: fixed
    geometry: {type: polygon, vertices: [[0, 0], [1, 'a']]}
  - name: other
    parent: basophils
    dims: [CD63]
    method: fixed
    params: {bins: 3}
    fallback: {type: ellipsoid, mean: [1], covariance: [[1]], distance_square: 0}
"""
    problems = problems_of(text)
    assert any(p.startswith("gates[2] (cd63pos).geometry.vertices: expected a list of >= 3") for p in problems)
    assert any(p.startswith("gates[3] (other).geometry: method 'fixed' needs a geometry") for p in problems)
    assert any(p.startswith("gates[3] (other).params.bins: unknown parameter for fixed") for p in problems)
    assert any(p.startswith("gates[3] (other).fallback.distance_square") for p in problems)


def test_matrix_compensation_is_checked() -> None:
    text = MINIMAL + "compensation: {source: matrix, channels: [CCR3, CD63], values: [[1, 0], [0]]}\n"
    assert any(p.startswith("compensation.values: expected a 2x2 matrix") for p in problems_of(text))


def test_load_by_path_and_unknown_name(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text(MINIMAL, encoding="utf-8")
    assert load_template(p).name == "minimal"
    assert validate_template(p) == []
    with pytest.raises(TemplateError, match="bat_ccr3_cd63"):
        load_template("no_such_panel")
    with pytest.raises(TemplateError, match="not found"):
        load_template(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("method: cluster_2d", "method: magic"), encoding="utf-8")
    assert validate_template(bad) == [
        "gates[1] (basophils).method: unknown method 'magic'; expected one of "
        "flow_rate, margin, debris_density, singlet_band, cluster_2d, split_1d, fixed"]


def test_user_template_for_another_activation_marker(tmp_path: Path) -> None:
    """A panel nobody shipped (CD107a as activation marker) works without code changes."""
    from bat_analysis.gating.tube import gate_tube
    from bat_analysis.io.fcs_write import write_fcs
    from bat_analysis.records import Tube
    from bat_analysis.simulate import BASOPHIL, simulate_tube

    text = load_template("bat_ccr3_cd63").source_text
    text = text.replace("name: bat_ccr3_cd63", "name: lab_ccr3_cd107a")
    text = text.replace("activation: [CD63]", "activation: [CD107a]")
    text = text.replace("  CD107a: {aliases: [LAMP-1, LAMP1], required: false}", "  CD107a: [LAMP-1, LAMP1]")
    text = text.replace("  CD63: [LAMP-3, LAMP3]", "  CD63: {aliases: [LAMP-3], required: false}")
    text = text.replace("marker: CD63\n", "marker: CD107a\n")
    path = tmp_path / "lab_ccr3_cd107a.yaml"
    path.write_text(text, encoding="utf-8")
    template = load_template(path)
    assert template.activation == ("CD107a",) and template.panel["CD107a"].required

    sim = simulate_tube(n_events=20_000, include_cd107a=True, seed=3, pct_activated=40.0)
    fcs = write_fcs(tmp_path / "t.fcs", sim.events, sim.pnn, sim.pns, spillover=sim.spillover)
    result = gate_tube(fcs, Tube("t.fcs", "P1", "allergen"), template)
    assert result.error is None
    assert "CD107a" in result.basophil_values
    assert abs(result.n_basophils - sim.n_basophils) <= 0.05 * sim.n_basophils
    cd107a = result.basophil_values["CD107a"]
    truth = sim.marker_values("CD107a")[sim.population == BASOPHIL]
    assert np.median(cd107a) == pytest.approx(np.median(truth), rel=0.1)


def test_template_commands_print_file_text_escaped(tmp_path: Path) -> None:
    """A template problem quoting a name written with YAML escapes ("\\x1b[2J") is shown escaped."""
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    source = Path(load_template(DEFAULT_TEMPLATE).source).read_text(encoding="utf-8")
    bad = tmp_path / "bad\x1b[31m.yaml"
    bad.write_text(source.replace("parent: cells", 'parent: "\\x1b]0;owned\\x07cells"', 1), encoding="utf-8")
    for args in (["templates", "validate", str(bad)], ["templates", "show", str(bad)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code != 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output, args
        assert "bad\\x1b[31m.yaml" in result.output, args


def test_range_geometry_accepts_both_spellings_and_gates_alike() -> None:
    """A template range may be written min/max (the template form) or mins/maxs (the stored form)."""
    from bat_analysis.gating._geometry import RangeGeometry

    gate = """  - name: cd63pos
    parent: basophils
    dims: [CD63]
    method: fixed
    geometry: {type: range, %s: [0.5], %s: [null]}
"""
    short = parse_template(MINIMAL + gate % ("min", "max"))
    long = parse_template(MINIMAL + gate % ("mins", "maxs"))
    assert short.gate("cd63pos").geometry == long.gate("cd63pos").geometry == RangeGeometry((0.5,), (None,))
    assert problems_of(MINIMAL + gate % ("min", "mins")) == [
        "gates[2] (cd63pos).geometry.min: give mins or min, not both"]


def test_analysis_problems_are_taken_as_located_not_read_back_from_text() -> None:
    """The analysis configuration's problems come with their key paths; a value that looks like a path
    is quoted as written (reading the error text back used to rewrite it)."""
    from bat_analysis.analysis.config import AnalysisConfig

    text = MINIMAL + ("qc: {margin_warn_pct: 9, margin_fail_pct: 3}\n"
                      "analysis: {threshold: {method: 'see @.qc. and @.'}, fit: {bootstrap_n: x}}\n")
    assert sorted(problems_of(text)) == sorted([
        "qc.margin_warn_pct: 9.0 must not exceed qc.margin_fail_pct (3.0)",
        "analysis.fit.bootstrap_n: expected a whole number, got 'x'",
        "analysis.threshold.method: expected auto, percentile or resting_peak, got 'see @.qc. and @.'",
    ])
    config, problems = AnalysisConfig.checked({"qc": {"bogus": 1}}, prefix="")
    assert problems == ["qc.bogus: unknown key (expected one of " + ", ".join(
        AnalysisConfig().qc.__dataclass_fields__) + ")"] and config == AnalysisConfig()
    assert AnalysisConfig.checked({"fit": {"bootstrap_n": 7}})[0].fit.bootstrap_n == 7


def test_methods_command_lists_the_registry() -> None:
    """``bat templates methods`` is derived from the estimator registry (every method, every parameter)."""
    from typer.testing import CliRunner

    from bat_analysis.cli import app
    from bat_analysis.gating.estimators import ESTIMATORS

    result = CliRunner().invoke(app, ["templates", "methods"])
    assert result.exit_code == 0, result.output
    for name, spec in ESTIMATORS.items():
        assert f"{name} (" in result.output and spec.doc in result.output
        for key, param in spec.params.items():
            assert f"    {key}: {param.kind if param.kind != 'choice' else 'one of'}" in result.output
    assert "fixed (any number of dimensions)" in result.output


def test_deep_parent_cycle_is_reported_briefly() -> None:
    """A hostile template whose gates form one long parent cycle: each gate on it is reported once, in a
    short line (the chain of a thousand names is elided), and a gate below the cycle is not blamed."""
    n = 1500
    lines = ["schema_version: 1", "name: deep", "panel: {CCR3: [], CD63: []}", "gates:"]
    lines += [f"  - {{name: g{i}, parent: g{(i - 1) % n}, dims: [CD63], method: fixed, geometry: {{type: range, "
              f"min: [0]}}}}" for i in range(n)]
    lines += ["  - {name: below, parent: g7, dims: [CD63], method: fixed, geometry: {type: range, min: [0]}}"]
    problems = problems_of("\n".join(lines) + "\n")
    cycles = [p for p in problems if ": cycle: " in p]
    assert len(cycles) == n and max(len(p) for p in problems) < 200
    assert cycles[0].startswith("gates[0] (g0).parent: cycle: g0 -> g1499 -> g1498 -> ")
    assert cycles[0].endswith(" -> ... 1491 more ... -> g4 -> g3 -> g2 -> g1 -> g0")
    assert not any(p.startswith(f"gates[{n}]") for p in problems)


def test_the_activation_list_is_the_analysis_activation_markers() -> None:
    """`activation: [CD69]` alone makes CD69 the scored marker: no second key under `analysis:`."""
    from bat_analysis.pipeline import analysis_config

    text = MINIMAL.replace("  CD63: []", "  CD69: []\n  CD63: {aliases: [], required: false}")
    template = parse_template(text + "activation: [CD69, CD63]\n", source="t.yaml")
    config = analysis_config(template)
    assert config.markers.activation == ("CD69", "CD63")
    assert config.markers.primary_marker == "CD69"
    chosen = parse_template(text + "activation: [CD69, CD63]\nanalysis: {markers: {primary: CD63}}\n")
    assert analysis_config(chosen).markers.primary_marker == "CD63"
    assert analysis_config(parse_template(MINIMAL)).markers.activation == ("CD63",)  # no list: CD63


def test_a_second_activation_key_or_a_foreign_primary_marker_is_refused() -> None:
    text = MINIMAL.replace("  CD63: []", "  CD69: []") + "activation: [CD69]\n"
    problems = problems_of(text + "analysis: {markers: {activation: CD69}}\n")
    assert len(problems) == 1 and problems[0].startswith("analysis.markers.activation: ")
    assert "activation: list" in problems[0]
    problems = problems_of(text + "analysis: {markers: {primary: CD63}}\n")
    assert problems == ["analysis.markers.primary: expected one of the activation markers (CD69), got 'CD63'"]
    problems = problems_of(text + "analysis: {markers: CD69}\n")
    assert problems == ["analysis.markers: expected a mapping, got str"]
