"""Restore a batch of planned files (`dinat_cli.planning`): read ahead, run the engine, write behind.

`restore_file` is the whole work of one file; the local runner calls it on helper threads
(files are decoded and encoded while the model runs), Ray workers (`dinat_cli.distributed`)
call it the same way. A file that cannot be read, restored or written is recorded as
failed and the batch goes on, unless the output's file system takes no more writes (full,
read-only): then the batch stops at once. Every output is written atomically by
`dinat_cli.files`, so an interrupted run leaves finished files and nothing half written.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import numpy as np

from dinat_cli import evaluation, files, io
from dinat_cli.errors import DinatError, StorageError, UsageError
from dinat_cli.planning import Job, Shard

if TYPE_CHECKING:
    # The engine imports torch: planning a batch and checking its options do not need it.
    from dinat_cli.engine import Restorer

LOCK_NAME = ".dinat.lock"
Status = Literal["done", "skipped", "failed"]


@dataclass
class FileResult:
    name: str
    output: str
    status: Status
    seconds: float = 0.0
    error: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    tile: int | None = None
    precision: str | None = None
    # Tries it took: more than one when a Ray worker died while restoring it.
    attempts: int = 1
    worker: str | None = None

    def as_row(self) -> dict[str, object]:
        row: dict[str, object] = {
            "name": self.name,
            "output": self.output,
            "status": self.status,
            "seconds": round(self.seconds, 4),
        }
        row.update(self.scores)
        if self.tile:
            row["tile"] = self.tile
        if self.precision:
            row["precision"] = self.precision
        if self.attempts > 1:
            row["attempts"] = self.attempts
        if self.worker:
            row["worker"] = self.worker
        if self.error:
            row["error"] = self.error
        return row


@dataclass
class BatchResult:
    results: list[FileResult]
    elapsed: float
    # Jobs the run was given: those without a result were not started (Ctrl-C, a full disk).
    planned: int
    interrupted: bool = False
    # Why the run stopped before its end: the file system took no more writes.
    stopped: str | None = None

    def count(self, status: Status) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def not_started(self) -> int:
        return self.planned - len(self.results)

    @property
    def retried(self) -> int:
        """Files sent again because a Ray worker died while restoring them."""
        return sum(result.attempts > 1 for result in self.results)

    @property
    def mean_scores(self) -> dict[str, float]:
        return evaluation.mean_scores([result.scores for result in self.results if result.scores])

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.stopped is not None:
            return StorageError.exit_code
        return 1 if self.count("failed") else 0

    def summary(self) -> dict[str, object]:
        done = self.count("done")
        return {
            "planned": self.planned,
            "done": done,
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "not_started": self.not_started,
            "retried": self.retried,
            "interrupted": self.interrupted,
            "stopped": self.stopped,
            "seconds": round(self.elapsed, 3),
            "images_per_second": round(done / self.elapsed, 4) if self.elapsed and done else 0.0,
            "mean": self.mean_scores,
        }


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Restoration:
    """The network's output for one image, and how it was computed."""

    pixels: np.ndarray
    tile: int | None
    precision: str
    seconds: float


RestoreFn = Callable[[np.ndarray], Restoration]


def model_call(restorer: Restorer) -> RestoreFn:
    """`restorer` as `restore_file` calls it; not thread-safe, as the restorer itself."""

    def call(pixels: np.ndarray) -> Restoration:
        begin = time.perf_counter()
        restored = restorer.restore(pixels)
        # `last` describes this call only until the next one: read it before anyone else runs.
        stats = restorer.last
        return Restoration(restored, stats.tile, stats.precision, time.perf_counter() - begin)

    return call


def restore_file(
    job: Job,
    restore: RestoreFn,
    *,
    ground_truth: evaluation.GroundTruth | None = None,
    scoring: evaluation.Scoring | None = None,
) -> FileResult:
    """One file's whole work, locally or on a Ray worker: read, restore, write atomically, score.

    A problem with the file is a failed result, never an exception; a StorageError (the output's
    file system takes no more writes) is raised, as it stops the batch. `seconds` counts this
    file's reading, model time and writing, not the time it waited for the model.
    """
    begin = time.perf_counter()
    try:
        template, pixels = _load(job)
        asked = time.perf_counter()
        restored = restore(pixels)
        answered = time.perf_counter()
        image = template.with_float_pixels(restored.pixels)
        io.write_image(image, job.output)
    except StorageError:
        raise
    except Exception as error:
        return FileResult(job.name, str(job.output), "failed", time.perf_counter() - begin, _describe(error))
    note, scores = None, {}
    if ground_truth is not None and scoring is not None:
        reference = ground_truth.find(job.relative)
        try:
            if reference is None:
                note = f"no ground truth for {job.name}"
            else:
                pair = evaluation.Pair(job.name, reference, job.output)
                scores = scoring.score(pair, io.read_image(reference), image)
        except DinatError as error:
            note = f"not scored: {error}"
        except Exception as error:
            seconds = time.perf_counter() - begin
            return FileResult(job.name, str(job.output), "failed", seconds, _describe(error), tile=restored.tile)
    seconds = (asked - begin) + restored.seconds + (time.perf_counter() - answered)
    return FileResult(
        job.name, str(job.output), "done", seconds, note, scores, tile=restored.tile, precision=restored.precision
    )


def skip_existing(jobs: Sequence[Job], overwrite: bool, record: Callable[[FileResult], None]) -> list[Job]:
    """The jobs to run; each output that exists is recorded as skipped unless `overwrite`."""
    todo = []
    for job in jobs:
        if not overwrite and job.output.exists():
            record(FileResult(job.name, str(job.output), "skipped"))
        else:
            todo.append(job)
    return todo


def run_batch(
    jobs: Sequence[Job],
    restorer: Restorer,
    *,
    overwrite: bool = False,
    ground_truth: evaluation.GroundTruth | None = None,
    scoring: evaluation.Scoring | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    read_ahead: int = 2,
) -> BatchResult:
    """Restore every job in order; existing outputs are skipped unless `overwrite`.

    Helper threads run `restore_file` for a few files at once, so files are read and written
    while the model works; the model itself runs on this thread, one image at a time and in
    the jobs' order, so Ctrl-C stops it at once. The first file that cannot be written for
    lack of space (or a read-only file system) stops the batch: `BatchResult.stopped` says why.
    """
    started = time.perf_counter()
    results: list[FileResult] = []

    def record(result: FileResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    remaining = iter(enumerate(skip_existing(jobs, overwrite, record)))
    model = _MainThreadModel(model_call(restorer))
    # read_ahead files read ahead, one restoring, one written behind: memory stays bounded on big batches.
    depth = read_ahead + 2
    helpers = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="dinat-file")
    pending: deque[tuple[Job, Future[FileResult]]] = deque()
    interrupted, stopped = False, None
    try:
        while True:
            while len(pending) < depth and (item := next(remaining, None)) is not None:
                turn, job = item
                future = helpers.submit(model.in_turn, turn, job, ground_truth=ground_truth, scoring=scoring)
                pending.append((job, future))
            if not pending:
                break
            job, future = pending[0]
            model.serve_until(future)
            pending.popleft()
            try:
                record(future.result())
            except StorageError as error:
                record(FileResult(job.name, str(job.output), "failed", error=str(error)))
                stopped = str(error)
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        model.stop()
        # Writes in flight finish (each is atomic): nothing is left half written.
        helpers.shutdown(wait=True, cancel_futures=True)
    for job, future in pending:
        if (result := _settled(job, future)) is not None:
            record(result)
    return BatchResult(results, time.perf_counter() - started, len(jobs), interrupted, stopped)


def _settled(job: Job, future: Future[FileResult]) -> FileResult | None:
    """What became of a file in flight when the batch stopped; None if it never got its turn."""
    if future.cancelled():
        return None
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, StorageError):
        return FileResult(job.name, str(job.output), "failed", error=str(error))
    return None


class _Stopped(BaseException):
    """The run was interrupted before this file reached the model: it is not a failure of the file."""


class _MainThreadModel:
    """Runs the model on the main thread for helper threads that read and write files.

    Each file has a turn, its place in the batch, and the model serves the turns in order: a
    file read quickly does not overtake one read slowly, so files finish in the order the
    progress shows them, and none waits behind files that come after it.
    """

    def __init__(self, call: RestoreFn) -> None:
        self._call = call
        self._guard = threading.Lock()
        self._requests: dict[int, tuple[np.ndarray, Future[Restoration]]] = {}
        # Turns whose file is done without asking for the model (it could not be read).
        self._passed: set[int] = set()
        self._turn = 0
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stopped = False

    def in_turn(
        self, turn: int, job: Job, *, ground_truth: evaluation.GroundTruth | None, scoring: evaluation.Scoring | None
    ) -> FileResult:
        """Called on a helper thread: `restore_file` for `job`, the model serving it in `turn`."""
        try:
            return restore_file(job, functools.partial(self._restore, turn), ground_truth=ground_truth, scoring=scoring)
        finally:
            with self._guard:
                if turn >= self._turn:
                    self._passed.add(turn)
            self._wake.put(None)

    def _restore(self, turn: int, pixels: np.ndarray) -> Restoration:
        """Waits for the main thread to restore `pixels` in `turn`."""
        reply: Future[Restoration] = Future()
        with self._guard:
            if self._stopped:
                raise _Stopped
            self._requests[turn] = (pixels, reply)
        self._wake.put(None)
        return reply.result()

    def serve_until(self, target: Future[FileResult]) -> None:
        """Restore what helpers ask for, turn by turn, until `target` is finished."""
        target.add_done_callback(lambda _: self._wake.put(None))
        while not target.done():
            request = self._next_request()
            if request is None:
                self._wake.get()
                continue
            pixels, reply = request
            try:
                reply.set_result(self._call(pixels))
            except Exception as error:
                reply.set_exception(error)
            except BaseException:
                # Ctrl-C in the middle of the model: the helper gives up on this file.
                reply.set_exception(_Stopped())
                raise

    def _next_request(self) -> tuple[np.ndarray, Future[Restoration]] | None:
        """The request of the current turn, skipping turns that passed; None while it has not come."""
        with self._guard:
            while self._turn in self._passed:
                self._passed.remove(self._turn)
                self._turn += 1
            request = self._requests.pop(self._turn, None)
            if request is not None:
                self._turn += 1
            return request

    def stop(self) -> None:
        """Refuse new requests and release the helpers still waiting."""
        with self._guard:
            self._stopped = True
            waiting = list(self._requests.values())
            self._requests.clear()
        for _, reply in waiting:
            reply.set_exception(_Stopped())


def _load(job: Job) -> tuple[io.DecodedImage, np.ndarray]:
    """The image whose metadata the output keeps, and the network input (views side by side)."""
    views = [io.read_image(path) for path in job.sources]
    if len(views) == 2:
        left, right = views
        if left.pixels.shape[:2] != right.pixels.shape[:2]:
            raise DinatError(f"{job.sources[0]} and {job.sources[1]}: left and right views differ in size")
    return views[0], np.concatenate([view.to_float() for view in views], axis=2)


def _describe(error: BaseException) -> str:
    if isinstance(error, DinatError):
        return str(error)
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------- output folder


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
