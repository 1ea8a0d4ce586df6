"""Files per second of `dinat deblur` on 1, 2 and 4 Ray CPU workers, and a plain local run, on one folder.

    python benchmarks/bench_workers.py [--files 24] [--size 64x96] [--dim 8] [--workers 1 2 4] [--skip-local]
                                       [--attention auto|torch|compiled]

Writes a folder of synthetic PNGs and a small random DiNAT-IR checkpoint (`--dim`; the
official model is 48) to a temporary folder, then runs the command as a user would, once
per worker count, each time into a fresh output folder. Prints, per run, the files per
second while restoring (the summary's `images_per_second`, Ray start-up and model loading
left out, but not each process's first use of compiled attention kernels) and the
wall-clock seconds of the whole command (start-up included). `--attention torch` (eager)
spares every process that warm-up. Ray runs need `pip install 'dinat-cli[ray]'`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dinat_cli.model import RestoreDiNAT


def _write_folder(root: Path, count: int, height: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for index in range(count):
        # Smooth structure plus noise, so that PNG coding costs what a photo's would.
        coarse = rng.uniform(0, 255, (max(1, height // 8), max(1, width // 8), 3)).astype(np.float32)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        image += rng.normal(0, 6, image.shape).astype(np.float32)
        cv2.imwrite(str(root / f"{index:04d}.png"), np.clip(image, 0, 255).astype(np.uint8))
    return root


def _write_checkpoint(path: Path, dim: int) -> Path:
    torch.manual_seed(0)
    model = RestoreDiNAT(dim=dim, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True)
    torch.save({"params": model.state_dict()}, path)
    return path


def _run(weights: Path, source: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Files per second while restoring, and the command's wall-clock seconds."""
    command = [sys.executable, "-m", "dinat_cli", "deblur", "--weights", str(weights), str(source), str(out)]
    start = time.perf_counter()
    result = subprocess.run([*command, "--json", "--quiet", *extra], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(extra) or 'local'}: exit {result.returncode}: {result.stderr.strip()}")
    summary = json.loads(result.stdout)["summary"]
    return summary["images_per_second"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--size", default="64x96", help="HEIGHTxWIDTH of each image")
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-local", action="store_true", help="no plain local run for comparison")
    parser.add_argument("--attention", default="auto", help="attention backend of every run")
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        source = _write_folder(root / "in", args.files, height, width)
        weights = _write_checkpoint(root / "w.pth", args.dim)
        print(f"{args.files} files of {height}x{width} px, dim {args.dim}, --attention {args.attention}")
        print(f"{'run':<22}{'files/s':>10}{'wall s':>10}")
        runs = [] if args.skip_local else [("local (all threads)", [])]
        runs += [(f"ray, {count} worker(s)", ["--workers", str(count), "--device", "cpu"]) for count in args.workers]
        for index, (name, extra) in enumerate(runs):
            rate, wall = _run(weights, source, root / f"out{index}", [*extra, "--attention", args.attention])
            print(f"{name:<22}{rate:>10.2f}{wall:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
