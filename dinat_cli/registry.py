"""The checkpoint registry: which file is which model, where it lives, download and import.

`weights/registry.json` (installed as `dinat_cli.weights`) is the single source of
truth. A file is recognised by its sha256, never by its name, and each file is
hashed once: the digest is remembered by absolute path, size and mtime in the cache
folder, so a 100 MB checkpoint is not re-read on every run.

Registry entries are looked for in `$DINAT_WEIGHTS_DIR`, then the user cache
(`$XDG_CACHE_HOME/dinat`, else `~/.cache/dinat`), then beside the registry file
(the installed package, for checkpoints that ship with dinat).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from dinat_cli import files
from dinat_cli.errors import CheckpointError, DinatError, UsageError

REGISTRY_ENV = "DINAT_REGISTRY"
WEIGHTS_DIR_ENV = "DINAT_WEIGHTS_DIR"
DUAL_PIXEL_SUFFIX = "-dual-pixel"
DOWNLOAD_TIMEOUT_S = 30

_PACKAGE = "dinat_cli.weights"
_REGISTRY_FILE = "registry.json"
_VERDICTS_FILE = "verified.json"
_CHUNK = 1 << 20

Status = Literal["present", "missing", "damaged"]


@dataclass(frozen=True)
class Entry:
    """One checkpoint of the registry; `config` holds the RestoreDiNAT keyword arguments."""

    name: str
    task: str
    description: str
    sha256: str
    size: int
    filename: str
    format: str
    config: dict[str, Any]
    default_for: tuple[str, ...] = ()
    url: str | None = None
    upstream_path: str | None = None
    paper_psnr: dict[str, float] = field(default_factory=dict)


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


Registry = Mapping[str, Entry]


# --- the registry file -----------------------------------------------------------


def registry_dir() -> Path:
    """The folder of the registry file in use; checkpoints that ship with dinat lie in it."""
    override = os.environ.get(REGISTRY_ENV)
    if override:
        return Path(override).expanduser().resolve().parent
    # A regular (non-zip) package: its resources are plain files.
    return Path(str(resources.files(_PACKAGE)))


def load_registry(path: Path | None = None) -> dict[str, Entry]:
    """Entries by name, from `path`, else `$DINAT_REGISTRY`, else the installed registry."""
    if path is None:
        override = os.environ.get(REGISTRY_ENV)
        path = Path(override).expanduser() if override else registry_dir() / _REGISTRY_FILE
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))["models"]
        entries = [Entry(**{**item, "default_for": tuple(item.get("default_for", ()))}) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DinatError(f"cannot read the weights registry {path}: {error}") from None
    registry = {entry.name: entry for entry in entries}
    defaults = [key for entry in entries for key in entry.default_for]
    if len(registry) != len(entries) or len(set(defaults)) != len(defaults):
        raise DinatError(f"weights registry {path}: names and default_for values must be unique")
    return registry


def _entries(registry: Registry | None) -> Registry:
    return load_registry() if registry is None else registry


def get(name: str, registry: Registry | None = None) -> Entry:
    """The entry called `name`; an unknown name is a usage error that lists the known ones."""
    registry = _entries(registry)
    if name not in registry:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(registry)}")
    return registry[name]


def default_model(task: str, dual_pixel: bool = False, registry: Registry | None = None) -> Entry:
    """The entry used for `task` (e.g. "deblur") when no --model or --weights is given."""
    registry = _entries(registry)
    key = task + DUAL_PIXEL_SUFFIX if dual_pixel else task
    for entry in registry.values():
        if key in entry.default_for:
            return entry
    raise UsageError(f"no default weights for {key}; pick one with --model NAME (see `dinat weights list`)")


# --- checksums and their cache ---------------------------------------------------


def cache_dir() -> Path:
    """The user cache folder: downloads, imports and the checksum verdicts go here."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dinat"


def sha256_file(path: Path) -> str:
    """Hash a file from disk (no cache)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({files.reason(error)})") from None
    return digest.hexdigest()


def checksum(path: Path, *, fresh: bool = False) -> str:
    """The sha256 of `path`, re-hashed only when its size or mtime changed (or `fresh`)."""
    path = Path(path).resolve()
    stat = path.stat()
    known = _read_verdicts().get(str(path))
    if not fresh and known and (known.get("size"), known.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
        return known["sha256"]
    digest = sha256_file(path)
    _remember(path, digest)
    return digest


def _read_verdicts() -> dict[str, dict[str, Any]]:
    try:
        verdicts = json.loads((cache_dir() / _VERDICTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


def _remember(path: Path, digest: str) -> None:
    stat = path.stat()
    verdicts = {key: value for key, value in _read_verdicts().items() if Path(key).exists()}
    verdicts[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    # A read-only or full cache only costs a re-hash next time; it must not stop a restore.
    # Written atomically: parallel runs never read a half-written file.
    with contextlib.suppress(DinatError):
        files.write_atomically(cache_dir() / _VERDICTS_FILE, json.dumps(verdicts).encode("utf-8"))


# --- identifying and locating files ----------------------------------------------


def check(path: Path, registry: Registry | None = None, *, fresh: bool = False) -> Verdict:
    """Say what `path` is: intact (a known sha256), damaged (a known size or name), or unknown."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    registry = _entries(registry)
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


def select(
    task: str,
    *,
    model: str | None = None,
    weights: Path | None = None,
    dual_pixel: bool = False,
    registry: Registry | None = None,
) -> tuple[Path, Entry | None]:
    """The weights file a restore command uses and its entry (None for an unknown --weights file).

    Call it before creating any output: a missing checkpoint stops the run with exit code 2.
    """
    registry = _entries(registry)
    if weights is not None:
        if model is not None:
            raise UsageError("--model and --weights exclude each other; give one")
        if not Path(weights).is_file():
            raise UsageError(f"--weights {weights}: no such file")
        return Path(weights), identify(weights, registry)
    entry = get(model, registry) if model else default_model(task, dual_pixel, registry)
    if entry.task != task:
        raise UsageError(f"--model {entry.name} is a {entry.task} model, not {task}; see `dinat weights list`")
    return resolve(entry.name, registry), entry


# --- getting files into the cache ------------------------------------------------


def download(entry: Entry, *, progress: bool = False) -> Path:
    """Fetch `entry` into the cache: resume a partial `.part`, check sha256, rename atomically.

    A download whose checksum is wrong is deleted; a network error keeps the partial
    file so that the next attempt resumes it.
    """
    if not entry.url:
        raise UsageError(f"{entry.name} ships with dinat, there is nothing to download; reinstall dinat")
    folder = cache_dir()
    files.prepare_folder(folder, "cache folder")
    target = folder / entry.filename
    partial = target.with_name(target.name + ".part")
    try:
        _fetch(entry.url, partial, entry.size, entry.name, progress)
    except (
        urllib.error.URLError,
        http.client.HTTPException,
        ConnectionError,
        TimeoutError,
    ) as error:
        raise DinatError(
            f"cannot download {entry.name} from {entry.url}: {_describe(error)}. Check the "
            "network, or fetch the file elsewhere and run `dinat weights import FILE`"
        ) from None
    except OSError as error:
        raise DinatError(f"cannot write {partial}: {error.strerror or error}") from None
    digest = sha256_file(partial)
    if digest != entry.sha256:
        partial.unlink()
        raise CheckpointError(f"download of {entry.name} refused and removed: sha256 {digest}, expected {entry.sha256}")
    os.replace(partial, target)
    _remember(target.resolve(), digest)
    return target


def _describe(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    # URLError wraps the socket error; its strerror reads better than "[Errno 111] ...".
    reason = getattr(error, "reason", error)
    return getattr(reason, "strerror", None) or str(reason)


def _fetch(url: str, partial: Path, size: int, label: str, progress: bool) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    if offset >= size:
        return  # nothing left to ask for; the checksum decides
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=DOWNLOAD_TIMEOUT_S) as response:
        if response.status != 206:
            offset = 0  # the server ignored the range and sends the whole file
        with (
            open(partial, "ab" if offset else "wb") as stream,
            tqdm(
                total=size,
                initial=offset,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                stream.write(chunk)
                bar.update(len(chunk))
            received = stream.tell()
    # urllib reports a dropped connection as a normal end of data; keep the part to resume.
    if received < size:
        raise ConnectionError(f"connection closed after {received} of {size} bytes, run again to resume")


def import_file(path: Path, registry: Registry | None = None) -> tuple[Entry, Path]:
    """Verify a checkpoint the user already has and copy it into the cache under its entry name."""
    verdict = check(path, registry, fresh=True)
    if verdict.entry is None:
        raise CheckpointError(verdict.reason)
    target = cache_dir() / verdict.entry.filename
    if target.exists() and target.samefile(path):
        return verdict.entry, target
    files.prepare_folder(target.parent, "cache folder")
    copy = target.with_name(target.name + ".import")
    try:
        # Copy beside the target then rename: a crash never leaves half a file under the real name.
        shutil.copyfile(path, copy)
        os.replace(copy, target)
    except OSError as error:
        raise files.write_failure(target, error) from None
    finally:
        copy.unlink(missing_ok=True)
    _remember(target.resolve(), verdict.sha256)
    return verdict.entry, target
