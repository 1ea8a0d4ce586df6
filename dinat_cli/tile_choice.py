"""How long each way of restoring an image takes, relatively: whole, or in tiles of one size.

On a CPU the time per pixel grows with the size of the maps the network passes over:
once a full-resolution map outgrows the caches, projections and attention wait on
memory, TLC's local means cover more positions, and past glibc's 1 GB mmap threshold
every pass faults its pages in again. So a large image can be faster in tiles despite
the pixels their overlaps compute twice. The growth is a table each network's
descriptor carries (`ModelDescriptor.cpu_cost_per_pixel`, measured with
`benchmarks/bench_tiles.py`); on GPUs the cost per pixel is taken as flat, so whole
images win wherever they fit.
"""

from __future__ import annotations

import bisect
import math

from dinat_cli.tiling import TileGrid, tile_grid

# Tile sizes `--tile auto` considers, besides the whole image.
CANDIDATE_TILES = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
# (pixels of a whole float32 map, its time per pixel relative to the first), ascending.
CostTable = tuple[tuple[int, float], ...]
FLAT: CostTable = ((65_536, 1.0), (1_048_576, 1.0))


def plans(height: int, width: int, overlap: int, multiple: int) -> dict[int, TileGrid]:
    """The whole image (key 0) and each candidate tile size smaller than the padded image."""
    whole = tile_grid(height, width, None, overlap, multiple)
    longest = max(whole.height, whole.width)
    return {0: whole} | {
        tile: tile_grid(height, width, tile, overlap, multiple) for tile in CANDIDATE_TILES if tile < longest
    }


def cost(grid: TileGrid, table: CostTable, element_size: int, device_type: str) -> float:
    """Relative time of restoring in `grid` with a network whose CPU time per pixel grows as `table`.

    16-bit maps count as half as many float32 pixels.
    """
    pixels = grid.height * grid.width
    per_pixel = cost_per_pixel(pixels * element_size / 4, table) if device_type == "cpu" else 1.0
    return grid.count * pixels * per_pixel


def cost_per_pixel(pixels: float, table: CostTable) -> float:
    """Relative CPU time per pixel of a whole map, interpolated in `table` on a log scale.

    Beyond the table it grows at the table's mean rate per doubling.
    """
    sizes = [size for size, _ in table]
    index = bisect.bisect_left(sizes, pixels)
    if index == 0:
        return table[0][1]
    (low, low_cost), (high, high_cost) = (table[0], table[-1]) if index == len(table) else table[index - 1 : index + 1]
    share = math.log(pixels / low) / math.log(high / low)
    return low_cost + share * (high_cost - low_cost)
