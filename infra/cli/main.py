"""The `troveless` command line. Sub-command groups live in their own modules."""

from __future__ import annotations

import sys

import typer

from infra.cli.client import register as register_client_commands
from infra.cli.package import package
from infra.cli.sfn import sfn_app
from infra.cli.up import up
from shared.settings import SettingsError, load_settings

app = typer.Typer(
    name="troveless",
    help="troveless: databases as a service, built from stateless functions.",
    no_args_is_help=True,
    add_completion=False,
)


app.add_typer(sfn_app, name="sfn")
app.command("up")(up)
app.command("package")(package)
register_client_commands(app)


@app.callback()
def _root() -> None:
    """troveless: databases as a service, built from stateless functions."""


@app.command("config")
def show_config() -> None:
    """Print the effective settings (secrets masked) as JSON."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    sys.stdout.write(settings.model_dump_json(indent=2) + "\n")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
