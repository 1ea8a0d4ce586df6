"""`dinat report`: JSON reports of shards and reruns merged into one page and one report, each file once."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from installed import DINAT
from small_model import save_checkpoint

from dinat_cli import merging
from dinat_cli.errors import UsageError
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.pipeline import RestoreRequest, restore_files
from dinat_cli.planning import Shard


def _row(name: str, status: str, **extra: object) -> dict[str, object]:
    return {"name": name, "output": f"/out/{name}", "status": status, "seconds": 1.0, **extra}


def _run(shard: str | None, rows: list[dict], not_started: int = 0, seconds: float = 2.0) -> dict[str, object]:
    return {
        "task": "deblur",
        "weights": "w.pth",
        "model": None,
        "device": "cpu",
        "precision": "fp32",
        "kernels": "attention torch",
        "shard": shard,
        "summary": {"not_started": not_started, "seconds": seconds},
        "files": rows,
    }


def test_a_later_done_wins_and_each_file_counts_once() -> None:
    first = _run("0/2", [_row("a.png", "done", psnr=30.0), _row("b.png", "failed", error="broken")], not_started=1)
    other = _run("1/2", [_row("c.png", "done", psnr=20.0), _row("d.png", "done", psnr=None)])
    # The rerun of shard 0: a.png exists (skipped), b.png is done now, e.png still fails, nothing left over.
    rerun = _run("0/2", [_row("a.png", "skipped"), _row("b.png", "done", psnr=25.0), _row("e.png", "failed")])
    merged = merging.merge([first, other, rerun])
    rows = {row["name"]: row for row in merged["files"]}
    assert list(rows) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert rows["a.png"] == first["files"][0]  # done stays done: the rerun skipped it
    assert rows["b.png"] == rerun["files"][1]  # the later done wins over the failure
    summary = merged["summary"]
    assert (summary["planned"], summary["done"], summary["skipped"], summary["failed"]) == (5, 4, 0, 1)
    assert summary["not_started"] == 0  # the last run of shard 0 started everything
    assert (summary["runs"], summary["seconds"]) == (3, 6.0)
    assert summary["mean"] == {"psnr": None}  # d.png's PSNR is inf (JSON null): so is the mean
    merged_without_d = merging.merge([first, rerun])
    assert merged_without_d["summary"]["mean"]["psnr"] == pytest.approx((30.0 + 25.0) / 2)
    assert merged["shard"] == "0/2, 1/2" and merged["device"] == "cpu"
    assert merging.merge([first, _run("1/2", [], seconds=1.0) | {"device": "cuda"}])["device"] == "cpu; cuda"


def test_a_later_failure_leaves_a_done_file_done() -> None:
    merged = merging.merge([_run(None, [_row("a.png", "done", psnr=30.0)]), _run(None, [_row("a.png", "failed")])])
    assert [row["status"] for row in merged["files"]] == ["done"]


def test_eval_reports_merge_by_name_and_restore_reports_do_not_mix_with_them() -> None:
    one = {"protocol": "dinat", "count": 1, "images": [{"name": "a.png", "psnr": 20.0, "ssim": 0.5}], "mean": {}}
    two = {"protocol": "dinat", "count": 1, "images": [{"name": "b.png", "psnr": 30.0, "ssim": 0.7}], "mean": {}}
    merged = merging.merge([one, two])
    assert merged["count"] == 2 and merged["mean"] == {"psnr": 25.0, "ssim": pytest.approx(0.6)}
    with pytest.raises(UsageError, match="cannot merge a restore report with a `dinat eval` report"):
        merging.merge([one, _run(None, [])])


def test_report_files_that_are_not_reports_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match=r"bad\.json: not a JSON report"):
        merging.read_report(tmp_path / "bad.json")
    with pytest.raises(UsageError, match=r"list\.json: not a dinat report"):
        merging.read_report(tmp_path / "list.json")
    with pytest.raises(UsageError, match=r"missing\.json: cannot read \(No such file or directory\)"):
        merging.read_report(tmp_path / "missing.json")


def test_the_command_merges_two_shards_and_a_rerun_into_one_page_and_one_report(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "net.pth")
    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c", "d"):
        cv2.imwrite(str(source / f"{name}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    broken = sorted(source.iterdir())[0]
    saved = broken.read_bytes()
    broken.write_bytes(b"broken")
    options = EngineOptions(device="cpu")
    documents = []
    for index, shard in enumerate(["0/2", "1/2", "0/2"]):
        if index == 2:
            broken.write_bytes(saved)  # mended: the rerun of its shard restores it
        report = tmp_path / f"run{index}.json"
        request = RestoreRequest(
            "deblur",
            source,
            tmp_path / "out",
            ModelSource(checkpoint),
            options,
            shard=Shard.parse(shard),
            report=report,
        )
        restore_files(request)
        documents.append(report)
    result = subprocess.run(
        [*DINAT, "report", *documents, "-o", tmp_path / "all.json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    merged = json.loads((tmp_path / "all.json").read_text())
    assert [row["name"] for row in merged["files"]] == ["a.png", "b.png", "c.png", "d.png"]
    assert {row["status"] for row in merged["files"]} == {"done"}  # done in one run or another, listed once
    summary = merged["summary"]
    assert (summary["planned"], summary["done"], summary["failed"], summary["runs"]) == (4, 4, 0, 3)
    seconds = [json.loads(path.read_text())["summary"]["seconds"] for path in documents]
    assert math.isclose(summary["seconds"], sum(seconds), abs_tol=0.0015)
    page = subprocess.run(
        [*DINAT, "report", *documents, "-o", tmp_path / "all.html"], capture_output=True, text=True, timeout=120
    )
    assert page.returncode == 0, page.stderr
    text = (tmp_path / "all.html").read_text()
    assert text.count('class="card"') == 4 and "3 runs&#x27; times added up" in text
    assert len(list((tmp_path / "all_files").iterdir())) == 4 * 5
    wrong = subprocess.run([*DINAT, "report", documents[0], "-o", tmp_path / "all.txt"], capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.strip().endswith(
        "--output " + str(tmp_path / "all.txt") + ": use a .csv, .json or .html file name"
    )
