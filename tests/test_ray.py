"""Restoring on Ray workers: the same files as a local run, and workers that die mid-run.

Each test that runs Ray starts a local instance with two CPU workers (about ten seconds
on two cores), so there are few of them and their folders are small.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from installed import DINAT
from small_model import save_checkpoint
from test_video import make_clip

from dinat_cli.errors import UsageError
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.runners.ray import ClusterOptions, RayRunner

# Compiled attention costs every new process, each restarted worker included, a warm-up of
# seconds; these tests are about distribution, so attention runs eagerly.
EAGER = ("--attention", "torch")

# Run as a script, so that Ray ships this worker class to its processes by value.
DYING_DINAT = """
import os
import sys

from dinat_cli.runners import ray as ray_runner
from dinat_cli.cli import main

MARKER = os.environ["DINAT_TEST_MARKER"]


class DyingWorker(ray_runner._Worker):
    '''Dies as a killed process does, half a file written: on the third file of the first
    worker to get there, and on every try of poison.png.'''

    def restore(self, job, scoring):
        self.seen = getattr(self, "seen", 0) + 1
        if job.name == "poison.png" or (self.seen == 3 and first_death()):
            job.output.with_name(f".{job.output.name}.tmp-0dead0ff").write_bytes(b"half an image")
            os._exit(1)
        return super().restore(job, scoring)


def first_death():
    try:
        open(MARKER, "x").close()
    except FileExistsError:
        return False
    return True


ray_runner._Worker = DyingWorker
ray_runner.MAX_ATTEMPTS = 2  # one restart less to wait for than the default 3
sys.argv[0] = "dinat"
main()
"""


# Run as a script, as DYING_DINAT: in every worker the disk is full from the third file on.
FULL_DISK_DINAT = """
import errno
import os
import sys
from pathlib import Path

from dinat_cli.runners import ray as ray_runner
from dinat_cli.cli import main


class FullDiskWorker(ray_runner._Worker):
    def restore(self, job, scoring):
        if job.name >= "f02.png":
            os.replace = refuse
        return super().restore(job, scoring)


def refuse(source, target):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


ray_runner._Worker = FullDiskWorker
sys.argv[0] = "dinat"
main()
"""


# Run as a script, in a folder of its own (see `run`): one batch from Python through each runner.
BOTH_RUNNERS = """
import json
import sys
from pathlib import Path

from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.pipeline import RestoreRequest, restore_files
from dinat_cli.runners.ray import ClusterOptions

source, weights, out, documents = map(Path, sys.argv[1:])
options = EngineOptions(device="cpu", attention="torch")
runs = {}
for name, cluster in (("local", None), ("ray", ClusterOptions(workers=2, device="cpu"))):
    request = RestoreRequest("denoise", source, out / name, ModelSource(weights), options, cluster=cluster)
    runs[name] = restore_files(request).document
documents.write_text(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def ray_installed() -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.fail("Ray is not installed: pip install '.[test]' (or '.[ray]')", pytrace=False)


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Started in `cwd`, not the clone: Ray workers put the driver's working directory on
    their sys.path, where the clone's source folder would shadow the installed package."""
    command = [*map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "net_g_latest.pth")


def _folder(root: Path, names: list[str], size: tuple[int, int] = (40, 48)) -> Path:
    rng = np.random.default_rng(2)
    for index, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if index % 3 == 1:  # 16-bit
            cv2.imwrite(str(root / name), rng.integers(0, 65536, (*size, 3), dtype=np.uint16))
        else:
            cv2.imwrite(str(root / name), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return root


def _outputs(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(".dinat.lock")
    }


def test_two_ray_workers_write_the_same_bytes_as_a_local_run(
    tmp_path: Path, checkpoint: Path, ray_installed: None
) -> None:
    source = _folder(tmp_path / "in", ["a.png", "b.png", "sub/c.png", "d.png"], size=(32, 40))
    # A clip of four segments, keyframes every 4 frames, B-frames: both workers restore some of them.
    make_clip(source / "clip.mp4", frames=16, encoder={"g": "4", "bf": "2"}, audio=False)
    video = ("--video-codec", "ffv1", "--ext", "mkv", "--segment-frames", "4")
    # torch's float32 sums depend on how many threads split them: one thread, as each worker has.
    local = run(
        *DINAT, "deblur", "--weights", checkpoint, source, tmp_path / "local", "-q", *EAGER, *video,
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    ray = run(
        *DINAT, "deblur", "--weights", checkpoint, source, tmp_path / "ray", "--workers", "2", "--json",
        *EAGER, *video, cwd=tmp_path,
    )  # fmt: skip
    assert ray.returncode == 0, ray.stderr
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local") and len(_outputs(tmp_path / "ray")) == 5

    document = json.loads(ray.stdout)  # Ray printed nothing of its own on stdout
    assert document["summary"]["done"] == 5 and document["summary"]["retried"] == 0
    assert [row["name"] for row in document["files"]] == ["a.png", "b.png", "clip.mp4", "d.png", "sub/c.png"]
    clip = next(row for row in document["files"] if row["name"] == "clip.mp4")
    assert (clip["frames"], clip["restored_frames"]) == (16, 16)
    # Its segments went to both workers, each with its one model (a row names the workers that wrote it).
    assert len(set(clip["worker"].split(", "))) == 2
    assert {row["worker"] for row in document["files"] if row is not clip} <= set(clip["worker"].split(", "))
    lines = ray.stderr.strip().splitlines()
    assert lines[0].startswith("ray: 2 worker(s) on 1 machine(s)")
    assert all(re.match(r"done |\d+ planned: ", line) for line in lines[1:]), ray.stderr


def test_the_pipeline_from_python_writes_the_same_bytes_through_the_local_and_the_ray_runner(
    tmp_path: Path, checkpoint: Path, ray_installed: None
) -> None:
    # One file more than a worker takes at once: both workers restore some.
    names = ["a.png", "b.png", "d.png", "sub/c.png"]
    source = _folder(tmp_path / "in", names, size=(32, 40))
    script, documents = tmp_path / "both_runners.py", tmp_path / "documents.json"
    script.write_text(BOTH_RUNNERS)
    # One torch thread in this process, as each of the two workers has on two cores.
    result = run(
        sys.executable, script, source, checkpoint, tmp_path / "out", documents,
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    local, ray = _outputs(tmp_path / "out" / "local"), _outputs(tmp_path / "out" / "ray")
    assert local == ray and sorted(ray) == names

    runs = json.loads(documents.read_text())
    for document in runs.values():  # one engine description, one name for its precision
        assert (document["device"], document["precision"]) == ("cpu", "fp32")
        assert [(row["name"], row["status"], row["precision"]) for row in document["files"]] == [
            (name, "done", "fp32") for name in names
        ]
    assert len({row["worker"] for row in runs["ray"]["files"]}) == 2
    assert not any("worker" in row for row in runs["local"]["files"])


def test_workers_that_die_mid_run_lose_no_file_and_never_fake_one(
    tmp_path: Path, checkpoint: Path, ray_installed: None
) -> None:
    names = [f"img{index}.png" for index in range(5)] + ["poison.png"]
    source, out = _folder(tmp_path / "in", names, size=(24, 32)), tmp_path / "out"
    script = tmp_path / "dying_dinat.py"
    script.write_text(DYING_DINAT)
    result = run(
        sys.executable, script, "denoise", "--weights", checkpoint, source, out, "--workers", "2",
        "--report", tmp_path / "r.json",
        *EAGER, cwd=tmp_path, env={"DINAT_TEST_MARKER": str(tmp_path / "died-once")},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert (tmp_path / "died-once").exists()
    lines = result.stderr.strip().splitlines()  # dinat's lines only, none of Ray's
    assert lines[0].startswith("ray: 2 worker(s)") and result.stdout == ""
    assert all(re.match(r"done |failed |\d+ planned: ", line) for line in lines[1:]), result.stderr

    report = json.loads((tmp_path / "r.json").read_text())
    rows = {row["name"]: row for row in report["files"]}
    assert rows["poison.png"]["status"] == "failed" and rows["poison.png"]["attempts"] == 2
    assert "failed  poison.png: its Ray worker died 2 times while restoring it" in result.stderr
    assert all(rows[name]["status"] == "done" for name in names[:-1])
    # The third file's death took the files beside it along: they were sent again, and written.
    assert any(rows[name].get("attempts", 1) > 1 for name in names[:-1])
    assert report["summary"]["failed"] == 1 and report["summary"]["done"] == 5 and report["summary"]["retried"] >= 2

    assert sorted(_outputs(out)) == sorted(names[:-1])
    assert all(cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED) is not None for name in names[:-1])
    assert not [path.name for path in out.iterdir() if ".tmp-" in path.name]


def test_a_full_disk_stops_a_ray_run_as_a_local_one(tmp_path: Path, checkpoint: Path, ray_installed: None) -> None:
    names = [f"f{index:02d}.png" for index in range(24)]
    source, out = _folder(tmp_path / "in", names, size=(24, 32)), tmp_path / "out"
    script = tmp_path / "full_disk_dinat.py"
    script.write_text(FULL_DISK_DINAT)
    result = run(
        sys.executable, script, "denoise", "--weights", checkpoint, source, out, "--workers", "2", "--json",
        *EAGER, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["stopped"].endswith(": cannot write (No space left on device)")
    assert [line for line in result.stderr.splitlines() if line.startswith("stopped")] == [
        f"stopped: {summary['stopped']}; no later file could be written"
    ]
    assert summary["planned"] == 24 and summary["not_started"] > 0 and summary["done"] <= 2
    assert summary["done"] + summary["failed"] + summary["not_started"] == 24
    assert set(_outputs(out)) <= {"f00.png", "f01.png"}
    assert not [path.name for path in out.iterdir() if ".tmp-" in path.name]


def test_without_ray_installed_a_ray_run_exits_2_naming_the_extra(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    source = _folder(tmp_path / "in", ["a.png"])
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = run(
        *DINAT, "deblur", "--weights", checkpoint, source, tmp_path / "out", "--ray",
        cwd=tmp_path, env={"PYTHONPATH": python_path},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Ray is not installed; for --ray, --ray-address, --workers and cuda:all: pip install 'dinat-cli[ray]'"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"workers": 0}, "--workers 0"),
        ({"ray": True, "device": "cuda:1"}, "--device cuda:1: Ray gives each worker its GPU"),
        ({"gpus_per_worker": 1.0, "device": "cpu"}, "does not go with --device cpu"),
        pytest.param(
            {"device": "cuda:all"},
            "--device cuda:all: this machine has no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_bad_ray_options_are_refused_before_ray_starts(options: dict, message: str) -> None:
    asked = {"ray": False, "address": None, "workers": None, "gpus_per_worker": None, "device": "auto", **options}
    with pytest.raises(UsageError, match=re.escape(message)):
        ClusterOptions.requested(**asked)


def test_plain_options_ask_for_no_ray() -> None:
    assert ClusterOptions.requested(ray=False, address=None, workers=None, gpus_per_worker=None, device="cpu") is None


def test_an_address_where_nothing_listens_is_refused_at_once(checkpoint: Path, ray_installed: None) -> None:
    with (
        pytest.raises(UsageError, match="--ray-address 127.0.0.1:9: no Ray cluster answers there"),
        RayRunner.start(ModelSource(checkpoint), EngineOptions(), ClusterOptions(address="127.0.0.1:9")),
    ):
        pass
