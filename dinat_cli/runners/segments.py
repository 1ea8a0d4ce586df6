"""A clip as several units of work: its segments restored apart, on Ray workers, and their
results as the clip's one result.

Each unit is the clip's job narrowed to one segment (`Job.segments`); `restore_file` runs it
like any job, and the unit that restores the clip's last segment joins the video and scores it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dinat_cli.planning import video_segments
from dinat_cli.results import FileResult, partial_note

if TYPE_CHECKING:
    from dinat_cli.planning import Job


def split(jobs: Sequence[Job]) -> tuple[list[Job], list[int]]:
    """Units of work for `jobs`, and the index in `jobs` of each unit's job.

    A video of several segments becomes one unit per segment (of those the job restores);
    a photo, or a clip that cannot be read (its one unit reports why), stays whole.
    """
    units: list[Job] = []
    owners: list[int] = []
    for index, job in enumerate(jobs):
        segments = job.segments if job.segments is not None else video_segments(job)
        pieces = [dataclasses.replace(job, segments=(segment,)) for segment in segments or ()]
        if len(pieces) < 2:
            pieces = [job]
        units += pieces
        owners += [index] * len(pieces)
    return units, owners


class Gather:
    """Collects the units' results and records each job's once all its units are back."""

    def __init__(self, jobs: Sequence[Job], owners: Sequence[int], record: Callable[[int, FileResult], None]) -> None:
        self._jobs = jobs
        self._owners = owners
        self._record = record
        self._waiting = {index: owners.count(index) for index in set(owners)}
        self._results: dict[int, list[FileResult]] = {index: [] for index in self._waiting}

    def record(self, unit: int, result: FileResult) -> None:
        index = self._owners[unit]
        self._results[index].append(result)
        self._waiting[index] -= 1
        if self._waiting[index] == 0:
            self._record(index, combine(self._jobs[index], self._results.pop(index)))


def combine(job: Job, results: Sequence[FileResult]) -> FileResult:
    """A clip's result from its units': a failed unit's if one failed, else the joining unit's
    (or, when other shards' segments are missing, the last partial one), with the time, frames
    and tries of all."""
    if len(results) == 1:
        return results[0]
    chosen = next(
        (result for status in ("failed", "done") for result in results if result.status == status), results[-1]
    )
    return dataclasses.replace(
        chosen,
        seconds=sum(result.seconds for result in results),
        restored_frames=sum(result.restored_frames or 0 for result in results),
        attempts=max(result.attempts for result in results),
        # Every worker that restored a segment of the clip.
        worker=", ".join(dict.fromkeys(result.worker for result in results if result.worker)) or None,
        error=chosen.error if chosen.status != "partial" else partial_note(job.name, len(results)),
    )
