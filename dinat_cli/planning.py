"""Planning a batch: which outputs a run produces from which inputs, and which of them a shard owns.

Nothing here decodes an image or writes a file: a plan is checked whole (clashes, an output
that is an input, dual-pixel views without their partner) before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dinat_cli import io
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.video import VideoOptions, plan_segments

# Values of the restore commands' --ext option; "keep" writes each output in its input's format.
# An image format applies to images, a video container to videos: the other kind keeps its own.
IMAGE_EXT_CHOICES = ("png", "jpg", "tif", "webp")
VIDEO_EXT_CHOICES = ("mp4", "mkv", "mov", "webm", "avi")
EXT_CHOICES = ("keep", *IMAGE_EXT_CHOICES, *VIDEO_EXT_CHOICES)

# Sub-folder pairs that hold the left and right dual-pixel views under identical file names:
# Restormer's DPDD layout, short forms, and the original DPDD release (test_l/source, test_r/source).
DUAL_PIXEL_FOLDERS = (
    ("inputL", "inputR"),
    ("L", "R"),
    ("left", "right"),
    ("test_l/source", "test_r/source"),
)


@dataclass(frozen=True)
class Job:
    """One output and the image(s) it is restored from: one view, or left and right.

    `reference` is the ground truth the output is scored against, when the run has one;
    `video` how the output is encoded, when the source is a video (restored frame by frame);
    `segments` the video's segments (`video.plan_segments`) this job restores, None for all.
    """

    sources: tuple[Path, ...]
    relative: Path
    output: Path
    reference: Path | None = None
    video: VideoOptions | None = None
    segments: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return self.relative.as_posix()


@dataclass(frozen=True)
class DualPixelPair:
    """Left and right views of one dual-pixel shot; relative is the shared name the output mirrors."""

    left: Path
    right: Path
    relative: Path


def plan_jobs(
    input: str,
    output: Path,
    *,
    ext: str = "keep",
    suffix: str = "",
    dual_pixel: bool = False,
    video: VideoOptions | None = None,
) -> list[Job]:
    """The outputs a run will produce, mirroring the input layout; clashes are usage errors.

    OUTPUT may be the input folder itself when a `suffix` names the outputs apart: then files
    that are the outputs of other inputs (an earlier run's) are not inputs. Videos get video
    jobs, written as `video` says (the input's codec by default).
    """
    video = video or VideoOptions()
    output = Path(output)
    if dual_pixel:
        _refuse_a_file_as_folder(output)
        jobs = [
            Job((pair.left, pair.right), pair.relative, output_path(pair.relative, output, ext, suffix))
            for pair in pair_dual_pixel(input)
        ]
    else:
        inputs = io.collect_inputs(input, exclude=output)
        if Path(input).is_file() and (
            output.suffix.lower() in io.INPUT_EXTENSIONS or output.suffix.lower() == Path(input).suffix.lower()
        ):
            item = inputs[0]
            jobs = [Job((item.path,), item.relative, output, video=video if item.video else None)]
        else:
            _refuse_a_file_as_folder(output)
            if output.resolve() == io.input_root(input).resolve() and not suffix:
                raise UsageError(
                    f"{output} is the input folder: the outputs would replace the inputs; "
                    "add a --suffix (e.g. --suffix _restored) to write beside them, or choose another folder"
                )
            jobs = [
                Job(
                    (item.path,),
                    item.relative,
                    output_path(item.relative, output, ext, suffix, video=item.video),
                    video=video if item.video else None,
                )
                for item in inputs
            ]
            if suffix:
                jobs = _without_outputs_of_others(jobs)
    _refuse_clashes(jobs)
    return jobs


def output_path(relative: Path, output_dir: Path, ext: str = "keep", suffix: str = "", *, video: bool = False) -> Path:
    """Where the output for an input at relative goes: same sub-folders, suffix added to the stem.

    `video`: the input is a video, so that `ext` is taken only if it names a video container.
    """
    if ext not in EXT_CHOICES:
        raise UsageError(f"--ext {ext}: expected one of {', '.join(EXT_CHOICES)}")
    relative = Path(relative)
    of_its_kind = VIDEO_EXT_CHOICES if video else IMAGE_EXT_CHOICES
    extension = f".{ext}" if ext in of_its_kind else relative.suffix
    return Path(output_dir) / relative.parent / f"{relative.stem}{suffix}{extension}"


def pair_dual_pixel(input: str | Path) -> list[DualPixelPair]:
    """Left/right view pairs from a folder holding one of DUAL_PIXEL_FOLDERS, matched by relative name."""
    root = Path(input)
    left_dir, right_dir = _dual_pixel_folders(root)
    lefts = {item.relative: item.path for item in io.walk_images(left_dir)}
    rights = {item.relative: item.path for item in io.walk_images(right_dir)}
    missing = [right_dir / name for name in sorted(lefts.keys() - rights.keys())]
    missing += [left_dir / name for name in sorted(rights.keys() - lefts.keys())]
    if missing:
        shown = ", ".join(str(path) for path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UsageError(f"{root}: dual-pixel view without its partner; missing {shown}{more}")
    if not lefts:
        raise UsageError(f"{root}: no images in {left_dir} and {right_dir}")
    return [DualPixelPair(lefts[name], rights[name], name) for name in sorted(lefts)]


def _dual_pixel_folders(root: Path) -> tuple[Path, Path]:
    for left, right in DUAL_PIXEL_FOLDERS:
        if (root / left).is_dir() and (root / right).is_dir():
            return root / left, root / right
    expected = ", ".join(f"{left}/ + {right}/" for left, right in DUAL_PIXEL_FOLDERS)
    raise UsageError(f"{root}: not a folder with left/right view sub-folders ({expected})")


def video_segments(job: Job) -> range | None:
    """The segment indices of a video job's clip; None for a photo, or a clip that cannot be read
    (the job that restores it whole reports why)."""
    if job.video is None:
        return None
    try:
        return range(len(plan_segments(job.sources[0], job.video.segment_frames)))
    except DinatError:
        return None


def _refuse_a_file_as_folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise UsageError(
            f"{output} is a file, not a folder: the outputs need a folder (a file only for one input file, "
            "with an image suffix)"
        )


def _without_outputs_of_others(jobs: list[Job]) -> list[Job]:
    """Leave out inputs that another job writes: outputs an earlier run put beside their inputs."""
    outputs = {job.output.resolve() for job in jobs}
    # An input that is its own output stays: the clash check refuses it.
    return [
        job for job in jobs if (source := job.sources[0].resolve()) not in outputs or source == job.output.resolve()
    ]


def _refuse_clashes(jobs: Sequence[Job]) -> None:
    seen: dict[Path, Job] = {}
    for job in jobs:
        other = seen.setdefault(job.output, job)
        if other is not job:
            raise UsageError(
                f"{other.sources[0]} and {job.sources[0]} would both be written to {job.output}; "
                "use --ext keep or rename one"
            )
        if any(job.output.resolve() == source.resolve() for source in job.sources):
            raise UsageError(f"{job.output} is an input: choose another output folder or a --suffix")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`, counted from 0 like SLURM array and Kubernetes indexed Job indices.

    A job belongs to the shard its relative path hashes to, so N runs that see the same
    input cover every file exactly once, whatever order each finds them in, and adding
    files never moves the others to another shard. A video's segments are shared out the
    same way, each by its clip's path and index: one long clip keeps every shard busy.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """`K/N` with 0 <= K < N."""
        index, slash, count = spec.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            shard = None
        if not slash or shard is None or not 0 <= shard.index < shard.count:
            raise UsageError(f"--shard {spec}: expected K/N with 0 <= K < N, e.g. --shard $SLURM_ARRAY_TASK_ID/8")
        return shard

    def owns(self, job: Job) -> bool:
        return self._hashes_here(job.relative.as_posix())

    def select(self, jobs: Sequence[Job]) -> list[Job]:
        """This shard's jobs: its files, and the clips it restores segments of, with those segments."""
        selected = []
        for job in jobs:
            segments = video_segments(job)
            if segments is None:
                if self.owns(job):
                    selected.append(job)
                continue
            mine = tuple(index for index in segments if self._hashes_here(f"{job.relative.as_posix()}#{index}"))
            if mine:
                selected.append(dataclasses.replace(job, segments=mine))
        return selected

    def _hashes_here(self, key: str) -> bool:
        digest = hashlib.sha1(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
