"""`pipeline.restore_files` called from Python: a whole batch in one call, as the restore commands run it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from small_model import save_checkpoint

from dinat_cli import metrics, reports
from dinat_cli.engine import Restorer
from dinat_cli.errors import UsageError
from dinat_cli.io import read_image
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.pipeline import RestoreRequest, restore_files

OPTIONS = EngineOptions(device="cpu", attention="torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "net_g_latest.pth")


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(7)
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "sub" / "b.png"), rng.integers(0, 65536, (32, 40, 3), dtype=np.uint16))
    cv2.imwrite(str(root / "c.png"), rng.integers(0, 256, (24, 40), dtype=np.uint8))
    return root


def test_one_call_restores_a_folder_as_the_engine_restores_each_image_and_returns_the_report(
    tmp_path: Path, checkpoint: Path
) -> None:
    source, out, gt = _folder(tmp_path / "in"), tmp_path / "out", tmp_path / "gt"
    (gt / "sub").mkdir(parents=True)  # c.png has no ground truth
    cv2.imwrite(str(gt / "a.bmp"), cv2.imread(str(source / "a.png")))
    shutil.copy(source / "sub" / "b.png", gt / "sub" / "b.png")
    request = RestoreRequest(
        "derain", source, out, ModelSource(checkpoint), OPTIONS, gt=gt, report=tmp_path / "report.json"
    )
    started, finished = [], []
    run = restore_files(request, on_start=lambda *start: started.append(start), on_result=finished.append)

    restorer = Restorer.load(ModelSource(checkpoint), OPTIONS)
    for name in ("a.png", "sub/b.png", "c.png"):
        image = read_image(source / name)
        expected = image.with_float_pixels(restorer.restore(image.to_float()).pixels).pixels
        np.testing.assert_array_equal(read_image(out / name).pixels, expected)

    assert started == [(3, None)] and sorted(item.name for item in finished) == ["a.png", "c.png", "sub/b.png"]
    document = run.document
    keys = ["task", "command", "weights", "weights_sha256", "model", "device", "precision", "kernels", "shard"]
    assert list(document) == [*keys, "summary", "files"]
    assert document["command"] is None  # a run from Python; the command line records itself
    assert document["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert document["kernels"] == restorer.kernels.describe()  # what ran: --attention auto resolved
    assert document["task"] == "derain" and document["weights"] == str(checkpoint) and document["model"] is None
    assert (document["device"], document["precision"], document["shard"]) == ("cpu", "fp32", None)
    assert [row["name"] for row in document["files"]] == ["a.png", "c.png", "sub/b.png"]
    assert {row["status"] for row in document["files"]} == {"done"} and run.result.exit_code == 0
    assert {row["precision"] for row in document["files"]} == {"fp32"}  # the header's name, row by row
    rows = {row["name"]: row for row in document["files"]}
    assert rows["c.png"]["error"] == "no ground truth for c.png" and "psnr" not in rows["c.png"]
    for name, truth in (("a.png", "a.bmp"), ("sub/b.png", "sub/b.png")):  # derain: scored on Y, as in the papers
        reference, output = read_image(gt / truth), read_image(out / name)
        expected = metrics.score_pair(reference.pixels, output.pixels, "dinat", reference.bit_depth, True, 0)
        # OpenCV's filters may sum in another order on another thread: equal to the last bits or so.
        assert rows[name]["psnr"] == pytest.approx(expected["psnr"], rel=1e-12)
        assert rows[name]["ssim"] == pytest.approx(expected["ssim"], rel=1e-12)
        # The input against the same ground truth: what the restoration gained (the HTML report's gain).
        before = metrics.score_pair(
            reference.pixels, read_image(source / name).pixels, "dinat", reference.bit_depth, True, 0
        )
        assert rows[name]["input_psnr"] == pytest.approx(before["psnr"], rel=1e-12)
        assert rows[name]["input_ssim"] == pytest.approx(before["ssim"], rel=1e-12)
        assert rows[name]["input"] == str(source / name)
    assert rows["sub/b.png"]["input_psnr"] == float("inf")  # its ground truth is a copy of the input
    summary = document["summary"]
    assert (summary["planned"], summary["done"], summary["skipped"], summary["failed"]) == (3, 3, 0, 0)
    assert summary["mean"]["psnr"] == pytest.approx((rows["a.png"]["psnr"] + rows["sub/b.png"]["psnr"]) / 2)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(reports.dumps_json(document))

    again = restore_files(request)  # the outputs exist: skipped, and the report says so
    assert again.document["summary"]["skipped"] == 3 and again.result.exit_code == 0


def test_dual_pixel_views_for_a_three_channel_model_are_refused_before_any_output(
    tmp_path: Path, checkpoint: Path
) -> None:
    source = _folder(tmp_path / "in")
    request = RestoreRequest("defocus", source, tmp_path / "out", ModelSource(checkpoint), OPTIONS, dual_pixel=True)
    with pytest.raises(UsageError, match="not a folder with left/right view sub-folders"):
        restore_files(request)
    (source / "inputL").mkdir()
    (source / "inputR").mkdir()
    for side in ("inputL", "inputR"):
        cv2.imwrite(str(source / side / "x.png"), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(UsageError, match=r"--dual-pixel needs a dual-pixel model \(6 input channels\); .* takes 3"):
        restore_files(request)
    assert not (tmp_path / "out").exists()
