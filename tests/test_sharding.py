"""--shard K/N: N runs that together restore every file exactly once, side by side on one output folder."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from installed import DINAT

from dinat_cli import planning
from dinat_cli.errors import UsageError
from dinat_cli.model import RestoreDiNAT
from dinat_cli.output_folder import output_lock
from dinat_cli.planning import Shard

SMALL = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "chan_adapt": True}
EAGER = ("--attention", "torch")


def _names(count: int) -> list[str]:
    return [f"{'deep/' if index % 4 == 0 else ''}frame{index:03d}.png" for index in range(count)]


def _touch_images(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # planning never decodes
    return root


@pytest.mark.parametrize("spec, expected", [("0/3", Shard(0, 3)), ("2/3", Shard(2, 3)), ("0/1", Shard(0, 1))])
def test_shard_specs_count_from_zero(spec: str, expected: Shard) -> None:
    assert Shard.parse(spec) == expected and str(expected) == spec


@pytest.mark.parametrize("spec", ["3/3", "-1/3", "1", "1/0", "a/b", "1/3/5", ""])
def test_bad_shard_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(spec)


def test_three_shards_cover_every_file_exactly_once_whatever_the_order(tmp_path: Path) -> None:
    names = _names(90)
    jobs = planning.plan_jobs(str(_touch_images(tmp_path / "in", names)), tmp_path / "out")
    shards = [Shard(index, 3).select(jobs) for index in range(3)]
    chosen = [job.name for part in shards for job in part]
    assert sorted(chosen) == sorted(names) and len(chosen) == len(set(chosen))
    assert all(len(part) > 15 for part in shards)  # a hash, not the first N files

    shuffled = random.Random(0).sample(jobs, len(jobs))
    assert [sorted(job.name for job in Shard(index, 3).select(shuffled)) for index in range(3)] == [
        sorted(job.name for job in part) for part in shards
    ]
    # New files join a shard; the files already there stay where they were.
    more = planning.plan_jobs(str(_touch_images(tmp_path / "in", _names(120))), tmp_path / "out")
    for index, part in enumerate(shards):
        assert {job.name for job in part} <= {job.name for job in Shard(index, 3).select(more)}


def test_shards_lock_side_by_side_but_refuse_a_whole_run_and_a_second_copy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out, Shard(0, 3)), output_lock(out, Shard(1, 3)):
        with pytest.raises(UsageError, match="shard 0/3 is already being written"), output_lock(out, Shard(0, 3)):
            pass
        with pytest.raises(UsageError, match="another dinat run is writing there"), output_lock(out):
            pass
    refused = pytest.raises(UsageError, match="another dinat run is writing there")
    with output_lock(out), refused, output_lock(out, Shard(2, 3)):
        pass


def test_shards_of_another_count_are_refused_while_one_holds_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out, Shard(0, 2)):
        with (
            pytest.raises(UsageError, match=r"shards of 2 are writing there, .*--shard 0/3.* use the same N"),
            output_lock(out, Shard(0, 3)),
        ):
            pass
        with output_lock(out, Shard(1, 2)):  # the same count still runs beside it
            pass
    with output_lock(out, Shard(0, 3)):  # once the shards of 2 are done, 3 may go
        pass


def test_a_shard_removes_only_the_temporary_files_of_its_own_outputs(tmp_path: Path) -> None:
    names = _names(12)
    jobs = planning.plan_jobs(str(_touch_images(tmp_path / "in", names)), tmp_path / "out")
    mine, theirs = Shard(0, 2).select(jobs), Shard(1, 2).select(jobs)
    stale = {job: job.output.with_name(f".{job.output.name}.tmp-0badf00d") for job in jobs}
    for path in stale.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an image")
    with output_lock(tmp_path / "out", Shard(0, 2), mine):
        assert not any(stale[job].exists() for job in mine)
        assert all(stale[job].exists() for job in theirs)  # perhaps in flight in shard 1/2


def _dinat(*args: str | Path) -> list[str]:
    return [*DINAT, *map(str, args)]


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = RestoreDiNAT(**SMALL).eval()
    torch.save({"params": model.state_dict()}, path)
    return path


def test_three_shard_runs_at_once_restore_each_file_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    source = tmp_path / "in"
    for name in _names(6):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(source / name), rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    weights, out = _checkpoint(tmp_path / "w.pth"), tmp_path / "out"
    runs = [
        subprocess.Popen(
            # Attention runs eagerly: compiled kernels would cost each process a warm-up.
            _dinat("deblur", "--weights", weights, source, out, "--shard", f"{index}/3", "--json", "-q", *EAGER),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(3)
    ]
    documents = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        documents.append(json.loads(stdout))
    restored = [row["name"] for document in documents for row in document["files"]]
    assert sorted(restored) == sorted(_names(6))
    assert all(row["status"] == "done" for document in documents for row in document["files"])
    assert [document["shard"] for document in documents] == ["0/3", "1/3", "2/3"]
    assert all(cv2.imread(str(out / name)) is not None for name in restored)


def test_a_bad_shard_exits_2_with_one_line_before_any_output(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    cv2.imwrite(str(source / "a.png"), np.zeros((8, 8, 3), np.uint8))
    result = subprocess.run(
        _dinat("deblur", "--weights", _checkpoint(tmp_path / "w.pth"), source, tmp_path / "out", "--shard", "3/3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--shard 3/3" in result.stderr and not (tmp_path / "out").exists()
