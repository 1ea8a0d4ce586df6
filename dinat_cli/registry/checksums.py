"""A file's sha256, hashed once: the digest is remembered by absolute path, size and mtime.

The verdicts live in the user cache folder, so a 100 MB checkpoint is not re-read on
every run. A cache that cannot be written only costs a re-hash next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from dinat_cli import files
from dinat_cli.cache import cache_dir
from dinat_cli.errors import CheckpointError, DinatError

_VERDICTS_FILE = "verified.json"
_CHUNK = 1 << 20


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
    remember(path, digest)
    return digest


def remember(path: Path, digest: str) -> None:
    """Record that the absolute `path`, as it is now, has sha256 `digest`."""
    stat = path.stat()
    verdicts = {key: value for key, value in _read_verdicts().items() if Path(key).exists()}
    verdicts[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    # A read-only or full cache only costs a re-hash next time; it must not stop a restore.
    # Written atomically: parallel runs never read a half-written file.
    with contextlib.suppress(DinatError):
        files.write_atomically(cache_dir() / _VERDICTS_FILE, json.dumps(verdicts).encode("utf-8"))


def _read_verdicts() -> dict[str, dict[str, Any]]:
    try:
        verdicts = json.loads((cache_dir() / _VERDICTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}
