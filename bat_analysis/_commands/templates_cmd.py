"""``bat templates list|show NAME|validate PATH|methods``: the gating templates shipped and your own."""

from __future__ import annotations

from pathlib import Path

import typer

from .._textsafe import for_terminal


def register(app: typer.Typer) -> None:
    """Add the ``templates`` command group to ``app``."""
    group = typer.Typer(help="Gating templates: list the shipped ones, show one, validate your own; the gate methods.",
                        no_args_is_help=True)

    @group.command("list")
    def list_command() -> None:
        """List the shipped gating templates with their panel and description.

        \b
        Example:
          bat templates list
        """
        from ..errors import TemplateError
        from ..gating.templates import DEFAULT_TEMPLATE, list_templates, load_template

        for name in list_templates():
            try:
                t = load_template(name)
            except TemplateError as exc:
                typer.echo(f"{name}: INVALID ({len(exc.problems)} problem(s); run bat templates validate)")
                continue
            default = " (default)" if name == DEFAULT_TEMPLATE else ""
            gate = t.gate(t.population)
            typer.echo(f"{name}{default}: basophils on {' x '.join(gate.dims)}; panel {', '.join(t.panel)}")

    @group.command("show")
    def show_command(
        name: str = typer.Argument(..., help="A shipped template name or a path to a .yaml file."),
    ) -> None:
        """Print a template's YAML (copy it to start your own).

        \b
        Example:
          bat templates show bat_ccr3_cd63 > my_panel.yaml
        """
        from ..errors import TemplateError
        from ..gating.templates import load_template

        try:
            t = load_template(name)
        except TemplateError as exc:
            typer.echo(f"error: {for_terminal(exc, multiline=True)}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(for_terminal(t.source_text, multiline=True), nl=not t.source_text.endswith("\n"))

    @group.command("validate")
    def validate_command(
        path: Path = typer.Argument(..., help="Template file to check."),
    ) -> None:
        """Check a template and list every problem with its place in the file (exit 1 when invalid).

        \b
        Example:
          bat templates validate my_panel.yaml
        """
        from ..gating.templates import validate_template

        problems = validate_template(path)
        if problems:
            typer.echo(f"{for_terminal(path)}: {len(problems)} problem(s)", err=True)
            for p in problems:
                typer.echo(f"  - {for_terminal(p, multiline=True)}", err=True)
            raise typer.Exit(code=1)
        typer.echo(f"{for_terminal(path)}: valid")

    @group.command("methods")
    def methods_command() -> None:
        """List the gate methods a template may use, with each parameter's type, default, range and meaning.

        Example: bat templates methods
        """
        from ..gating.estimators import describe_estimators

        typer.echo(describe_estimators())

    app.add_typer(group, name="templates")
