"""`dinat bench`: time the network on synthetic images, through the same engine as `restore`.

torch and the engine are imported where they are used: parsing the command line and
`--help` do not need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from dinat_cli.choices import ATTENTION_BACKENDS
from dinat_cli.cli.app import app
from dinat_cli.errors import UsageError
from dinat_cli.options import EngineOptions

if TYPE_CHECKING:
    import torch

    from dinat_cli.engine import Restorer

# The official configuration of every released checkpoint.
DEFAULT_SIZES = ("256", "1280x720")


@dataclass
class BenchResult:
    """One size's timing: the median over repeats after the warm-up."""

    size: str
    precision: str
    device: str
    attention: str
    kernels: str  # Kernels.describe(): attention and the other kernels
    tile: int | None
    batch: int  # images per call, through the network together
    first_ms: float  # the warm-up call: includes compiling (or loading compiled code)
    ms: float  # per call: per batch of images
    megapixels_per_s: float
    peak_mb: float  # above the memory in use before the call


def parse_size(spec: str) -> tuple[int, int]:
    """`256` or `1280x720` (width x height) -> (height, width)."""
    try:
        parts = [int(part) for part in spec.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"--size {spec}: expected N or WxH, e.g. 256 or 1280x720")
    return parts[1], parts[0]


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[float]]:
    """Yield a one-element list that holds, after the block, the peak extra bytes it used."""
    import torch

    result = [0.0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result[0] = float(torch.cuda.max_memory_allocated(device) - before)
        return
    # The CPU allocator has no peak counter: sample the resident set size.
    before = _rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result[0] = float(max(peak[0], _rss()) - before)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the lifetime peak, coarser but never too small
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_bench(restorer: Restorer, size: tuple[int, int], repeat: int, seed: int = 0) -> BenchResult:
    """Warm up once, then time `repeat` restores of synthetic `size` images, on the restorer's kernels.

    Each call restores as many images as the engine batches at that size (`Restorer.batch_size`).
    """
    import numpy as np

    from dinat_cli import heap

    height, width = size
    channels = restorer.descriptor.in_channels
    rng = np.random.default_rng(seed)
    images = [
        rng.random((height, width, channels), dtype=np.float32) for _ in range(restorer.batch_size(height, width))
    ]
    # The peak includes the warm-up: freed memory stays in the process heap for reuse
    # (dinat_cli.heap), so only the first pass shows how much the working set needs, and
    # what earlier sizes left in the heap is returned first.
    heap.release_free_memory()
    with peak_memory(restorer.device) as peak:
        start = time.perf_counter()
        [restored, *_] = restorer.restore_batch(images)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            [restored, *_] = restorer.restore_batch(images)
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return BenchResult(
        size=f"{width}x{height}",
        precision=restored.precision,
        device=str(restorer.device),
        attention=restorer.attention,
        kernels=restorer.kernels.describe(),
        tile=restored.tile,
        batch=len(images),
        first_ms=first * 1e3,
        ms=median * 1e3,
        megapixels_per_s=len(images) * height * width / median / 1e6,
        peak_mb=peak[0] / 2**20,
    )


@app.command()
def bench(
    size: Annotated[
        list[str] | None, typer.Option("--size", "-s", help="N or WxH; repeat for several. Default: 256 and 1280x720.")
    ] = None,
    precision: str = typer.Option("fp32", help="fp32, bf16, fp16 or auto."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    attention: str = typer.Option(
        "auto", help=f"Attention backend: {', '.join(ATTENTION_BACKENDS)}; torch: eager PyTorch for every operation."
    ),
    tile: str = typer.Option("0", help="0: whole image; N: N-pixel tiles; auto: sized from free memory."),
    batch: str = typer.Option("1", help="Images per call through the network together: N, or auto (from free memory)."),
    repeat: int = typer.Option(3, min=1, help="Timed runs per size after one warm-up (median reported)."),
    threads: int = typer.Option(0, min=0, help="CPU threads (0: torch's default)."),
    dim: int = typer.Option(48, min=8, help="Network width (48: the official checkpoints)."),
    tlc: bool = typer.Option(True, help="Local channel pooling, as in restore."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """Time the network on random images: ms per image, megapixels per second, peak memory."""
    sizes = [parse_size(spec) for spec in size or DEFAULT_SIZES]
    import torch

    from dinat_cli.checkpoints import describe
    from dinat_cli.engine import Restorer
    from dinat_cli.model import RestoreDiNAT
    from dinat_cli.model.variants import OFFICIAL_CONFIG
    from dinat_cli.process import configure_process

    # Timed as the restore commands run: with their process settings.
    configure_process()
    if threads:
        torch.set_num_threads(threads)
    model = RestoreDiNAT(**{**OFFICIAL_CONFIG, "dim": dim}, tlc=tlc)
    # An unavailable attention backend fails here, before any work.
    options = EngineOptions.parse(device=device, precision=precision, tile=tile, attention=attention, batch=batch)
    restorer = Restorer(describe(model), options)
    if restorer.precision_note:
        typer.echo(restorer.precision_note, err=True)
    results = [run_bench(restorer, shape, repeat) for shape in sizes]
    if as_json:
        for result in results:
            typer.echo(json.dumps(asdict(result)))
        return
    # One engine for every size: its device and kernels go in the title, so that the
    # table fits 80 columns (cron mail, pipes); a narrower console folds cells, never cuts them.
    title = (
        f"dinat bench: dim {dim} on {restorer.device}, {restorer.kernels.describe()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    table = Table(title=title)
    for column in ("size", "precision", "tile", "batch", "first ms", "ms", "MP/s", "peak MB"):
        table.add_column(column, justify="left" if column == "size" else "right", overflow="fold")
    for r in results:
        table.add_row(
            r.size,
            r.precision,
            str(r.tile or "whole"),
            str(r.batch),
            f"{r.first_ms:.0f}",
            f"{r.ms:.0f}",
            f"{r.megapixels_per_s:.3f}",
            f"{r.peak_mb:.0f}",
        )
    Console().print(table)
