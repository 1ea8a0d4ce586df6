"""Writing where the user says: atomic replacement, and one line naming the place when it refuses.

Images, reports and the checksum cache are written through `write_atomically`: the data goes to
a hidden temporary file beside the target and is renamed over it, so a failed or interrupted
write never leaves a partial file under the final name. A folder the user names is checked with
`prepare_folder` before any work starts. No torch and no image libraries: the CLI imports it.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
from pathlib import Path

from dinat_cli.errors import DinatError, StorageError, UsageError

TEMP_MARKER = ".tmp-"

# After these, no later write to the same file system can succeed either.
_NO_MORE_WRITES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def reason(error: OSError) -> str:
    """The operating system's words for `error`, without the errno number."""
    return error.strerror or str(error)


def write_failure(path: Path, error: OSError) -> DinatError:
    """`path: cannot write (reason)`: a StorageError when the file system takes no more writes."""
    message = f"{path}: cannot write ({reason(error)})"
    return StorageError(message) if error.errno in _NO_MORE_WRITES else DinatError(message)


def write_atomically(path: Path, data: bytes) -> None:
    """Put `data` at `path`, creating missing parent folders; on failure the old file is untouched.

    The data goes to a hidden temporary file beside `path`, renamed over it once complete: the
    rename is atomic within a folder. open(..., "xb") rather than tempfile keeps the usual umask
    permissions. An OSError becomes `write_failure`; nothing half written is left behind.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}{TEMP_MARKER}{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failure(path, error) from error
        raise


def prepare_folder(folder: Path, role: str) -> None:
    """Create `folder` if needed and make sure a file can be created in it, before any work starts.

    A UsageError names the folder, its `role` ("output folder", ...) and the reason otherwise.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{role} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{role} {folder}: cannot create it ({reason(error)})") from None
    probe = folder / f".dinat-probe{TEMP_MARKER}{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        raise UsageError(f"{role} {folder}: cannot write there ({reason(error)})") from None


def temporaries_of(output: Path) -> list[Path]:
    """Temporary files that writes of output left behind (runs killed mid-write)."""
    output = Path(output)
    return [path for path in output.parent.glob(f".{glob.escape(output.name)}{TEMP_MARKER}*") if path.is_file()]


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed run (kill -9, power loss) left under folder; returns how many.

    Only call it while holding the folder's lock: another run's files in flight look the same.
    """
    removed = 0
    for path in Path(folder).rglob(f".*{TEMP_MARKER}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
