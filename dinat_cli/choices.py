"""Choices and defaults the command line offers, and the checks of the engine's options,
kept free of torch: parsing the command line, `--help` and usage errors import nothing
heavier than this, and the engine checks its options with the same functions."""

from __future__ import annotations

import re

from dinat_cli.errors import UsageError

# Attention backends (see dinat_cli.ops.backends): `auto` picks the fastest exact one.
ATTENTION_BACKENDS = ("auto", "torch", "native", "compiled", "flex", "natten")
# Numeric precisions (see dinat_cli.engine): `auto` is float32 on CPU, 16-bit on CUDA.
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
# Devices one process runs on; `cuda:all` (every GPU, on Ray) is dinat_cli.runners.ray's.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Pixels shared by neighbouring tiles.
DEFAULT_TILE_OVERLAP = 64
# The smallest tile `--tile auto` takes, and the engine's floor when memory runs out.
SMALLEST_AUTO_TILE = 256
# The environment variable that picks the CPU kernels' variant: auto, off or a variant's
# name (see dinat_cli.ops.native).
CPU_KERNELS_ENV = "DINAT_CPU_KERNELS"


def parse_tile(spec: str | int | None) -> int | None:
    """`auto` -> None (sized from free memory), `0` -> whole image always, N -> N-pixel tiles.

    Which tile sizes a network runs exactly is the engine's check: it knows the network.
    """
    return _auto_or_count(spec, "--tile", "expected auto, 0 or a size in pixels", smallest=0)


def parse_batch(spec: str | int | None) -> int | None:
    """`auto` -> None (sized from free memory), N >= 1 -> N network inputs per forward pass."""
    return _auto_or_count(spec, "--batch", "expected auto or a number of images >= 1", smallest=1)


def _auto_or_count(spec: str | int | None, option: str, expected: str, smallest: int) -> int | None:
    if spec is None or str(spec).strip().lower() == "auto":
        return None
    try:
        count = int(spec)
    except ValueError:
        raise UsageError(f"{option} {spec}: {expected}") from None
    if count < smallest:
        raise UsageError(f"{option} {count}: {expected}")
    return count


def check_tile_overlap(overlap: int, tile: int | None) -> None:
    """Refuse an overlap the tiles cannot have; `tile` as `parse_tile` returns it.

    Past half the tile, tiles would sit less than half a tile apart, so pixels would be
    computed three times or more along each side for nothing (the blend only needs two).
    With `auto`, tiles may be as small as SMALLEST_AUTO_TILE.
    """
    if overlap < 0 or overlap % 2:
        raise UsageError(f"--tile-overlap {overlap}: expected an even number of pixels >= 0")
    if tile == 0:  # never tiled
        return
    smallest = SMALLEST_AUTO_TILE if tile is None else tile
    if overlap > smallest // 2:
        which = f"--tile {tile}" if tile is not None else f"--tile auto, which may choose {SMALLEST_AUTO_TILE} px tiles"
        # Rounded up to 8 px, the side multiple of the networks dinat ships, so that the
        # engine does not round the suggested tile below twice the overlap.
        needed = -(-2 * overlap // 8) * 8
        raise UsageError(
            f"--tile-overlap {overlap}: at most half the tile, {smallest // 2} px with {which}; "
            f"use a smaller overlap or --tile {needed} or more"
        )


def check_precision(spec: str) -> str:
    """`spec` normalised if it names a precision, else a UsageError."""
    name = spec.strip().lower()
    if name not in PRECISION_CHOICES:
        raise UsageError(f"--precision {spec}: expected {', '.join(PRECISION_CHOICES)}")
    return name


def check_device(spec: str) -> str:
    """`spec` normalised if it names a device (auto, cpu, cuda, cuda:N or mps), else a UsageError.

    Whether this machine has it is the engine's question: it needs torch.
    """
    name = spec.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise UsageError(f"--device {spec}: expected auto, cpu, cuda, cuda:N or mps")
    return name


def check_attention(name: str) -> str:
    """`name` itself if it names an attention backend (available here or not), else a UsageError."""
    if name not in ATTENTION_BACKENDS:
        raise UsageError(f"--attention {name}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    return name
