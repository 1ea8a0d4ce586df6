"""PSNR/SSIM/MAE against the official DiNAT-IR values (tests/data/reference/metrics) and
against independent references (scipy filters, scikit-image) for the other protocols."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dinat_cli import metrics
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.io import read_image

TOLERANCE = 1e-4  # dB for PSNR, absolute for SSIM: the official 3-D SSIM runs in float32


def _reference_cases(reference_dir):
    expected = json.loads((reference_dir / "metrics" / "expected.json").read_text())["sets"]
    for set_name, spec in expected.items():
        for image_name, values in spec["images"].items():
            yield set_name, spec, image_name, values


def test_reproduces_official_values(reference_dir) -> None:
    checked = 0
    for set_name, spec, image_name, values in _reference_cases(reference_dir):
        gt = read_image(reference_dir / "metrics" / "gt" / image_name)
        pred = read_image(reference_dir / "metrics" / "pred" / image_name)
        assert gt.bit_depth == spec["bit_depth"]
        scores = metrics.score_pair(
            gt.pixels, pred.pixels, "dinat", gt.bit_depth, spec["y_channel"], spec["crop_border"]
        )
        assert scores["psnr"] == pytest.approx(values["psnr"], abs=TOLERANCE), (set_name, image_name)
        assert scores["ssim"] == pytest.approx(values["ssim"], abs=TOLERANCE), (set_name, image_name)
        checked += 1
    assert checked == 15


def _random_pair(shape, bit_depth=8, seed=0, noise=0.05):
    """A smooth image and a noisy copy of it, on the scale of the bit depth."""
    rng = np.random.default_rng(seed)
    peak = 2**bit_depth - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    smooth = ndimage.gaussian_filter(rng.uniform(0, 1, shape), sigma=(2, 2, 0)[: len(shape)])
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    gt = np.round(smooth * peak)
    pred = np.clip(gt + rng.normal(0, noise * peak, shape), 0, peak).round()
    return gt.astype(dtype), pred.astype(dtype)


def _ssim_reference(x, y, peak, kernel, crop=0):
    """Textbook SSIM map mean with scipy's n-D correlation and replicate ('nearest') padding."""
    x, y = x.astype(np.float64), y.astype(np.float64)

    def blur(image):
        return ndimage.correlate(image, kernel, mode="nearest")

    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    if crop:
        ssim_map = ssim_map[crop:-crop, crop:-crop]
    return ssim_map.mean()


def _gaussian(ndim):
    taps = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    taps /= taps.sum()
    kernel = taps
    for _ in range(ndim - 1):
        kernel = np.multiply.outer(kernel, taps)
    return kernel


@pytest.mark.parametrize("shape", [(37, 23, 3), (5, 9, 3), (64, 48, 3)])
def test_rgb_ssim_is_one_3d_gaussian_with_replicate_padding(shape) -> None:
    # Odd sizes and an image smaller than the window: replicate padding still defines SSIM.
    gt, pred = _random_pair(shape)
    expected = _ssim_reference(gt, pred, 255, _gaussian(3))
    assert metrics.ssim_gaussian(gt, pred, 255) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("function", "shape"),
    [
        (metrics.ssim_gaussian, (53, 29, 3)),
        (metrics.ssim_gaussian, (53, 29)),
        (metrics.ssim_valid, (53, 29)),
        (metrics.ssim_uniform, (53, 29, 3)),
    ],
)
def test_strips_give_the_whole_image_result(monkeypatch, function, shape) -> None:
    gt, pred = _random_pair(shape, seed=2)
    whole = function(gt, pred, 255)
    channels = shape[2] if len(shape) == 3 else 1
    monkeypatch.setattr(metrics, "_STRIP_VALUES", 29 * channels * 4)
    monkeypatch.setattr(metrics, "_MIN_STRIP_ROWS", 4)  # 4-row strips
    assert function(gt, pred, 255) == pytest.approx(whole, abs=1e-13)


def test_rgb_ssim_differs_from_mean_of_channel_ssims() -> None:
    gt, pred = _random_pair((40, 40, 3))
    per_channel = np.mean([metrics.ssim_gaussian(gt[..., c], pred[..., c], 255) for c in range(3)])
    assert abs(metrics.ssim_gaussian(gt, pred, 255) - per_channel) > 1e-4


def test_grayscale_uses_the_2d_gaussian() -> None:
    gt, pred = _random_pair((31, 45))
    expected = _ssim_reference(gt, pred, 255, _gaussian(2))
    scores = metrics.score_pair(gt, pred, "dinat", 8)
    assert scores["ssim"] == pytest.approx(expected, abs=1e-12)
    # Y of a grayscale image is the image itself.
    assert metrics.score_pair(gt, pred, "dinat", 8, y_channel=True) == scores
    assert metrics.score_pair(gt[..., None], pred[..., None], "dinat", 8) == scores


def test_y_channel_is_basicsr_bt601_unrounded_in_rgb_order() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    y = metrics.luma(rgb, 255.0)
    expected = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
    gt, pred = _random_pair((30, 33, 3))
    scores = metrics.score_pair(gt, pred, "dinat", 8, y_channel=True)
    y_gt, y_pred = metrics.luma(gt, 255.0), metrics.luma(pred, 255.0)
    assert scores["ssim"] == pytest.approx(_ssim_reference(y_gt, y_pred, 255, _gaussian(2)), abs=1e-12)
    assert scores["psnr"] == pytest.approx(peak_signal_noise_ratio(y_gt, y_pred, data_range=255), abs=1e-9)


def test_matlab_rgb2ycbcr_rounding() -> None:
    # MATLAB: rgb2ycbcr(uint8(...)) gives Y = 16, 235, 81, 145, 41 for black, white, R, G, B.
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(metrics.luma(rgb, 255.0, rounded=True), [[16, 235, 81, 145, 41]])
    # uint16 scales the same limits by 257.
    white16 = np.full((1, 1, 3), 65535, dtype=np.uint16)
    assert metrics.luma(white16, 65535.0, rounded=True)[0, 0] == 235 * 257


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_restormer_deraining_matches_wang_valid_region_ssim(bit_depth) -> None:
    gt, pred = _random_pair((41, 52, 3), bit_depth, seed=3)
    peak = 2**bit_depth - 1
    y_gt, y_pred = metrics.luma(gt, peak, rounded=True), metrics.luma(pred, peak, rounded=True)
    assert np.array_equal(y_gt, np.round(y_gt))
    scores = metrics.score_pair(gt, pred, "restormer", bit_depth, y_channel=True)
    reference_ssim = structural_similarity(
        y_gt, y_pred, data_range=peak, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert scores["ssim"] == pytest.approx(reference_ssim, abs=1e-10)
    assert scores["psnr"] == pytest.approx(peak_signal_noise_ratio(y_gt, y_pred, data_range=peak), abs=1e-9)


def test_restormer_rgb_is_matlab_ssim_like_dinat() -> None:
    gt, pred = _random_pair((29, 31, 3))
    assert metrics.score_pair(gt, pred, "restormer", 8) == metrics.score_pair(gt, pred, "dinat", 8)


@pytest.mark.parametrize(("shape", "bit_depth"), [((48, 35, 3), 16), ((21, 27, 3), 8), ((30, 40), 16)])
def test_dpdd_matches_scikit_image_on_unit_floats(shape, bit_depth) -> None:
    gt, pred = _random_pair(shape, bit_depth, seed=5)
    peak = 2**bit_depth - 1
    gt_unit, pred_unit = gt / peak, pred / peak
    channel_axis = -1 if len(shape) == 3 else None
    scores = metrics.score_pair(gt, pred, "dpdd", bit_depth)
    assert set(scores) == {"psnr", "ssim", "mae"}
    ssim = structural_similarity(gt_unit, pred_unit, data_range=1, channel_axis=channel_axis)
    assert scores["ssim"] == pytest.approx(ssim, abs=1e-10)
    assert scores["psnr"] == pytest.approx(peak_signal_noise_ratio(gt_unit, pred_unit, data_range=1), abs=1e-9)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(gt_unit - pred_unit)), abs=1e-12)


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
@pytest.mark.parametrize(("shape", "bit_depth"), [((33, 25, 3), 8), ((33, 25, 3), 16), ((19, 21), 8)])
def test_identical_images(protocol, shape, bit_depth) -> None:
    gt, _ = _random_pair(shape, bit_depth)
    for y_channel in (False, True) if protocol != "dpdd" else (False,):
        scores = metrics.score_pair(gt, gt.copy(), protocol, bit_depth, y_channel)
        assert scores["psnr"] == math.inf
        assert scores["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert scores.get("mae", 0.0) == 0.0


def test_data_range_comes_from_the_bit_depth_not_the_pixels() -> None:
    # A dark 16-bit image (all values < 256) is still scored against 65535.
    gt = np.full((16, 16, 3), 100, dtype=np.uint16)
    pred = gt + 1
    assert metrics.score_pair(gt, pred, "dinat", 16)["psnr"] == pytest.approx(20 * math.log10(65535), abs=1e-9)
    assert metrics.score_pair(gt, pred, "dinat", 8)["psnr"] == pytest.approx(20 * math.log10(255), abs=1e-9)


def test_16bit_scores_equal_8bit_scores_scaled_by_257() -> None:
    gt8, pred8 = _random_pair((40, 44, 3))
    gt16, pred16 = (gt8.astype(np.uint16) * 257, pred8.astype(np.uint16) * 257)
    for protocol in metrics.PROTOCOLS:
        eight, sixteen = metrics.score_pair(gt8, pred8, protocol, 8), metrics.score_pair(gt16, pred16, protocol, 16)
        for name, value in eight.items():
            assert sixteen[name] == pytest.approx(value, abs=1e-9), (protocol, name)


def test_crop_border_scores_the_inner_region() -> None:
    gt, pred = _random_pair((50, 60, 3))
    cropped = metrics.score_pair(gt, pred, "dinat", 8, crop_border=4)
    assert cropped == metrics.score_pair(gt[4:-4, 4:-4], pred[4:-4, 4:-4], "dinat", 8)


def test_errors() -> None:
    gt, pred = _random_pair((20, 30, 3))
    with pytest.raises(DinatError, match="size mismatch: ground truth is 30x20, 3 channels, prediction is 30x19"):
        metrics.score_pair(gt, pred[:-1], "dinat", 8)
    with pytest.raises(DinatError, match="1 channel"):
        metrics.score_pair(gt, pred[..., 0], "dinat", 8)
    with pytest.raises(DinatError, match="leaves nothing"):
        metrics.score_pair(gt, pred, "dinat", 8, crop_border=10)
    with pytest.raises(DinatError, match="at least 11x11"):
        metrics.score_pair(gt[:10], pred[:10], "restormer", 8, y_channel=True)
    with pytest.raises(DinatError, match="bit depth 12"):
        metrics.score_pair(gt, pred, "dinat", 12)
    with pytest.raises(UsageError, match="drop --y-channel"):
        metrics.score_pair(gt, pred, "dpdd", 8, y_channel=True)
    with pytest.raises(UsageError, match="unknown protocol"):
        metrics.score_pair(gt, pred, "matlab", 8)
    with pytest.raises(UsageError, match="crop-border"):
        metrics.score_pair(gt, pred, "dinat", 8, crop_border=-1)
