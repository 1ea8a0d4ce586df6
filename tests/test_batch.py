"""The local batch runner: the order files reach the model, and how a run that ends early is counted.

A stand-in model returns its input and notes which file it was given (each file is one grey
level), so these tests need no network and take no time.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dinat_cli import files, io, planning
from dinat_cli.cli.progress import RunDisplay
from dinat_cli.engine import EngineDescription, Restored
from dinat_cli.errors import StorageError
from dinat_cli.results import BatchResult, FileResult
from dinat_cli.runners.base import FILES_IN_FLIGHT
from dinat_cli.runners.local import LocalRunner


class StandInModel:
    """Returns the images it gets, `batch` at most at once; `seen` lists the files it got, by index,
    `batches` them as they came; Ctrl-C on image `interrupt_at`; a ValueError for any batch with `fail`."""

    def __init__(self, interrupt_at: int | None = None, batch: int = 1, fail: int | None = None) -> None:
        self.seen: list[int] = []
        self.batches: list[list[int]] = []
        self.interrupt_at = interrupt_at
        self.largest_batch = batch
        self.fail = fail

    def batch_size(self, height: int, width: int) -> int:
        return self.largest_batch

    def restore_batch(self, images: list[np.ndarray]) -> list[Restored]:
        indices = [_index_of(pixels) for pixels in images]
        assert len(images) <= self.largest_batch and len({pixels.shape for pixels in images}) == 1
        self.batches.append(indices)
        if self.fail in indices:
            raise ValueError(f"cannot restore file {self.fail}")
        return [self._restore(pixels) for pixels in images]

    def _restore(self, pixels: np.ndarray) -> Restored:
        self.seen.append(_index_of(pixels))
        if len(self.seen) == self.interrupt_at:
            raise KeyboardInterrupt  # as Ctrl-C arrives: on the main thread, in the model
        return Restored(pixels, tile=None, precision="fp32", retried_fp32=False, seconds=0.0)

    def describe(self) -> EngineDescription:
        return EngineDescription("cpu", "fp32", "torch", in_channels=3, out_channels=3, note=None)


def _level(index: int) -> int:
    return 10 * index + 5


def _index_of(pixels: np.ndarray) -> int:
    return (round(float(pixels[0, 0, 0]) * 255) - 5) // 10


def _inputs(root: Path, count: int, larger: tuple[int, ...] = ()) -> Path:
    """`count` grey 8x8 PNGs, those of the indices in `larger` 16x16."""
    root.mkdir(parents=True)
    for index in range(count):
        side = 16 if index in larger else 8
        cv2.imwrite(str(root / f"f{index:02d}.png"), np.full((side, side, 3), _level(index), np.uint8))
    return root


def _read_the_first_file_last(monkeypatch: pytest.MonkeyPatch, in_flight: int) -> None:
    """f00.png is read only once the other files in flight are read and have asked for the model."""
    read = io.read_image
    others_read = threading.Semaphore(0)

    def first_file_read_last(path: Path) -> io.DecodedImage:
        if Path(path).name == "f00.png":
            for _ in range(in_flight - 1):  # the files read ahead beside it
                others_read.acquire()
            time.sleep(0.2)  # and they have asked for the model
        else:
            others_read.release()
        return read(path)

    monkeypatch.setattr(io, "read_image", first_file_read_last)


def _summary(result: BatchResult, capsys: pytest.CaptureFixture[str], *, quiet: bool = False) -> list[str]:
    """The lines a run's display ends with (stderr is not a terminal here: plain lines)."""
    capsys.readouterr()
    RunDisplay(quiet=quiet).summary(result)
    return capsys.readouterr().err.splitlines()


def test_files_reach_the_model_in_list_order_even_when_the_first_is_read_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = planning.plan_jobs(str(_inputs(tmp_path / "in", 6)), tmp_path / "out")
    _read_the_first_file_last(monkeypatch, FILES_IN_FLIGHT)
    model = StandInModel()
    finished: list[str] = []
    result = LocalRunner(model).run(jobs, on_result=lambda item: finished.append(item.name))
    assert model.seen == [0, 1, 2, 3, 4, 5]
    assert finished == [f"f{index:02d}.png" for index in range(6)]
    assert result.count("done") == 6 and result.exit_code == 0


def test_waiting_images_of_one_size_go_through_the_model_together_in_list_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = planning.plan_jobs(str(_inputs(tmp_path / "in", 9, larger=(3,))), tmp_path / "out")
    model = StandInModel(batch=3, fail=6)
    _read_the_first_file_last(monkeypatch, model.largest_batch + 2)  # a batch and more in flight
    finished: list[str] = []
    result = LocalRunner(model).run(jobs, on_result=lambda item: finished.append(item.name))
    # f00 gathers f01 and f02, up to the batch size; f03 is larger: alone.
    assert model.batches[:3] == [[0, 1, 2], [3], [4, 5, 6][: len(model.batches[2])]]
    # In list order; a batch that fails is restored again image by image: only the file at fault fails.
    assert list(dict.fromkeys(index for batch in model.batches for index in batch)) == list(range(9))
    assert model.seen == [0, 1, 2, 3, 4, 5, 7, 8]
    assert finished == [f"f{index:02d}.png" for index in range(9)]
    assert [item.status for item in result.results] == ["done"] * 6 + ["failed"] + ["done"] * 2
    assert result.results[6].error == "ValueError: cannot restore file 6"


def test_ctrl_c_counts_planned_done_skipped_failed_and_not_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _inputs(tmp_path / "in", 8)
    (source / "f01.png").write_bytes(b"not a png")
    jobs = planning.plan_jobs(str(source), tmp_path / "out")
    files.write_atomically(jobs[7].output, b"an output of an earlier run")
    result = LocalRunner(StandInModel(interrupt_at=3)).run(jobs)  # f00, f02, then Ctrl-C in f03
    assert result.interrupted and result.exit_code == 130
    assert sorted(item.name for item in result.results if item.status == "done") == ["f00.png", "f02.png"]
    assert result.summary() | {"seconds": 0, "images_per_second": 0} == {
        "planned": 8,
        "done": 2,
        "partial": 0,
        "skipped": 1,
        "failed": 1,
        "not_started": 4,
        "retried": 0,
        "interrupted": True,
        "stopped": None,
        "seconds": 0,
        "images_per_second": 0,
        "mean": {},
    }
    [line] = _summary(result, capsys)
    assert line.startswith("interrupted: 8 planned: restored 2, skipped 1, failed 1, not started 4 in ")


def test_a_full_disk_stops_the_batch_at_the_first_file_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = planning.plan_jobs(str(_inputs(tmp_path / "in", 20)), tmp_path / "out")
    replace = os.replace

    def disk_full_from_the_third_file(source: Path, target: Path) -> None:
        if Path(target).name >= "f02.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(source, target)

    monkeypatch.setattr(os, "replace", disk_full_from_the_third_file)
    model = StandInModel()
    result = LocalRunner(model).run(jobs)
    # The files in flight beside the third at most, not the 17 left.
    assert len(model.seen) <= 3 + FILES_IN_FLIGHT
    assert result.stopped == f"{jobs[2].output}: cannot write (No space left on device)"
    assert result.exit_code == StorageError.exit_code == 2
    assert [item.status for item in result.results[:3]] == ["done", "done", "failed"]
    assert result.count("done") == 2 and result.not_started >= 20 - 3 - FILES_IN_FLIGHT
    assert result.count("failed") + result.not_started == 18
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["f00.png", "f01.png"]
    stop, summary = _summary(result, capsys)
    assert stop == f"stopped: {jobs[2].output}: cannot write (No space left on device); no later file could be written"
    failed, not_started = result.count("failed"), result.not_started
    assert summary.startswith(f"20 planned: restored 2, skipped 0, failed {failed}, not started {not_started} in ")
    assert _summary(result, capsys, quiet=True) == [stop]


@pytest.mark.parametrize(
    "done, seconds, pace",
    [(2, 50.0, "(25.0 s/image)"), (3, 4.0, "(1.3 s/image)"), (10, 4.0, "(2.50 images/s)"), (4, 4.0, "(1.00 images/s)")],
)
def test_the_summary_gives_seconds_per_image_when_images_take_longer_than_a_second(
    done: int, seconds: float, pace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    results = [FileResult(f"{index}.png", f"out/{index}.png", "done", seconds / done) for index in range(done)]
    [line] = _summary(BatchResult(results, seconds, planned=done), capsys)
    assert line == f"{done} planned: restored {done}, skipped 0, failed 0, not started 0 in {seconds:.1f} s {pace}"
