"""Scoring folders of predictions against their ground truth: pairing, parallel scoring, summary.

The metric arithmetic lives in `dinat_cli.metrics` and report files in `dinat_cli.reports`;
this module decides which files are compared and runs the comparisons on several cores.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dinat_cli import metrics
from dinat_cli.errors import DinatError, UsageError

MATCH_MODES: tuple[str, ...] = ("name", "order")
_LISTED = 5  # files named in one error line before "and N more"


@dataclass(frozen=True)
class Pair:
    """One ground-truth file and the prediction scored against it; `name` is the GT's relative path."""

    name: str
    gt: Path
    pred: Path


@dataclass(frozen=True)
class ImageScore:
    name: str
    scores: dict[str, float]


@dataclass(frozen=True)
class Evaluation:
    protocol: str
    images: list[ImageScore]
    mean: dict[str, float]


def default_jobs() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------- pairing


def pair_files(gt: Path, pred: Path, match: str = "name") -> list[Pair]:
    """Pair GT and prediction images: two files, or two folders (or globs) matched by name or order.

    `name`: same relative path and stem (extensions may differ, e.g. GT .png vs pred .jpg).
    `order`: the i-th image of each side in natural order (2.png before 10.png), for
    datasets whose GT and prediction names differ.
    """
    from dinat_cli.io import collect_inputs  # lazily: the image backends load only when needed

    if match not in MATCH_MODES:
        raise UsageError(f"unknown --match {match!r}: choose one of {', '.join(MATCH_MODES)}")
    if gt.is_file() and pred.is_file():
        return [Pair(gt.name, gt, pred)]
    gt_files = {item.relative.as_posix(): item.path for item in collect_inputs(gt)}
    pred_files = {item.relative.as_posix(): item.path for item in collect_inputs(pred)}
    if match == "order":
        return _pair_by_order(gt, gt_files, pred, pred_files)
    return _pair_by_name(gt_files, pred_files)


def _name_list(paths: Sequence[Path | str]) -> str:
    shown = ", ".join(str(path) for path in paths[:_LISTED])
    return shown + (f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else "")


def _by_stem(files: dict[str, Path]) -> dict[str, Path]:
    """Files keyed by relative path without extension; two files of one key are ambiguous."""
    keyed: dict[str, Path] = {}
    for relative, path in files.items():
        key = relative.rsplit(".", 1)[0]
        if key in keyed:
            raise DinatError(f"ambiguous names: {keyed[key]} and {path} have the same stem; keep one of them")
        keyed[key] = path
    return keyed


def _pair_by_name(gt_files: dict[str, Path], pred_files: dict[str, Path]) -> list[Pair]:
    gt_by_key, pred_by_key = _by_stem(gt_files), _by_stem(pred_files)
    no_pred = [path for key, path in gt_by_key.items() if key not in pred_by_key]
    no_gt = [path for key, path in pred_by_key.items() if key not in gt_by_key]
    if no_pred or no_gt:
        parts = []
        if no_pred:
            parts.append(f"{len(no_pred)} ground-truth file(s) without a prediction: {_name_list(no_pred)}")
        if no_gt:
            parts.append(f"{len(no_gt)} prediction(s) without ground truth: {_name_list(no_gt)}")
        raise DinatError("unmatched files: " + "; ".join(parts) + " (names differ? try --match order)")
    names = {path: relative for relative, path in gt_files.items()}
    return [Pair(names[path], path, pred_by_key[key]) for key, path in sorted(gt_by_key.items())]


def _natural_key(relative: str) -> list[tuple[int, int | str]]:
    # (0, number) sorts before (1, text) so that a number is never compared with text.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", relative) if part]


def _pair_by_order(
    gt_root: Path, gt_files: dict[str, Path], pred_root: Path, pred_files: dict[str, Path]
) -> list[Pair]:
    gt_names = sorted(gt_files, key=_natural_key)
    pred_names = sorted(pred_files, key=_natural_key)
    if len(gt_names) != len(pred_names):
        longer, extra = (
            (gt_root, [gt_files[name] for name in gt_names[len(pred_names) :]])
            if len(gt_names) > len(pred_names)
            else (pred_root, [pred_files[name] for name in pred_names[len(gt_names) :]])
        )
        raise DinatError(
            f"--match order needs as many predictions as ground-truth images: {len(gt_names)} in {gt_root}, "
            f"{len(pred_names)} in {pred_root}; unmatched in {longer}: {_name_list(extra)}"
        )
    return [
        Pair(gt_name, gt_files[gt_name], pred_files[pred_name])
        for gt_name, pred_name in zip(gt_names, pred_names, strict=True)
    ]


# ---------------------------------------------------------------------------- scoring


def score_pairs(
    pairs: Sequence[Pair],
    protocol: str = "dinat",
    y_channel: bool = False,
    crop_border: int = 0,
    jobs: int | None = None,
    on_scored: Callable[[ImageScore], None] | None = None,
) -> Evaluation:
    """Score every pair on `jobs` threads (default: one per CPU); results keep the pairs' order.

    Threads suffice: image decoding, the OpenCV filters and numpy's array arithmetic all
    release the GIL, and no image has to be copied between processes. The first failing
    pair (in order) ends the run with a DinatError naming its files.
    """
    metrics.check_options(protocol, y_channel, crop_border)
    if not pairs:
        raise DinatError("nothing to score: no image pairs")
    workers = max(1, min(jobs or default_jobs(), len(pairs)))
    images: list[ImageScore] = []
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dinat-eval")
    try:
        futures = [executor.submit(_score_one, pair, protocol, y_channel, crop_border) for pair in pairs]
        for future in futures:
            image = future.result()
            images.append(image)
            if on_scored is not None:
                on_scored(image)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return Evaluation(protocol, images, mean_scores(images))


def _score_one(pair: Pair, protocol: str, y_channel: bool, crop_border: int) -> ImageScore:
    from dinat_cli.io import read_image  # lazily, as in pair_files; its DinatError names the file

    gt, pred = read_image(pair.gt), read_image(pair.pred)
    if gt.bit_depth != pred.bit_depth:
        raise DinatError(f"bit depth mismatch: {pair.gt} is {gt.bit_depth}-bit, {pair.pred} is {pred.bit_depth}-bit")
    try:
        scores = metrics.score_pair(gt.pixels, pred.pixels, protocol, gt.bit_depth, y_channel, crop_border)
    except UsageError:
        raise
    except DinatError as error:
        raise DinatError(f"{pair.gt} vs {pair.pred}: {error}") from error
    return ImageScore(pair.name, scores)


def mean_scores(images: Sequence[ImageScore]) -> dict[str, float]:
    """Arithmetic mean of each metric over the images, as the papers average them.

    A PSNR of inf (an identical pair) makes the mean PSNR inf: there is no finite
    value that would be honest.
    """
    if not images:
        return {}
    names = images[0].scores.keys()
    return {name: math.fsum(image.scores[name] for image in images) / len(images) for name in names}


# ---------------------------------------------------------------------------- reports


def to_document(evaluation: Evaluation) -> dict[str, object]:
    """{"protocol", "count", "images": [{"name", metric...}], "mean": {metric...}}.

    Values stay floats (inf included); `reports.dumps_json` turns inf into null.
    """
    return {
        "protocol": evaluation.protocol,
        "count": len(evaluation.images),
        "images": [{"name": image.name, **image.scores} for image in evaluation.images],
        "mean": dict(evaluation.mean),
    }
