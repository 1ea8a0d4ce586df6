"""Restore a batch of files: plan outputs, read ahead, run the engine, write behind.

Files are decoded on reader threads and encoded on a writer thread while the model
runs; a file that cannot be read, restored or written is recorded as failed and the
batch goes on. Every output is written atomically by `dinat_cli.io`, so an interrupted
run leaves finished files and nothing half written.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dinat_cli import io
from dinat_cli.engine import Restorer
from dinat_cli.errors import DinatError, UsageError

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
        if self.error:
            row["error"] = self.error
        return row


@dataclass
class BatchResult:
    results: list[FileResult]
    elapsed: float
    interrupted: bool = False

    def count(self, status: Status) -> int:
        return sum(result.status == status for result in self.results)

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
        return 1 if self.count("failed") else 0

    def summary(self) -> dict[str, object]:
        done = self.count("done")
        return {
            "total": len(self.results),
            "done": done,
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "interrupted": self.interrupted,
            "seconds": round(self.elapsed, 3),
            "images_per_second": round(done / self.elapsed, 4) if self.elapsed and done else 0.0,
            "mean": self.mean_scores,
        }


# --------------------------------------------------------------------------- planning


def plan_jobs(input: str, output: Path, *, ext: str = "keep", suffix: str = "", dual_pixel: bool = False) -> list[Job]:
    """The outputs a run will produce, mirroring the input layout; clashes are usage errors."""
    output = Path(output)
    if dual_pixel:
        jobs = [
            Job((pair.left, pair.right), pair.relative, io.output_path(pair.relative, output, ext, suffix))
            for pair in io.pair_dual_pixel(input)
        ]
    else:
        inputs = io.collect_inputs(input, exclude=output)
        single_file = Path(input).is_file()
        if single_file and output.suffix.lower() in io.IMAGE_EXTENSIONS:
            jobs = [Job((inputs[0].path,), inputs[0].relative, output)]
        else:
            jobs = [
                Job((item.path,), item.relative, io.output_path(item.relative, output, ext, suffix)) for item in inputs
            ]
    _refuse_clashes(jobs)
    return jobs


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


@dataclass
class _Restored:
    job: Job
    started: float
    template: io.DecodedImage
    pixels: np.ndarray
    tile: int | None
    precision: str


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
    """Restore every job in order; existing outputs are skipped unless `overwrite`."""
    started = time.perf_counter()
    results: list[FileResult] = []

    def record(result: FileResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    todo = []
    for job in jobs:
        if not overwrite and job.output.exists():
            record(FileResult(job.name, str(job.output), "skipped"))
        else:
            todo.append(job)

    interrupted = False
    readers = ThreadPoolExecutor(max_workers=read_ahead, thread_name_prefix="dinat-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dinat-write")
    writes: deque[tuple[_Restored, Future[dict[str, float]]]] = deque()
    try:
        for job, loaded in _read_ahead(todo, readers, read_ahead):
            begin = time.perf_counter()
            try:
                template, pixels = loaded.result()
                restored = restorer.restore(pixels)
            except Exception as error:
                record(FileResult(job.name, str(job.output), "failed", time.perf_counter() - begin, _describe(error)))
                continue
            item = _Restored(job, begin, template, restored, restorer.last.tile, restorer.last.precision)
            writes.append((item, writer.submit(_save, item, ground_truth, scorer)))
            # Keep at most two encoded images in flight: memory stays bounded on big batches.
            while writes and (len(writes) > 2 or writes[0][1].done()):
                record(_finished(*writes.popleft()))
        while writes:
            record(_finished(*writes.popleft()))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        # Writes in flight finish (each is atomic): nothing is left half written.
        writer.shutdown(wait=True, cancel_futures=True)
    if interrupted:
        for item, future in writes:
            if future.done() and not future.cancelled():
                record(_finished(item, future))
    return BatchResult(results, time.perf_counter() - started, interrupted)


def _read_ahead(
    jobs: Sequence[Job], pool: ThreadPoolExecutor, depth: int
) -> Iterator[tuple[Job, Future[tuple[io.DecodedImage, np.ndarray]]]]:
    queue: deque[tuple[Job, Future]] = deque()
    remaining = iter(jobs)
    while True:
        while len(queue) < depth and (job := next(remaining, None)) is not None:
            queue.append((job, pool.submit(_load, job)))
        if not queue:
            return
        yield queue.popleft()


def _load(job: Job) -> tuple[io.DecodedImage, np.ndarray]:
    """The image whose metadata the output keeps, and the network input (views side by side)."""
    views = [io.read_image(path) for path in job.sources]
    if len(views) == 2:
        left, right = views
        if left.pixels.shape[:2] != right.pixels.shape[:2]:
            raise DinatError(f"{job.sources[0]} and {job.sources[1]}: left and right views differ in size")
    return views[0], np.concatenate([view.to_float() for view in views], axis=2)


def _save(item: _Restored, ground_truth: GroundTruth | None, scorer: Scorer | None) -> dict[str, float]:
    image = item.template.with_float_pixels(item.pixels)
    io.write_image(image, item.job.output)
    if ground_truth is None or scorer is None:
        return {}
    reference = ground_truth.find(item.job.relative)
    if reference is None:
        raise _NotScored(f"no ground truth for {item.job.name}")
    try:
        return scorer(io.read_image(reference), image)
    except DinatError as error:
        raise _NotScored(f"not scored: {error}") from error


class _NotScored(DinatError):
    """The output was written, but could not be scored against a ground truth."""


def _finished(item: _Restored, future: Future[dict[str, float]]) -> FileResult:
    seconds = time.perf_counter() - item.started
    base = dict(name=item.job.name, output=str(item.job.output), seconds=seconds, tile=item.tile)
    try:
        scores = future.result()
    except _NotScored as problem:
        return FileResult(**base, status="done", precision=item.precision, error=str(problem))
    except Exception as error:
        return FileResult(**base, status="failed", error=_describe(error))
    return FileResult(**base, status="done", scores=scores, precision=item.precision)


def _describe(error: BaseException) -> str:
    if isinstance(error, DinatError):
        return str(error)
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------- output folder


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder; a second run is refused, not interleaved."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: msvcrt locks a byte range instead
            import msvcrt

            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            except OSError:
                raise BlockingIOError from None
    except BlockingIOError:
        handle.close()
        raise UsageError(f"{folder}: another dinat run is writing there; wait for it or pick another folder") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        io.remove_stale_temporaries(folder)
        yield
    finally:
        # The lock file stays: unlinking it would let a waiting run lock a stale inode.
        handle.close()
