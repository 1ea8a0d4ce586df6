"""What a restore run shows: a rich progress bar on a terminal, one line per file otherwise.

On a terminal, each video being restored gets a bar of its own: frames, frames per second
and the time left for the clip.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from dinat_cli.results import BatchResult, FileResult


def _scores_text(scores: dict[str, float]) -> str:
    parts = []
    if "psnr" in scores:
        psnr = scores["psnr"]
        parts.append("PSNR inf" if math.isinf(psnr) else f"PSNR {psnr:.2f} dB")
    parts += [f"{key.upper()} {value:.4f}" for key, value in scores.items() if key != "psnr"]
    return ", ".join(parts)


def describe(result: FileResult) -> str:
    """One plain line for a finished file."""
    if result.status == "skipped":
        return f"skipped {result.name}: {result.output} exists (use --overwrite to redo it)"
    if result.status == "failed":
        return f"failed  {result.name}: {result.error}"
    details = [f"{result.seconds:.2f} s"]
    if result.frames is not None:
        details.append(_frames_text(result))
    if result.attempts > 1:
        details.append(f"attempt {result.attempts}: a worker died")
    if result.scores:
        details.append(_scores_text(result.scores))
    if result.error:
        details.append(result.error)
    state = "partial" if result.status == "partial" else "done   "
    return f"{state} {result.name} -> {result.output} ({', '.join(details)})"


class RunDisplay:
    """Reports each finished file; `quiet` keeps only failures, which cron should mail.

    The progress bar shows from `start` (the model is loaded) until the display is left.
    """

    def __init__(self, *, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self._progress: Progress | None = None
        # The bar of each video in progress, by name.
        self._clips: dict[str, TaskID] = {}

    def __enter__(self) -> RunDisplay:
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, planned: int, note: str | None) -> None:
        """The run begins with `planned` files; `note` is a line about the run, such as the Ray workers it got."""
        if note is not None and not self.quiet:
            self.console.print(note, markup=False)
        if not self.quiet and sys.stderr.isatty():
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[pace]}"),
                console=self.console,
                transient=True,
            )
            self._task = self._progress.add_task("restoring", total=planned, pace="")
            self._progress.start()

    def frames_done(self, name: str, done: int, total: int | None) -> None:
        """A video's progress: its bar shows the frames done, frames per second and the time left."""
        if self._progress is None:
            return
        clip = self._clips.get(name)
        if clip is None:
            clip = self._clips[name] = self._progress.add_task(name, total=total, pace="")
        self._progress.update(clip, completed=done)
        speed = self._progress.tasks[self._progress.task_ids.index(clip)].speed
        if speed:
            self._progress.update(clip, pace=f"{speed:.2f} frames/s")

    def file_finished(self, result: FileResult) -> None:
        if result.status == "failed" or (not self.quiet and self._progress is None):
            self.console.print(describe(result), markup=False)
        if self._progress is not None:
            if (clip := self._clips.pop(result.name, None)) is not None:
                self._progress.remove_task(clip)
            self._progress.update(self._task, advance=1, description=result.name)

    def summary(self, batch: BatchResult) -> None:
        """The run in one line; a run stopped by a full or read-only disk says so even when quiet."""
        if batch.stopped is not None:
            self.console.print(f"stopped: {batch.stopped}; no later file could be written", markup=False)
        if self.quiet:
            return
        done = batch.count("done")
        line = (
            f"{batch.planned} planned: restored {done}, "
            + (f"partly restored {partial}, " if (partial := batch.count("partial")) else "")
            + f"skipped {batch.count('skipped')}, "
            f"failed {batch.count('failed')}, not started {batch.not_started} in {batch.elapsed:.1f} s"
        )
        if done and batch.elapsed:
            line += f" ({_pace(done, batch.elapsed)})"
        if batch.retried:
            line += f"; {batch.retried} sent again after a Ray worker died"
        if batch.mean_scores:
            line += f"; mean {_scores_text(batch.mean_scores)}"
        if batch.interrupted:
            line = "interrupted: " + line
        self.console.print(line, markup=False)


def _frames_text(result: FileResult) -> str:
    """A video's frames and the pace of this run's share of them."""
    text = f"{result.frames} frame{'s' if result.frames != 1 else ''}"
    if result.restored_frames and result.seconds:
        text += f", {result.restored_frames / result.seconds:.2f} frames/s"
    if result.restored_frames != result.frames:
        text += f", {result.restored_frames} restored now (resumed)"
    return text


def _pace(done: int, seconds: float) -> str:
    """Images per second, or seconds per image when that reads better (under one image a second)."""
    rate = done / seconds
    return f"{rate:.2f} images/s" if rate >= 1 else f"{seconds / done:.1f} s/image"
