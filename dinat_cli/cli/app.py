"""The Typer application that every command module registers with."""

from __future__ import annotations

import typer

from dinat_cli import __version__

app = typer.Typer(
    name="dinat",
    help="Restore photos with DiNAT-IR: deblur, defocus, denoise, derain; score and manage weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        import torch

        typer.echo(f"dinat {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print versions and exit."
    ),
) -> None:
    """Restore photos with DiNAT-IR."""
