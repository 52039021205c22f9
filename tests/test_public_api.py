"""The public API: every re-exported name resolves, and the package imports without heavy libraries."""

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import bat_analysis


def test_every_public_name_resolves():
    missing = [n for n in bat_analysis.__all__ if not hasattr(bat_analysis, n)]
    assert missing == []


def test_unknown_attribute_is_an_attribute_error():
    try:
        bat_analysis.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_cli_start_does_not_import_flowkit_or_pandas():
    code = ("import sys, bat_analysis.cli; "
            "print(','.join(m for m in ('flowkit', 'pandas', 'matplotlib', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- the curated public face -------------------------------------------------------------------------------
PUBLIC = {
    "BatError", "ProblemsError",
    "read_fcs", "FcsSample", "describe_fcs",
    "Tube", "read_layout", "tubes_from_pattern",
    "Template", "load_template", "list_templates", "validate_template",
    "gate_tube", "TubeResult",
    "AnalysisConfig", "score_experiment", "ExperimentScores", "estimate_threshold", "four_pl",
    "run", "RunOptions", "RunSummary", "load_run",
    "render_reports",
    "run_cohort", "CohortOptions",
}
NAMESPACES = {"gates": "bat_analysis.gating.gates", "transforms": "bat_analysis.gating.transforms",
              "estimators": "bat_analysis.gating.estimators", "simulate": "bat_analysis.simulate"}


def test_the_public_face_is_the_curated_list_and_the_namespaces():
    assert set(bat_analysis.__all__) == PUBLIC | set(NAMESPACES) | {"__version__"}
    assert sorted(dir(bat_analysis)) == sorted(bat_analysis.__all__)


def test_namespaces_are_the_modules():
    for name, module in NAMESPACES.items():
        ns = getattr(bat_analysis, name)
        assert isinstance(ns, types.ModuleType) and ns is importlib.import_module(module)


def test_four_pl_is_the_analysis_one():
    from bat_analysis.analysis import dose_response

    assert bat_analysis.four_pl is dose_response.four_pl


def test_formerly_exported_names_resolve_with_a_deprecation_warning():
    for name, spec in bat_analysis._DEPRECATED.items():
        module, _, attr = spec.partition(":")
        with pytest.warns(DeprecationWarning, match=module.replace(".", r"\.")):
            value = getattr(bat_analysis, name)
        assert value is getattr(importlib.import_module(module), attr or name)
        assert name not in bat_analysis.__all__


def test_exported_functions_say_their_units():
    """Public functions that take or return event values, thresholds or concentrations say which units."""
    doc = {n: getattr(bat_analysis, n).__doc__ or "" for n in ("read_fcs", "gate_tube", "score_experiment",
                                                               "estimate_threshold", "four_pl")}
    assert "not compensated" in doc["read_fcs"] or "neither compensated" in doc["read_fcs"]
    assert "compensated" in doc["gate_tube"] and "linear" in doc["gate_tube"]
    assert "linear" in doc["score_experiment"] and "concentration unit" in doc["score_experiment"]
    assert "linear" in doc["estimate_threshold"] and "percent" in doc["estimate_threshold"]
    assert "log10" in doc["four_pl"] and "%CD63+" in doc["four_pl"]


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_python_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_readme_python_api_example_uses_only_the_public_face():
    used = set(re.findall(r"\bbat\.([A-Za-z_]+)", _readme_python_api_example()))
    assert used and used <= set(bat_analysis.__all__)


@pytest.mark.slow
def test_readme_python_api_example_runs(monkeypatch, capsys):
    """The README's example, executed as written from the repository root (it gates the 52 sample tubes)."""
    monkeypatch.chdir(README.parent)
    namespace: dict = {}
    exec(compile(_readme_python_api_example(), "README.md (Python API)", "exec"), namespace)  # noqa: S102
    patients = namespace["scores"].patients
    assert len(patients) >= 1 and {"auc_inhibition_pct", "class"} <= set(patients.columns)
    assert "class_reason" in capsys.readouterr().out
