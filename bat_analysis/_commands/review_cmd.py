"""``bat review OUT``: review a run's gates in the browser (a local web application on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``review`` command to ``app``."""

    @app.command("review")
    def review_command(
        out: Path = typer.Argument(..., help="Results folder of a finished 'bat run'."),
        port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (default: a free one)."),
        no_browser: bool = typer.Option(False, "--no-browser", help="Only print the address; do not open it."),
        reviewer: str = typer.Option("", "--reviewer", help="Your name, recorded with every decision "
                                                            "(default: asked once in the page)."),
        export: Path = typer.Option(None, "--export", help="Write the corrections in force as an overrides "
                                                           "file (for 'bat run --overrides') and exit."),
    ) -> None:
        """Review the gates of a run in the browser: a queue of tubes (failed, flagged, unreviewed first),
        each gate on its density, the basophil gate's corners draggable with the counts and %CD63+ updated
        after each drag (and the patient's class), accept / correct / exclude / revert a tube and sign off a
        patient, each recorded with who, when and why in the results store (the next 'bat run' applies the
        corrections).

        \b
        Examples:
          bat review results/plate1
          bat review results/plate1 --reviewer "Jane Doe" --no-browser --port 8765
          bat review results/plate1 --export review.yaml

        Only this computer can reach it (127.0.0.1), and only with the address printed (it carries a key).
        Stop it with Ctrl+C. Exit 2, with one line saying why, when the folder holds no finished run.
        """
        from ..errors import BatError
        from .._textsafe import for_terminal
        from ..workbench._server import make_workbench

        if export is not None:
            from ..workbench._export import export_overrides

            try:
                n = export_overrides(out, export)
            except BatError as exc:
                typer.echo(f"error: {for_terminal(str(exc).splitlines()[0])}", err=True)
                raise typer.Exit(code=2) from None
            typer.echo(f"{n} correction{'' if n == 1 else 's'} written to {for_terminal(str(export))}")
            return
        if not 0 <= port <= 65535:
            typer.echo("error: --port: expected a port number from 1 to 65535", err=True)
            raise typer.Exit(code=2)
        try:
            bench = make_workbench(out, port=port or None, reviewer=reviewer or None)
        except BatError as exc:
            typer.echo(f"error: {for_terminal(str(exc).splitlines()[0])}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"Reviewing {for_terminal(str(out))}: open {bench.url}")
        typer.echo("Stop with Ctrl+C.")
        if not no_browser:
            import webbrowser

            webbrowser.open(bench.url)
        bench.serve()
