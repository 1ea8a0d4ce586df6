"""Scoring folders of predictions against their ground truth: pairing, parallel scoring, summary.

The metric arithmetic lives in `dinat_cli.metrics` and report files in `dinat_cli.reports`;
this module decides which files are compared and runs the comparisons on several cores.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dinat_cli import metrics
from dinat_cli.errors import DinatError, UsageError

if TYPE_CHECKING:  # the image backends load only when a file is read (see pair_files)
    from dinat_cli.io import DecodedImage, InputFile

MATCH_MODES: tuple[str, ...] = ("name", "order")
_LISTED = 5  # files named in one error line before "and N more"


@dataclass(frozen=True)
class Pair:
    """One ground-truth file and the prediction scored against it; `name` is the GT's relative path."""

    name: str
    gt: Path
    pred: Path


@dataclass(frozen=True)
class Scoring:
    """How an image is scored against its ground truth: a paper's protocol, on RGB or Y, edges left out."""

    protocol: str = "dinat"
    y_channel: bool = False
    crop_border: int = 0

    def check(self) -> None:
        """Refuse options that no protocol takes, before any image is read."""
        metrics.check_options(self.protocol, self.y_channel, self.crop_border)

    def score(self, pair: Pair, gt: DecodedImage, pred: DecodedImage) -> dict[str, float]:
        """The scores of `pred` against `gt`, decoded from `pair`; a DinatError names the pair's files."""
        if gt.bit_depth != pred.bit_depth:
            raise DinatError(
                f"bit depth mismatch: {pair.gt} is {gt.bit_depth}-bit, {pair.pred} is {pred.bit_depth}-bit"
            )
        try:
            return metrics.score_pair(
                gt.pixels, pred.pixels, self.protocol, gt.bit_depth, self.y_channel, self.crop_border
            )
        except UsageError:
            raise
        except DinatError as error:
            raise DinatError(f"{pair.gt} vs {pair.pred}: {error}") from error


@dataclass(frozen=True)
class ImageScore:
    name: str
    scores: dict[str, float]
    # The files compared: the HTML report shows them side by side.
    gt: Path | None = None
    pred: Path | None = None


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


def stem_key(relative: Path | str) -> str:
    """What pairs a ground truth with its image: the relative path without extension (a.png ~ a.jpg)."""
    return Path(relative).with_suffix("").as_posix()


def by_stem(files: Iterable[InputFile]) -> dict[str, InputFile]:
    """Files keyed by `stem_key`; two files of one key (a.png and a.tif) are ambiguous: a UsageError names them."""
    keyed: dict[str, InputFile] = {}
    for item in files:
        other = keyed.setdefault(stem_key(item.relative), item)
        if other is not item:
            raise UsageError(f"ambiguous names: {other.path} and {item.path} have the same stem; keep one of them")
    return keyed


class GroundTruth:
    """Ground-truth images found by relative path and stem, whatever their extension (`--gt`).

    The rule is `dinat eval`'s (`by_stem`): a folder with two candidates for one image is refused.
    """

    def __init__(self, folder: Path) -> None:
        from dinat_cli.io import collect_inputs

        if not Path(folder).is_dir():
            raise UsageError(f"--gt {folder}: no such folder")
        self._by_stem = by_stem(collect_inputs(folder))

    def find(self, relative: Path) -> Path | None:
        item = self._by_stem.get(stem_key(relative))
        return item.path if item is not None else None


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
    gt_files, pred_files = collect_inputs(gt), collect_inputs(pred)
    if match == "order":
        return _pair_by_order(gt, gt_files, pred, pred_files)
    return _pair_by_name(gt_files, pred_files)


def _name_list(paths: Sequence[Path | str]) -> str:
    shown = ", ".join(str(path) for path in paths[:_LISTED])
    return shown + (f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else "")


def _pair_by_name(gt_files: list[InputFile], pred_files: list[InputFile]) -> list[Pair]:
    gt_by_key, pred_by_key = by_stem(gt_files), by_stem(pred_files)
    no_pred = [item.path for key, item in gt_by_key.items() if key not in pred_by_key]
    no_gt = [item.path for key, item in pred_by_key.items() if key not in gt_by_key]
    if no_pred or no_gt:
        parts = []
        if no_pred:
            parts.append(f"{len(no_pred)} ground-truth file(s) without a prediction: {_name_list(no_pred)}")
        if no_gt:
            parts.append(f"{len(no_gt)} prediction(s) without ground truth: {_name_list(no_gt)}")
        raise DinatError("unmatched files: " + "; ".join(parts) + " (names differ? try --match order)")
    return [Pair(item.relative.as_posix(), item.path, pred_by_key[key].path) for key, item in sorted(gt_by_key.items())]


def _natural_key(relative: str) -> list[tuple[int, int | str]]:
    # (0, number) sorts before (1, text) so that a number is never compared with text.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", relative) if part]


def _pair_by_order(gt_root: Path, gt_list: list[InputFile], pred_root: Path, pred_list: list[InputFile]) -> list[Pair]:
    gt_files = {item.relative.as_posix(): item.path for item in gt_list}
    pred_files = {item.relative.as_posix(): item.path for item in pred_list}
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
    scoring = Scoring(protocol, y_channel, crop_border)
    scoring.check()
    if not pairs:
        raise DinatError("nothing to score: no image pairs")
    workers = max(1, min(jobs or default_jobs(), len(pairs)))
    images: list[ImageScore] = []
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dinat-eval")
    try:
        futures = [executor.submit(_score_one, pair, scoring) for pair in pairs]
        for future in futures:
            image = future.result()
            images.append(image)
            if on_scored is not None:
                on_scored(image)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return Evaluation(protocol, images, mean_scores([image.scores for image in images]))


def _score_one(pair: Pair, scoring: Scoring) -> ImageScore:
    from dinat_cli import video
    from dinat_cli.io import read_image  # lazily, as in pair_files; its DinatError names the file

    if video.is_video(pair.gt) or video.is_video(pair.pred):
        # A clip's scores are its frames' means.
        frames = video.score_videos(pair.gt, pair.pred, lambda truth, frame: scoring.score(pair, truth, frame))
        return ImageScore(pair.name, frames.mean, pair.gt, pair.pred)
    return ImageScore(pair.name, scoring.score(pair, read_image(pair.gt), read_image(pair.pred)), pair.gt, pair.pred)


def mean_scores(scores: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Arithmetic mean of each metric over the images' scores, as the papers average them.

    A PSNR of inf (an identical pair) makes the mean PSNR inf: there is no finite
    value that would be honest.
    """
    if not scores:
        return {}
    return {name: math.fsum(image[name] for image in scores) / len(scores) for name in scores[0]}


# ---------------------------------------------------------------------------- reports


def to_document(evaluation: Evaluation) -> dict[str, object]:
    """{"protocol", "count", "images": [{"name", metric..., "gt", "pred"}], "mean": {metric...}}.

    Values stay floats (inf included); `reports.dumps_json` turns inf into null.
    """
    return {
        "protocol": evaluation.protocol,
        "count": len(evaluation.images),
        "images": [
            {"name": image.name, **image.scores, "gt": str(image.gt), "pred": str(image.pred)}
            for image in evaluation.images
        ],
        "mean": dict(evaluation.mean),
    }
