"""The image file layer: decoding, encoding, atomic writes, input discovery and output naming."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import ExifTags, Image, ImageCms, ImageOps

from dinat_cli import files
from dinat_cli import io as image_io
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.io import DecodedImage, collect_inputs, read_image, write_image

ORIENTATION = ExifTags.Base.Orientation
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
H, W = 24, 36


def noise(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def photo(seed: int = 0) -> np.ndarray:
    """A smooth 8-bit RGB image, so that lossy codecs stay close to it."""
    y, x = np.mgrid[0:H, 0:W]
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    return (127.5 + 100 * np.sin(x[..., None] / 14 + y[..., None] / 19 + phase)).astype(np.uint8)


def leftover_temp_files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if files.TEMP_MARKER in path.name]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".bmp", ".webp"])
def test_lossless_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    image = DecodedImage(noise((H, W, 3)))
    write_image(image, tmp_path / f"a{suffix}", lossless=True)

    back = read_image(tmp_path / f"a{suffix}")

    assert back.pixels.dtype == np.uint8 and back.bit_depth == 8
    np.testing.assert_array_equal(back.pixels, image.pixels)
    assert back.alpha is None


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_round_trip_is_close(tmp_path: Path, suffix: str) -> None:
    image = DecodedImage(photo())
    write_image(image, tmp_path / f"a{suffix}")

    back = read_image(tmp_path / f"a{suffix}")

    assert back.pixels.shape == (H, W, 3) and back.pixels.dtype == np.uint8
    assert np.abs(back.pixels.astype(int) - image.pixels).mean() < 2.0


def test_jpeg_default_is_high_quality_444(tmp_path: Path) -> None:
    write_image(DecodedImage(photo()), tmp_path / "a.jpg")
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.layer[0][1:3] == (1, 1)  # luma sampled as often as chroma: 4:4:4
        assert im.quantization[0][0] <= 3  # DC step of quality 95


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("shape", [(H, W), (H, W, 3)], ids=["grey", "rgb"])
def test_16_bit_stays_16_bit_and_identical(tmp_path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    image = DecodedImage(noise(shape, np.uint16))
    write_image(image, tmp_path / f"a{suffix}")

    back = read_image(tmp_path / f"a{suffix}")

    assert back.pixels.dtype == np.uint16 and back.bit_depth == 16
    np.testing.assert_array_equal(back.pixels, image.pixels)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_rgba_keeps_colour_and_alpha(tmp_path: Path, suffix: str) -> None:
    image = DecodedImage(noise((H, W, 3), np.uint16), alpha=noise((H, W), np.uint16, seed=1))
    write_image(image, tmp_path / f"a{suffix}")

    back = read_image(tmp_path / f"a{suffix}")

    np.testing.assert_array_equal(back.pixels, image.pixels)
    assert back.alpha is not None and back.alpha.dtype == np.uint16
    np.testing.assert_array_equal(back.alpha, image.alpha)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def grey_alpha_16_png(grey: np.ndarray, alpha: np.ndarray) -> bytes:
    """A 16-bit grey+alpha PNG (colour type 4), which neither Pillow nor OpenCV can write."""
    rows = np.dstack([grey, alpha]).astype(">u2").reshape(grey.shape[0], -1).view(np.uint8)
    scanlines = np.hstack([np.zeros((grey.shape[0], 1), np.uint8), rows])  # filter type 0 per row
    header = struct.pack(">IIBBBBB", grey.shape[1], grey.shape[0], 16, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(scanlines.tobytes()))
        + png_chunk(b"IEND", b"")
    )


def test_16_bit_grey_alpha_png_is_read_exactly(tmp_path: Path) -> None:
    grey, alpha = noise((H, W), np.uint16), noise((H, W), np.uint16, seed=1)
    (tmp_path / "la16.png").write_bytes(grey_alpha_16_png(grey, alpha))

    back = read_image(tmp_path / "la16.png")

    assert back.pixels.dtype == np.uint16
    np.testing.assert_array_equal(back.pixels, grey)
    np.testing.assert_array_equal(back.alpha, alpha)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_alpha_is_written_as_16_bit_rgba(tmp_path: Path, suffix: str) -> None:
    image = DecodedImage(noise((H, W), np.uint16), alpha=noise((H, W), np.uint16, seed=1))
    write_image(image, tmp_path / f"a{suffix}")

    back = read_image(tmp_path / f"a{suffix}")

    np.testing.assert_array_equal(back.pixels, np.dstack([image.pixels] * 3))
    np.testing.assert_array_equal(back.alpha, image.alpha)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".bmp"])
def test_16_bit_to_8_bit_formats_rounds(tmp_path: Path, suffix: str) -> None:
    values = np.array([0, 128, 129, 257, 385, 386, 65535], dtype=np.uint16)
    pixels = np.broadcast_to(values[:, None, None], (7, 8, 3)).copy()
    write_image(DecodedImage(pixels), tmp_path / f"a{suffix}", lossless=True, quality=100)

    back = read_image(tmp_path / f"a{suffix}")

    assert back.pixels.dtype == np.uint8
    expected = [0, 0, 1, 1, 1, 2, 255]  # round(v / 257)
    if suffix == ".jpg":
        np.testing.assert_allclose(back.pixels[:, 4, 0], expected, atol=1)
    else:
        np.testing.assert_array_equal(back.pixels[:, 4, 0], expected)


# --------------------------------------------------------------------------- alpha and grey


@pytest.mark.parametrize("suffix", [".png", ".tif", ".webp"])
def test_alpha_is_byte_for_byte_identical(tmp_path: Path, suffix: str) -> None:
    alpha = noise((H, W), seed=1)
    alpha[::3] = 0  # fully transparent rows: WebP must not rewrite the colour under them
    image = DecodedImage(noise((H, W, 3)), alpha=alpha)
    write_image(image, tmp_path / f"a{suffix}", lossless=True)

    back = read_image(tmp_path / f"a{suffix}")

    assert back.alpha is not None and back.alpha.dtype == np.uint8
    assert back.alpha.tobytes() == alpha.tobytes()
    np.testing.assert_array_equal(back.pixels, image.pixels)


def test_lossy_webp_keeps_alpha_exactly(tmp_path: Path) -> None:
    alpha = noise((H, W), seed=1)
    write_image(DecodedImage(photo(), alpha=alpha), tmp_path / "a.webp")
    np.testing.assert_array_equal(read_image(tmp_path / "a.webp").alpha, alpha)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_alpha_is_dropped_where_the_format_has_none(tmp_path: Path, suffix: str) -> None:
    write_image(DecodedImage(photo(), alpha=noise((H, W))), tmp_path / f"a{suffix}")
    back = read_image(tmp_path / f"a{suffix}")
    assert back.alpha is None and back.pixels.shape == (H, W, 3)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".bmp"])
def test_grey_stays_two_dimensional(tmp_path: Path, suffix: str) -> None:
    image = DecodedImage(photo()[..., 0])
    write_image(image, tmp_path / f"a{suffix}")

    back = read_image(tmp_path / f"a{suffix}")

    assert back.pixels.shape == (H, W) and back.is_gray
    if suffix != ".jpg":
        np.testing.assert_array_equal(back.pixels, image.pixels)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_grey_with_alpha_stays_grey(tmp_path: Path, suffix: str) -> None:
    image = DecodedImage(noise((H, W)), alpha=noise((H, W), seed=1))
    write_image(image, tmp_path / f"a{suffix}")

    back = read_image(tmp_path / f"a{suffix}")

    np.testing.assert_array_equal(back.pixels, image.pixels)
    np.testing.assert_array_equal(back.alpha, image.alpha)


def test_grey_to_webp_is_rgb_because_webp_has_no_grey(tmp_path: Path) -> None:
    grey = noise((H, W))
    write_image(DecodedImage(grey), tmp_path / "a.webp", lossless=True)
    np.testing.assert_array_equal(read_image(tmp_path / "a.webp").pixels, np.dstack([grey] * 3))


def test_palette_png_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    Image.fromarray(photo()).quantize(16).save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as im:
        expected = np.asarray(im.convert("RGBA"))
    assert (expected[..., 3] == 0).any()

    back = read_image(tmp_path / "p.png")

    np.testing.assert_array_equal(back.pixels, expected[..., :3])
    np.testing.assert_array_equal(back.alpha, expected[..., 3])


def test_cmyk_jpeg_is_read_as_rgb(tmp_path: Path) -> None:
    Image.fromarray(photo()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    back = read_image(tmp_path / "c.jpg")
    assert back.pixels.shape == (H, W, 3)
    assert np.abs(back.pixels.astype(int) - photo()).mean() < 3.0


# --------------------------------------------------------------------------- EXIF and ICC


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def save_with_orientation(path: Path, pixels: np.ndarray, orientation: int, **options: object) -> None:
    exif = exif_with_orientation(orientation)
    exif[ExifTags.Base.Make] = "TestCam"
    Image.fromarray(pixels).save(path, exif=exif, **options)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path, orientation: int) -> None:
    stored = photo()
    save_with_orientation(tmp_path / "r.jpg", stored, orientation, quality=98, subsampling=0)
    with Image.open(tmp_path / "r.jpg") as im:
        upright = np.asarray(ImageOps.exif_transpose(im))

    back = read_image(tmp_path / "r.jpg")

    assert back.pixels.shape == (W, H, 3)  # portrait: the stored landscape turned a quarter
    np.testing.assert_array_equal(back.pixels, upright)
    turned = np.rot90(stored, -1 if orientation == 6 else 1)
    assert np.abs(back.pixels.astype(int) - turned).mean() < 2.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_and_turns_alpha_too(tmp_path: Path, orientation: int) -> None:
    rgba = noise((H, W, 4))
    save_with_orientation(tmp_path / "o.png", rgba, orientation)
    with Image.open(tmp_path / "o.png") as im:
        upright = np.asarray(ImageOps.exif_transpose(im))

    back = read_image(tmp_path / "o.png")

    np.testing.assert_array_equal(back.pixels, upright[..., :3])
    np.testing.assert_array_equal(back.alpha, upright[..., 3])
    assert back.pixels.flags.c_contiguous and back.alpha.flags.c_contiguous


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_written_image_has_no_orientation_but_keeps_other_exif(tmp_path: Path, suffix: str) -> None:
    save_with_orientation(tmp_path / "r.jpg", photo(), 6)
    write_image(read_image(tmp_path / "r.jpg"), tmp_path / f"out{suffix}")

    with Image.open(tmp_path / f"out{suffix}") as im:
        im.load()
        exif = im.getexif()
        assert exif.get(ORIENTATION, 1) == 1
        assert exif.get(ExifTags.Base.Make) == "TestCam"
        assert im.size == (H, W)  # upright portrait: width H, height W
    assert read_image(tmp_path / f"out{suffix}").pixels.shape == (W, H, 3)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_colour_is_turned_upright(tmp_path: Path, suffix: str, orientation: int) -> None:
    index = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    stored = np.dstack([index, index + 1000, index + 2000])
    if suffix == ".tif":
        tags = [(ORIENTATION, 3, 1, orientation, True)]
        tifffile.imwrite(tmp_path / "o.tif", stored, photometric="rgb", extratags=tags)
    else:
        exif = np.frombuffer(exif_with_orientation(orientation).tobytes()[6:], np.uint8)
        _, encoded = cv2.imencodeWithMetadata(".png", stored[..., ::-1], [cv2.IMAGE_METADATA_EXIF], [exif])
        (tmp_path / "o.png").write_bytes(encoded.tobytes())
    # 16-bit grey goes through Pillow, whose orientation handling the test above checks
    Image.fromarray(index).save(tmp_path / "grey.png", exif=exif_with_orientation(orientation))
    expected = read_image(tmp_path / "grey.png").pixels

    back = read_image(tmp_path / f"o{suffix}")

    np.testing.assert_array_equal(back.pixels, np.dstack([expected, expected + 1000, expected + 2000]))


def test_exif_chunk_after_png_pixel_data_is_honoured(tmp_path: Path) -> None:
    write_image(DecodedImage(photo()), tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    late_exif = png_chunk(b"eXIf", exif_with_orientation(6).tobytes()[6:])
    (tmp_path / "late.png").write_bytes(data[:-12] + late_exif + data[-12:])  # just before IEND

    np.testing.assert_array_equal(read_image(tmp_path / "late.png").pixels, np.rot90(photo(), -1))


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_malformed_exif_is_dropped_not_fatal(tmp_path: Path, suffix: str) -> None:
    Image.fromarray(photo()).save(tmp_path / f"a{suffix}", exif=b"Exif\x00\x00" + os.urandom(64))

    image = read_image(tmp_path / f"a{suffix}")
    write_image(image, tmp_path / f"out{suffix}")

    assert read_image(tmp_path / f"out{suffix}").pixels.shape == (H, W, 3)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_icc_profile_is_kept(tmp_path: Path, suffix: str, dtype: type) -> None:
    image = DecodedImage(noise((H, W, 3), dtype), icc_profile=SRGB)
    write_image(image, tmp_path / f"a{suffix}")

    assert read_image(tmp_path / f"a{suffix}").icc_profile == SRGB


def test_icc_profile_is_read_from_the_source(tmp_path: Path) -> None:
    Image.fromarray(photo()).save(tmp_path / "a.jpg", icc_profile=SRGB)
    assert read_image(tmp_path / "a.jpg").icc_profile == SRGB


def test_rgb_profile_is_not_attached_to_grey_output(tmp_path: Path) -> None:
    write_image(DecodedImage(noise((H, W)), icc_profile=SRGB), tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").icc_profile is None


# --------------------------------------------------------------------------- broken inputs


def test_empty_file_is_reported_by_name(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DinatError, match=r"empty\.png: empty file"):
        read_image(tmp_path / "empty.png")


def test_corrupt_file_is_reported_by_name(tmp_path: Path) -> None:
    (tmp_path / "junk.jpg").write_bytes(os.urandom(2000))
    with pytest.raises(DinatError, match=r"junk\.jpg: not a readable image"):
        read_image(tmp_path / "junk.jpg")


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [(".jpg", np.uint8), (".png", np.uint8), (".png", np.uint16), (".tif", np.uint16), (".webp", np.uint8)],
)
def test_truncated_file_is_reported_by_name(tmp_path: Path, suffix: str, dtype: type) -> None:
    write_image(DecodedImage(noise((H, W, 3), dtype)), tmp_path / f"whole{suffix}")
    data = (tmp_path / f"whole{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])

    with pytest.raises(DinatError, match=rf"cut\{suffix}: "):
        read_image(tmp_path / f"cut{suffix}")


def test_unreadable_path_is_reported_by_name(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DinatError, match=r"folder\.png: cannot read"):
        read_image(tmp_path / "folder.png")


def test_float_tiff_is_reported_as_unsupported(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((H, W, 3), np.float32), photometric="rgb")
    with pytest.raises(DinatError, match=r"f\.tif: not a readable image"):
        read_image(tmp_path / "f.tif")


# --------------------------------------------------------------------------- atomic writes


def test_write_creates_folders_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "a.png"
    write_image(DecodedImage(noise((H, W, 3))), target)
    assert target.is_file()
    assert leftover_temp_files(target.parent) == []


def test_failing_encoder_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"previous result")

    def broken_encoder(*args: object, **kwargs: object) -> bytes:
        raise ValueError("encoder exploded")

    monkeypatch.setitem(image_io._ENCODERS, ".png", broken_encoder)
    with pytest.raises(DinatError, match=r"a\.png: cannot encode \(encoder exploded\)"):
        write_image(DecodedImage(noise((H, W, 3))), target)

    assert target.read_bytes() == b"previous result"
    assert leftover_temp_files(tmp_path) == []


def test_full_disk_keeps_the_old_file_and_removes_the_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "a.jpg"
    target.write_bytes(b"previous result")
    written: list[str] = []

    def full_disk(fd: int) -> None:
        written.extend(os.listdir(tmp_path))  # the partial temp file exists at this point
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_io.os, "fsync", full_disk)
    with pytest.raises(DinatError, match=r"a\.jpg: cannot write \(No space left on device\)"):
        write_image(DecodedImage(photo()), target)

    assert any(name.startswith(".a.jpg.tmp-") for name in written)
    assert target.read_bytes() == b"previous result"
    assert leftover_temp_files(tmp_path) == []


def test_interrupt_removes_the_temp_and_propagates(tmp_path: Path, monkeypatch) -> None:
    def ctrl_c(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(image_io.os, "replace", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_image(DecodedImage(photo()), tmp_path / "a.png")

    assert list(tmp_path.iterdir()) == []


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    write_image(DecodedImage(noise((H, W, 3), seed=1)), target)
    write_image(DecodedImage(noise((H, W, 3), seed=2)), target)
    np.testing.assert_array_equal(read_image(target).pixels, noise((H, W, 3), seed=2))


def test_written_file_has_ordinary_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    write_image(DecodedImage(photo()), tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_unknown_output_suffix_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\.gif"):
        write_image(DecodedImage(photo()), tmp_path / "a.gif")


# --------------------------------------------------------------------------- float conversion


def test_float_round_trip_keeps_16_bit_values_and_alpha() -> None:
    image = DecodedImage(noise((H, W, 3), np.uint16), alpha=noise((H, W), np.uint16, seed=1), icc_profile=SRGB)
    as_float = image.to_float()
    assert as_float.dtype == np.float32 and as_float.shape == (H, W, 3)
    assert as_float.min() >= 0.0 and as_float.max() <= 1.0

    restored = image.with_float_pixels(as_float)

    np.testing.assert_array_equal(restored.pixels, image.pixels)
    assert restored.alpha is image.alpha and restored.icc_profile == SRGB and restored.bit_depth == 16


def test_float_result_is_clipped_and_rounded() -> None:
    image = DecodedImage(np.zeros((1, 4, 3), np.uint8))
    result = np.array([-0.5, 0.5 / 255, 0.6 / 255, 1.5], np.float32)[None, :, None].repeat(3, axis=2)
    np.testing.assert_array_equal(image.with_float_pixels(result).pixels[0, :, 0], [0, 0, 1, 255])


def test_grey_goes_to_the_network_as_rgb_and_comes_back_grey() -> None:
    image = DecodedImage(noise((H, W)))
    as_float = image.to_float()
    assert as_float.shape == (H, W, 3)

    restored = image.with_float_pixels(as_float)

    assert restored.is_gray
    np.testing.assert_array_equal(restored.pixels, image.pixels)


# --------------------------------------------------------------------------- inputs and outputs


@pytest.fixture
def photo_tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for name in ["b.png", "a.JPG", "sub/c.tif", "sub/deeper/d.webp", "sub/e.bmp", "f.jpeg"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    for name in ["notes.txt", "raw.cr2", "sub/clip.flv", ".hidden.png", ".a.png.tmp-1234", ".cache/g.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def relatives(found: list[image_io.InputFile]) -> list[str]:
    return [item.relative.as_posix() for item in found]


def test_folder_is_walked_recursively_skipping_non_images(photo_tree: Path) -> None:
    found = collect_inputs(str(photo_tree))
    assert relatives(found) == ["a.JPG", "b.png", "f.jpeg", "sub/c.tif", "sub/deeper/d.webp", "sub/e.bmp"]
    assert all(item.path == photo_tree / item.relative for item in found)


def test_single_file_input(photo_tree: Path) -> None:
    found = collect_inputs(str(photo_tree / "sub" / "c.tif"))
    assert found == [image_io.InputFile(photo_tree / "sub" / "c.tif", Path("c.tif"))]


def test_glob_input_is_relative_to_its_fixed_prefix(photo_tree: Path) -> None:
    assert relatives(collect_inputs(f"{photo_tree}/*.png")) == ["b.png"]
    assert relatives(collect_inputs(f"{photo_tree}/**/*.webp")) == ["sub/deeper/d.webp"]
    assert relatives(collect_inputs(f"{photo_tree}/sub/*")) == ["c.tif", "e.bmp"]


def test_output_folder_inside_the_input_is_excluded(photo_tree: Path) -> None:
    assert relatives(collect_inputs(photo_tree, exclude=photo_tree / "sub")) == ["a.JPG", "b.png", "f.jpeg"]


def test_an_output_folder_that_is_the_input_folder_or_holds_it_excludes_nothing(photo_tree: Path) -> None:
    everything = relatives(collect_inputs(photo_tree))
    assert relatives(collect_inputs(photo_tree, exclude=photo_tree)) == everything
    assert relatives(collect_inputs(photo_tree / "sub", exclude=photo_tree)) == ["c.tif", "deeper/d.webp", "e.bmp"]
    assert relatives(collect_inputs(f"{photo_tree}/*.png", exclude=photo_tree)) == ["b.png"]


def test_symlinked_sub_folders_are_followed_once_and_loops_end(photo_tree: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inner").mkdir(parents=True)
    (elsewhere / "x.png").write_bytes(b"x")
    (elsewhere / "inner" / "y.jpg").write_bytes(b"x")
    (elsewhere / "inner" / "loop").symlink_to(elsewhere, target_is_directory=True)
    (photo_tree / "linked").symlink_to(elsewhere, target_is_directory=True)
    (photo_tree / "again").symlink_to(photo_tree / "sub", target_is_directory=True)  # walked as sub/
    (photo_tree / "sub" / "up").symlink_to(photo_tree, target_is_directory=True)  # a loop to the top
    found = collect_inputs(photo_tree)
    assert relatives(found) == [
        "a.JPG",
        "b.png",
        "f.jpeg",
        "linked/inner/y.jpg",
        "linked/x.png",
        "sub/c.tif",
        "sub/deeper/d.webp",
        "sub/e.bmp",
    ]
    assert all(item.path == photo_tree / item.relative for item in found)


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda root: root / "missing", "no such file or folder"),
        (lambda root: f"{root}/*.gif", "no images or videos found"),
        (lambda root: root / "empty", "no images or videos found"),
        (lambda root: root / "notes.txt", "not an image or video file"),
    ],
)
def test_nothing_to_do_is_a_usage_error(photo_tree: Path, make_input, message: str) -> None:
    (photo_tree / "empty").mkdir()
    with pytest.raises(UsageError, match=message):
        collect_inputs(str(make_input(photo_tree)))
