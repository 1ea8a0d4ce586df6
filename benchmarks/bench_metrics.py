"""Pairs per second of `dinat eval` on synthetic 1280x720 8-bit PNG pairs.

    python benchmarks/bench_metrics.py [--pairs 32] [--jobs 2] [--repeat 3] [--protocol dinat] [--y-channel]

Writes the pairs to a temporary folder, then times the same path as the command
(pairing, decoding through dinat_cli.io, scoring on `--jobs` threads); the PNG writing
is not timed. Prints one line with the best of `--repeat` runs (on a shared machine the
best run is the one least disturbed by other processes) and its CPU time per pair.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from dinat_cli import evaluation

WIDTH, HEIGHT = 1280, 720


def _synthetic_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Smooth structure plus texture, so that PNG decoding costs what a photo's would
    # (pure noise would compress badly, flat colour far too well).
    coarse = rng.uniform(0, 255, (HEIGHT // 16, WIDTH // 16, 3)).astype(np.float32)
    gt = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    gt += rng.normal(0, 6, gt.shape).astype(np.float32)
    pred = cv2.GaussianBlur(gt, (5, 5), 1.2) + rng.normal(0, 2, gt.shape).astype(np.float32)
    return np.clip(gt, 0, 255).astype(np.uint8), np.clip(pred, 0, 255).astype(np.uint8)


def _write_pairs(root: Path, count: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for index in range(count):
        gt, pred = _synthetic_pair(rng)
        cv2.imwrite(str(gt_dir / f"{index:04d}.png"), gt)
        cv2.imwrite(str(pred_dir / f"{index:04d}.png"), pred)
    return gt_dir, pred_dir


def _timed_run(gt_dir: Path, pred_dir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads) of one run over every pair."""
    start, start_cpu = time.perf_counter(), time.process_time()
    pairs = evaluation.pair_files(gt_dir, pred_dir)
    evaluation.score_pairs(pairs, args.protocol, args.y_channel, jobs=args.jobs)
    return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--protocol", default="dinat", choices=("dinat", "restormer", "dpdd"))
    parser.add_argument("--y-channel", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        gt_dir, pred_dir = _write_pairs(Path(folder), args.pairs)
        # One warm-up pair: the first call pays for imports and OpenCV's initialisation.
        warm = evaluation.pair_files(gt_dir / "0000.png", pred_dir / "0000.png")
        evaluation.score_pairs(warm, args.protocol, args.y_channel, jobs=1)

        elapsed, cpu = min(_timed_run(gt_dir, pred_dir, args) for _ in range(args.repeat))

    channel = "Y" if args.y_channel else "RGB"
    print(
        f"{args.pairs / elapsed:.2f} pairs/s ({args.pairs} pairs of {WIDTH}x{HEIGHT} 8-bit PNG, "
        f"{args.protocol} protocol, {channel}, {args.jobs} jobs, best of {args.repeat}: {elapsed:.2f} s, "
        f"{1000 * cpu / args.pairs:.0f} ms CPU per pair)"
    )


if __name__ == "__main__":
    main()
