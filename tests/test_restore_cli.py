"""The restore commands end to end, as a shell script or cron job runs them."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from code_running_pickle import CodeRunningPayload
from installed import DINAT
from PIL import Image
from small_model import random_small_model, save_checkpoint

from dinat_cli.output_folder import output_lock


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DINAT, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "net_g_latest.pth"
    return save_checkpoint(path)


@pytest.fixture(scope="module")
def dual_pixel_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "dpdd.pth"
    return save_checkpoint(path, inp_channels=6, dual_pixel_task=True)


def _messy_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "photo.png"), rng.integers(0, 256, (56, 72, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "deep.png"), rng.integers(0, 65536, (48, 40, 3), dtype=np.uint16))
    cv2.imwrite(str(root / "gray.png"), rng.integers(0, 256, (40, 33), dtype=np.uint8))
    cv2.imwrite(str(root / "alpha.png"), rng.integers(0, 256, (32, 48, 4), dtype=np.uint8))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    upright = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    rotated = Image.fromarray(np.rot90(upright, k=1).copy())  # stored sideways...
    exif = rotated.getexif()
    exif[0x0112] = 6  # ...with the tag that turns it upright again
    rotated.save(root / "sub" / "rotated.jpg", exif=exif, quality=95)
    return root


def test_messy_folder_restores_what_it_can_and_reports_the_rest(tmp_path: Path, checkpoint: Path) -> None:
    source = _messy_folder(tmp_path / "in")
    out = tmp_path / "out"
    result = run_cli("deblur", "--weights", checkpoint, source, out, "--report", tmp_path / "report.json")
    assert result.returncode == 1, result.stderr
    assert "corrupt.png" in result.stderr and "empty.jpg" in result.stderr
    assert "Traceback" not in result.stderr
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != ".dinat.lock")
    assert produced == ["alpha.png", "deep.png", "gray.png", "photo.png", "sub/rotated.jpg"]

    deep = cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (48, 40, 3)
    gray = cv2.imread(str(out / "gray.png"), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (40, 33)
    alpha_in = cv2.imread(str(source / "alpha.png"), cv2.IMREAD_UNCHANGED)[..., 3]
    alpha_out = cv2.imread(str(out / "alpha.png"), cv2.IMREAD_UNCHANGED)
    assert alpha_out.shape == (32, 48, 4) and np.array_equal(alpha_out[..., 3], alpha_in)
    rotated = Image.open(out / "sub" / "rotated.jpg")
    assert rotated.size == (40, 24) and rotated.getexif().get(0x0112, 1) == 1

    report = json.loads((tmp_path / "report.json").read_text())
    statuses = {row["name"]: row["status"] for row in report["files"]}
    assert statuses == {
        "alpha.png": "done",
        "corrupt.png": "failed",
        "deep.png": "done",
        "empty.jpg": "failed",
        "gray.png": "done",
        "photo.png": "done",
        "sub/rotated.jpg": "done",
    }
    assert report["summary"]["done"] == 5 and report["summary"]["failed"] == 2


def test_output_is_the_rounded_network_output(tmp_path: Path, checkpoint: Path) -> None:
    image = np.random.default_rng(3).integers(0, 256, (61, 75, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image[..., ::-1])
    result = run_cli("denoise", "--weights", checkpoint, tmp_path / "x.png", tmp_path / "y.png")
    assert result.returncode == 0, result.stderr
    model = random_small_model(tlc=True)
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = torch.nn.functional.pad(x, (0, 5, 0, 3), mode="reflect")
    with torch.inference_mode():
        expected = model(x)[0, :, :61, :75].permute(1, 2, 0).clamp(0, 1).mul(255).round().numpy()
    produced = cv2.imread(str(tmp_path / "y.png"))[..., ::-1].astype(np.float32)
    assert np.abs(produced - expected).max() <= 1


def _clean_folder(root: Path, count: int = 3, size: tuple[int, int] = (40, 48)) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(root / f"img{index}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return root


def test_second_run_skips_finished_outputs_and_overwrite_redoes_them(tmp_path: Path, checkpoint: Path) -> None:
    source, out = _clean_folder(tmp_path / "in"), tmp_path / "out"
    assert run_cli("derain", "--weights", checkpoint, source, out).returncode == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    again = run_cli("derain", "--weights", checkpoint, source, out, "--json")
    assert again.returncode == 0
    summary = json.loads(again.stdout)["summary"]
    assert summary["skipped"] == 3 and summary["done"] == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    redo = run_cli("derain", "--weights", checkpoint, source, out, "--overwrite", "--json", "--quiet")
    assert redo.returncode == 0 and redo.stderr == ""
    assert json.loads(redo.stdout)["summary"]["done"] == 3


def test_ext_suffix_glob_and_csv_report(tmp_path: Path, checkpoint: Path) -> None:
    source = _clean_folder(tmp_path / "in")
    out = tmp_path / "out"
    result = run_cli(
        "deblur",
        "--weights",
        checkpoint,
        f"{source}/img[01].png",
        out,
        "--ext",
        "jpg",
        "--suffix",
        "_sharp",
        "--report",
        tmp_path / "r.csv",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.jpg")) == ["img0_sharp.jpg", "img1_sharp.jpg"]
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("name,output,status,seconds") and len(lines) == 4
    assert lines[-1].startswith("summary,")


def test_gt_scores_each_output_with_the_eval_metrics(tmp_path: Path, checkpoint: Path) -> None:
    source = _clean_folder(tmp_path / "in")
    gt = tmp_path / "gt"
    gt.mkdir()
    for path in source.glob("*.png"):  # same stems, other format
        cv2.imwrite(str(gt / f"{path.stem}.bmp"), cv2.imread(str(path)))
    report = tmp_path / "run.csv"
    result = run_cli(
        "deblur", "--weights", checkpoint, source, tmp_path / "out", "--gt", gt, "--json", "--report", report
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert all("psnr" in row and "ssim" in row for row in document["files"])
    # What ran, for the report: the command as a shell takes it again, and the weights' checksum.
    assert shlex.split(document["command"])[:3] == ["dinat", "deblur", "--weights"]
    assert document["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert "mean PSNR" in result.stderr
    evaluated = run_cli("eval", "--gt", gt, "--pred", tmp_path / "out", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert document["summary"]["mean"]["psnr"] == pytest.approx(json.loads(evaluated.stdout)["mean"]["psnr"], abs=1e-9)
    # The CSV's mean line has a column per score, as the files' lines do.
    lines = {row["name"]: row for row in csv.DictReader(report.open())}
    assert set(lines) == {"img0.png", "img1.png", "img2.png", "mean", "summary"}
    for score in ("psnr", "ssim"):
        assert float(lines["mean"][score]) == document["summary"]["mean"][score]
    assert lines["summary"]["done"] == "3" and "{" not in report.read_text()


def test_ambiguous_ground_truth_is_refused_before_any_output(tmp_path: Path, checkpoint: Path) -> None:
    source, gt = _clean_folder(tmp_path / "in", count=2), tmp_path / "gt"
    gt.mkdir()
    for path in source.glob("*.png"):
        cv2.imwrite(str(gt / path.name), cv2.imread(str(path)))
    cv2.imwrite(str(gt / "img1.tif"), cv2.imread(str(source / "img0.png")))  # which one is img1's?
    result = run_cli("deblur", "--weights", checkpoint, source, tmp_path / "out", "--gt", gt)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: ambiguous names: {gt}/img1.png and {gt}/img1.tif have the same stem; keep one of them"
    ]
    assert not (tmp_path / "out").exists()


def test_the_report_names_the_precision_as_each_row_does(tmp_path: Path, checkpoint: Path) -> None:
    source = _clean_folder(tmp_path / "in", count=1)
    result = run_cli("deblur", "--weights", checkpoint, source, tmp_path / "out", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["precision"] == "fp32" and [row["precision"] for row in document["files"]] == ["fp32"]


def test_missing_registry_weights_exit_2_before_touching_the_output(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "name": "gopro",
                        "variant": "gopro",
                        "description": "test entry",
                        "sha256": "ab" * 32,
                        "size": 123,
                        "filename": "net_g_latest.pth",
                        "default_for": ["deblur"],
                        "url": "http://127.0.0.1:9/x.pth",
                    }
                ]
            }
        )
    )
    source = _clean_folder(tmp_path / "in", count=1)
    env = {
        "DINAT_REGISTRY": str(registry),
        "DINAT_WEIGHTS_DIR": str(tmp_path / "none"),
        "XDG_CACHE_HOME": str(tmp_path),
    }
    result = run_cli("deblur", source, tmp_path / "out", env=env)
    assert result.returncode == 2
    assert (
        "ab" * 32 in result.stderr and "dinat weights download gopro" in result.stderr and "--weights" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tile", "100"], "--tile 100"),
        (["--precision", "fp64"], "--precision fp64"),
        (["--ext", "gif"], "--ext gif"),
        (["--report", "r.txt"], ".csv, .json or .html"),
        (["--tile", "256", "--tile-overlap", "300"], "at most half the tile, 128 px with --tile 256;"),
        (["--tile-overlap", "200"], "128 px with --tile auto, which may choose 256 px tiles; use a smaller overlap"),
        (["--tile", "512", "--tile-overlap", "300"], "use a smaller overlap or --tile 600 or more"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, checkpoint: Path, args: list[str], message: str) -> None:
    source = _clean_folder(tmp_path / "in", count=1)
    result = run_cli("deblur", "--weights", checkpoint, source, tmp_path / "out", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# Under /proc no file or folder can be made, even by root (tests may run as root, where a
# read-only permission stops nothing): the stand-in for a read-only file system.
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system")


@pytest.mark.parametrize(
    "where, message",
    [
        pytest.param(
            lambda source, tmp: ["/proc/dinat-test-out"],
            "error: output folder /proc/dinat-test-out: cannot create it (No such file or directory)",
            marks=needs_proc,
            id="read-only-output",
        ),
        pytest.param(
            lambda source, tmp: [tmp / "out", "--report", "/proc/dinat-test.json"],
            "error: --report /proc/dinat-test.json: folder /proc: cannot write there (No such file or directory)",
            marks=needs_proc,
            id="read-only-report",
        ),
        pytest.param(
            lambda source, tmp: [source / "img0.png"],
            "error: {source}/img0.png is a file, not a folder: the outputs need a folder",
            id="file-as-output-folder",
        ),
        pytest.param(
            lambda source, tmp: [source],
            "error: {source} is the input folder: the outputs would replace the inputs; add a --suffix",
            id="input-folder-without-suffix",
        ),
    ],
)
def test_unusable_output_locations_exit_2_with_one_line_naming_them(
    tmp_path: Path, checkpoint: Path, where, message: str
) -> None:
    source = _clean_folder(tmp_path / "in", count=2)
    before = {path: path.read_bytes() for path in source.iterdir()}
    result = run_cli("denoise", "--weights", checkpoint, source, *where(source, tmp_path))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message.format(source=source)), line
    assert {path: path.read_bytes() for path in source.iterdir()} == before
    assert not (tmp_path / "out").exists()


def test_the_input_folder_takes_suffixed_outputs_and_a_rerun_skips_them(tmp_path: Path, checkpoint: Path) -> None:
    source = _clean_folder(tmp_path / "in", count=2)
    first = run_cli("denoise", "--weights", checkpoint, source, source, "--suffix", "_dn", "--json")
    assert first.returncode == 0, first.stderr
    assert sorted(path.name for path in source.glob("*.png")) == ["img0.png", "img0_dn.png", "img1.png", "img1_dn.png"]
    assert json.loads(first.stdout)["summary"]["done"] == 2
    again = run_cli("denoise", "--weights", checkpoint, source, source, "--suffix", "_dn", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert (summary["planned"], summary["skipped"], summary["done"]) == (2, 2, 0)
    assert not list(source.glob("*_dn_dn.png"))


# Run as a script: the disk fills up once two outputs are written.
FULL_DISK_DINAT = """
import errno
import os
import sys
from pathlib import Path

from dinat_cli.cli import main

replace = os.replace


def full_from_the_third_file(source, target):
    if Path(target).suffix == ".png" and Path(target).name >= "f02.png":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    replace(source, target)


os.replace = full_from_the_third_file
sys.argv[0] = "dinat"
main()
"""


def test_a_full_disk_stops_the_run_with_one_line_and_the_summary(tmp_path: Path, checkpoint: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    rng = np.random.default_rng(4)
    for index in range(12):
        cv2.imwrite(str(source / f"f{index:02d}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    script = tmp_path / "full_disk_dinat.py"
    script.write_text(FULL_DISK_DINAT)
    result = subprocess.run(
        [sys.executable, script, "denoise", "--weights", checkpoint, source, out, "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    reason = f"{out}/f02.png: cannot write (No space left on device)"
    lines = result.stderr.strip().splitlines()
    assert f"failed  f02.png: {reason}" in lines and "Traceback" not in result.stderr
    assert [line for line in lines if line.startswith("stopped")] == [
        f"stopped: {reason}; no later file could be written"
    ]
    summary = json.loads(result.stdout)["summary"]
    assert summary["stopped"] == reason and summary["planned"] == 12 and summary["done"] == 2
    assert summary["not_started"] >= 12 - 7  # only the files read ahead went through the model
    assert lines[-1].startswith(f"12 planned: restored 2, skipped 0, failed {summary['failed']}, not started ")
    assert sorted(path.name for path in out.iterdir()) == [".dinat.lock", "f00.png", "f01.png"]


def test_a_raw_pickle_is_refused_in_one_line_and_never_run(tmp_path: Path) -> None:
    source = _clean_folder(tmp_path / "in", count=1)
    marker, weights = tmp_path / "code_ran", tmp_path / "weights.pkl"
    weights.write_bytes(pickle.dumps(CodeRunningPayload(marker)))
    result = run_cli("denoise", "--weights", weights, source, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {weights}: refused, the file holds raw pickle data, which can carry code that runs when loaded; "
        "dinat does not run it (use a torch.save checkpoint or a .safetensors file)"
    ]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_checkpoint_exits_2(tmp_path: Path) -> None:
    source = _clean_folder(tmp_path / "in", count=1)
    bogus = tmp_path / "weights.pth"
    bogus.write_text("definitely not weights")
    result = run_cli("deblur", "--weights", bogus, source, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {bogus}: not a PyTorch or safetensors checkpoint"]


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    source, out = _clean_folder(tmp_path / "in", count=1), tmp_path / "out"
    with output_lock(out):
        result = run_cli("deblur", "--weights", checkpoint, source, out)
    assert result.returncode == 2 and "another dinat run is writing there" in result.stderr
    assert not list(out.glob("*.png"))


def test_sigterm_stops_with_130_and_leaves_no_partial_file(tmp_path: Path, checkpoint: Path) -> None:
    source, out = _clean_folder(tmp_path / "in", count=40, size=(96, 128)), tmp_path / "out"
    process = subprocess.Popen(
        [*DINAT, "deblur", "--weights", str(checkpoint), str(source), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    written = list(out.glob("*.png"))
    assert 0 < len(written) < 40
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert all(cv2.imread(str(p)) is not None for p in written)


def test_temporary_files_of_a_killed_run_are_cleaned_up(tmp_path: Path, checkpoint: Path) -> None:
    source, out = _clean_folder(tmp_path / "in", count=1), tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale = [out / ".img0.png.tmp-1a2b3c4d", out / "sub" / ".x.jpg.tmp-00ff00ff"]
    for path in stale:
        path.write_bytes(b"half an image")
    keep = out / ".hidden-user-file"
    keep.write_text("not ours")
    assert run_cli("deblur", "--weights", checkpoint, source, out).returncode == 0
    assert not any(path.exists() for path in stale) and keep.exists()


def test_dual_pixel_pairs_views_and_keeps_16_bit(tmp_path: Path, dual_pixel_checkpoint: Path) -> None:
    rng = np.random.default_rng(5)
    for side in ("inputL", "inputR"):
        (tmp_path / "dp" / side).mkdir(parents=True)
        for name in ("a.png", "b.png"):
            cv2.imwrite(str(tmp_path / "dp" / side / name), rng.integers(0, 65536, (40, 56, 3), dtype=np.uint16))
    result = run_cli("defocus", "--dual-pixel", "--weights", dual_pixel_checkpoint, tmp_path / "dp", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    restored = cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert restored.dtype == np.uint16 and restored.shape == (40, 56, 3)
    (tmp_path / "dp" / "inputR" / "b.png").unlink()
    missing = run_cli("defocus", "--dual-pixel", "--weights", dual_pixel_checkpoint, tmp_path / "dp", tmp_path / "o2")
    assert missing.returncode == 2 and "b.png" in missing.stderr
    wrong = run_cli("defocus", "--weights", dual_pixel_checkpoint, tmp_path / "dp" / "inputL", tmp_path / "o3")
    assert wrong.returncode == 2 and "--dual-pixel" in wrong.stderr


def test_every_command_help_shows_an_example() -> None:
    for command in ("deblur", "defocus", "denoise", "derain"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and f"Example: dinat {command}" in result.stdout


def test_defocus_gt_scores_with_the_dpdd_protocol(tmp_path: Path, checkpoint: Path) -> None:
    source = _clean_folder(tmp_path / "in", count=1)
    result = run_cli("defocus", "--weights", checkpoint, source, tmp_path / "out", "--gt", source, "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)["files"][0]
    assert {"psnr", "ssim", "mae"} <= scores.keys()
