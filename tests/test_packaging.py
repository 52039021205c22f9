"""The distribution ships every subpackage of bat_analysis (pyproject lists them by name)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    """A subpackage left out of ``[tool.setuptools] packages`` works in an editable install but is missing
    from a built wheel: every folder of bat_analysis with an ``__init__.py`` is listed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "bat_analysis").rglob("__init__.py")}
    assert found - listed == set()
