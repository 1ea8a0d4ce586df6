"""The shared engine: tiling exactness, padding, memory back-off, precision fallback."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from dinat_cli import cpu, engine, ops, tile_choice
from dinat_cli.checkpoints import describe
from dinat_cli.choices import parse_tile
from dinat_cli.descriptor import ModelDescriptor
from dinat_cli.engine import Restorer, resolve_device, resolve_precision
from dinat_cli.errors import DinatError, UsageError
from dinat_cli.model import RestoreDiNAT
from dinat_cli.options import EngineOptions
from dinat_cli.tiling import pad_to_multiple, run_tiled, tile_grid, tile_starts

IDENTITY = ModelDescriptor.for_module(torch.nn.Identity())


def _restorer(descriptor: ModelDescriptor, **options: object) -> Restorer:
    return Restorer(descriptor, EngineOptions.parse(**options))


def _conv_net() -> torch.nn.Module:
    """Four 3x3 convolutions: a receptive field of 9 pixels."""
    torch.manual_seed(0)
    layers = []
    for index, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 8), (8, 3)]):
        layers.append(torch.nn.Conv2d(cin, cout, 3, padding=1))
        if index < 3:
            layers.append(torch.nn.GELU())
    return torch.nn.Sequential(*layers).eval()


@pytest.mark.parametrize("tile, overlap", [(256, 64), (264, 48), (320, 40)])
def test_tiled_output_equals_whole_image_for_a_small_receptive_field(tile: int, overlap: int) -> None:
    net = _conv_net()
    x = torch.rand(1, 3, 613, 587)
    with torch.inference_mode():
        whole = run_tiled(net, x, None, overlap)
        tiled = run_tiled(net, x, tile, overlap, batch_size=2)
    assert len(tile_starts(616, tile, overlap)) > 1
    assert (whole - tiled).abs().max().item() <= 1e-6


def test_tiles_cover_evenly_with_at_least_the_overlap() -> None:
    for length in (257, 600, 1024, 4000):
        starts = tile_starts(length, 256, 64)
        assert starts[0] == 0 and starts[-1] == length - 256
        assert all(0 < b - a <= 256 - 64 for a, b in itertools.pairwise(starts))


def test_padding_mirrors_and_crops_back() -> None:
    x = torch.arange(2 * 13 * 10, dtype=torch.float32).reshape(1, 2, 13, 10)
    padded = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (16, 16)
    assert torch.equal(padded[..., 13, :10], x[..., 11, :])  # reflection, not zeros
    identity = run_tiled(lambda t: t, x, None, 0)
    assert torch.equal(identity, x)


def test_restorer_output_is_the_network_output_on_the_padded_image() -> None:
    torch.manual_seed(0)
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True, tlc=True)
    image = np.random.default_rng(0).random((40, 48, 3), dtype=np.float32)
    restored = _restorer(describe(model), device="cpu").restore(image).pixels
    with torch.inference_mode():
        expected = model(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(restored - expected).max() <= 1e-6


def test_the_network_gets_an_image_as_a_true_channels_last_tensor() -> None:
    """A (1, C, H, W) view whose batch stride is C made convolutions run NCHW: the network, a quarter slower."""
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.stride())
        return x

    restorer = _restorer(IDENTITY, device="cpu", tile=0)
    restorer.model = forward
    restorer.restore(np.zeros((48, 40, 3), dtype=np.float32))
    assert seen == [(48 * 40 * 3, 1, 40 * 3, 3)]
    # And so the network's maps are channels-last from the first convolution on.
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    layouts = []
    model.patch_embed.register_forward_hook(
        lambda module, inputs, output: layouts.append(output.is_contiguous(memory_format=torch.channels_last))
    )
    _restorer(describe(model), device="cpu", tile=0).restore(np.zeros((48, 40, 3), dtype=np.float32))
    assert layouts == [True]


def test_out_of_memory_halves_the_tile_and_retries() -> None:
    net = _conv_net()
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[-1])
        if x.shape[-1] > 300:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return net(x)

    restorer = _restorer(IDENTITY, device="cpu", tile=0)
    restorer.model = forward
    image = np.random.default_rng(1).random((560, 600, 3), dtype=np.float32)
    result = restorer.restore(image)
    assert result.tile == 296  # the whole 600 px image failed; half of it, rounded down to a multiple of 8
    assert max(seen) == 600 and result.pixels.shape == image.shape


def test_out_of_memory_at_the_smallest_tile_is_a_clear_error() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 999 bytes")

    restorer = _restorer(IDENTITY, device="cpu", tile=256)
    restorer.model = forward
    with pytest.raises(DinatError, match="out of memory on cpu even with 256 px tiles"):
        restorer.restore(np.zeros((300, 300, 3), dtype=np.float32))


def test_other_runtime_errors_are_not_taken_for_memory() -> None:
    restorer = _restorer(IDENTITY, device="cpu")
    restorer.model = lambda x: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        restorer.restore(np.zeros((8, 8, 3), dtype=np.float32))


@pytest.fixture
def cpu_arithmetic(monkeypatch):
    """Pretend this CPU computes bfloat16 and float16 in hardware, or not, or cannot tell."""

    def pretend(native: bool | None) -> None:
        monkeypatch.setattr(cpu, "native_arithmetic", lambda: {"bf16": native, "fp16": native})

    return pretend


def test_non_finite_half_precision_output_is_recomputed_in_float32(cpu_arithmetic) -> None:
    cpu_arithmetic(True)

    def forward(x: torch.Tensor) -> torch.Tensor:
        half = torch.is_autocast_enabled("cpu")
        return torch.full_like(x, float("inf")) if half else x * 0.5

    restorer = _restorer(IDENTITY, device="cpu", precision="bf16")
    restorer.model = forward
    result = restorer.restore(np.ones((16, 16, 3), dtype=np.float32))
    assert result.retried_fp32 and result.precision == "fp32"
    assert np.all(result.pixels == 0.5)


def test_auto_tile_follows_free_memory(monkeypatch) -> None:
    restorer = _restorer(describe(RestoreDiNAT(dim=48)), device="cpu")
    monkeypatch.setattr(engine, "free_memory", lambda device: 64e9)
    assert restorer.auto_tile(1080, 1920) == 0
    monkeypatch.setattr(engine, "free_memory", lambda device: 4e9)
    tile = restorer.auto_tile(4000, 6000)
    assert tile >= 256 and tile % 8 == 0 and tile * tile * 12_000 <= 0.5 * 4e9
    monkeypatch.setattr(engine, "free_memory", lambda device: 1e6)
    assert restorer.auto_tile(4000, 6000) == 256


@pytest.mark.parametrize("native", [True, None])
def test_16_bit_precision_runs_as_asked_where_the_cpu_computes_it_or_cannot_tell(cpu_arithmetic, native) -> None:
    cpu_arithmetic(native)
    for spec, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        restorer = _restorer(IDENTITY, device="cpu", precision=spec)
        assert restorer.dtype == dtype and restorer.precision_note is None


def test_16_bit_precision_without_cpu_arithmetic_runs_float32_and_says_so(cpu_arithmetic) -> None:
    cpu_arithmetic(False)
    for spec, name in (("bf16", "bfloat16"), ("fp16", "float16")):
        restorer = _restorer(IDENTITY, device="cpu", precision=spec)
        assert restorer.dtype == torch.float32
        assert restorer.precision_note == (
            f"--precision {spec}: this CPU has no {name} arithmetic (it would run many times slower): running float32"
        )
        assert restorer.restore(np.ones((16, 16, 3), dtype=np.float32)).precision == "fp32"
    assert _restorer(IDENTITY, device="cpu", precision="auto").precision_note is None


@pytest.mark.parametrize("spec, expected", [("auto", None), ("0", 0), ("512", 512), ("517", 517), (None, None)])
def test_tile_option(spec, expected) -> None:
    assert parse_tile(spec) == expected


@pytest.mark.parametrize("spec", ["big", "-5"])
def test_bad_tile_option_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match="--tile"):
        parse_tile(spec)


def test_the_network_says_which_tiles_it_runs_exactly() -> None:
    official = describe(RestoreDiNAT(dim=8, chan_adapt=True))
    assert _restorer(official, device="cpu", tile=517).tile == 512  # a whole number of the side multiple
    with pytest.raises(
        UsageError,
        match="--tile 200: smaller tiles change the network's output: its attention spans 252 px; use 0 or >= 256",
    ):
        _restorer(official, device="cpu", tile=200)
    lite = describe(RestoreDiNAT(dim=8, dilations=[8, 4, 2, 1], kernel_size=5))
    assert _restorer(lite, device="cpu", tile=200).tile == 200


def test_an_overlap_over_half_the_tile_is_refused_not_clamped() -> None:
    # Past half the tile, pixels would be computed in three tiles or more along a side.
    with pytest.raises(UsageError, match="--tile-overlap 300: at most half the tile, 256 px with --tile 512"):
        _restorer(IDENTITY, device="cpu", tile=512, tile_overlap=300)
    with pytest.raises(UsageError, match="--tile auto, which may choose 256 px tiles"):
        _restorer(IDENTITY, device="cpu", tile="auto", tile_overlap=130)
    assert _restorer(IDENTITY, device="cpu", tile=512, tile_overlap=256).tile_overlap == 256
    assert _restorer(IDENTITY, device="cpu", tile=0, tile_overlap=300).tile_overlap == 300  # never tiled


def test_a_precision_the_network_does_not_run_is_refused(cpu_arithmetic) -> None:
    cpu_arithmetic(True)
    float32_only = dataclasses.replace(IDENTITY, precisions=("fp32",))
    with pytest.raises(UsageError, match="--precision bf16: this network runs fp32 only"):
        _restorer(float32_only, device="cpu", precision="bf16")
    assert _restorer(float32_only, device="cpu", precision="auto").dtype == torch.float32


def test_device_and_precision_defaults_on_cpu(cpu_arithmetic) -> None:
    cpu_arithmetic(True)
    device = resolve_device("cpu")
    assert resolve_precision("auto", device) == torch.float32
    assert resolve_precision("bf16", device) == torch.bfloat16
    with pytest.raises(UsageError, match="--precision"):
        resolve_precision("fp64", device)
    with pytest.raises(UsageError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_attention_backend_is_pinned_on_the_model_and_checked_early(monkeypatch) -> None:
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    restorer = _restorer(describe(model), device="cpu", attention="torch")
    assert restorer.attention == "torch" and restorer.kernels == ops.EAGER
    assert {layer.kernels for layer in model.modules() if hasattr(layer, "kernels")} == {ops.EAGER}
    auto = _restorer(describe(model), device="cpu")
    assert auto.kernels == ops.resolve_kernels("auto", "cpu")
    assert {layer.kernels for layer in model.modules() if hasattr(layer, "kernels")} == {auto.kernels}
    with pytest.raises(UsageError, match="--attention flex is not available"):
        _restorer(describe(model), device="cpu", attention="flex")


@pytest.mark.parametrize(
    "height, width, tile, overlap",
    [(300, 500, None, 64), (300, 500, 256, 64), (1000, 700, 256, 32), (1000, 700, 512, 64), (520, 260, 256, 300)],
)
def test_tile_grid_is_how_run_tiled_cuts(height, width, tile, overlap) -> None:
    shapes = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape[-2:]))
        return x

    run_tiled(forward, torch.zeros(1, 3, height, width), tile, overlap)
    grid = tile_grid(height, width, tile, overlap)
    assert shapes == [(grid.height, grid.width)] * grid.count


def test_auto_tile_takes_the_fastest_way_that_fits(monkeypatch) -> None:
    monkeypatch.setattr(engine, "free_memory", lambda device: 1e15)
    restorer = _restorer(describe(RestoreDiNAT(dim=16)), device="cpu")
    costs = restorer.tile_costs(2000, 3000)
    assert set(costs) == {0, *(tile for tile in tile_choice.CANDIDATE_TILES if tile < 3000)}
    assert restorer.auto_tile(2000, 3000) == min(costs, key=costs.get) != 0  # measured: tiles beat whole
    assert restorer.auto_tile(512, 512) == 0
    # Where the cost per pixel does not grow with size, nothing beats the whole image.
    flat = dataclasses.replace(restorer.descriptor, cpu_cost_per_pixel=tile_choice.FLAT)
    assert _restorer(flat, device="cpu").auto_tile(2000, 3000) == 0


def test_auto_tile_on_gpus_takes_the_whole_image_where_it_fits() -> None:
    grids = tile_choice.plans(2000, 3000, 64, 8)
    table = describe(RestoreDiNAT(dim=16)).cpu_cost_per_pixel
    costs = {tile: tile_choice.cost(grid, table, 4, "cuda") for tile, grid in grids.items()}
    assert min(costs, key=costs.get) == 0


def test_cost_per_pixel_follows_the_measured_table_and_grows_beyond_it() -> None:
    for width in (16, 48):
        table = describe(RestoreDiNAT(dim=width)).cpu_cost_per_pixel
        for pixels, relative in table:
            assert tile_choice.cost_per_pixel(pixels, table) == pytest.approx(relative)
        last_pixels, last = table[-1]
        assert (
            last
            < tile_choice.cost_per_pixel(4 * last_pixels, table)
            < tile_choice.cost_per_pixel(16 * last_pixels, table)
        )
        assert tile_choice.cost_per_pixel(1000, table) == table[0][1]
    nearest = describe(RestoreDiNAT(dim=40)).cpu_cost_per_pixel
    assert nearest == describe(RestoreDiNAT(dim=48)).cpu_cost_per_pixel  # another width: the nearest table
