"""The native feed-forward kernel, the banded feed-forward network and the heap settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dinat_cli.model.layers import FeedForward, LayerNorm
from dinat_cli.ops import native
from dinat_cli.ops.gated import gated_dwconv_gelu_reference
from dinat_cli.ops.means import box_means_reference


@pytest.fixture
def native_kernels(cpu_variant: str) -> str:
    return cpu_variant


@pytest.mark.parametrize(
    "hidden, with_bias, first, rows, rows_in",
    [
        (40, True, 0, 9, 9),  # the whole map: zero padding at top and bottom
        (40, False, 1, 4, 6),  # a band inside the map: halo rows above and below
        (255, True, 1, 5, 6),  # the last band: halo above only; 255 = 15 vectors and an overlapping one
        (8, True, 0, 3, 4),  # fewer channels than a vector
    ],
)
def test_gated_kernel_matches_pytorch(native_kernels, hidden, with_bias, first, rows, rows_in) -> None:
    torch.manual_seed(hidden)
    x = torch.randn(2, 2 * hidden, rows_in, 13).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(2 * hidden, 1, 3, 3) * 0.5
    bias = torch.randn(2 * hidden) if with_bias else None
    expected = gated_dwconv_gelu_reference(x, weight, bias, first, rows)
    # The map whole, and as two blocks of rows in separate tensors (a band and its halo).
    for blocks in ([x], [x[:, :, :2].clone(), x[:, :, 2:].clone()]):
        out = native.gated_dwconv_gelu(blocks, weight, bias, first, rows)
        assert out.shape == expected.shape == (2, hidden, rows, 13)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert (out - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize(
    "hidden, first, rows, rows_in, width",
    [
        (32, 0, 10, 10, 11),  # a multiple of 32 channels: products of bfloat16 pairs where the CPU has them
        (64, 1, 5, 7, 70),  # two groups; more columns than a tile; halo rows above and below
        (40, 0, 6, 6, 9),  # not a multiple of 32: widened to float32
    ],
)
def test_gated_kernel_in_bfloat16_is_as_accurate_as_pytorch(
    native_kernels, hidden, first, rows, rows_in, width
) -> None:
    torch.manual_seed(hidden)
    x = torch.randn(1, 2 * hidden, rows_in, width).bfloat16().contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(2 * hidden, 1, 3, 3) * 0.5, torch.randn(2 * hidden)
    exact = gated_dwconv_gelu_reference(x.float(), weight, bias, first, rows)
    out = native.gated_dwconv_gelu([x], weight, bias, first, rows)
    assert out.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pytorch = gated_dwconv_gelu_reference(x, weight, bias, first, rows)
    error, pytorch_error = ((y.float() - exact).abs() for y in (out, pytorch))
    assert error.max() <= pytorch_error.max()
    assert error.pow(2).mean() <= pytorch_error.pow(2).mean()


def test_layer_norm_kernel_matches_pytorch(native_kernels) -> None:
    torch.manual_seed(0)
    # 40 pixels a row: two blocks of 16 and a tail; 96 and 40 channels: whole vectors and a tail
    for channels in (96, 40):
        x = torch.randn(2, channels, 5, 40) * 3 + 1
        band = x.contiguous(memory_format=torch.channels_last)[:, :, 1:4].permute(0, 2, 3, 1)  # strided rows
        weight, bias = torch.randn(channels), torch.randn(channels)
        out = native.layer_norm(band, weight, bias, 1e-5)
        assert (out - torch.nn.functional.layer_norm(band, (channels,), weight, bias, 1e-5)).abs().max() < 1e-5
        bias_free = band * torch.rsqrt(band.var(-1, keepdim=True, unbiased=False) + 1e-5) * weight
        assert (native.layer_norm(band, weight, None, 1e-5) - bias_free).abs().max() < 1e-5
        rounded = native.layer_norm(band.bfloat16(), weight, bias, 1e-5)
        exact = torch.nn.functional.layer_norm(band.bfloat16().float(), (channels,), weight, bias, 1e-5)
        assert rounded.dtype == torch.bfloat16
        assert ((rounded.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-5).all()


@pytest.mark.parametrize(
    "channels, height, width, box_h, box_w",
    [
        (96, 400, 390, 384, 384),  # level 1 of a 400 px image: a handful of box positions
        (48, 100, 80, 96, 60),  # ring of box_h + 1 rows reused many times
        (5, 40, 33, 7, 9),  # fewer channels than a vector
        (20, 30, 30, 30, 30),  # one box: the global mean
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_box_means_equal_pytorch_bit_for_bit(native_kernels, channels, height, width, box_h, box_w, dtype) -> None:
    torch.manual_seed(channels)
    # Large values with an offset: cancellation in the integral image shows any change of order.
    x = (torch.randn(2, channels, height, width) * 3 + 100).to(dtype).contiguous(memory_format=torch.channels_last)
    assert torch.equal(native.box_means(x, box_h, box_w), box_means_reference(x, box_h, box_w))


@pytest.mark.parametrize("shape", [(2, 96, 50, 37), (1, 40, 3, 300)])  # whole vectors; a tail, long rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_means_are_exact_means(native_kernels, shape, dtype) -> None:
    torch.manual_seed(0)
    # An offset large against the spread: a float32 running sum would lose the spread's digits.
    x = (torch.randn(*shape) + 1000).to(dtype).contiguous(memory_format=torch.channels_last)
    exact = x.double().mean(dim=(-2, -1), keepdim=True)
    means = native.channel_means(x)
    assert means.dtype == torch.float32 and means.shape == (shape[0], shape[1], 1, 1)
    assert ((means.double() - exact).abs() <= exact.abs() * 2**-24).all()  # float32's rounding, once


# Bands of 8 rows; of 10 (the last one a single row, all of whose hidden rows were computed
# before); one band.
@pytest.mark.parametrize("band_pixels", [1, 10 * 24, 1 << 20])
def test_feed_forward_bands_equal_the_whole_map(monkeypatch, band_pixels: int) -> None:
    torch.manual_seed(1)
    ffn = FeedForward(16, 2.66, bias=True).eval()
    x = torch.randn(1, 16, 21, 24).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        hidden = ffn.project_in(x)
        expected = ffn.project_out(gated_dwconv_gelu_reference(hidden, ffn.dwconv.weight, ffn.dwconv.bias, 0, 21))
        norm = LayerNorm(16, "WithBias")
        torch.nn.init.normal_(norm.body.weight)
        with_norm = x + ffn(norm(x))
        monkeypatch.setattr(FeedForward, "band_pixels", band_pixels)
        out = ffn(x)
        out_with_norm = ffn.add_to(x, norm)
    assert (out - expected).abs().max().item() <= 1e-5
    assert (out_with_norm - with_norm).abs().max().item() <= 1e-5


def test_feed_forward_aligned_weights_follow_a_checkpoint_load() -> None:
    """The zero-padded copies of the weights are rebuilt when the weights are replaced in place."""
    torch.manual_seed(2)
    ffn, other = FeedForward(16, 2.66, bias=True).eval(), FeedForward(16, 2.66, bias=True).eval()
    x = torch.randn(1, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        before = ffn(x)
        expected = other(x)
    ffn.load_state_dict(other.state_dict())
    with torch.inference_mode():
        after = ffn(x)
    assert (before - expected).abs().max().item() > 1e-2
    assert (after - expected).abs().max().item() <= 1e-6


_FAULTS = """
import resource, torch
import dinat_cli
from dinat_cli import heap
from dinat_cli.model import RestoreDiNAT

dinat_cli.configure_process()  # what the dinat command and its Ray workers do

model = RestoreDiNAT(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1] * 4, dilations=[4, 2, 1, 1])
image = torch.rand(1, 3, 512, 512)  # level-1 maps of 17 to 90 MB
faults = []
with torch.inference_mode():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model.eval()(image)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(heap.keep_freed_memory(), faults[-1])
"""


def _faults(env: dict[str, str]) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
    applied, faults = result.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's")
def test_heap_settings_stop_large_tensors_faulting_in_again(monkeypatch) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    applied, faults = _faults(env)
    assert applied == "True"
    assert faults < 50_000, faults  # measured 0 to 12,000: the third pass reuses the first one's memory
    applied, faults = _faults({**env, "DINAT_SYSTEM_MALLOC": "1"})
    assert applied == "False"
    assert faults > 150_000, faults  # measured 340,000-450,000: glibc's default maps large blocks afresh each time


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's")
def test_release_free_memory_returns_the_kept_heap() -> None:
    from dinat_cli import heap

    def resident_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    heap.keep_freed_memory()
    blocks = [torch.ones(50 << 18) for _ in range(4)]  # 200 MB, under the mmap threshold: from the heap
    del blocks
    kept = resident_mb()
    heap.release_free_memory()
    assert kept - resident_mb() > 100


def test_gate_takes_a_tensor_or_blocks_of_rows_of_one_layout(native_kernels) -> None:
    from dinat_cli import ops

    torch.manual_seed(6)
    x = torch.randn(1, 64, 6, 9).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 1, 3, 3)
    whole = ops.gated_dwconv_gelu(x, weight, None, 1, 4)
    assert torch.equal(whole, ops.gated_dwconv_gelu([x[:, :, :3], x[:, :, 3:]], weight, None, 1, 4))
    with pytest.raises(ValueError, match="share"):
        native.gated_dwconv_gelu([x[:, :, :3], x[:, :, 3:, :8]], weight, None, 1, 4)  # another width
