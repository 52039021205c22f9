"""``bat inspect FILE [--json]``: describe an FCS file (version, cytometer, events, channels, markers, spillover)."""

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
        """Describe an FCS file: version, cytometer, events, data sets, channels with markers, spillover, warnings."""
        from ..errors import BatError
        from ..io.inspect import describe_fcs, render_description

        try:
            info = describe_fcs(file, dataset=dataset)
        except BatError as exc:
            typer.echo(f"error: {str(exc).splitlines()[0]}", err=True)
            raise typer.Exit(code=2) from None
        if as_json:
            import json

            typer.echo(json.dumps(info, indent=2, ensure_ascii=False))
        else:
            render_description(info)
