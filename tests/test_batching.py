"""Batches: images of one size (or tiles of one image) through the network together, with the
same results as one by one, out of memory halving the batch before the tile, and the float32
retry for the images that need it only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinat_cli import cpu, engine
from dinat_cli.checkpoints import describe
from dinat_cli.descriptor import ModelDescriptor
from dinat_cli.engine import Restorer
from dinat_cli.errors import UsageError
from dinat_cli.model import RestoreDiNAT
from dinat_cli.options import EngineOptions

IDENTITY = ModelDescriptor.for_module(torch.nn.Identity())


def _restorer(descriptor: ModelDescriptor, **options: object) -> Restorer:
    return Restorer(descriptor, EngineOptions.parse(**options))


def _small_network() -> ModelDescriptor:
    torch.manual_seed(0)
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True, tlc=True)
    return describe(model)


def _images(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((height, width, 3), dtype=np.float32) for _ in range(count)]


def test_a_batch_restores_each_image_as_it_is_restored_alone() -> None:
    descriptor = _small_network()
    images = _images(5, 40, 48)
    alone = _restorer(descriptor, device="cpu", tile=0, batch=1)
    batched = _restorer(descriptor, device="cpu", tile=0, batch=3)  # passes of 3 and 2
    expected = [alone.restore(image).pixels for image in images]
    results = batched.restore_batch(images)
    assert batched.batch_size(40, 48) == 3
    assert len(results) == 5
    for result, reference in zip(results, expected, strict=True):
        assert result.pixels.shape == (40, 48, 3) and result.precision == "fp32" and not result.retried_fp32
        assert np.abs(result.pixels - reference).max() <= 1e-5
    assert np.array_equal(batched.restore(images[0]).pixels, batched.restore_batch([images[0]])[0].pixels)


def test_tiles_of_one_image_go_through_in_batches_with_the_tiles_one_by_one_result() -> None:
    torch.manual_seed(0)
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, dilations=[8, 4, 2, 1], kernel_size=5)
    [image] = _images(1, 260, 300, seed=1)
    one = _restorer(describe(model), device="cpu", tile=200, tile_overlap=32, batch=1).restore(image)
    four = _restorer(describe(model), device="cpu", tile=200, tile_overlap=32, batch=4)
    assert four.batch_size(260, 300) == 1  # a tiled image goes alone; its tiles together
    result = four.restore(image)
    assert result.tile == one.tile == 200
    assert np.abs(result.pixels - one.pixels).max() <= 1e-5


def _failing_above(inputs: int, width: int = 10**9):
    """A network that runs out of memory on more than `inputs` inputs or wider ones; it halves its input."""
    seen: list[tuple[int, int]] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append((x.shape[0], x.shape[-1]))
        if x.shape[0] > inputs or x.shape[-1] > width:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 0.5

    return forward, seen


def test_out_of_memory_halves_the_batch_and_keeps_it_for_the_rest() -> None:
    restorer = _restorer(IDENTITY, device="cpu", tile=0, batch=8)
    restorer.model, seen = _failing_above(2)
    images = _images(5, 16, 24)
    results = restorer.restore_batch(images)
    assert seen == [(5, 24), (2, 24), (2, 24), (1, 24)]
    assert all(result.tile is None for result in results)
    for result, image in zip(results, images, strict=True):
        assert np.array_equal(result.pixels, image * 0.5)


def test_out_of_memory_halves_the_batch_down_to_one_before_the_tile() -> None:
    restorer = _restorer(IDENTITY, device="cpu", tile=0, batch=4)
    restorer.model, seen = _failing_above(1, width=300)
    images = _images(2, 560, 600)
    results = restorer.restore_batch(images)
    # Two whole images, then one; then the tile halves (600 -> 296) and stays halved for the second image.
    assert seen[:3] == [(2, 600), (1, 600), (1, 296)]
    assert {width for _, width in seen[2:]} == {296} and {count for count, _ in seen[1:]} == {1}
    assert [result.tile for result in results] == [296, 296]
    for result, image in zip(results, images, strict=True):
        assert np.abs(result.pixels - image * 0.5).max() <= 1e-6


def test_out_of_memory_halves_the_batch_of_tiles_before_the_tile() -> None:
    restorer = _restorer(IDENTITY, device="cpu", tile=256, tile_overlap=64, batch=8)
    restorer.model, seen = _failing_above(2)
    [image] = _images(1, 500, 500)
    result = restorer.restore(image)
    # 3 x 3 tiles: 8 at once fail, then 4, then passes of 2 (the last one alone).
    assert [count for count, _ in seen] == [8, 4, 2, 2, 2, 2, 1]
    assert result.tile == 256 and np.abs(result.pixels - image * 0.5).max() <= 1e-6


def test_only_the_images_with_a_non_finite_half_precision_result_are_recomputed_in_float32(monkeypatch) -> None:
    monkeypatch.setattr(cpu, "native_arithmetic", lambda: {"bf16": True, "fp16": True})
    passes = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        half = torch.is_autocast_enabled("cpu")
        passes.append((x.shape[0], half))
        # Bright images overflow in half precision.
        overflow = (x.flatten(1).mean(1) > 0.5).view(-1, 1, 1, 1) & half
        return torch.where(overflow, torch.full_like(x, float("inf")), x * 0.5)

    restorer = _restorer(IDENTITY, device="cpu", precision="bf16", tile=0, batch=3)
    restorer.model = forward
    images = [np.full((16, 16, 3), level, np.float32) for level in (1.0, 0.25, 0.75)]
    results = restorer.restore_batch(images)
    assert passes == [(3, True), (2, False)]
    assert [(result.precision, result.retried_fp32) for result in results] == [
        ("fp32", True),
        ("bf16", False),
        ("fp32", True),
    ]
    for result, image in zip(results, images, strict=True):
        assert np.array_equal(result.pixels, image * 0.5)


def test_auto_batch_is_one_on_cpu_and_fills_free_memory_elsewhere(monkeypatch) -> None:
    descriptor = describe(RestoreDiNAT(dim=48))
    restorer = _restorer(descriptor, device="cpu")
    assert restorer.options.batch is None and restorer.batch_size(720, 1280) == 1 and restorer.largest_batch == 1
    # What a GPU with this much free memory gets (the device is only asked for its type here).
    restorer.device = torch.device("cuda")
    per_image = 720 * 1280 * descriptor.bytes_per_pixel
    monkeypatch.setattr(engine, "free_memory", lambda device: 4.5 * per_image / 0.7)
    assert restorer.batch_size(720, 1280) == 4
    monkeypatch.setattr(engine, "free_memory", lambda device: 1000 * per_image)
    assert restorer.batch_size(720, 1280) == engine.MAX_AUTO_BATCH == restorer.largest_batch
    monkeypatch.setattr(engine, "free_memory", lambda device: 0.5 * per_image)
    assert restorer.auto_tile(720, 1280) > 0 and restorer.batch_size(720, 1280) == 1  # tiled: alone


def test_batch_option() -> None:
    assert EngineOptions.parse(batch="auto").batch is None
    assert EngineOptions.parse(batch="4").batch == 4 and EngineOptions.parse(batch=2).batch == 2
    for spec in ("0", "-1", "many"):
        with pytest.raises(UsageError, match=f"--batch {spec}: expected auto or a number of images >= 1"):
            EngineOptions.parse(batch=spec)


def test_a_batch_of_images_of_different_sizes_is_refused() -> None:
    restorer = _restorer(IDENTITY, device="cpu", tile=0)
    with pytest.raises(ValueError, match="one size"):
        restorer.restore_batch([np.zeros((8, 8, 3), np.float32), np.zeros((8, 16, 3), np.float32)])
