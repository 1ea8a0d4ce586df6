"""`dinat eval`: pairing, errors a user can cause, the JSON schema and the reports."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from dinat_cli.cli import app, main
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.evaluation import pair_files, score_pairs

TOLERANCE = 1e-4


def _write(path: Path, pixels: np.ndarray) -> Path:
    """Write RGB (or grey) pixels; OpenCV wants BGR."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels[..., ::-1] if pixels.ndim == 3 else pixels)
    return path


def _image(seed: int, shape=(24, 32, 3), dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def _parse_strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_reproduces_official_values_with_exact_schema(reference_dir) -> None:
    metrics_dir = reference_dir / "metrics"
    result = _invoke("--gt", str(metrics_dir / "gt"), "--pred", str(metrics_dir / "pred"), "--json")
    assert result.exit_code == 0, result.output
    report = _parse_strict(result.stdout)  # stdout holds the JSON and nothing else
    assert list(report) == ["command", "protocol", "count", "images", "mean"]
    assert isinstance(report["command"], str)  # this process's command line (pytest's, in-process)
    assert report["protocol"] == "dinat"
    assert report["count"] == len(report["images"]) == 10
    expected = json.loads((metrics_dir / "expected.json").read_text())["sets"]
    official = {**expected["bits8_y0"]["images"], **expected["bits16_y0"]["images"]}
    for image in report["images"]:
        assert list(image) == ["name", "psnr", "ssim", "gt", "pred"]
        assert image["pred"] == str(metrics_dir / "pred" / Path(image["gt"]).relative_to(metrics_dir / "gt"))
        assert image["psnr"] == pytest.approx(official[image["name"]]["psnr"], abs=TOLERANCE)
        assert image["ssim"] == pytest.approx(official[image["name"]]["ssim"], abs=TOLERANCE)
    assert list(report["mean"]) == ["psnr", "ssim"]
    assert report["mean"]["ssim"] == pytest.approx(np.mean([i["ssim"] for i in official.values()]), abs=TOLERANCE)


def test_y_channel_mean_matches_official_set_mean(reference_dir) -> None:
    metrics_dir = reference_dir / "metrics"
    expected = json.loads((metrics_dir / "expected.json").read_text())["sets"]["bits8_y1"]
    pairs = [pair for pair in pair_files(metrics_dir / "gt", metrics_dir / "pred") if "8bit" in pair.name]
    evaluation = score_pairs(pairs, "dinat", y_channel=True, jobs=2)
    assert evaluation.mean["psnr"] == pytest.approx(expected["mean"]["psnr"], abs=TOLERANCE)
    assert evaluation.mean["ssim"] == pytest.approx(expected["mean"]["ssim"], abs=TOLERANCE)


def test_identical_images_give_inf_in_table_and_null_in_json(tmp_path) -> None:
    _write(tmp_path / "gt" / "a.png", _image(1))
    _write(tmp_path / "pred" / "a.png", _image(1))
    table = _invoke("--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"))
    assert table.exit_code == 0
    assert "inf" in table.stdout
    result = _invoke("--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--json", "--protocol", "dpdd")
    report = _parse_strict(result.stdout)
    gt, pred = str(tmp_path / "gt" / "a.png"), str(tmp_path / "pred" / "a.png")
    assert report["images"] == [{"name": "a.png", "psnr": None, "ssim": 1.0, "mae": 0.0, "gt": gt, "pred": pred}]
    assert report["mean"] == {"psnr": None, "ssim": 1.0, "mae": 0.0}


def test_pairs_by_relative_path_and_stem_across_extensions(tmp_path) -> None:
    for name in ("x/1.png", "x/2.png", "y/1.png"):
        _write(tmp_path / "gt" / name, _image(2))
    for name in ("x/1.bmp", "x/2.png", "y/1.tif"):
        _write(tmp_path / "pred" / name, _image(2))
    pairs = pair_files(tmp_path / "gt", tmp_path / "pred")
    assert [(p.name, p.pred.relative_to(tmp_path / "pred").as_posix()) for p in pairs] == [
        ("x/1.png", "x/1.bmp"),
        ("x/2.png", "x/2.png"),
        ("y/1.png", "y/1.tif"),
    ]


def test_unmatched_files_are_named(tmp_path) -> None:
    _write(tmp_path / "gt" / "a.png", _image(3))
    _write(tmp_path / "gt" / "b.png", _image(3))
    _write(tmp_path / "pred" / "a.png", _image(3))
    _write(tmp_path / "pred" / "c.png", _image(3))
    with pytest.raises(DinatError, match=r"without a prediction: .*gt/b\.png.*without ground truth: .*pred/c\.png"):
        pair_files(tmp_path / "gt", tmp_path / "pred")


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_same_stem_twice_is_ambiguous(tmp_path, side) -> None:
    _write(tmp_path / "gt" / "a.png", _image(4))
    _write(tmp_path / "pred" / "a.png", _image(4))
    _write(tmp_path / side / "a.bmp", _image(4))
    with pytest.raises(UsageError, match="ambiguous names: .*a.bmp and .*a.png have the same stem"):
        pair_files(tmp_path / "gt", tmp_path / "pred")


def test_ambiguous_ground_truth_exits_2_naming_both_files(tmp_path, monkeypatch, capsys) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt / "sub" / "a.png", _image(4))
    _write(gt / "sub" / "a.tif", _image(5))
    _write(pred / "sub" / "a.png", _image(4))
    monkeypatch.setattr(sys, "argv", ["dinat", "eval", "--gt", str(gt), "--pred", str(pred)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: ambiguous names: {gt}/sub/a.png and {gt}/sub/a.tif have the same stem; keep one of them"
    ]


def test_match_order_uses_natural_order(tmp_path) -> None:
    for index in (1, 2, 10):
        _write(tmp_path / "gt" / f"norain-{index}.png", _image(index))
        _write(tmp_path / "pred" / f"rain-{index}.png", _image(index))
    pairs = pair_files(tmp_path / "gt", tmp_path / "pred", match="order")
    assert [(p.name, p.pred.name) for p in pairs] == [
        ("norain-1.png", "rain-1.png"),
        ("norain-2.png", "rain-2.png"),
        ("norain-10.png", "rain-10.png"),
    ]
    assert all(image.scores["psnr"] == float("inf") for image in score_pairs(pairs).images)
    _write(tmp_path / "pred" / "rain-11.png", _image(11))
    with pytest.raises(DinatError, match=r"3 in .*4 in .*rain-11\.png"):
        pair_files(tmp_path / "gt", tmp_path / "pred", match="order")


@pytest.mark.parametrize(
    ("gt", "pred", "message"),
    [
        (_image(5, (24, 32, 3)), _image(5, (24, 30, 3)), "size mismatch"),
        (_image(5, (24, 32, 3)), _image(5, (24, 32)), "size mismatch"),
        (_image(5, (24, 32, 3)), _image(5, (24, 32, 3), np.uint16), "bit depth mismatch"),
    ],
)
def test_incomparable_pairs_name_both_files(tmp_path, gt, pred, message) -> None:
    gt_path, pred_path = _write(tmp_path / "gt" / "a.png", gt), _write(tmp_path / "pred" / "a.png", pred)
    with pytest.raises(DinatError, match=message) as error:
        score_pairs(pair_files(tmp_path / "gt", tmp_path / "pred"))
    assert str(gt_path) in str(error.value) and str(pred_path) in str(error.value)


def test_unreadable_file_is_named(tmp_path) -> None:
    _write(tmp_path / "gt" / "a.png", _image(6))
    broken = tmp_path / "pred" / "a.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DinatError, match=str(broken)):
        score_pairs(pair_files(tmp_path / "gt", tmp_path / "pred"))


def test_grayscale_16bit_files(tmp_path) -> None:
    gt = _image(7, (21, 19), np.uint16)
    pred = np.clip(gt.astype(np.int64) + 300, 0, 65535).astype(np.uint16)
    _write(tmp_path / "gt.png", gt)
    _write(tmp_path / "pred.png", pred)
    result = _invoke("--gt", str(tmp_path / "gt.png"), "--pred", str(tmp_path / "pred.png"), "--json")
    report = _parse_strict(result.stdout)
    mse = np.mean((gt.astype(np.float64) - pred) ** 2)
    assert report["images"][0]["psnr"] == pytest.approx(10 * np.log10(65535**2 / mse), abs=1e-9)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_reports(tmp_path, suffix) -> None:
    _write(tmp_path / "gt" / "a.png", _image(8))
    _write(tmp_path / "pred" / "a.png", _image(9))
    _write(tmp_path / "gt" / "b.png", _image(8))
    _write(tmp_path / "pred" / "b.png", _image(8))
    report = tmp_path / f"scores{suffix}"
    result = _invoke("--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--json", "--report", str(report))
    assert result.exit_code == 0
    printed = _parse_strict(result.stdout)
    if suffix == ".json":
        assert _parse_strict(report.read_text()) == printed
    else:
        rows = list(csv.reader(report.open()))
        assert rows[0] == ["name", "psnr", "ssim", "gt", "pred"]
        assert rows[1][3:] == [str(tmp_path / "gt" / "a.png"), str(tmp_path / "pred" / "a.png")]
        assert [row[0] for row in rows[1:]] == ["a.png", "b.png", "mean"]
        assert float(rows[1][1]) == printed["images"][0]["psnr"]
        assert rows[2][1] == rows[3][1] == "inf"


def test_bad_options_are_usage_errors(tmp_path) -> None:
    _write(tmp_path / "gt" / "a.png", _image(10))
    _write(tmp_path / "pred" / "a.png", _image(10))
    gt, pred = str(tmp_path / "gt"), str(tmp_path / "pred")
    for extra, message in (
        (["--report", str(tmp_path / "r.txt")], ".csv, .json or .html"),
        (["--protocol", "dpdd", "--y-channel"], "drop --y-channel"),
    ):
        result = _invoke("--gt", gt, "--pred", pred, *extra)
        assert isinstance(result.exception, DinatError) and result.exception.exit_code == 2
        assert message in str(result.exception)
    assert _invoke("--gt", gt, "--pred", pred, "--protocol", "matlab").exit_code == 2


def test_help_shows_examples() -> None:
    result = CliRunner().invoke(app, ["eval", "--help"], terminal_width=120)
    assert result.exit_code == 0
    assert "Examples" in result.stdout and "dinat eval --gt" in result.stdout


def test_entry_point_reports_user_errors_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    _write(tmp_path / "gt" / "a.png", _image(11))
    _write(tmp_path / "pred" / "b.png", _image(11))
    monkeypatch.setattr(sys, "argv", ["dinat", "eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "unmatched files" in captured.err
    assert "Traceback" not in captured.err
