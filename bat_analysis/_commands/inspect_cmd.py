"""``bat inspect FILE [--json]``: describe an FCS file (version, cytometer, events, channels, markers, spillover).

Text read from the file is printed as data (``bat_analysis._textsafe``): never as rich markup, control
characters and escape sequences escaped; the JSON keeps the exact values (as JSON escapes)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``inspect`` command to ``app``."""

    @app.command("inspect")
    def inspect_command(
        file: Path = typer.Argument(..., help="FCS file to describe."),
        as_json: bool = typer.Option(False, "--json", help="Print the description as JSON."),
        dataset: int = typer.Option(0, "--dataset", help="Data set index for files with several data sets."),
    ) -> None:
        """Describe an FCS file: version, cytometer, events, data sets, channels with markers, spillover, warnings.

        \b
        Examples:
          bat inspect plate1/P01_none_fmlp.fcs
          bat inspect export.lmd --dataset 1 --json > export.json

        Exit 2, with one line saying why, when the file cannot be read as FCS.
        """
        from ..errors import BatError
        from ..io.inspect import describe_fcs, render_description
        from .._textsafe import for_terminal, json_for_terminal

        try:
            info = describe_fcs(file, dataset=dataset)
        except BatError as exc:
            first_line = str(exc).split("\n")[0]
            typer.echo(f"error: {for_terminal(first_line)}", err=True)
            raise typer.Exit(code=2) from None
        if as_json:
            import json

            typer.echo(json_for_terminal(json.dumps(info, indent=2, ensure_ascii=False)))
        else:
            render_description(info)
