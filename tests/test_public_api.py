"""The public API: every re-exported name resolves, and the package imports without heavy libraries."""

import subprocess
import sys

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
