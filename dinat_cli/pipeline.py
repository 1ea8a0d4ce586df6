"""Restore a batch of files with one call: plan, check, run (locally or on Ray), record, report.

`restore_files(RestoreRequest(...))` is what the `dinat` restore commands run. Every check
that needs no model (paths, plan, shard, ground truth, report) is made before the model
loads, and the model is checked against the views (dual-pixel or not) before any output is
written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinat_cli import reports
from dinat_cli.errors import UsageError
from dinat_cli.evaluation import GroundTruth, Scoring
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.output_folder import output_lock
from dinat_cli.planning import Job, Shard, plan_jobs
from dinat_cli.registry import checksums
from dinat_cli.results import BatchResult, FileResult
from dinat_cli.runners.base import OnFrames, Runner
from dinat_cli.runners.ray import ClusterOptions, RayRunner
from dinat_cli.video import VideoOptions

# How --gt scores each task's outputs: the protocol of the task's benchmark in the papers.
TASK_SCORING: dict[str, Scoring] = {
    "deblur": Scoring("dinat"),
    # Both papers score single-image and dual-pixel DPDD results the same way.
    "defocus": Scoring("dpdd"),
    "denoise": Scoring("dinat"),
    "derain": Scoring("dinat", y_channel=True),
}


@dataclass(frozen=True)
class RestoreRequest:
    """One restore run, as a restore command's options describe it.

    `input` is an image or video file, a folder (walked recursively) or a glob; `output` a folder
    that mirrors its layout (or a file for one input file). `cluster` None runs in this
    process; otherwise on Ray workers, which get `model` and `options` as they are (the
    device aside: the cluster options choose it).
    """

    task: str
    input: str | Path
    output: Path
    model: ModelSource
    options: EngineOptions = field(default_factory=EngineOptions)
    ext: str = "keep"
    suffix: str = ""
    dual_pixel: bool = False
    overwrite: bool = False
    # A folder of ground truth: each output is scored against the file of its relative path and stem.
    gt: Path | None = None
    shard: Shard | None = None
    # FILE.json or FILE.csv: the report document, written when the run ends.
    report: Path | None = None
    # The registry entry the weights are (`dinat weights list` names them), for the report.
    model_name: str | None = None
    cluster: ClusterOptions | None = None
    # How the run was asked for (the command line), for the report; None from Python.
    command: str | None = None
    # How restored videos are encoded (codec, quality, segment length).
    video: VideoOptions = field(default_factory=VideoOptions)


@dataclass(frozen=True)
class RestoreRun:
    """What a run did (`result`) and its report document: `--json` prints it, `--report` writes it."""

    result: BatchResult
    document: dict[str, Any]


def restore_files(
    request: RestoreRequest,
    *,
    on_start: Callable[[int, str | None], None] | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    on_frames: OnFrames | None = None,
) -> RestoreRun:
    """Run `request` to its end; returns the results and the report document.

    `on_start(planned, note)` is called once the model is loaded and the output folder
    locked, with the number of files planned and a line on how the run starts (or None);
    `on_result` with each file's result as it is known, `on_frames` with each
    frame of a video restored in this process. Problems with the request raise
    a DinatError before any output is written; problems with one file are in its result.
    """
    scoring = TASK_SCORING.get(request.task)
    if scoring is None:
        raise UsageError(f"unknown task {request.task!r}: expected one of {', '.join(TASK_SCORING)}")
    # Hashed when the weights were selected: read from the checksum cache.
    weights_sha256 = checksums.checksum(request.model.weights)
    jobs = plan_jobs(
        str(request.input),
        request.output,
        ext=request.ext,
        suffix=request.suffix,
        dual_pixel=request.dual_pixel,
        video=_video_options(request, weights_sha256),
    )
    if request.shard is not None:
        jobs = request.shard.select(jobs)
    if request.gt is not None:
        ground_truth = GroundTruth(request.gt)
        jobs = [dataclasses.replace(job, reference=ground_truth.find(job.relative)) for job in jobs]
    if request.report is not None:
        reports.check_report_path(request.report)
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(_start(request, jobs))
        _check_views(runner.engine.in_channels, request.dual_pixel, request.model.weights)
        stack.enter_context(output_lock(_output_folder(request.output, jobs), request.shard, jobs))
        if on_start is not None:
            on_start(len(jobs), runner.ready_note)
        result = runner.run(
            jobs,
            overwrite=request.overwrite,
            scoring=scoring if request.gt is not None else None,
            on_result=on_result,
            on_frames=on_frames,
        )
    document = {
        "task": request.task,
        "command": request.command,
        "weights": str(request.model.weights),
        "weights_sha256": weights_sha256,
        "model": request.model_name,
        "device": runner.engine.device,
        "precision": runner.engine.precision,
        "kernels": runner.engine.kernels,
        "shard": str(request.shard) if request.shard is not None else None,
        "summary": result.summary(),
        "files": [item.as_row() for item in result.results],
    }
    if request.report is not None:
        reports.write_report(request.report, document, rows_key="files", summary_key="summary")
    return RestoreRun(result, document)


def _video_options(request: RestoreRequest, weights_sha256: str) -> VideoOptions:
    """The request's video options, naming what restores the frames: segments of a run with other
    weights or other model or engine options are not resumed."""
    identity = {
        "weights_sha256": weights_sha256,
        "variant": request.model.variant,
        "tlc": request.model.tlc,
        "engine": dataclasses.asdict(request.options),
    }
    return dataclasses.replace(request.video, restored_with=json.dumps(identity, sort_keys=True))


def _start(request: RestoreRequest, jobs: Sequence[Job]) -> contextlib.AbstractContextManager[Runner]:
    if request.cluster is None:
        from dinat_cli.runners.local import LocalRunner  # the engine, and torch with it

        return LocalRunner.start(request.model, request.options)
    must_see = [jobs[0].sources[0]] if jobs else []
    return RayRunner.start(request.model, request.options, request.cluster, must_see=must_see)


def _output_folder(output: Path, jobs: Sequence[Job]) -> Path:
    """The folder a run writes into: OUTPUT, or the folder of OUTPUT when it names the one output file."""
    if len(jobs) == 1 and jobs[0].output == Path(output):
        return Path(output).parent
    return Path(output)


def _check_views(in_channels: int, dual_pixel: bool, weights: Path) -> None:
    if dual_pixel and in_channels != 6:
        raise UsageError(f"--dual-pixel needs a dual-pixel model (6 input channels); {weights} takes {in_channels}")
    if not dual_pixel and in_channels != 3:
        hint = " (add --dual-pixel)" if in_channels == 6 else ""
        raise UsageError(f"{weights} takes {in_channels}-channel input, not RGB images{hint}")
