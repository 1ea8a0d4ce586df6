"""Restore a batch of files: plan outputs, pick a shard, read ahead, run the engine, write behind.

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
import hashlib
import math
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

from dinat_cli import files, io
from dinat_cli.errors import DinatError, StorageError, UsageError

if TYPE_CHECKING:
    # The engine imports torch: planning a batch and checking its options do not need it.
    from dinat_cli.engine import Restored, Restorer

LOCK_NAME = ".dinat.lock"
Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class Job:
    """One output and the image(s) it is restored from: one view, or left and right."""

    sources: tuple[Path, ...]
    relative: Path
    output: Path

    @property
    def name(self) -> str:
        return self.relative.as_posix()


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
        scored = [result.scores for result in self.results if result.scores]
        if not scored:
            return {}
        return {key: math.fsum(scores[key] for scores in scored) / len(scored) for key in scored[0]}

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


# --------------------------------------------------------------------------- planning


def plan_jobs(input: str, output: Path, *, ext: str = "keep", suffix: str = "", dual_pixel: bool = False) -> list[Job]:
    """The outputs a run will produce, mirroring the input layout; clashes are usage errors.

    OUTPUT may be the input folder itself when a `suffix` names the outputs apart: then files
    that are the outputs of other inputs (an earlier run's) are not inputs.
    """
    output = Path(output)
    if dual_pixel:
        _refuse_a_file_as_folder(output)
        jobs = [
            Job((pair.left, pair.right), pair.relative, io.output_path(pair.relative, output, ext, suffix))
            for pair in io.pair_dual_pixel(input)
        ]
    else:
        inputs = io.collect_inputs(input, exclude=output)
        if Path(input).is_file() and output.suffix.lower() in io.IMAGE_EXTENSIONS:
            jobs = [Job((inputs[0].path,), inputs[0].relative, output)]
        else:
            _refuse_a_file_as_folder(output)
            if output.resolve() == io.input_root(input).resolve() and not suffix:
                raise UsageError(
                    f"{output} is the input folder: the outputs would replace the inputs; "
                    "add a --suffix (e.g. --suffix _restored) to write beside them, or choose another folder"
                )
            jobs = [
                Job((item.path,), item.relative, io.output_path(item.relative, output, ext, suffix)) for item in inputs
            ]
            if suffix:
                jobs = _without_outputs_of_others(jobs)
    _refuse_clashes(jobs)
    return jobs


def _refuse_a_file_as_folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise UsageError(
            f"{output} is a file, not a folder: the outputs need a folder (a file only for one input file, "
            "with an image suffix)"
        )


def _without_outputs_of_others(jobs: list[Job]) -> list[Job]:
    """Leave out inputs that another job writes: outputs an earlier run put beside their inputs."""
    outputs = {job.output.resolve() for job in jobs}
    # An input that is its own output stays: the clash check refuses it.
    return [
        job for job in jobs if (source := job.sources[0].resolve()) not in outputs or source == job.output.resolve()
    ]


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`, counted from 0 like SLURM array and Kubernetes indexed Job indices.

    A job belongs to the shard its relative path hashes to, so N runs that see the same
    input cover every file exactly once, whatever order each finds them in, and adding
    files never moves the others to another shard.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """`K/N` with 0 <= K < N."""
        index, slash, count = spec.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            shard = None
        if not slash or shard is None or not 0 <= shard.index < shard.count:
            raise UsageError(f"--shard {spec}: expected K/N with 0 <= K < N, e.g. --shard $SLURM_ARRAY_TASK_ID/8")
        return shard

    def owns(self, job: Job) -> bool:
        digest = hashlib.sha1(job.relative.as_posix().encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def select(self, jobs: Sequence[Job]) -> list[Job]:
        return [job for job in jobs if self.owns(job)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _refuse_clashes(jobs: Sequence[Job]) -> None:
    seen: dict[Path, Job] = {}
    for job in jobs:
        other = seen.setdefault(job.output, job)
        if other is not job:
            raise UsageError(
                f"{other.sources[0]} and {job.sources[0]} would both be written to {job.output}; "
                "use --ext keep or rename one"
            )
        if any(job.output.resolve() == source.resolve() for source in job.sources):
            raise UsageError(f"{job.output} is an input: choose another output folder or a --suffix")


class GroundTruth:
    """Ground-truth images found by relative path and stem, whatever their extension."""

    def __init__(self, folder: Path) -> None:
        if not Path(folder).is_dir():
            raise UsageError(f"--gt {folder}: no such folder")
        self._by_stem = {item.relative.with_suffix("").as_posix(): item.path for item in io.collect_inputs(folder)}

    def find(self, relative: Path) -> Path | None:
        return self._by_stem.get(relative.with_suffix("").as_posix())


# --------------------------------------------------------------------------- running

Scorer = Callable[[io.DecodedImage, io.DecodedImage], dict[str, float]]


RestoreFn = Callable[[np.ndarray], "Restored"]


def restore_file(
    job: Job, restore: RestoreFn, *, ground_truth: GroundTruth | None = None, scorer: Scorer | None = None
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
    if ground_truth is not None and scorer is not None:
        reference = ground_truth.find(job.relative)
        try:
            if reference is None:
                note = f"no ground truth for {job.name}"
            else:
                scores = scorer(io.read_image(reference), image)
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
    ground_truth: GroundTruth | None = None,
    scorer: Scorer | None = None,
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
    model = _MainThreadModel(restorer.restore)
    # read_ahead files read ahead, one restoring, one written behind: memory stays bounded on big batches.
    depth = read_ahead + 2
    helpers = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="dinat-file")
    pending: deque[tuple[Job, Future[FileResult]]] = deque()
    interrupted, stopped = False, None
    try:
        while True:
            while len(pending) < depth and (item := next(remaining, None)) is not None:
                turn, job = item
                future = helpers.submit(model.in_turn, turn, job, ground_truth=ground_truth, scorer=scorer)
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
        self._requests: dict[int, tuple[np.ndarray, Future[Restored]]] = {}
        # Turns whose file is done without asking for the model (it could not be read).
        self._passed: set[int] = set()
        self._turn = 0
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stopped = False

    def in_turn(self, turn: int, job: Job, *, ground_truth: GroundTruth | None, scorer: Scorer | None) -> FileResult:
        """Called on a helper thread: `restore_file` for `job`, the model serving it in `turn`."""
        try:
            return restore_file(job, functools.partial(self._restore, turn), ground_truth=ground_truth, scorer=scorer)
        finally:
            with self._guard:
                if turn >= self._turn:
                    self._passed.add(turn)
            self._wake.put(None)

    def _restore(self, turn: int, pixels: np.ndarray) -> Restored:
        """Waits for the main thread to restore `pixels` in `turn`."""
        reply: Future[Restored] = Future()
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

    def _next_request(self) -> tuple[np.ndarray, Future[Restored]] | None:
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
