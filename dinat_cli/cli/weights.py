"""`dinat weights`: list, verify, download and import checkpoints of the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dinat_cli.cli.app import CommandGroup, app
from dinat_cli.errors import CheckpointError, UsageError
from dinat_cli.registry import catalogue, checksums, locations

weights_app = CommandGroup(
    help="List, verify, download and import the checkpoints dinat knows.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")

_STATUS_STYLE = {"present": "green", "missing": "yellow", "damaged": "red"}


@weights_app.command("list")
def list_weights(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
) -> None:
    """Every registry entry: task, size, sha256, status (present, missing, damaged) and path."""
    found = [locations.locate(entry) for entry in catalogue.load_registry().values()]
    if as_json:
        typer.echo(json.dumps([location.to_dict() for location in found], indent=2))
        return
    # Narrow enough for 80 columns (cron mail, pipes); paths follow it whole, one a line,
    # for a terminal to wrap: folded into a column they could not be copied.
    table = Table()
    for column in ("name", "task", "default", "size", "sha256", "status"):
        table.add_column(column, overflow="fold")
    for location in found:
        entry = location.entry
        table.add_row(
            entry.name,
            entry.task,
            ", ".join(_default_label(task) for task in entry.default_for),
            f"{entry.size / 1e6:.1f} MB",
            entry.sha256[:12],
            f"[{_STATUS_STYLE[location.status]}]{location.status}[/]",
        )
    console = Console(soft_wrap=True)
    console.print(table)
    for location in found:
        if location.path is not None:
            console.print(f"{location.entry.name}: {location.path}", markup=False, highlight=False)


def _default_label(default_for: str) -> str:
    # The task column names the task: here only whether it is the one for dual-pixel input.
    return "dual-pixel" if default_for.endswith(catalogue.DUAL_PIXEL_SUFFIX) else "yes"


# One rule for every checkpoint argument: a registry entry's name, else a file's path
# (write ./NAME for a file that has an entry's name).
_CHECKPOINT_HELP = "A registry entry's name (see `dinat weights list`) or a checkpoint file."


def _name_or_file(spec: str) -> catalogue.Entry | Path:
    entries = catalogue.load_registry()
    if spec in entries:
        return entries[spec]
    if not Path(spec).is_file():
        raise UsageError(f"unknown model {spec!r} and no such file; known models: {', '.join(entries)}")
    return Path(spec)


def _reread(entry: catalogue.Entry) -> locations.Location:
    """Where `entry`'s file is, its checksum read again: the remembered verdict is what verify distrusts."""
    location = locations.locate(entry)
    if location.path and location.status == "present" and checksums.checksum(location.path, fresh=True) != entry.sha256:
        location = locations.Location(entry, "damaged", location.path)
    return location


@weights_app.command()
def verify(
    checkpoint: Annotated[
        str | None, typer.Argument(metavar="NAME|FILE", help=_CHECKPOINT_HELP, show_default=False)
    ] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Re-hash every registry file found.")] = False,
) -> None:
    """Exit 0 only for an intact known checkpoint; damaged, missing or unknown ones exit 2, saying why."""
    if (checkpoint is None) == (not all_entries):
        raise UsageError("give either a NAME or FILE, or --all")
    if checkpoint is not None:
        target = _name_or_file(checkpoint)
        if isinstance(target, catalogue.Entry):
            location = _reread(target)
            if location.path is None or location.status != "present":
                raise CheckpointError(locations.unavailable_message(location))
            target = location.path
        verdict = locations.check(target, fresh=True)
        if verdict.status != "intact":
            raise CheckpointError(verdict.reason)
        typer.echo(verdict.reason)
        return
    damaged = []
    for entry in catalogue.load_registry().values():
        location = _reread(entry)
        typer.echo(f"{entry.name}: {location.status}" + (f" ({location.path})" if location.path else ""))
        if location.status == "damaged":
            damaged.append(entry.name)
    if damaged:
        raise CheckpointError(f"damaged: {', '.join(damaged)}; run `dinat weights download NAME` to replace them")


@weights_app.command()
def download(
    checkpoint: Annotated[
        str | None, typer.Argument(metavar="NAME", help="The registry entry to fetch.", show_default=False)
    ] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Fetch every entry that is not present.")] = False,
) -> None:
    """Download into the cache over HTTP(S), resuming a partial file, then check its sha256."""
    from dinat_cli.registry import downloads  # urllib and tqdm: only for the commands that fetch

    if (checkpoint is None) == (not all_entries):
        raise UsageError("give either a NAME or --all")
    if checkpoint is None:
        chosen = list(catalogue.load_registry().values())
    elif isinstance(target := _name_or_file(checkpoint), Path):
        raise UsageError(f"{target} is a file, not a registry entry: `dinat weights import {target}` copies it")
    else:
        chosen = [target]
    for entry in chosen:
        location = locations.locate(entry)
        if location.status == "present":
            typer.echo(f"{entry.name}: already present at {location.path}")
        elif all_entries and not entry.url:
            typer.echo(f"{entry.name}: {location.status}, ships with dinat: reinstall dinat to restore it")
        else:
            path = downloads.download(entry, progress=sys.stderr.isatty())
            typer.echo(f"{entry.name}: downloaded and verified, {path}")


@weights_app.command("import")
def import_weights(
    checkpoint: Annotated[
        str, typer.Argument(metavar="FILE", help="A checkpoint file you already have.", show_default=False)
    ],
) -> None:
    """Verify a checkpoint you already have and copy it into the cache."""
    from dinat_cli.registry import downloads

    target = _name_or_file(checkpoint)
    if isinstance(target, catalogue.Entry):
        raise UsageError(f"{target.name} is a registry entry, not a file: `dinat weights download {target.name}`")
    entry, path = downloads.import_file(target)
    typer.echo(f"{entry.name}: verified and imported to {path}")


@weights_app.command()
def path(
    checkpoint: Annotated[str, typer.Argument(metavar="NAME|FILE", help=_CHECKPOINT_HELP, show_default=False)],
) -> None:
    """Print the verified file of a registry entry or a checkpoint file; exit 2, saying why, if there is none."""
    target = _name_or_file(checkpoint)
    if isinstance(target, catalogue.Entry):
        typer.echo(locations.resolve(target.name))
        return
    verdict = locations.check(target)
    if verdict.status != "intact":
        raise CheckpointError(verdict.reason)
    typer.echo(target.resolve())
