"""PSNR, SSIM and MAE computed the way the DiNAT-IR and Restormer papers compute them.

Images are numpy arrays, (H, W) grayscale or (H, W, 3) in RGB order, holding values on
the scale [0, data_range] of the file they came from (255 for 8-bit, 65535 for 16-bit).
The data range always comes from the bit depth, never from the pixel values: a dark
16-bit image must not be scored as if it were 8-bit.

Three protocols (see `score_pair`):
- ``dinat``: the official DiNAT-IR `calculate_psnr` / `calculate_ssim` (BasicSR lineage).
- ``restormer``: Restormer's MATLAB scripts (`psnr`/`ssim`, and `SSIM_index` for deraining).
- ``dpdd``: the dual-pixel defocus Python scripts of both papers (scikit-image SSIM, MAE).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np

from dinat_cli.errors import DinatError, UsageError

PROTOCOLS: tuple[str, ...] = ("dinat", "restormer", "dpdd")

_K1, _K2 = 0.01, 0.03
_GAUSS_SIZE, _GAUSS_SIGMA = 11, 1.5
_UNIFORM_SIZE = 7  # scikit-image's default window, used by the dpdd scripts

# BT.601 luma of RGB in [0, 1] gives Y in [16, 235] (in 8-bit units). BasicSR's bgr2ycbcr
# applies the same weights in B, G, R order; our pixels are RGB.
_Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0


def data_range(bit_depth: int) -> float:
    """Peak value of an image of this bit depth (255 or 65535)."""
    if bit_depth not in (8, 16):
        raise DinatError(f"unsupported bit depth {bit_depth}: only 8- and 16-bit images can be scored")
    return float(2**bit_depth - 1)


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """PSNR in dB over all values, in float64; `math.inf` for identical images."""
    mse = _sum_of(gt, pred, cv2.NORM_L2SQR) / gt.size
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def mae(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """Mean absolute error on the [0, 1] scale, as the dpdd scripts report it."""
    return _sum_of(gt, pred, cv2.NORM_L1) / gt.size / data_range


def _sum_of(gt: np.ndarray, pred: np.ndarray, norm: int) -> float:
    """Sum of squared or absolute differences, accumulated in float64 (exact for 8-bit)."""
    if gt.dtype != pred.dtype:
        gt, pred = gt.astype(np.float64), pred.astype(np.float64)
    return float(cv2.norm(gt, pred, norm))


def luma(rgb: np.ndarray, data_range: float, rounded: bool = False) -> np.ndarray:
    """Y of BT.601 YCbCr (studio swing) on the image's own scale, float64 (H, W).

    `rounded=False` is BasicSR's `to_y_channel`; `rounded=True` is MATLAB's `rgb2ycbcr` on
    an integer image, whose result is stored back in the integer class (rounded half away
    from zero; Y is always positive, so floor(y + 0.5) is that rounding).
    """
    # Y = s * (16 + w . rgb / L) with s = L / 255, i.e. 16 s + w . rgb / 255.
    y = rgb.astype(np.float64) @ (_Y_WEIGHTS_RGB / 255.0) + _Y_OFFSET * data_range / 255.0
    return np.floor(y + 0.5) if rounded else y


@functools.cache
def _gaussian_kernel() -> np.ndarray:
    return cv2.getGaussianKernel(_GAUSS_SIZE, _GAUSS_SIGMA, cv2.CV_64F)


@functools.cache
def _channel_mixing(channels: int) -> np.ndarray:
    """The 1-D Gaussian along the channel axis with replicate padding, as a matrix.

    Row c holds the weight of each input channel in output channel c: taps that fall off
    either end of the channel axis land on the first or last channel.
    """
    taps = _gaussian_kernel()[:, 0]
    offsets = np.arange(_GAUSS_SIZE) - _GAUSS_SIZE // 2
    outputs = np.repeat(np.arange(channels), _GAUSS_SIZE)
    inputs = np.clip(outputs + np.tile(offsets, channels), 0, channels - 1)
    mixing = np.zeros((channels, channels))
    np.add.at(mixing, (outputs, inputs), np.tile(taps, channels))
    return mixing


def _gaussian_replicate(image: np.ndarray) -> np.ndarray:
    """11x11 Gaussian over rows and columns (each channel alone), replicate padding."""
    kernel = _gaussian_kernel()
    return cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REPLICATE)


def _gaussian_replicate_3d(image: np.ndarray) -> np.ndarray:
    """11x11x11 Gaussian over rows, columns and channels, replicate padding (MATLAB ssim)."""
    # Separable: filter each channel in 2-D, then mix the channels along the third axis.
    return cv2.transform(_gaussian_replicate(image), _channel_mixing(image.shape[2]))


def _uniform(image: np.ndarray) -> np.ndarray:
    # The border mode is irrelevant: callers keep only positions where the window fits.
    return cv2.blur(image, (_UNIFORM_SIZE, _UNIFORM_SIZE), borderType=cv2.BORDER_REFLECT_101)


# Values per strip of the SSIM computation (about 1.5 MB per float64 temporary): a strip's
# ten-odd temporaries stay in cache, which makes SSIM about twice as fast on photos. The
# minimum height keeps the halo rows, computed twice, a small share on very wide images.
_STRIP_VALUES = 192 * 1024
_MIN_STRIP_ROWS = 32


def _ssim_mean(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float,
    blur: Callable[[np.ndarray], np.ndarray],
    radius: int,
    crop: int = 0,
    covariance_scale: float = 1.0,
) -> float:
    """Mean of the SSIM map of Wang et al. (2004) with local statistics from `blur`.

    The map is computed in horizontal strips, each read with `radius` extra rows on both
    sides so that every kept row sees the same neighbourhood as in one whole-image pass
    (the blur's border handling only acts at the image's own edges). `crop` drops that
    many rows and columns at each edge from the mean (the valid-region variants).
    """
    height, width = x.shape[:2]
    values_per_row = x.size // height
    strip_rows = max(_MIN_STRIP_ROWS, _STRIP_VALUES // values_per_row)
    total, count = 0.0, 0
    for start in range(crop, height - crop, strip_rows):
        stop = min(start + strip_rows, height - crop)
        low, high = max(0, start - radius), min(height, stop + radius)
        ssim_map = _ssim_map(x[low:high], y[low:high], data_range, blur, covariance_scale)
        kept = ssim_map[start - low : stop - low, crop : width - crop]
        total += float(kept.sum(dtype=np.float64))
        count += kept.size
    return total / count


def _ssim_map(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float,
    blur: Callable[[np.ndarray], np.ndarray],
    covariance_scale: float,
) -> np.ndarray:
    """SSIM at every position, float64.

    float64 throughout: a variance is E[x^2] - E[x]^2, which cancels badly in float32 on
    bright, flat regions. The map needs the two variances only as a sum, so E[x^2 + y^2]
    is filtered once (four filters instead of five); temporaries are reused in place.
    """
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    scratch = np.multiply(x, x)
    scratch += y * y
    var_sum = blur(scratch)
    cov = blur(np.multiply(x, y, out=scratch))
    mu_xy = np.multiply(mu_x, mu_y, out=scratch)
    mu_sq = np.square(mu_x, out=mu_x)
    mu_sq += np.square(mu_y, out=mu_y)
    var_sum -= mu_sq
    cov -= mu_xy
    if covariance_scale != 1.0:
        var_sum *= covariance_scale
        cov *= covariance_scale
    # ssim = (2 mu_x mu_y + c1)(2 cov + c2) / ((mu_x^2 + mu_y^2 + c1)(var_x + var_y + c2))
    mu_xy *= 2.0
    mu_xy += c1
    cov *= 2.0
    cov += c2
    mu_xy *= cov
    mu_sq += c1
    var_sum += c2
    mu_sq *= var_sum
    return np.divide(mu_xy, mu_sq, out=mu_xy)


def ssim_gaussian(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """MATLAB's `ssim()`: Gaussian sigma 1.5, replicate padding, mean over every value.

    On a colour image the window is one 11x11x11 Gaussian over rows, columns and channels
    (not the mean of per-channel SSIMs); on a grayscale image it is the 11x11 Gaussian.
    """
    blur = _gaussian_replicate_3d if gt.ndim == 3 else _gaussian_replicate
    return _ssim_mean(gt, pred, data_range, blur, radius=_GAUSS_SIZE // 2)


def ssim_valid(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """Wang's 2003 `SSIM_index` on one channel: 11x11 Gaussian, mean over the valid region."""
    if gt.ndim != 2:
        raise DinatError("valid-region SSIM is defined on one channel only (use the Y channel)")
    _require_side(gt, _GAUSS_SIZE, "valid-region SSIM")
    radius = _GAUSS_SIZE // 2
    return _ssim_mean(gt, pred, data_range, _gaussian_replicate, radius, crop=radius)


def ssim_uniform(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """scikit-image's default `structural_similarity` (the dpdd scripts' SSIM).

    7x7 uniform window, sample covariance (N / (N - 1)), each channel alone, mean over
    the positions where the window fits, then over channels.
    """
    _require_side(gt, _UNIFORM_SIZE, "the dpdd SSIM")
    radius = _UNIFORM_SIZE // 2
    window = _UNIFORM_SIZE * _UNIFORM_SIZE
    return _ssim_mean(gt, pred, data_range, _uniform, radius, crop=radius, covariance_scale=window / (window - 1))


def _require_side(image: np.ndarray, side: int, what: str) -> None:
    height, width = image.shape[:2]
    if height < side or width < side:
        raise DinatError(f"{what} needs images of at least {side}x{side} pixels, got {width}x{height}")


def _score_dinat(gt: np.ndarray, pred: np.ndarray, peak: float, y_channel: bool) -> dict[str, float]:
    if y_channel and gt.ndim == 3:
        gt, pred = luma(gt, peak), luma(pred, peak)
    return {"psnr": psnr(gt, pred, peak), "ssim": ssim_gaussian(gt, pred, peak)}


def _score_restormer(gt: np.ndarray, pred: np.ndarray, peak: float, y_channel: bool) -> dict[str, float]:
    if not y_channel:
        # evaluate_GOPRO_HIDE.m: MATLAB psnr() and ssim() on the RGB images.
        return {"psnr": psnr(gt, pred, peak), "ssim": ssim_gaussian(gt, pred, peak)}
    # evaluate_PSNR_SSIM.m (deraining): integer Y, then PSNR and SSIM_index on it.
    if gt.ndim == 3:
        gt, pred = luma(gt, peak, rounded=True), luma(pred, peak, rounded=True)
    return {"psnr": psnr(gt, pred, peak), "ssim": ssim_valid(gt, pred, peak)}


def _score_dpdd(gt: np.ndarray, pred: np.ndarray, peak: float, y_channel: bool) -> dict[str, float]:
    # The scripts divide by the peak and work on [0, 1]; PSNR and SSIM are invariant to
    # that scaling (the SSIM constants scale with the data range), MAE is not.
    return {"psnr": psnr(gt, pred, peak), "ssim": ssim_uniform(gt, pred, peak), "mae": mae(gt, pred, peak)}


_SCORERS: dict[str, Callable[[np.ndarray, np.ndarray, float, bool], dict[str, float]]] = {
    "dinat": _score_dinat,
    "restormer": _score_restormer,
    "dpdd": _score_dpdd,
}


def check_options(protocol: str, y_channel: bool, crop_border: int) -> None:
    """Raise UsageError for a combination no paper's protocol defines."""
    if protocol not in _SCORERS:
        raise UsageError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if y_channel and protocol == "dpdd":
        raise UsageError("the dpdd protocol scores RGB only: drop --y-channel")
    if crop_border < 0:
        raise UsageError(f"--crop-border must be >= 0, got {crop_border}")


def score_pair(
    gt: np.ndarray,
    pred: np.ndarray,
    protocol: str = "dinat",
    bit_depth: int = 8,
    y_channel: bool = False,
    crop_border: int = 0,
) -> dict[str, float]:
    """Score one prediction against its ground truth under a paper's protocol.

    Returns {"psnr": dB (math.inf when identical), "ssim": ...} plus "mae" for dpdd.
    Raises DinatError for images that cannot be compared (sizes, channels, too small)
    and UsageError for options the protocol does not define.
    """
    check_options(protocol, y_channel, crop_border)
    gt, pred = _comparable(gt, pred)
    gt, pred = _crop(gt, crop_border), _crop(pred, crop_border)
    return _SCORERS[protocol](gt, pred, data_range(bit_depth), y_channel)


def _describe(image: np.ndarray) -> str:
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    return f"{width}x{height}, {channels} channel{'s' if channels != 1 else ''}"


def _comparable(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as (H, W) or (H, W, 3) of the same shape."""
    gt, pred = _squeeze_single_channel(gt), _squeeze_single_channel(pred)
    for image in (gt, pred):
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise DinatError(f"expected a grayscale or RGB image, got shape {image.shape}")
    if gt.shape != pred.shape:
        raise DinatError(f"size mismatch: ground truth is {_describe(gt)}, prediction is {_describe(pred)}")
    return gt, pred


def _squeeze_single_channel(image: np.ndarray) -> np.ndarray:
    return image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image


def _crop(image: np.ndarray, border: int) -> np.ndarray:
    if border == 0:
        return image
    height, width = image.shape[:2]
    if 2 * border >= min(height, width):
        raise DinatError(f"--crop-border {border} leaves nothing of a {width}x{height} image")
    return image[border:-border, border:-border]
