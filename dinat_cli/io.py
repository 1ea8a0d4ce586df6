"""Image files <-> arrays: the two ends of the pipeline.

Reading uses Pillow, which identifies every format, applies the right mode conversions and rejects
truncated data; OpenCV decodes only the 16-bit colour PNG and TIFF files that Pillow would reduce
to 8 bits. OpenCV decodes 8-bit files 1.5-2.5x faster, but it drops the alpha of grey TIFFs, returns
CMYK TIFFs unconverted and ignores grey colour-key transparency, and decoding is small next to the
network's time. Writing uses OpenCV for PNG (about five times faster than Pillow at the same size, and
16-bit colour), tifffile for TIFF (16-bit, alpha and ICC together) and Pillow for JPEG, WebP and BMP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import ExifTags, Image, TiffTags, UnidentifiedImageError

from dinat_cli import files
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.video import VIDEO_EXTENSIONS, is_video

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"})
# What a restore run takes: images, and videos (restored frame by frame by dinat_cli.video).
INPUT_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS

_ORIENTATION = ExifTags.Base.Orientation
_BITS_PER_SAMPLE = TiffTags.lookup(258).value

# EXIF orientation -> the view that makes stored pixels upright (as Pillow's ImageOps.exif_transpose).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a),
}

# What Pillow and OpenCV raise for data they cannot decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError, cv2.error)


@dataclass
class DecodedImage:
    """Upright pixels of one image plus what is needed to write it back faithfully.

    pixels: uint8 or uint16, (H, W, 3) RGB or (H, W) grey; alpha: same dtype, (H, W), or None.
    exif: the EXIF block as read; its orientation tag is dropped on write because pixels are upright.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None

    def __post_init__(self) -> None:
        if self.pixels.dtype not in (np.uint8, np.uint16) or self.pixels.ndim not in (2, 3):
            raise ValueError(
                f"pixels must be uint8/uint16 (H, W) or (H, W, 3), got {self.pixels.dtype} {self.pixels.shape}"
            )
        if self.alpha is not None and (
            self.alpha.dtype != self.pixels.dtype or self.alpha.shape != self.pixels.shape[:2]
        ):
            raise ValueError("alpha must match the pixels' dtype and height/width")

    @property
    def bit_depth(self) -> int:
        return self.pixels.dtype.itemsize * 8

    @property
    def max_value(self) -> int:
        return int(np.iinfo(self.pixels.dtype).max)

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2

    def to_float(self) -> np.ndarray:
        """Pixels as float32 (H, W, 3) in [0, 1]; grey is repeated to 3 channels as the network is RGB."""
        scaled = self.pixels.astype(np.float32) / self.max_value
        return np.repeat(scaled[..., None], 3, axis=2) if self.is_gray else scaled

    def with_float_pixels(self, result: np.ndarray) -> DecodedImage:
        """This image with its pixels replaced by a float (H, W, 3) result in [0, 1].

        Bit depth, alpha and metadata are kept; a grey image gets the mean of the result's channels.
        """
        if result.shape[:2] != self.pixels.shape[:2]:
            raise ValueError(f"result is {result.shape[:2]}, the image {self.pixels.shape[:2]}")
        if self.is_gray:
            result = result.mean(axis=2)
        pixels = np.rint(np.clip(result, 0.0, 1.0) * self.max_value).astype(self.pixels.dtype)
        return dataclasses.replace(self, pixels=pixels)


@dataclass(frozen=True)
class InputFile:
    """One input image or video and its path relative to the INPUT root, which the output mirrors."""

    path: Path
    relative: Path
    video: bool = False


# --------------------------------------------------------------------------- reading


def read_image(path: Path) -> DecodedImage:
    """Decode an image file, upright, at its own bit depth; DinatError names the file if it cannot."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            layered = _decode_upright(im, data)
            icc_profile = im.info.get("icc_profile") or None
            exif = im.info.get("exif") or None
    except UnidentifiedImageError as exc:
        raise DinatError(f"{path}: not a readable image (unknown format or corrupt header)") from exc
    except _DECODE_ERRORS as exc:
        raise DinatError(f"{path}: not a readable image ({exc})") from exc
    pixels, alpha = _split_alpha(layered)
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        icc_profile=icc_profile,
        exif=exif,
    )


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DinatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise DinatError(f"{path}: empty file")
    return data


def _decode_upright(im: Image.Image, data: bytes) -> np.ndarray:
    """All channels (alpha last) in the orientation the EXIF/TIFF tag asks for."""
    deep_mode = _deep_colour_mode(im, data)
    if deep_mode is None:
        layered = _decode_with_pillow(im)
    else:
        layered = _decode_deep_colour(data, deep_mode)
        if im.format == "TIFF":
            return layered  # OpenCV's TIFF decoder applies the Orientation tag itself, even IMREAD_UNCHANGED
    # read after decoding, when Pillow has also seen an eXIf chunk placed after a PNG's pixel data
    orientation = _orientation(im)
    return _UPRIGHT[orientation](layered) if orientation in _UPRIGHT else layered


def _deep_colour_mode(im: Image.Image, data: bytes) -> str | None:
    """The true mode (RGB, RGBA or LA) of a 16-bit multi-channel PNG/TIFF, which Pillow opens as an
    8-bit mode and would truncate; None for everything Pillow decodes exactly."""
    if im.format == "PNG" and data[24] == 16:
        # IHDR bit depth and colour type, at fixed offsets by the PNG specification
        return {2: "RGB", 4: "LA", 6: "RGBA"}.get(data[25])
    if im.format == "TIFF" and im.mode in ("RGB", "RGBA") and int(np.max(im.tag_v2.get(_BITS_PER_SAMPLE, 8))) > 8:
        return im.mode
    return None


def _decode_deep_colour(data: bytes, mode: str) -> np.ndarray:
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ValueError("truncated or corrupt pixel data")
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if decoded.dtype != np.uint16 or channels not in (3, 4):
        raise ValueError(f"unsupported 16-bit {mode} layout ({decoded.dtype}, {channels} channels)")
    if mode == "LA":  # OpenCV expands grey+alpha to BGRA
        return decoded[..., [0, 3]]
    return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA if channels == 4 else cv2.COLOR_BGR2RGB)


def _decode_with_pillow(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)  # native byte order for I;16B
    if im.mode == "I":  # 32-bit integers: older Pillow opens 16-bit grey PNG this way
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError("unsupported 32-bit integer pixels")
        return values.astype(np.uint16)
    if im.mode == "F":
        raise ValueError("unsupported floating-point pixels")
    gray = im.mode in ("1", "L", "LA", "La")
    # A palette or colour-key transparency (PNG tRNS) becomes a real alpha channel, as viewers show it.
    has_alpha = im.has_transparency_data
    target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    return np.asarray(im.convert(target))


def _orientation(im: Image.Image) -> int:
    if im.format == "TIFF":
        return int(im.tag_v2.get(_ORIENTATION, 1))  # a tag of the image itself, not an EXIF block
    return _parse_exif(im.info.get("exif")).get(_ORIENTATION, 1)


def _parse_exif(block: bytes | None) -> Image.Exif:
    """The EXIF block, or an empty one if it is malformed: such a photo is still worth restoring."""
    exif = Image.Exif()
    if block:
        with contextlib.suppress(SyntaxError, ValueError, struct.error):
            exif.load(block)
    return exif


def _split_alpha(layered: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 2|4) with alpha last -> grey or RGB pixels and alpha; other layouts have no alpha."""
    if layered.ndim == 3 and layered.shape[2] in (2, 4):
        colour = layered[..., 0] if layered.shape[2] == 2 else layered[..., :3]
        return colour, layered[..., -1]
    return layered, None


# --------------------------------------------------------------------------- writing


def write_image(image: DecodedImage, path: Path, *, quality: int = 95, lossless: bool = False) -> None:
    """Encode image in the format its suffix names and put it at path atomically.

    quality applies to JPEG and lossy WebP; lossless selects lossless WebP (PNG and TIFF always are).
    Missing parent folders are created. On any failure the old file at path, if any, is untouched.
    """
    path = Path(path)
    encoder = _ENCODERS.get(path.suffix.lower())
    if encoder is None:
        raise UsageError(f"{path}: cannot write {path.suffix or 'files without a suffix'}; use one of {_suffix_list()}")
    try:
        data = encoder(image, quality=quality, lossless=lossless)
    except (OSError, ValueError, cv2.error) as exc:
        raise DinatError(f"{path}: cannot encode ({exc})") from exc
    files.write_atomically(path, data)


def _encode_png(image: DecodedImage, **_: object) -> bytes:
    if image.is_gray and image.alpha is not None and image.bit_depth == 8:
        return _encode_with_pillow(image, "PNG", gray=True)  # OpenCV writes 1, 3 or 4 channels, not 2
    layered = _layered(image, keep_alpha=True, gray=_writes_gray(image))
    if layered.ndim == 3:
        layered = cv2.cvtColor(layered, cv2.COLOR_RGBA2BGRA if layered.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    kinds, blocks = [], []
    icc = _matching_icc(image.icc_profile, gray=layered.ndim == 2)
    if icc:
        kinds.append(cv2.IMAGE_METADATA_ICCP)
        blocks.append(np.frombuffer(icc, np.uint8))
    exif = _exif_for_output(image.exif)
    if exif:
        kinds.append(cv2.IMAGE_METADATA_EXIF)
        blocks.append(np.frombuffer(exif.removeprefix(b"Exif\x00\x00"), np.uint8))  # eXIf holds bare TIFF data
    ok, encoded = cv2.imencodeWithMetadata(".png", layered, kinds, blocks)
    if not ok:
        raise ValueError("the PNG encoder failed")
    return encoded.tobytes()


def _encode_tiff(image: DecodedImage, **_: object) -> bytes:
    gray = _writes_gray(image)
    out = io.BytesIO()
    tifffile.imwrite(
        out,
        _layered(image, keep_alpha=True, gray=gray),
        photometric="minisblack" if gray else "rgb",
        extrasamples=["unassalpha"] if image.alpha is not None else None,
        # Deflate with horizontal differencing: readable everywhere and needs no codec package beyond
        # tifffile; on a 12 MP 16-bit photo level 1 is 3x faster than level 6 for files 2% larger.
        compression="zlib",
        compressionargs={"level": 1},
        predictor=True,
        iccprofile=_matching_icc(image.icc_profile, gray=gray),
        metadata=None,
    )
    return out.getvalue()


def _writes_gray(image: DecodedImage) -> bool:
    """Whether a PNG/TIFF file keeps the image grey. 16-bit grey+alpha goes out as 16-bit RGBA: neither
    OpenCV nor Pillow writes it as PNG, and Pillow cannot open it as TIFF."""
    return image.is_gray and not (image.alpha is not None and image.bit_depth == 16)


def _encode_jpeg(image: DecodedImage, *, quality: int, **_: object) -> bytes:
    return _encode_with_pillow(image, "JPEG", gray=image.is_gray, keep_alpha=False, quality=quality, subsampling=0)


def _encode_webp(image: DecodedImage, *, quality: int, lossless: bool) -> bytes:
    # exact keeps the colour under fully transparent pixels, which libwebp otherwise rewrites.
    return _encode_with_pillow(image, "WEBP", gray=False, quality=quality, lossless=lossless, exact=True)


def _encode_bmp(image: DecodedImage, **_: object) -> bytes:
    return _encode_with_pillow(image, "BMP", gray=image.is_gray, keep_alpha=False)


_ENCODERS: dict[str, Callable[..., bytes]] = {
    ".png": _encode_png,
    ".tif": _encode_tiff,
    ".tiff": _encode_tiff,
    ".jpg": _encode_jpeg,
    ".jpeg": _encode_jpeg,
    ".webp": _encode_webp,
    ".bmp": _encode_bmp,
}


def _encode_with_pillow(
    image: DecodedImage, fmt: str, *, gray: bool, keep_alpha: bool = True, **options: object
) -> bytes:
    """Save through Pillow, which holds 8 bits per channel (so 16-bit input is rounded to 8)."""
    layered = _layered(image, keep_alpha=keep_alpha, gray=gray, as_uint8=True)
    icc = _matching_icc(image.icc_profile, gray=gray)
    exif = _exif_for_output(image.exif)
    if icc:
        options["icc_profile"] = icc
    if exif and fmt != "BMP":
        options["exif"] = exif
    out = io.BytesIO()
    Image.fromarray(layered).save(out, fmt, **options)
    return out.getvalue()


def _layered(image: DecodedImage, *, keep_alpha: bool, gray: bool, as_uint8: bool = False) -> np.ndarray:
    """Pixels (+ alpha last) as one array, grey or RGB as asked, optionally rounded to 8 bits."""
    pixels = image.pixels
    if gray and not image.is_gray:
        raise ValueError("cannot write a colour image as grey")
    if not gray and image.is_gray:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if keep_alpha and image.alpha is not None:
        pixels = np.dstack([pixels, image.alpha])
    return to_uint8(pixels) if as_uint8 else pixels


def to_uint8(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    # round(v * 255 / 65535) == round(v / 257), and 257 is odd so there are no ties to break
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _matching_icc(profile: bytes | None, *, gray: bool) -> bytes | None:
    """The profile if its colour space fits the written pixels (a grey or CMYK profile on RGB is wrong)."""
    if not profile or len(profile) < 20:
        return None
    return profile if profile[16:20] == (b"GRAY" if gray else b"RGB ") else None


def _exif_for_output(block: bytes | None) -> bytes | None:
    """The EXIF block without its orientation tag, so that viewers do not rotate upright pixels again."""
    exif = _parse_exif(block)
    exif.pop(_ORIENTATION, None)
    return exif.tobytes() if len(exif) else None


# --------------------------------------------------------------------------- inputs


def collect_inputs(input: str | Path, *, exclude: Path | None = None) -> list[InputFile]:
    """Images and videos named by INPUT: a file, a folder (walked recursively) or a glob pattern, sorted.

    Files with INPUT_EXTENSIONS count, and videos by content under other names; hidden files and
    folders (our temporary files among them) are skipped, and so is everything under exclude (an
    output folder inside the input folder; an output folder that is the input folder, or holds
    it, excludes nothing).
    """
    text = str(input)
    root = Path(text)
    if root.is_file():
        item = _input_file(root, Path(root.name))
        if item is None:
            raise UsageError(
                f"{root}: not an image or video file; expected one of {_suffix_list()} (or a video by content)"
            )
        return [item]
    if root.is_dir():
        found = sorted(walk_images(root), key=lambda item: item.relative)
    elif _has_glob_magic(text):
        found = _glob_images(text)
    else:
        raise UsageError(f"{text}: no such file or folder")
    if exclude is not None:
        excluded = Path(exclude).resolve()
        if not input_root(text).resolve().is_relative_to(excluded):
            found = [item for item in found if not item.path.resolve().is_relative_to(excluded)]
    if not found:
        raise UsageError(f"{text}: no images or videos found ({_suffix_list()})")
    return found


def input_root(input: str | Path) -> Path:
    """The folder that INPUT's relative paths start from: the folder itself, a file's folder, a glob's fixed part."""
    text = str(input)
    root = Path(text)
    if root.is_dir():
        return root
    if root.is_file() or not _has_glob_magic(text):
        return root.parent
    parts = root.parts
    fixed = next((i for i, part in enumerate(parts) if _has_glob_magic(part)), len(parts))
    return Path(*parts[:fixed]) if fixed else Path()


def walk_images(root: Path) -> Iterator[InputFile]:
    """Images under root. Symlinked sub-folders are followed, and each folder is walked once: a
    link into root is left to the real path, a link back to a folder already walked (a loop) is
    not taken again."""
    inside = root.resolve()
    walked = {_identity(root)}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = [
            name for name in subfolders if not name.startswith(".") and _first_visit(Path(folder, name), inside, walked)
        ]
        for name in names:
            path = Path(folder, name)
            if not name.startswith(".") and (item := _input_file(path, path.relative_to(root))) is not None:
                yield item


def _first_visit(folder: Path, root: Path, walked: set[tuple[int, int]]) -> bool:
    if folder.is_symlink() and folder.resolve().is_relative_to(root):
        return False
    identity = _identity(folder)
    if identity in walked:
        return False
    walked.add(identity)
    return True


def _identity(folder: Path) -> tuple[int, int]:
    stat = folder.stat()
    return stat.st_dev, stat.st_ino


def _glob_images(pattern: str) -> list[InputFile]:
    base = input_root(pattern)
    # glob skips hidden names unless a pattern spells the dot, so temporary files stay out
    matches = sorted({Path(p) for p in glob.glob(pattern, recursive=True)})
    visible = (path for path in matches if path.is_file() and not path.name.startswith("."))
    found = (_input_file(path, path.relative_to(base)) for path in visible)
    return [item for item in found if item is not None]


def _has_glob_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def _input_file(path: Path, relative: Path) -> InputFile | None:
    """`path` as an input, told apart once: an image by its extension, a video by its extension
    or, under any other name, by its content (`video.is_video`); None for anything else."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return InputFile(path, relative)
    return InputFile(path, relative, video=True) if is_video(path) else None


def _suffix_list() -> str:
    return " ".join(sorted(INPUT_EXTENSIONS))
