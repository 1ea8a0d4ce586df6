"""The engine on a CUDA GPU: batches, copies that overlap the network, out-of-memory fallback under a
forced memory limit, the float32 retry, and `--device cuda:all`. Skipped where no GPU is visible:
`benchmarks/gpu_check.py` and these tests are what a GPU machine runs first."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from installed import DINAT

from dinat_cli import engine
from dinat_cli.checkpoints import describe
from dinat_cli.descriptor import ModelDescriptor
from dinat_cli.engine import Restorer
from dinat_cli.model import RestoreDiNAT
from dinat_cli.options import EngineOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch on this machine")

PROJECT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """Float32 as float32: TF32 convolutions (cuDNN's default) differ from one algorithm to another."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _small_network() -> ModelDescriptor:
    torch.manual_seed(0)
    return describe(RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True, tlc=True))


def _conv_net(width: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(width, 3, 3, padding=1)
    ).eval()


def _images(count: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((height, width, 3), dtype=np.float32) for _ in range(count)]


def test_a_cuda_batch_restores_each_image_as_alone_and_as_the_cpu_does() -> None:
    descriptor = _small_network()
    images = _images(5, 64, 80)
    with _tf32_off():
        on_cpu = [
            item.pixels for item in Restorer(descriptor, EngineOptions(device="cpu", tile=0)).restore_batch(images)
        ]
        restorer = Restorer(descriptor, EngineOptions(device="cuda", precision="fp32", tile=0, batch=3))
        alone = [restorer.restore(image).pixels for image in images]
        batched = restorer.restore_batch(images)
    for result, single, reference in zip(batched, alone, on_cpu, strict=True):
        assert np.abs(result.pixels - single).max() <= 1e-5
        assert np.abs(result.pixels - reference).max() <= 1e-4


def test_auto_batch_on_cuda_is_from_free_memory() -> None:
    restorer = Restorer(_small_network(), EngineOptions(device="cuda", tile=0))
    assert 1 <= restorer.batch_size(256, 256) <= engine.MAX_AUTO_BATCH == restorer.largest_batch


def test_copies_go_through_pinned_memory_and_a_batch_synchronises_once(monkeypatch) -> None:
    options = EngineOptions(device="cuda", precision="fp16", tile=0, batch=4)
    restorer = Restorer(ModelDescriptor.for_module(_conv_net()), options)
    synchronised = []
    real_synchronize = torch.cuda.Stream.synchronize
    monkeypatch.setattr(torch.cuda.Stream, "synchronize", lambda stream: synchronised.append(real_synchronize(stream)))
    pinned = []
    real_pin = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor, *a: pinned.append(tensor.shape) or real_pin(tensor))
    images = _images(4, 64, 64)
    # Every synchronising operation (a .item(), a blocking copy, an explicit wait) warns in this mode.
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = restorer.restore_batch(images)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    synchronising = [item for item in caught if "synchronizing" in str(item.message).lower()]
    assert len(synchronised) == 1 and len(synchronising) <= 1 and pinned == [(4, 64, 64, 3)]
    assert all(result.precision == "fp16" and not result.retried_fp32 for result in results)


def test_out_of_memory_under_a_forced_limit_halves_the_batch_then_the_tile() -> None:
    # A wide network whose maps take 1 GB each for a 2048x2048 image; the process may use 300 MB more.
    restorer = Restorer(
        ModelDescriptor.for_module(_conv_net(width=64), bytes_per_pixel=1.0),
        EngineOptions(device="cuda", precision="fp32", tile=0, batch=4, tile_overlap=16),
    )
    images = _images(2, 2048, 2048)
    with _tf32_off():
        expected = [restorer.restore(image).pixels for image in images[:1]]
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, 300 * 2**20 / total + torch.cuda.memory_allocated() / total)
        )
        try:
            results = restorer.restore_batch(images)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
    assert all(result.tile is not None for result in results)  # the batch went down to one, then the tile
    # Tiles of a 5-pixel receptive field within 16 px of overlap: the whole image's result.
    assert np.abs(results[0].pixels - expected[0]).max() <= 1e-5


def test_a_non_finite_half_precision_result_is_recomputed_in_float32_for_that_image_only() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        bright = (x.flatten(1).mean(1) > 0.5).view(-1, 1, 1, 1) & torch.is_autocast_enabled("cuda")
        return torch.where(bright, torch.full_like(x, float("inf")), x * 0.5)

    options = EngineOptions(device="cuda", precision="fp16", tile=0, batch=2)
    restorer = Restorer(ModelDescriptor.for_module(torch.nn.Identity()), options)
    restorer.model = forward
    images = [np.full((32, 32, 3), level, np.float32) for level in (0.9, 0.2)]
    results = restorer.restore_batch(images)
    assert [(result.precision, result.retried_fp32) for result in results] == [("fp32", True), ("fp16", False)]
    for result, image in zip(results, images, strict=True):
        assert np.array_equal(result.pixels, image * 0.5)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install '.[ray]')")
def test_cuda_all_restores_on_a_ray_worker_per_gpu(tmp_path: Path) -> None:
    source = PROJECT / "examples" / "noisy"
    local = subprocess.run(
        [*DINAT, "denoise", "--model", "lite-denoise", "--device", "cuda", "--precision", "fp32", source,
         tmp_path / "local", "-q"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    ray = subprocess.run(
        [*DINAT, "denoise", "--model", "lite-denoise", "--device", "cuda:all", "--precision", "fp32", source,
         tmp_path / "ray", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    assert ray.returncode == 0, ray.stderr
    document = json.loads(ray.stdout)
    assert document["summary"]["done"] == len(list(source.glob("*.png")))
    assert ray.stderr.startswith(f"ray: {torch.cuda.device_count()} worker(s)")
    assert document["device"].startswith("cuda")
    for path in (tmp_path / "local").glob("*.png"):
        # One GPU kernel, but cuDNN may pick another algorithm in another process: a level at most.
        local_pixels, ray_pixels = (
            cv2.imread(str(folder / path.name)) for folder in (tmp_path / "local", tmp_path / "ray")
        )
        assert np.abs(local_pixels.astype(int) - ray_pixels).max() <= 1
