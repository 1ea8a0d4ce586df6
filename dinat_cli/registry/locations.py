"""What a file is, by checksum, and where an entry's file lies.

Entries are looked for in `$DINAT_WEIGHTS_DIR`, then the user cache (`$XDG_CACHE_HOME/dinat`,
else `~/.cache/dinat`), then beside the registry file (the installed package, for
checkpoints that ship with dinat). Any file of the right sha256 counts, whatever its name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dinat_cli.cache import cache_dir
from dinat_cli.errors import UsageError
from dinat_cli.registry.catalogue import Entry, Registry, get, load_unless_given, registry_dir
from dinat_cli.registry.checksums import checksum

WEIGHTS_DIR_ENV = "DINAT_WEIGHTS_DIR"

Status = Literal["present", "missing", "damaged"]


@dataclass(frozen=True)
class Location:
    """Where an entry's file was found: `path` is the intact file, or the damaged one."""

    entry: Entry
    status: Status
    path: Path | None

    def to_dict(self) -> dict[str, object]:
        """The entry and where it stands, as `dinat weights list --json` and `dinat doctor` print it."""
        entry = self.entry
        return {
            "name": entry.name,
            "task": entry.task,
            "default_for": list(entry.default_for),
            "description": entry.description,
            "sha256": entry.sha256,
            "size": entry.size,
            "status": self.status,
            "path": str(self.path) if self.path else None,
            "url": entry.url,
        }


@dataclass(frozen=True)
class Verdict:
    """What a file is, by checksum: an intact known checkpoint, a damaged one, or unknown."""

    path: Path
    status: Literal["intact", "damaged", "unknown"]
    sha256: str
    entry: Entry | None
    reason: str


def check(path: Path, registry: Registry | None = None, *, fresh: bool = False) -> Verdict:
    """Say what `path` is: intact (a known sha256), damaged (a known size or name), or unknown."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    registry = load_unless_given(registry)
    digest = checksum(path, fresh=fresh)
    for entry in registry.values():
        if entry.sha256 == digest:
            return Verdict(
                path,
                "intact",
                digest,
                entry,
                f"{path}: {entry.name} ({entry.description}), sha256 verified",
            )
    size = path.stat().st_size
    lookalikes = [e.name for e in registry.values() if e.size == size or e.filename == path.name]
    if lookalikes:
        names = ", ".join(lookalikes)
        reason = f"{path}: damaged, it has the size or name of {names} but not their sha256 ({digest})"
        return Verdict(path, "damaged", digest, None, reason)
    reason = f"{path}: not a known checkpoint (sha256 {digest}, {size} bytes); try it with --weights"
    return Verdict(path, "unknown", digest, None, reason)


def identify(path: Path, registry: Registry | None = None) -> Entry | None:
    """The registry entry `path` is, by checksum, or None."""
    return check(path, registry).entry


def search_dirs() -> list[Path]:
    """Where registry entries are looked for, first match wins."""
    override = os.environ.get(WEIGHTS_DIR_ENV)
    first = [Path(override).expanduser()] if override else []
    return [*first, cache_dir(), registry_dir()]


def locate(entry: Entry) -> Location:
    """Find an intact copy of `entry`: its own file name first, then any file of its size."""
    damaged = None
    for folder in search_dirs():
        for path in _candidates(folder, entry):
            if checksum(path) == entry.sha256:
                return Location(entry, "present", path)
        named = folder / entry.filename
        if damaged is None and named.is_file():
            damaged = named
    return Location(entry, "damaged" if damaged else "missing", damaged)


def _candidates(folder: Path, entry: Entry) -> Iterator[Path]:
    named = folder / entry.filename
    if named.is_file():
        yield named
    # A size test is free and rules out nearly every other file before hashing.
    with contextlib.suppress(OSError):
        for item in sorted(os.scandir(folder), key=lambda item: item.name):
            if item.name != entry.filename and item.is_file() and item.stat().st_size == entry.size:
                yield Path(item.path)


def resolve(name: str, registry: Registry | None = None) -> Path:
    """The verified file of entry `name`, or a usage error (exit 2) that says how to get it."""
    location = locate(get(name, registry))
    if location.path is None or location.status != "present":
        raise UsageError(unavailable_message(location))
    return location.path


def unavailable_message(location: Location) -> str:
    """One line: which checkpoint is missing or damaged, its sha256, and the two fixes."""
    entry = location.entry
    if location.status == "damaged":
        problem = f"{location.path} does not have sha256 {entry.sha256}"
    else:
        folders = ", ".join(str(folder) for folder in search_dirs())
        problem = f"no file with sha256 {entry.sha256} in {folders}"
    fetch = f"run `dinat weights download {entry.name}`" if entry.url else "reinstall dinat"
    return (
        f"{location.status} weights {entry.name!r} ({entry.task}): {problem}. "
        f"Fix: {fetch}, or pass `--weights PATH` to use a checkpoint you have"
    )
