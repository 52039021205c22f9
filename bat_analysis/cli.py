"""The ``bat`` command. Each sub-command lives in ``bat_analysis.commands`` and imports its heavy
dependencies lazily, so that ``bat --help`` starts fast."""

from __future__ import annotations

import typer

from .commands import cohort_cmd, inspect_cmd, run_cmd, simulate_cmd, templates_cmd

app = typer.Typer(
    name="bat",
    help="Basophil activation test analysis: read FCS files, gate basophils automatically, score and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

run_cmd.register(app)
inspect_cmd.register(app)
simulate_cmd.register(app)
templates_cmd.register(app)
cohort_cmd.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
