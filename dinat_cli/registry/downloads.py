"""Getting a registry entry's file into the user cache: by HTTP download, or by import of a file the user has.

Either way the file is checked against its sha256 before it takes its final name, and the
digest is remembered so that the next run does not hash it again.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dinat_cli import files
from dinat_cli.cache import cache_dir
from dinat_cli.errors import CheckpointError, DinatError, UsageError
from dinat_cli.registry import checksums
from dinat_cli.registry.catalogue import Entry, Registry
from dinat_cli.registry.locations import check

DOWNLOAD_TIMEOUT_S = 30

_CHUNK = 1 << 20


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
    digest = checksums.sha256_file(partial)
    if digest != entry.sha256:
        partial.unlink()
        raise CheckpointError(f"download of {entry.name} refused and removed: sha256 {digest}, expected {entry.sha256}")
    os.replace(partial, target)
    checksums.remember(target.resolve(), digest)
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
    checksums.remember(target.resolve(), verdict.sha256)
    return verdict.entry, target
