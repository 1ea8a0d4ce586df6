"""The inference engine every task shares: device, precision, memory-aware tiling.

`Restorer` takes float images in [0, 1] and returns the network's output; reading and
writing files is the job of `dinat_cli.io`, walking folders that of `dinat_cli.batch`.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dinat_cli import cpu, ops, tile_choice
from dinat_cli.choices import (
    DEFAULT_TILE_OVERLAP,
    MIN_TILE,
    check_device,
    check_precision,
    check_tile_overlap,
    parse_tile,
)
from dinat_cli.descriptor import ModelDescriptor
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.tiling import run_tiled, tile_grid

DEFAULT_OVERLAP = DEFAULT_TILE_OVERLAP
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_MEMORY_SHARE = {"cuda": 0.7, "cpu": 0.5, "mps": 0.5}


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


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU and MPS, bfloat16 on CUDA where supported, else float16.

    A 16-bit format a CPU has no arithmetic for is float32 (see `precision_fallback`).
    """
    spec = check_precision(spec)
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
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


@dataclass
class RestoreStats:
    """How one image was processed, for logs and reports."""

    tile: int | None = None
    precision: str = ""
    retried_fp32: bool = False


class Restorer:
    """A loaded network on a device, restoring whole images or tiles of them.

    >>> restorer = Restorer.from_weights("net_g_latest.pth")            # doctest: +SKIP
    >>> restored = restorer.restore(image)  # float32 (H, W, C) in [0, 1] # doctest: +SKIP
    """

    def __init__(
        self,
        descriptor: ModelDescriptor,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        tile: str | int | None = "auto",
        tile_overlap: int = DEFAULT_OVERLAP,
        batch_size: int = 1,
        attention: str = "auto",
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        # A backend that cannot run here (no compiler, no CUDA) fails now, before any work.
        self.kernels = ops.resolve_kernels(attention, self.device)
        self.attention = self.kernels.attention
        descriptor.set_kernels(self.kernels)
        self.dtype = resolve_precision(precision, self.device)
        self.precision_note = precision_fallback(precision, self.device)
        self.tile = parse_tile(tile)
        check_tile_overlap(tile_overlap, self.tile)
        self.tile_overlap = tile_overlap
        self.batch_size = max(1, batch_size)
        self.descriptor = descriptor
        self.model = descriptor.model.to(self.device).eval()
        self.in_channels = descriptor.in_channels
        self.out_channels = descriptor.out_channels
        self.last = RestoreStats()

    @classmethod
    def from_weights(
        cls,
        path: Path | str,
        *,
        variant: str | None = None,
        tlc: bool = True,
        **options: object,
    ) -> Restorer:
        """Load a weights file (`.pth` in any BasicSR layout, or our `.safetensors`)."""
        from dinat_cli import checkpoints

        return cls(checkpoints.load(Path(path), variant=variant, tlc=tlc), **options)

    def restore(self, image: np.ndarray) -> np.ndarray:
        """Restore float32 `(H, W, C)` in [0, 1]; returns float32 `(H, W, out_channels)`, not clipped."""
        if image.ndim != 3 or image.shape[2] != self.in_channels:
            raise ValueError(f"expected (H, W, {self.in_channels}) input, got {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.restore_tensor(tensor)[0].permute(1, 2, 0).numpy()

    def restore_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Restore `(B, C, H, W)`; returns float32 on the CPU.

        Out of memory halves the tile and tries again, down to 256 px; a non-finite
        result in half precision is recomputed in float32.
        """
        x = x.to(self.device, torch.float32)
        tile = self.tile if self.tile is not None else self.auto_tile(*x.shape[-2:])
        dtype = self.dtype
        retried = False
        while True:
            try:
                result = self._run(x, tile or None, dtype)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not _is_out_of_memory(error):
                    raise
                tile = self._smaller_tile(tile, x.shape[-2:])
                continue
            if dtype != torch.float32 and not torch.isfinite(result).all():
                dtype, retried = torch.float32, True
                continue
            self.last = RestoreStats(tile=tile or None, precision=_precision_name(dtype), retried_fp32=retried)
            return result.cpu()

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
            per_pixel = self.descriptor.bytes_per_pixel * (0.5 if self.dtype != torch.float32 else 1.0)
            per_pixel *= self.batch_size
            budget = free_memory(self.device) * _MEMORY_SHARE.get(self.device.type, 0.5)
            if grids[0].height * grids[0].width * per_pixel > budget:
                side = int(math.sqrt(budget / per_pixel))
                largest = max(MIN_TILE, side - side % multiple)
                grids = {tile: grid for tile, grid in grids.items() if 0 < tile <= largest}
                grids = grids or {largest: tile_grid(height, width, largest, self.tile_overlap, multiple)}
        element_size = 4 if self.dtype == torch.float32 else 2
        width = self.descriptor.width
        return {tile: tile_choice.cost(grid, width, element_size, self.device.type) for tile, grid in grids.items()}

    def _smaller_tile(self, tile: int, shape: torch.Size) -> int:
        with contextlib.suppress(Exception):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        current = tile or max(shape)
        if current <= MIN_TILE:
            raise DinatError(f"out of memory on {self.device} even with {MIN_TILE} px tiles")
        smaller = max(MIN_TILE, current // 2)
        return smaller - smaller % self.descriptor.size_multiple

    def _run(self, x: torch.Tensor, tile: int | None, dtype: torch.dtype) -> torch.Tensor:
        with torch.inference_mode(), _precision(self.device, dtype):
            return run_tiled(self.model, x, tile, self.tile_overlap, self.descriptor.size_multiple, self.batch_size)


def _precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    # Autocast keeps normalisations and softmax in float32 while convolutions and
    # matrix products run in the 16-bit format.
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _precision_name(dtype: torch.dtype) -> str:
    return next(name for name, value in PRECISIONS.items() if value == dtype)


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def free_memory(device: torch.device) -> float:
    """Bytes a new allocation on `device` can use now: free device memory, or available system memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    if device.type == "mps":
        return float(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
