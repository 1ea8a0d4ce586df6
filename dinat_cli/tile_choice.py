"""How long each way of restoring an image takes, relatively: whole, or in tiles of one size.

On a CPU the time per pixel grows with the size of the maps the network passes over:
once a full-resolution map outgrows the caches, projections and attention wait on
memory, TLC's local means cover more positions, and past glibc's 1 GB mmap threshold
every pass faults its pages in again. So a large image can be faster in tiles despite
the pixels their overlaps compute twice. The growth is a table measured on a CPU
(`benchmarks/bench_tiles.py`) for the network widths dinat ships; on GPUs the cost per
pixel is taken as flat, so whole images win wherever they fit.
"""

from __future__ import annotations

import bisect
import math

from dinat_cli.tiling import TileGrid, tile_grid

# Tile sizes `--tile auto` considers, besides the whole image.
CANDIDATE_TILES = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
# Time per pixel of a whole float32 map of that many pixels, relative to 256x256, by the
# network's width: the official checkpoints (48) and lite-denoise (16). Measured in steady
# state (the second image of a size) on an AMD EPYC (Zen 5) with 2 threads; bfloat16 maps
# count as half as many pixels.
_CPU_COST_PER_PIXEL = {
    48: ((65_536, 1.00), (262_144, 1.02), (589_824, 1.00), (921_600, 1.10), (1_048_576, 1.35)),
    16: ((65_536, 1.00), (262_144, 1.00), (1_048_576, 1.00), (4_194_304, 1.75), (6_000_000, 1.64)),
}


def plans(height: int, width: int, overlap: int, multiple: int) -> dict[int, TileGrid]:
    """The whole image (key 0) and each candidate tile size smaller than the padded image."""
    whole = tile_grid(height, width, None, overlap, multiple)
    longest = max(whole.height, whole.width)
    return {0: whole} | {
        tile: tile_grid(height, width, tile, overlap, multiple) for tile in CANDIDATE_TILES if tile < longest
    }


def cost(grid: TileGrid, channels: int, element_size: int, device_type: str) -> float:
    """Relative time of restoring in `grid` with a network of `channels` full-resolution features."""
    pixels = grid.height * grid.width
    per_pixel = cost_per_pixel(pixels * element_size / 4, channels) if device_type == "cpu" else 1.0
    return grid.count * pixels * per_pixel


def cost_per_pixel(pixels: float, channels: int) -> float:
    """Relative CPU time per pixel of a whole map, from the table of the nearest measured width.

    Beyond the table it grows at the table's mean rate per doubling.
    """
    table = _CPU_COST_PER_PIXEL[min(_CPU_COST_PER_PIXEL, key=lambda width: abs(width - channels))]
    sizes = [size for size, _ in table]
    index = bisect.bisect_left(sizes, pixels)
    if index == 0:
        return table[0][1]
    (low, low_cost), (high, high_cost) = (table[0], table[-1]) if index == len(table) else table[index - 1 : index + 1]
    share = math.log(pixels / low) / math.log(high / low)
    return low_cost + share * (high_cost - low_cost)
