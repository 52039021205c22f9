"""docs/method.md states every analysis default and every estimator parameter, with the code's numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bat_analysis.analysis.config import AnalysisConfig
from bat_analysis.gating.templates import method_names, method_params

METHOD = Path(__file__).resolve().parents[1] / "docs" / "method.md"
TEXT = METHOD.read_text(encoding="utf-8")
DEFAULTS = {f"{section}.{key}": value for section, fields in AnalysisConfig().to_dict().items()
            for key, value in fields.items()}


def _number(text: str) -> float | str:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return text.rstrip(".").lower()


def test_every_analysis_setting_is_documented():
    missing = [key for key in DEFAULTS if f"`{key}`" not in TEXT]
    assert missing == []


def test_every_stated_analysis_default_is_the_code_default():
    # "`qc.margin_fail_pct` (5)" in the tables, "`fit.bootstrap_n` = 100" in the text
    stated = re.findall(r"`([a-z]+\.[a-z0-9_]+)`(?: = | \()(\d{1,3}(?:,\d{3})+|[\d.]+|[A-Za-z]\w*)", TEXT)
    assert len(stated) >= 40
    wrong = []
    for key, value in stated:
        if key not in DEFAULTS:
            continue
        default = DEFAULTS[key]
        if isinstance(default, list):
            continue  # a list of markers: checked by name below
        want: float | str = float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) \
            else str(default).lower()
        if _number(value) != want:
            wrong.append(f"{key}: document {value}, code {default}")
    assert wrong == []
    assert all(marker in TEXT for marker in DEFAULTS["markers.degranulation"])


@pytest.mark.parametrize("method", sorted(m for m in method_names() if m != "fixed"))
def test_every_estimator_and_its_parameters_are_documented(method):
    assert f"`{method}`" in TEXT
    missing = [p for p in method_params(method) if f"`{p}`" not in TEXT]
    assert missing == []


def test_the_code_cites_sections_that_exist():
    root = METHOD.parents[1]
    headings = set(re.findall(r"^## (.+)$", TEXT, flags=re.M))
    cited = set()
    for path in [*root.joinpath("bat_analysis").rglob("*.py"), *root.joinpath("gating_templates").glob("*.yaml")]:
        cited |= set(re.findall(r'docs/method\.md,\s+"?([A-Z][A-Za-z-]*(?: [a-z-]+)*)', path.read_text(encoding="utf-8")))
    assert cited and cited <= headings, cited - headings
    assert "BAT_SPEC" not in "".join(p.read_text(encoding="utf-8") for p in root.joinpath("bat_analysis").rglob("*.py"))
