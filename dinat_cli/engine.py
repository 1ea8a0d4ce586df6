"""The inference engine every task shares: device, precision, memory-aware tiling.

`Restorer` runs a network, known to it only through its `ModelDescriptor`, on float
images in [0, 1], as `EngineOptions` say. Reading and writing files is the job of
`dinat_cli.io`, running batches of files that of `dinat_cli.pipeline`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dinat_cli import cpu, ops, tile_choice
from dinat_cli.choices import SMALLEST_AUTO_TILE, check_device, check_precision, check_tile_overlap
from dinat_cli.descriptor import ModelDescriptor
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.tiling import TileGrid, run_tiled, tile_grid

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_MEMORY_SHARE = {"cuda": 0.7, "cpu": 0.5, "mps": 0.5}
# Auto batches stop here: a 1280x720 image alone keeps a GPU busy, and each image of a batch is
# a decoded file held in memory (the local runner holds a batch and two files more).
MAX_AUTO_BATCH = 8


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps` as a device this machine has."""
    spec = check_device(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: this torch build or machine has no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {spec}: Apple MPS is not available here")
    return device


def resolve_precision(spec: str, device: torch.device, supported: tuple[str, ...] = tuple(PRECISIONS)) -> torch.dtype:
    """`auto` is float32 on CPU and MPS, bfloat16 on CUDA where supported, else float16.

    `supported` are the precisions the network runs (its descriptor's); a 16-bit format a
    CPU has no arithmetic for is float32 (see `precision_fallback`).
    """
    spec = check_precision(spec)
    if spec == "auto":
        half = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp16"
        return PRECISIONS[half] if device.type == "cuda" and half in supported else torch.float32
    if spec not in supported:
        raise UsageError(f"--precision {spec}: this network runs {', '.join(supported)} only")
    return torch.float32 if precision_fallback(spec, device) else PRECISIONS[spec]


def precision_fallback(spec: str, device: torch.device) -> str | None:
    """Why precision `spec` runs as float32 on `device`, or None where it runs as asked.

    Without hardware bfloat16 (or float16) a CPU emulates it: PyTorch's bfloat16 matrix
    products ran at 1.3 GFLOP/s against 98 for float32 on an AVX2-only CPU.
    """
    spec = spec.strip().lower()
    if device.type != "cpu" or spec not in ("bf16", "fp16") or cpu.native_arithmetic()[spec] is not False:
        return None
    name = {"bf16": "bfloat16", "fp16": "float16"}[spec]
    return f"--precision {spec}: this CPU has no {name} arithmetic (it would run many times slower): running float32"


@dataclass(frozen=True)
class Restored:
    """The network's output for one image, and how it was computed."""

    pixels: np.ndarray  # float32 (H, W, out_channels), not clipped
    tile: int | None  # None: the whole image at once
    precision: str  # the name the command line takes: fp32, bf16 or fp16
    retried_fp32: bool  # a half-precision result was not finite and was computed again in float32
    seconds: float


@dataclass(frozen=True)
class EngineDescription:
    """The engine a run got, for report headers and the progress display."""

    device: str
    precision: str  # fp32, bf16 or fp16, as in each file's row
    kernels: str
    in_channels: int
    out_channels: int
    # Why the precision asked for is not the one that runs, or None.
    note: str | None = None


class Restorer:
    """A loaded network on a device, restoring whole images or tiles of them.

    >>> restorer = Restorer.load(ModelSource("net_g_latest.pth"), EngineOptions(tile=512))  # doctest: +SKIP
    >>> restored = restorer.restore(image)  # float32 (H, W, C) in [0, 1]                    # doctest: +SKIP
    >>> restored.pixels, restored.tile                                                       # doctest: +SKIP
    """

    def __init__(self, descriptor: ModelDescriptor, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        self.descriptor = descriptor
        self.options = options
        self.device = resolve_device(options.device)
        # A backend that cannot run here (no compiler, no CUDA) fails now, before any work.
        self.kernels = ops.resolve_kernels(options.attention, self.device)
        self.attention = self.kernels.attention
        descriptor.set_kernels(self.kernels)
        self.dtype = resolve_precision(options.precision, self.device, descriptor.precisions)
        self.precision_note = precision_fallback(options.precision, self.device)
        self.tile = _tile_for(descriptor, options)
        self.tile_overlap = options.tile_overlap
        # The smallest tile this engine cuts: out of memory stops there.
        self.min_tile = _round_up(max(descriptor.min_exact_tile, SMALLEST_AUTO_TILE), descriptor.size_multiple)
        self.model = descriptor.model.to(self.device).eval()

    @classmethod
    def load(cls, source: ModelSource, options: EngineOptions | None = None) -> Restorer:
        """Load `source` (a `.pth` in any BasicSR layout, or our `.safetensors`) onto the options' device."""
        return cls(source.load(), options)

    def describe(self) -> EngineDescription:
        return EngineDescription(
            device=str(self.device),
            precision=_precision_name(self.dtype),
            kernels=self.kernels.describe(),
            in_channels=self.descriptor.in_channels,
            out_channels=self.descriptor.out_channels,
            note=self.precision_note,
        )

    @property
    def largest_batch(self) -> int:
        """The most network inputs `batch_size` ever returns: what a caller may gather at most."""
        if self.options.batch is not None:
            return self.options.batch
        return 1 if self.device.type == "cpu" else MAX_AUTO_BATCH

    def batch_size(self, height: int, width: int) -> int:
        """How many images of `height` x `width` go through the network together.

        An image restored in tiles goes alone: its tiles go through together instead.
        """
        grid = self._grid(height, width, self._tile_for_image(height, width))
        return self._inputs_per_pass(grid) if grid.count == 1 else 1

    def restore(self, image: np.ndarray) -> Restored:
        """Restore float32 `(H, W, in_channels)` in [0, 1]: `restore_batch([image])[0]`."""
        return self.restore_batch([image])[0]

    def restore_batch(self, images: Sequence[np.ndarray]) -> list[Restored]:
        """Restore float32 `(H, W, in_channels)` images in [0, 1], all of one size, in their order.

        One forward pass per `batch_size` images (or per batch of tiles of a tiled image).
        Out of memory halves the batch, then the tile, and tries again, down to one input of
        `min_tile`; a non-finite result in half precision is recomputed in float32, for the
        images that had one only.
        """
        if not images:
            return []
        shape = images[0].shape
        channels = self.descriptor.in_channels
        if len(shape) != 3 or shape[2] != channels:
            raise ValueError(f"expected (H, W, {channels}) input, got {shape}")
        if any(image.shape != shape for image in images):
            raise ValueError(f"restore_batch takes images of one size: {sorted({image.shape for image in images})}")
        height, width = shape[:2]
        tile = self._tile_for_image(height, width)
        grid = self._grid(height, width, tile)
        batch = self._inputs_per_pass(grid)
        restored: list[Restored] = []
        while len(restored) < len(images):
            whole = grid.count == 1
            # Whole images go `batch` at a time; a tiled image alone, `batch` of its tiles at a time.
            chunk = images[len(restored) : len(restored) + (batch if whole else 1)]
            inputs = len(chunk) if whole else min(batch, grid.count)
            try:
                restored += self._restore_chunk(chunk, tile, tiles_per_pass=1 if whole else inputs)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not _is_out_of_memory(error):
                    raise
                _release_cached_memory(self.device)
                if inputs > 1:
                    batch = inputs // 2
                else:
                    tile = self._smaller_tile(tile, (height, width))
                    grid = self._grid(height, width, tile)
        return restored

    def _restore_chunk(self, images: Sequence[np.ndarray], tile: int, tiles_per_pass: int) -> list[Restored]:
        """One forward pass (or one per batch of tiles) over `images`, with the float32 retry."""
        began = time.perf_counter()
        x = self._to_device(images)
        half = self.dtype != torch.float32
        pixels, finite = self._to_host(self._run(x, tile or None, self.dtype, tiles_per_pass), check_finite=half)
        retried = np.zeros(len(images), dtype=bool) if finite is None else ~finite
        if retried.any():
            redo = torch.from_numpy(np.flatnonzero(retried)).to(self.device)
            redone, _ = self._to_host(self._run(x[redo], tile or None, torch.float32, tiles_per_pass))
            pixels = pixels.copy()  # a view of a pinned buffer or of the network's output
            pixels[retried] = redone
        seconds = (time.perf_counter() - began) / len(images)
        return [
            Restored(pixels[index], tile or None, "fp32" if again else _precision_name(self.dtype), again, seconds)
            for index, again in enumerate(retried.tolist())
        ]

    def _to_device(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """`images` as one `(B, C, H, W)` float32 tensor on the device, channels-last in memory.

        The batch axis first, then the permute: (B, H, W, C) memory is then a true channels-last
        tensor. A permute before adding a batch axis of one gives a batch stride of C, which
        convolutions took for NCHW: the whole network ran on NCHW maps, a quarter slower on CPU.
        """
        if len(images) == 1:  # no copy; torch's new axis has stride H * W * C, NumPy's 0
            host = torch.from_numpy(np.ascontiguousarray(images[0], dtype=np.float32))[None]
        else:
            host = torch.from_numpy(np.stack([np.asarray(image, dtype=np.float32) for image in images]))
        if self.device.type == "cuda":
            # From page-locked memory the copy runs asynchronously, while the GPU works.
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def _to_host(self, result: torch.Tensor, check_finite: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """`(B, C, H, W)` results as `(B, H, W, C)` float32 arrays, and which are all finite (if asked).

        On CUDA both copies are queued without waiting and the stream is synchronised once:
        the one synchronisation of a batch.
        """
        pixels = result.permute(0, 2, 3, 1)
        finite = torch.isfinite(result).flatten(1).all(1) if check_finite else None
        if self.device.type == "cuda":
            host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
            host.copy_(pixels, non_blocking=True)
            if finite is not None:
                flags = torch.empty(finite.shape, dtype=finite.dtype, pin_memory=True)
                finite = flags.copy_(finite, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            pixels = host
        elif self.device.type != "cpu":
            pixels, finite = pixels.cpu(), None if finite is None else finite.cpu()
        return pixels.numpy(), None if finite is None else finite.numpy()

    def auto_tile(self, height: int, width: int) -> int:
        """The way `--tile auto` restores an image: 0 (whole) or a tile size, the fastest that fits in memory."""
        costs = self.tile_costs(height, width)
        return min(costs, key=lambda tile: (costs[tile], -tile if tile else -math.inf))

    def tile_costs(self, height: int, width: int, *, within_memory: bool = True) -> dict[int, float]:
        """Estimated time of each way to restore an image: whole (key 0) or in tiles of a candidate size.

        Values are relative costs (`tile_choice`), comparable with each other only. With
        `within_memory`, only the ways that fit in the free-memory budget, and where none
        does, the largest square tile that does.
        """
        multiple = self.descriptor.size_multiple
        grids = tile_choice.plans(height, width, self.tile_overlap, multiple)
        if within_memory:
            per_pixel, budget = self._bytes_per_pixel(), self._memory_budget()
            if grids[0].height * grids[0].width * per_pixel > budget:
                side = int(math.sqrt(budget / per_pixel))
                largest = max(self.min_tile, side - side % multiple)
                grids = {tile: grid for tile, grid in grids.items() if 0 < tile <= largest}
                grids = grids or {largest: tile_grid(height, width, largest, self.tile_overlap, multiple)}
        element_size = 4 if self.dtype == torch.float32 else 2
        table = self.descriptor.cpu_cost_per_pixel
        return {tile: tile_choice.cost(grid, table, element_size, self.device.type) for tile, grid in grids.items()}

    def _tile_for_image(self, height: int, width: int) -> int:
        """The tile (0: whole) this engine restores an image of `height` x `width` in."""
        return self.tile if self.tile is not None else self.auto_tile(height, width)

    def _grid(self, height: int, width: int, tile: int) -> TileGrid:
        return tile_grid(height, width, tile or None, self.tile_overlap, self.descriptor.size_multiple)

    def _inputs_per_pass(self, grid: TileGrid) -> int:
        """How many inputs of `grid`'s size (whole images or tiles) one forward pass takes.

        Auto: as many as fit in the free-memory budget, up to MAX_AUTO_BATCH, but one on CPU,
        where a batch computes no faster than its images one by one (README, "GPUs").
        """
        if self.options.batch is not None:
            return self.options.batch
        if self.device.type == "cpu":
            return 1
        fit = int(self._memory_budget() // (grid.height * grid.width * self._bytes_per_pixel()))
        return max(1, min(MAX_AUTO_BATCH, fit))

    def _bytes_per_pixel(self) -> float:
        return self.descriptor.bytes_per_pixel * (0.5 if self.dtype != torch.float32 else 1.0)

    def _memory_budget(self) -> float:
        return free_memory(self.device) * _MEMORY_SHARE.get(self.device.type, 0.5)

    def _smaller_tile(self, tile: int, shape: tuple[int, int]) -> int:
        current = tile or max(shape)
        if current <= self.min_tile:
            raise DinatError(f"out of memory on {self.device} even with {self.min_tile} px tiles")
        smaller = max(self.min_tile, current // 2)
        return smaller - smaller % self.descriptor.size_multiple

    def _run(self, x: torch.Tensor, tile: int | None, dtype: torch.dtype, tiles_per_pass: int) -> torch.Tensor:
        with torch.inference_mode(), _precision(self.device, dtype):
            multiple = self.descriptor.size_multiple
            return run_tiled(self.model, x, tile, self.tile_overlap, multiple, batch_size=tiles_per_pass)


def _tile_for(descriptor: ModelDescriptor, options: EngineOptions) -> int | None:
    """The options' tile as this network takes it: a whole number of its side multiple, none too small."""
    tile = options.tile
    if not tile:
        return tile
    if tile < descriptor.min_exact_tile:
        raise UsageError(f"--tile {tile}: {descriptor.min_tile_reason}; use 0 or >= {descriptor.min_exact_tile}")
    tile -= tile % descriptor.size_multiple
    check_tile_overlap(options.tile_overlap, tile)
    return tile


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    # Autocast keeps normalisations and softmax in float32 while convolutions and
    # matrix products run in the 16-bit format.
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _precision_name(dtype: torch.dtype) -> str:
    return next(name for name, value in PRECISIONS.items() if value == dtype)


def _release_cached_memory(device: torch.device) -> None:
    """Give the memory the failed pass left in PyTorch's cache back, so that a smaller one can use it."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def free_memory(device: torch.device) -> float:
    """Bytes a new allocation on `device` can use now: free device memory, or available system memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # What PyTorch holds in its cache is free for PyTorch, though not for the driver.
        return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return float(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
