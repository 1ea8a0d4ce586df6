"""A run's results: one per file, and the batch's counts, mean scores and exit code.

Torch-free: the progress display and report writers read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from dinat_cli import evaluation
from dinat_cli.errors import StorageError

if TYPE_CHECKING:
    from dinat_cli.planning import Job

# "partial": some segments of a clip restored, the others another shard's or worker's to restore.
Status = Literal["done", "partial", "skipped", "failed"]


def partial_note(name: str, segments: int) -> str:
    """What a "partial" result says: the clip is written by whichever run restores its last segment."""
    return f"restored {segments} segment(s) of {name}; the run that restores its last segment writes it"


@dataclass
class FileResult:
    """What became of one planned file; `as_row` is its line in a report."""

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
    # The file it was restored from (the left view of a dual-pixel pair): the HTML report shows it.
    input: str | None = None
    # The input's own scores against the same ground truth: what the restoration gained.
    input_scores: dict[str, float] = field(default_factory=dict)
    # A video's frames, and those restored by this run (fewer when it resumed an interrupted one).
    frames: int | None = None
    restored_frames: int | None = None
    # A video scored against its ground truth: `scores` are the means over frames, these the worst frame's.
    worst_frame: int | None = None
    worst_scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, job: Job, status: Status, **fields: object) -> FileResult:
        """The result of `job`, named by it: its name, output and input."""
        return cls(job.name, str(job.output), status, input=str(job.sources[0]), **fields)  # type: ignore[arg-type]

    @classmethod
    def failed(cls, job: Job, error: str) -> FileResult:
        return cls.of(job, "failed", error=error)

    def as_row(self) -> dict[str, object]:
        row: dict[str, object] = {
            "name": self.name,
            "output": self.output,
            "status": self.status,
            "seconds": round(self.seconds, 4),
        }
        row.update(self.scores)
        row.update({f"input_{name}": value for name, value in self.input_scores.items()})
        if self.frames is not None:
            row["frames"] = self.frames
            row["restored_frames"] = self.restored_frames
        if self.worst_frame is not None:
            row["worst_frame"] = self.worst_frame
            row.update({f"worst_{name}": value for name, value in self.worst_scores.items()})
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
        if self.input:
            row["input"] = self.input
        return row


@dataclass
class BatchResult:
    """A run's results, skipped files first, then the others in the jobs' order."""

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
            "partial": self.count("partial"),
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
