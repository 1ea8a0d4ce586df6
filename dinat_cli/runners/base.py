"""What the local and the Ray runner share: one file's whole work, and the skeleton of a run.

A file that cannot be read, restored or written is recorded as failed and the batch goes
on, unless the output's file system takes no more writes (full, read-only): then the batch
stops at once. Every output is written atomically by `dinat_cli.files`, so an interrupted
run leaves finished files and nothing half written.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from dinat_cli import evaluation, io
from dinat_cli.errors import DinatError, StorageError
from dinat_cli.results import BatchResult, FileResult, partial_note

if TYPE_CHECKING:
    # The engine imports torch: the driver of a Ray run does not need it.
    from dinat_cli.engine import EngineDescription
    from dinat_cli.planning import Job
    from dinat_cli.video import FrameRestorer, VideoScores

# Files in flight at once for one model: one being read, one in the model, one being written.
# Three keep the model busy whenever reading and writing a file take less time than restoring
# it (the rule by far, even on a GPU); each file more holds another decoded image and its
# float copies (a 100-megapixel photo is 1.2 GB in float32) and helps only past an odd slow
# decode. The local runner used to hold 4, the Ray workers 3.
FILES_IN_FLIGHT = 3

Record = Callable[[int, FileResult], None]
# (file name, frames done, frames in the clip or None): a video's progress, frame by frame.
OnFrames = Callable[[str, int, "int | None"], None]


class Runner(abc.ABC):
    """Restores planned jobs with a model that is loaded once: in this process, or on Ray workers.

    Each runner is started as a context manager, which loads the model (or starts the workers)
    and releases it on exit; `run` may then be called for any number of batches.
    """

    # The engine the run got (on Ray, the first worker's: they all build the same), for reports.
    engine: EngineDescription
    # A line on how the run starts (the Ray workers it got, a precision that runs as another), or None.
    ready_note: str | None

    def run(
        self,
        jobs: Sequence[Job],
        *,
        overwrite: bool = False,
        scoring: evaluation.Scoring | None = None,
        on_result: Callable[[FileResult], None] | None = None,
        on_frames: OnFrames | None = None,
    ) -> BatchResult:
        """Restore every job; an output that exists is skipped unless `overwrite`.

        With `scoring`, each output is scored against its job's `reference`. `on_result` sees
        each file's result when it is known; `on_frames` each frame of a video restored in
        this process (Ray workers report whole files). The returned results list the skipped files
        first, then the others in the jobs' order. Ctrl-C, and an output file system that
        takes no more writes, end the run early: the result says so and counts the files
        that were not started.
        """
        started = time.perf_counter()
        skipped: list[FileResult] = []
        finished: dict[int, FileResult] = {}
        todo: list[Job] = []
        for job in jobs:
            if not overwrite and job.output.exists():
                result = FileResult.of(job, "skipped")
                skipped.append(result)
                if on_result is not None:
                    on_result(result)
            else:
                todo.append(job)

        def record(index: int, result: FileResult) -> None:
            finished[index] = result
            if on_result is not None:
                on_result(result)

        interrupted, stopped = False, None
        try:
            stopped = self._restore(todo, scoring, record, on_frames)
        except KeyboardInterrupt:
            interrupted = True
        results = skipped + [finished[index] for index in sorted(finished)]
        return BatchResult(results, time.perf_counter() - started, len(jobs), interrupted, stopped)

    @abc.abstractmethod
    def _restore(
        self, jobs: Sequence[Job], scoring: evaluation.Scoring | None, record: Record, on_frames: OnFrames | None
    ) -> str | None:
        """Restore `jobs`, calling `record(index in jobs, result)` for each file as it is known.

        Returns why the run stopped before its end (the output's file system took no more
        writes), or None. Ctrl-C raises KeyboardInterrupt once the files in flight are settled.
        """


def restore_file(
    job: Job, model: FrameRestorer, scoring: evaluation.Scoring | None = None, on_frames: OnFrames | None = None
) -> FileResult:
    """One file's whole work, locally or on a Ray worker: read, restore, write atomically, score.

    A problem with the file is a failed result, never an exception; a StorageError (the output's
    file system takes no more writes) is raised, as it stops the batch. `seconds` counts this
    file's reading, model time and writing, not the time it waited for the model.
    """
    if job.video is not None:
        return _restore_video_file(job, model, scoring, on_frames)
    begin = time.perf_counter()
    try:
        template, pixels = _load(job)
        asked = time.perf_counter()
        [restored] = model.restore_batch([pixels])
        answered = time.perf_counter()
        image = template.with_float_pixels(restored.pixels)
        io.write_image(image, job.output)
    except StorageError:
        raise
    except Exception as error:
        return FileResult.of(job, "failed", seconds=time.perf_counter() - begin, error=_describe(error))
    note, scores, input_scores = None, {}, {}
    if scoring is not None:
        try:
            if job.reference is None:
                note = f"no ground truth for {job.name}"
            else:
                reference = io.read_image(job.reference)
                scores = scoring.score(evaluation.Pair(job.name, job.reference, job.output), reference, image)
                if len(job.sources) == 1:  # a dual-pixel pair has no single input to score
                    pair = evaluation.Pair(job.name, job.reference, job.sources[0])
                    input_scores = scoring.score(pair, reference, template)
        except DinatError as error:
            note = f"not scored: {error}"
        except Exception as error:
            seconds = time.perf_counter() - begin
            return FileResult.of(job, "failed", seconds=seconds, error=_describe(error), tile=restored.tile)
    seconds = (asked - begin) + restored.seconds + (time.perf_counter() - answered)
    return FileResult.of(
        job,
        "done",
        seconds=seconds,
        error=note,
        scores=scores,
        input_scores=input_scores,
        tile=restored.tile,
        precision=restored.precision,
    )


def _restore_video_file(
    job: Job, model: FrameRestorer, scoring: evaluation.Scoring | None, on_frames: OnFrames | None
) -> FileResult:
    """A video job: its frames restored one by one into a video, in resumable segments.

    A job of some of the clip's segments (a shard's, a Ray task's) is "partial" unless it was the
    one to join them: the run that restores the last segment writes the video and scores it.
    """
    from dinat_cli import video  # PyAV: only runs that restore videos load it

    begin = time.perf_counter()
    try:
        follow = None if on_frames is None else functools.partial(on_frames, job.name)
        done = video.restore_video(job.sources[0], job.output, model, job.video, follow, job.segments)
    except StorageError:
        raise
    except Exception as error:
        return FileResult.of(job, "failed", seconds=time.perf_counter() - begin, error=_describe(error))
    if not done.joined:
        return FileResult.of(
            job,
            "partial",
            seconds=time.perf_counter() - begin,
            error=partial_note(job.name, len(job.segments or ())),
            tile=done.tile,
            precision=done.precision,
            frames=done.frames,
            restored_frames=done.restored_frames,
        )
    note, scored, input_scores = None, None, {}
    if scoring is not None:
        if job.reference is None:
            note = f"no ground truth for {job.name}"
        else:
            try:
                scored = _score_video(evaluation.Pair(job.name, job.reference, job.output), scoring)
                input_scores = _score_video(evaluation.Pair(job.name, job.reference, job.sources[0]), scoring).mean
            except DinatError as error:
                note = f"not scored: {error}"
    return FileResult.of(
        job,
        "done",
        seconds=time.perf_counter() - begin,
        error=note,
        scores=scored.mean if scored is not None else {},
        input_scores=input_scores,
        worst_frame=scored.worst_frame if scored is not None else None,
        worst_scores=scored.worst if scored is not None else {},
        tile=done.tile,
        precision=done.precision,
        frames=done.frames,
        restored_frames=done.restored_frames,
    )


def _score_video(pair: evaluation.Pair, scoring: evaluation.Scoring) -> VideoScores:
    from dinat_cli import video

    return video.score_videos(pair.gt, pair.pred, lambda truth, frame: scoring.score(pair, truth, frame))


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
