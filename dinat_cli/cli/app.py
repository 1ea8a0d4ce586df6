"""The Typer application that every command module registers with."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from dinat_cli import __version__


class _UnixHelp:
    """Help as command-line users expect it: `-h` as well as `--help` (the context settings
    below), arguments in capitals, `Usage: dinat denoise [OPTIONS] INPUT OUTPUT` (Typer
    writes `{input}`), and nothing after a flag where Typer would show `<bool>`."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if param.metavar is None and isinstance(param, TyperArgument):
                param.metavar = param.name.upper()
            elif param.metavar is None and isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""
        return params

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [_unbraced(piece) for piece in pieces]


def _unbraced(piece: str) -> str:
    """`{INPUT}` -> `INPUT`, `{REPORT}...` -> `REPORT...` (an argument that takes several)."""
    core, repeat = (piece[:-3], "...") if piece.endswith("...") else (piece, "")
    return core[1:-1] + repeat if core.startswith("{") and core.endswith("}") else piece


class Command(_UnixHelp, TyperCommand):
    pass


class Group(_UnixHelp, TyperGroup):
    pass


class CommandGroup(typer.Typer):
    """A Typer app whose commands and sub-groups get the help above."""

    def __init__(self, **options: Any) -> None:
        super().__init__(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, **options)

    def command(self, *args: Any, cls: type[TyperCommand] = Command, **options: Any) -> Any:
        return super().command(*args, cls=cls, **options)


app = CommandGroup(
    name="dinat",
    help="Restore photos with DiNAT-IR: deblur, defocus, denoise, derain; score and manage weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command_line() -> str:
    """The command this process runs, as a shell would take it again: for reports."""
    return shlex.join(["dinat", *sys.argv[1:]])


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
