"""The output folder of a run: a lock, so that two runs never interleave their writes, and
the temporary files that killed runs left behind.

Every output is written atomically (`dinat_cli.files`): a run that is killed leaves finished
files and hidden temporary files, which the next run on the folder removes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from dinat_cli import files
from dinat_cli.errors import UsageError
from dinat_cli.planning import Job, Shard

LOCK_NAME = ".dinat.lock"


@contextlib.contextmanager
def output_lock(folder: Path, shard: Shard | None = None, jobs: Sequence[Job] = ()) -> Iterator[None]:
    """Create the output folder and lock it for one run: a clashing run is refused, not interleaved.

    A whole run holds `.dinat.lock` exclusively and removes every temporary file a killed
    run left. Shard K of N holds `.dinat.lock` and `.dinat.lock.of-N` shared and
    `.dinat.lock.K-of-N` exclusively: the other shards of N run beside it; a whole run, a
    second copy of the shard and a shard of another count, which splits the files otherwise
    (some would be restored twice), are refused. A shard removes only the temporary files of
    its own `jobs`, since another shard's files in flight look the same.
    """
    folder = Path(folder)
    files.prepare_folder(folder, "output folder")
    busy = f"{folder}: another dinat run is writing there; wait for it or pick another folder"
    with contextlib.ExitStack() as held:
        if shard is None:
            held.enter_context(_locked(folder / LOCK_NAME, busy, exclusive=True))
            files.remove_stale_temporaries(folder)
        else:
            held.enter_context(_locked(folder / LOCK_NAME, busy, exclusive=False))
            held.enter_context(_locked(_count_lock(folder, shard.count), busy, exclusive=False))
            _refuse_other_counts(folder, shard)
            mine = folder / f"{LOCK_NAME}.{shard.index}-of-{shard.count}"
            held.enter_context(_locked(mine, f"{folder}: shard {shard} is already being written there", exclusive=True))
            remove_temporaries_of(jobs)
        yield


def _count_lock(folder: Path, count: int) -> Path:
    return folder / f"{LOCK_NAME}.of-{count}"


def _refuse_other_counts(folder: Path, shard: Shard) -> None:
    """Refuse while shards of another count hold the folder; ours is held already, so of two
    counts that start at once, one at least sees the other."""
    for path in sorted(folder.glob(f"{LOCK_NAME}.of-*")):
        if path == _count_lock(folder, shard.count):
            continue
        with _open_lock(path) as handle:
            try:
                _lock(handle, exclusive=True)
            except BlockingIOError:
                count = path.name.rpartition("-")[2]
                raise UsageError(
                    f"{folder}: shards of {count} are writing there, and shards of another count "
                    f"(--shard {shard}) would restore some files twice; use the same N or another folder"
                ) from None


def remove_temporaries_of(jobs: Sequence[Job]) -> int:
    """Delete the temporary files that runs killed mid-write left for these jobs' outputs; returns how many.

    Only call it when nothing is writing these outputs: a file in flight looks the same.
    """
    removed = 0
    for job in jobs:
        for path in files.temporaries_of(job.output):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def _locked(path: Path, busy: str, *, exclusive: bool) -> Iterator[None]:
    handle = _open_lock(path)
    try:
        try:
            _lock(handle, exclusive)
        except BlockingIOError:
            raise UsageError(busy) from None
        if exclusive:
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
            except OSError as error:
                raise UsageError(f"{path}: cannot write the lock file ({files.reason(error)})") from None
        yield
    finally:
        # The lock file stays: unlinking it would let a waiting run lock a stale inode.
        handle.close()


def _open_lock(path: Path) -> IO[str]:
    try:
        return open(path, "a+")  # held for the whole run
    except OSError as error:
        raise UsageError(f"{path}: cannot open the lock file ({files.reason(error)})") from None


def _lock(handle: IO[str], exclusive: bool) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt locks a byte range, and only exclusively
        import msvcrt

        if not exclusive:
            return  # shards then guard only against a second copy of themselves
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
