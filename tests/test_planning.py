"""Planning a batch: output names, dual-pixel pairs, and the plans a run refuses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dinat_cli import files
from dinat_cli.errors import UsageError
from dinat_cli.io import DecodedImage, read_image, write_image
from dinat_cli.planning import DUAL_PIXEL_FOLDERS, output_path, pair_dual_pixel, plan_jobs


def _inputs(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(root / f"f{index:02d}.png"), np.full((8, 8, 3), 10 * index, np.uint8))
    return root


def test_the_input_folder_is_an_output_folder_with_a_suffix_and_its_outputs_are_not_inputs(tmp_path: Path) -> None:
    source = _inputs(tmp_path / "in", 3)
    with pytest.raises(UsageError, match="is the input folder: the outputs would replace the inputs; add a --suffix"):
        plan_jobs(str(source), source)
    with pytest.raises(UsageError, match="is the input folder"):
        plan_jobs(str(source), source / ".." / "in", ext="jpg")
    jobs = plan_jobs(str(source), source, suffix="_dn")
    assert [(job.name, job.output) for job in jobs] == [
        (f"f{index:02d}.png", source / f"f{index:02d}_dn.png") for index in range(3)
    ]
    for job in jobs:  # as a first run leaves them
        files.write_atomically(job.output, b"restored")
    assert plan_jobs(str(source), source, suffix="_dn") == jobs
    assert plan_jobs(f"{source}/*.png", source, suffix="_dn") == jobs


@pytest.mark.parametrize("input_kind", ["folder", "glob", "one file"])
def test_an_existing_file_is_refused_as_the_output_folder(tmp_path: Path, input_kind: str) -> None:
    source = _inputs(tmp_path / "in", 2)
    given = {"folder": str(source), "glob": f"{source}/*.png", "one file": str(source / "f00.png")}[input_kind]
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    with pytest.raises(UsageError, match=r"notes\.txt is a file, not a folder: the outputs need a folder"):
        plan_jobs(given, existing)
    assert existing.read_text() == "mine"


@pytest.mark.parametrize(
    ("ext", "suffix", "expected"),
    [
        ("keep", "", "out/sub/IMG_1.JPG"),
        ("keep", "_restored", "out/sub/IMG_1_restored.JPG"),
        ("png", "", "out/sub/IMG_1.png"),
        ("tif", "-x", "out/sub/IMG_1-x.tif"),
        ("webp", "", "out/sub/IMG_1.webp"),
        ("jpg", "", "out/sub/IMG_1.jpg"),
    ],
)
def test_output_path_mirrors_layout(ext: str, suffix: str, expected: str) -> None:
    assert output_path(Path("sub/IMG_1.JPG"), Path("out"), ext=ext, suffix=suffix) == Path(expected)


def test_output_path_rejects_unknown_ext() -> None:
    with pytest.raises(UsageError, match="--ext gif"):
        output_path(Path("a.png"), Path("out"), ext="gif")


# --------------------------------------------------------------------------- dual pixel


def make_views(root: Path, left: str, right: str, left_names: list[str], right_names: list[str]) -> None:
    for folder, names in ((left, left_names), (right, right_names)):
        for name in names:
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_bytes(b"x")


@pytest.mark.parametrize(("left", "right"), DUAL_PIXEL_FOLDERS)
def test_dual_pixel_views_pair_by_name(tmp_path: Path, left: str, right: str) -> None:
    make_views(tmp_path, left, right, ["1P0A2417.png", "1P0A1031.png"], ["1P0A1031.png", "1P0A2417.png"])
    (tmp_path / "target").mkdir()

    pairs = pair_dual_pixel(tmp_path)

    assert [pair.relative for pair in pairs] == [Path("1P0A1031.png"), Path("1P0A2417.png")]
    assert pairs[0].left == tmp_path / left / "1P0A1031.png"
    assert pairs[0].right == tmp_path / right / "1P0A1031.png"


def test_dual_pixel_views_are_read_at_16_bit(tmp_path: Path) -> None:
    view = np.random.default_rng(0).integers(0, 65536, (24, 36, 3), dtype=np.uint16)
    for folder in ("inputL", "inputR"):
        write_image(DecodedImage(view), tmp_path / folder / "a.png")
    pair = pair_dual_pixel(tmp_path)[0]
    assert read_image(pair.left).pixels.dtype == np.uint16
    np.testing.assert_array_equal(read_image(pair.right).pixels, view)


def test_missing_dual_pixel_partner_is_named(tmp_path: Path) -> None:
    make_views(tmp_path, "inputL", "inputR", ["a.png", "b.png"], ["a.png", "c.png"])
    with pytest.raises(UsageError) as error:
        pair_dual_pixel(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "inputR" / "b.png") in message
    assert str(tmp_path / "inputL" / "c.png") in message


def test_dual_pixel_folder_without_views_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "inputL").mkdir()
    with pytest.raises(UsageError, match="inputL/ \\+ inputR/"):
        pair_dual_pixel(tmp_path)
