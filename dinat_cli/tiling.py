"""Model-agnostic tiled inference: pad, split into overlapping tiles, blend back.

Tiles overlap by `overlap` pixels and are blended with a raised-cosine window that
is zero on the outer quarter of the overlap at every inner tile edge. So a pixel only
takes values from tiles in which it lies at least `overlap / 4` from an inner edge:
a model whose receptive field reaches less than that far (full width at most half the
overlap) gives exactly the whole-image result, and any other model gets a smooth
cross-fade instead of a seam.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom/right of `(B, C, H, W)` up to a multiple, mirroring the content."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return x
    # Reflection needs more pixels than it pads; tiny images fall back to edge copies.
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, at most `tile - overlap` apart."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    # Spread the tiles evenly so every overlap is at least `overlap`.
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


@dataclass(frozen=True)
class TileGrid:
    """How `run_tiled` cuts a padded image: tiles of `height` x `width` at every (row, col) start.

    One tile, the whole padded image, where no tiling was asked for or the tile covers it.
    """

    height: int
    width: int
    overlap: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def tile_grid(height: int, width: int, tile: int | None, overlap: int, multiple: int = 8) -> TileGrid:
    """The tiles of an image of `height` x `width` (before padding to `multiple`) for `tile` (None: whole)."""
    full_h, full_w = height + -height % multiple, width + -width % multiple
    if tile is None or (full_h <= tile and full_w <= tile):
        return TileGrid(full_h, full_w, 0, (0,), (0,))
    tile = max(multiple, tile - tile % multiple)
    tile_h, tile_w = min(tile, full_h), min(tile, full_w)
    overlap = min(overlap, tile - multiple)
    return TileGrid(
        tile_h,
        tile_w,
        overlap,
        tuple(tile_starts(full_h, tile_h, overlap)),
        tuple(tile_starts(full_w, tile_w, overlap)),
    )


def _edge_window(size: int, overlap: int, fade_start: bool, fade_end: bool, device: torch.device) -> torch.Tensor:
    """1-D weights of one tile: 1 inside, 0 -> 1 raised cosine across the middle of each shared edge.

    Made on the tiles' device: no copy from the host, so no wait for one, per tile.
    """
    weights = torch.ones(size, dtype=torch.float64, device=device)
    margin, ramp = overlap // 4, max(1, overlap - 2 * (overlap // 4))
    positions = torch.arange(size, dtype=torch.float64, device=device)
    rising = 0.5 - 0.5 * torch.cos(torch.clamp((positions - margin + 0.5) / ramp, 0, 1) * math.pi)
    if fade_start:
        weights *= rising
    if fade_end:
        weights *= rising.flip(0)
    return weights


def run_tiled(
    forward: Forward,
    x: torch.Tensor,
    tile: int | None,
    overlap: int,
    multiple: int = 8,
    batch_size: int = 1,
) -> torch.Tensor:
    """`forward` over `(B, C, H, W)`, whole (`tile` None) or in overlapping tiles; output cropped to H x W.

    The output is accumulated in float32 on the input's device. `forward` must keep the
    spatial size and accept sides that are multiples of `multiple`.
    """
    height, width = x.shape[-2:]
    padded = pad_to_multiple(x, multiple)
    full_h, full_w = padded.shape[-2:]
    grid = tile_grid(height, width, tile, overlap, multiple)
    if grid.count == 1:
        return forward(padded)[..., :height, :width].float()

    tile_h, tile_w, overlap = grid.height, grid.width, grid.overlap
    boxes = [(top, left) for top in grid.rows for left in grid.cols]

    output = None
    total = torch.zeros(full_h, full_w, dtype=torch.float64, device=x.device)
    for first in range(0, len(boxes), batch_size):
        group = boxes[first : first + batch_size]
        tiles = torch.cat([padded[..., top : top + tile_h, left : left + tile_w] for top, left in group])
        results = forward(tiles).float().split(x.shape[0])
        for (top, left), result in zip(group, results, strict=True):
            window = torch.outer(
                _edge_window(tile_h, overlap, top > 0, top + tile_h < full_h, x.device),
                _edge_window(tile_w, overlap, left > 0, left + tile_w < full_w, x.device),
            )
            if output is None:
                output = torch.zeros(*result.shape[:2], full_h, full_w, dtype=torch.float64, device=x.device)
            output[..., top : top + tile_h, left : left + tile_w] += result * window
            total[top : top + tile_h, left : left + tile_w] += window
    return (output / total).float()[..., :height, :width]
