"""`dinat weights`: list, verify, download and import checkpoints of the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dinat_cli import registry
from dinat_cli.cli.app import CommandGroup, app
from dinat_cli.errors import CheckpointError, UsageError

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
    locations = [registry.locate(entry) for entry in registry.load_registry().values()]
    if as_json:
        typer.echo(json.dumps([location.to_dict() for location in locations], indent=2))
        return
    table = Table("name", "task", "default for", "size", "sha256", "status", "path")
    for location in locations:
        entry = location.entry
        table.add_row(
            entry.name,
            entry.task,
            ", ".join(entry.default_for),
            f"{entry.size / 1e6:.1f} MB",
            entry.sha256[:12],
            f"[{_STATUS_STYLE[location.status]}]{location.status}[/]",
            str(location.path or ""),
        )
    Console().print(table)


@weights_app.command()
def verify(
    file: Annotated[Path | None, typer.Argument(help="A checkpoint file to check.", show_default=False)] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Re-hash every registry file found.")] = False,
) -> None:
    """Exit 0 only for an intact known checkpoint; damaged or unknown files exit 2, saying why."""
    if (file is None) == (not all_entries):
        raise UsageError("give either a FILE or --all")
    if file is not None:
        verdict = registry.check(file, fresh=True)
        if verdict.status != "intact":
            raise CheckpointError(verdict.reason)
        typer.echo(verdict.reason)
        return
    damaged = []
    for entry in registry.load_registry().values():
        location = registry.locate(entry)
        # The cached verdict found it; --all is the explicit request to read it again.
        if (
            location.path
            and location.status == "present"
            and registry.checksum(location.path, fresh=True) != entry.sha256
        ):
            location = registry.Location(entry, "damaged", location.path)
        typer.echo(f"{entry.name}: {location.status}" + (f" ({location.path})" if location.path else ""))
        if location.status == "damaged":
            damaged.append(entry.name)
    if damaged:
        raise CheckpointError(f"damaged: {', '.join(damaged)}; run `dinat weights download NAME` to replace them")


@weights_app.command()
def download(
    name: Annotated[str | None, typer.Argument(help="The registry entry to fetch.", show_default=False)] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Fetch every entry that is not present.")] = False,
) -> None:
    """Download into the cache over HTTP(S), resuming a partial file, then check its sha256."""
    if (name is None) == (not all_entries):
        raise UsageError("give either a NAME or --all")
    entries = registry.load_registry()
    chosen = list(entries.values()) if all_entries else [registry.get(name, entries)]
    for entry in chosen:
        location = registry.locate(entry)
        if location.status == "present":
            typer.echo(f"{entry.name}: already present at {location.path}")
        elif all_entries and not entry.url:
            typer.echo(f"{entry.name}: {location.status}, ships with dinat: reinstall dinat to restore it")
        else:
            path = registry.download(entry, progress=sys.stderr.isatty())
            typer.echo(f"{entry.name}: downloaded and verified, {path}")


@weights_app.command("import")
def import_weights(
    file: Annotated[Path, typer.Argument(help="A checkpoint you already have.", show_default=False)],
) -> None:
    """Verify a checkpoint you already have and copy it into the cache."""
    entry, path = registry.import_file(file)
    typer.echo(f"{entry.name}: verified and imported to {path}")


@weights_app.command()
def path(name: Annotated[str, typer.Argument(help="A registry entry.", show_default=False)]) -> None:
    """Print the verified file of a registry entry (exit 2 with the fixes if it is missing)."""
    typer.echo(registry.resolve(name))
