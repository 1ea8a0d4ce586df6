"""Whole image against tiles, per image size: which is fastest, and what `--tile auto` picks.

    python benchmarks/bench_tiles.py --model lite-denoise --size 512 --size 1024 --size 3000x2000 --size 4096
    python benchmarks/bench_tiles.py --model official --size 256 --size 512 --size 1280x720 --tiles 0

For every size, the engine restores a random image whole (`0`, where it fits in memory
by the engine's estimate, or always with `--whole`) and in each tile size smaller than the image, with the default
overlap, `--repeat` times; whole images after one untimed pass, as the second image of
that size in a folder (the first maps and faults in the memory), tiles from the first
(only the first tile pays for that).
The table gives seconds per image, nanoseconds per pixel, the ratio to the fastest way
for that size, the engine's own estimate of each way's relative cost, and the way
`--tile auto` chooses. `--model` is a registry name (its weights must be installed; the
shipped `lite-denoise` always is) or `official` for the official-size network with
random weights.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from dinat_cli.checkpoints import describe
from dinat_cli.cli.bench import parse_size
from dinat_cli.engine import Restorer
from dinat_cli.model import RestoreDiNAT
from dinat_cli.model.variants import OFFICIAL_CONFIG
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.process import configure_process
from dinat_cli.registry import catalogue, locations


def build(name: str, precision: str) -> Restorer:
    options = EngineOptions(device="cpu", precision=precision)
    if name == "official":
        return Restorer(describe(RestoreDiNAT(**OFFICIAL_CONFIG, tlc=True)), options)
    return Restorer.load(ModelSource(locations.resolve(name), catalogue.get(name).variant), options)


def seconds(restorer: Restorer, image: np.ndarray, tile: int, repeat: int) -> float:
    restorer.tile = tile
    if tile == 0:
        # The first pass at a new size maps and faults in its memory; tiles pay that once, on their first tile.
        restorer.restore(image)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        restorer.restore(image)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lite-denoise", help="a registry name, or `official`")
    parser.add_argument("--size", action="append", required=True, help="N or WxH (repeatable)")
    parser.add_argument("--tiles", default="0,256,512,1024,2048", help="comma-separated; 0: whole image")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--whole", action="store_true", help="time whole images even where auto expects no room")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_process()  # as the dinat command does: the heap keeps freed memory
    restorer = build(args.model, args.precision)
    tiles = [int(tile) for tile in args.tiles.split(",")]
    print(f"{args.model}, {args.precision}, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    restorer.restore(np.random.default_rng(1).random((256, 256, 3), dtype=np.float32))  # warm-up
    for size in args.size:
        height, width = parse_size(size)
        image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
        auto = restorer.auto_tile(height, width)
        fits = restorer.tile_costs(height, width)
        estimates = restorer.tile_costs(height, width, within_memory=False)
        rows = {}
        for tile in tiles:
            if tile and tile >= max(height, width):
                continue
            if tile not in fits and not (tile == 0 and args.whole):
                rows[tile] = None  # does not fit in memory
                continue
            rows[tile] = seconds(restorer, image, tile, args.repeat)
        best = min(value for value in rows.values() if value is not None)
        print(f"\n{width}x{height}: auto picks {'whole' if auto == 0 else auto}")
        print(f"  {'way':<8} {'s':>8} {'ns/px':>8} {'vs best':>8} {'estimate':>9}")
        for tile, value in rows.items():
            way = "whole" if tile == 0 else str(tile)
            if value is None:
                print(f"  {way:<8} {'does not fit in memory':>35}")
                continue
            estimate = estimates[tile] / estimates[auto]
            mark = "  <- auto" if tile == auto else ""
            per_pixel = value * 1e9 / (height * width)
            print(f"  {way:<8} {value:8.2f} {per_pixel:8.0f} {value / best:7.2f}x {estimate:8.2f}x{mark}")


if __name__ == "__main__":
    main()
