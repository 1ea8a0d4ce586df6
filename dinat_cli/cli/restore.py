"""`dinat deblur | defocus | denoise | derain`: one command body, four tasks."""

from __future__ import annotations

import inspect
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from dinat_cli import reports
from dinat_cli.choices import ATTENTION_BACKENDS, DEFAULT_TILE_OVERLAP
from dinat_cli.cli.app import Command, app, command_line
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.planning import EXT_CHOICES, Shard
from dinat_cli.registry import catalogue, locations, selection
from dinat_cli.video import VideoOptions


@dataclass(frozen=True)
class Task:
    """A restore command; how --gt scores its outputs is the library's (`pipeline.TASK_SCORING`)."""

    name: str
    summary: str
    example: str


TASKS = (
    Task("deblur", "Remove motion blur (GoPro-trained DiNAT-IR).", "dinat deblur shaky/ sharp/"),
    Task(
        "defocus",
        "Remove defocus blur; --dual-pixel takes DPDD left/right views.",
        "dinat defocus --dual-pixel dpdd_test/ out/   (folders inputL/ and inputR/)",
    ),
    Task(
        "denoise",
        "Remove noise: real camera noise (sidd, SIDD-trained) or synthetic Gaussian noise (lite-denoise).",
        "dinat denoise --model lite-denoise noisy/ clean/",
    ),
    Task("derain", "Remove rain streaks (Rain13K-trained).", "dinat derain --gt gt/ rainy/ out/"),
)


def _option(default: object, *names: str, help: str, **extra: object) -> typer.models.OptionInfo:
    return typer.Option(default, *names, help=help, **extra)


def _parameters(with_dual_pixel: bool) -> list[inspect.Parameter]:
    keyword = inspect.Parameter.KEYWORD_ONLY
    spec: list[tuple[str, type, object]] = [
        ("input", str, typer.Argument(..., help="An image file, a folder (walked recursively) or a quoted glob.")),
        (
            "output",
            Path,
            typer.Argument(..., help="Output folder (mirrors the input layout), or a file for one input."),
        ),
        ("model", str | None, _option(None, "--model", help="Registry entry to use (see `dinat weights list`).")),
        ("weights", Path | None, _option(None, "--weights", help="Any DiNAT-IR .pth or .safetensors file.")),
        (
            "device",
            str,
            _option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps, or cuda:all (every GPU, on Ray)."),
        ),
        (
            "precision",
            str,
            _option("auto", "--precision", help="auto (fp32 on CPU, bf16/fp16 on CUDA), fp32, fp16, bf16."),
        ),
        ("tile", str, _option("auto", "--tile", help="auto (from free memory), 0 (whole image) or tile size >= 256.")),
        (
            "tile_overlap",
            int,
            _option(DEFAULT_TILE_OVERLAP, "--tile-overlap", help="Pixels shared by neighbouring tiles."),
        ),
        (
            "batch",
            str,
            _option("auto", "--batch", help="Inputs per forward pass (images of one size, or tiles): auto or N."),
        ),
        ("attention", str, _option("auto", "--attention", help=f"Attention backend: {'|'.join(ATTENTION_BACKENDS)}.")),
        ("overwrite", bool, _option(False, "--overwrite", help="Redo outputs that exist (default: skip them).")),
        ("ext", str, _option("keep", "--ext", help=f"Output format: {'|'.join(EXT_CHOICES)}.")),
        ("suffix", str, _option("", "--suffix", help="Added to each output file's stem, e.g. _restored.")),
        (
            "video_codec",
            str | None,
            _option(
                None,
                "--video-codec",
                help="Videos: encoder, e.g. libx264, libx265, ffv1 (lossless); default: the input's.",
            ),
        ),
        ("crf", int | None, _option(None, "--crf", help="Videos: the encoder's quality (x264/x265: lower is better).")),
        (
            "segment_frames",
            int,
            _option(
                VideoOptions.segment_frames,
                "--segment-frames",
                min=1,
                help="Videos: frames per resumable segment, the unit of work of shards and Ray workers.",
            ),
        ),
        ("gt", Path | None, _option(None, "--gt", help="Ground-truth folder: score each output and print the mean.")),
        (
            "report",
            Path | None,
            _option(
                None, "--report", help="Write per-file results to FILE.json, FILE.csv or FILE.html (a page to look at)."
            ),
        ),
        ("json_output", bool, _option(False, "--json", help="Print the run's summary as JSON on stdout.")),
        ("quiet", bool, _option(False, "--quiet", "-q", help="Print failures only.")),
        (
            "no_tlc",
            bool,
            _option(False, "--no-tlc", help="Pool channel statistics globally (training-time behaviour)."),
        ),
        ("shard", str | None, _option(None, "--shard", help="K/N: only this run's share of the files, K from 0.")),
        ("ray", bool, _option(False, "--ray", help="Restore on Ray workers: start or join a local Ray instance.")),
        ("ray_address", str | None, _option(None, "--ray-address", help="Restore on the Ray cluster at ADDR.")),
        (
            "workers",
            int | None,
            _option(None, "--workers", help="Ray workers; implies --ray (default: one per GPU, else per machine)."),
        ),
        (
            "gpus_per_worker",
            float | None,
            _option(None, "--gpus-per-worker", help="GPUs each Ray worker takes, e.g. 0.5; 0 for CPU workers."),
        ),
    ]
    if with_dual_pixel:
        spec.append(("dual_pixel", bool, _option(False, "--dual-pixel", help="Left+right dual-pixel views (DPDD).")))
    return [inspect.Parameter(name, keyword, default=default, annotation=kind) for name, kind, default in spec]


class _RestoreCommand(Command):
    """A restore command whose help ends with its task's models and whether each is installed.

    Written when the help is shown: finding the files is work that `dinat --help` and
    the other commands should not pay for.
    """

    def format_help(self, ctx: typer.Context, formatter: object) -> None:
        self.epilog = _models_note(str(self.name))
        super().format_help(ctx, formatter)


def _models_note(task: str) -> str:
    paragraphs = [f"Models for {task} (pick one with --model NAME; `dinat weights list` shows all):"]
    for entry in catalogue.load_registry().values():
        if entry.task != task:
            continue
        location = locations.locate(entry)
        defaults = [
            "default with --dual-pixel" if key.endswith(catalogue.DUAL_PIXEL_SUFFIX) else "default"
            for key in entry.default_for
        ]
        fix = f"`dinat weights download {entry.name}`" if entry.url else "reinstall dinat"
        status = {"present": "installed", "missing": f"not installed: {fix}", "damaged": f"damaged: {fix}"}
        paragraphs.append(f"{entry.name} ({', '.join([*defaults, status[location.status]])}): {entry.description}.")
    return "\n\n".join(paragraphs)


def _register(task: Task) -> None:
    def command(**options: object) -> None:
        code = restore(task, **options)
        raise typer.Exit(code)

    parameters = _parameters(with_dual_pixel=task.name == "defocus")
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    command.__doc__ = f"{task.summary}\n\nExample: {task.example}"
    app.command(task.name, cls=_RestoreCommand)(command)


def restore(
    task: Task,
    *,
    input: str,
    output: Path,
    model: str | None,
    weights: Path | None,
    device: str,
    precision: str,
    tile: str,
    tile_overlap: int,
    batch: str,
    attention: str,
    overwrite: bool,
    ext: str,
    suffix: str,
    video_codec: str | None,
    crf: int | None,
    segment_frames: int,
    gt: Path | None,
    report: Path | None,
    json_output: bool,
    quiet: bool,
    no_tlc: bool,
    shard: str | None = None,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    dual_pixel: bool = False,
) -> int:
    """Run one restore command; returns the exit code.

    The command line becomes typed requests (`EngineOptions`, `ModelSource`, `ClusterOptions`,
    `RestoreRequest`) for `pipeline.restore_files`, which does the work. Setup errors raise
    before any output exists, and every option that can be checked without torch is checked
    before torch is imported (seconds on a slow machine).
    """
    # Here, not at the top: --help and the other commands do not need them.
    from dinat_cli import pipeline
    from dinat_cli.cli.progress import RunDisplay
    from dinat_cli.runners.ray import ClusterOptions

    cluster = ClusterOptions.requested(
        ray=ray, address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker, device=device
    )
    options = EngineOptions.parse(
        # Ray runs take cuda:all as well: the cluster options give each worker its device.
        device=device if cluster is None else "auto",
        precision=precision,
        tile=tile,
        tile_overlap=tile_overlap,
        attention=attention,
        batch=batch,
    )
    share = Shard.parse(shard) if shard is not None else None
    path, entry = selection.select(task.name, model=model, weights=weights, dual_pixel=dual_pixel)
    request = pipeline.RestoreRequest(
        task=task.name,
        input=input,
        output=output,
        model=ModelSource(path, entry.variant if entry is not None else None, tlc=not no_tlc),
        model_name=entry.name if entry is not None else None,
        options=options,
        ext=ext,
        suffix=suffix,
        video=VideoOptions(codec=video_codec, crf=crf, segment_frames=segment_frames),
        dual_pixel=dual_pixel,
        overwrite=overwrite,
        gt=gt,
        shard=share,
        report=report,
        cluster=cluster,
        command=command_line(),
    )
    if cluster is None:
        from dinat_cli.process import configure_process

        configure_process()  # this process runs the network: it gets dinat's settings
    with _terminate_as_interrupt(), RunDisplay(quiet=quiet) as display:
        run = pipeline.restore_files(
            request, on_start=display.start, on_result=display.file_finished, on_frames=display.frames_done
        )
        display.summary(run.result)
    if json_output:
        sys.stdout.write(reports.dumps_json(run.document) + "\n")
    return run.result.exit_code


class _terminate_as_interrupt:
    """SIGTERM (kill, cron timeouts) stops the batch like Ctrl-C: finished files stay, none half written."""

    def __enter__(self) -> None:
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *_: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


for _task in TASKS:
    _register(_task)

__all__ = ["TASKS", "Task", "restore"]
