"""The whole network against the official code's outputs (tests/data/reference/model_*.npz)."""

from __future__ import annotations

import json

import pytest
import torch

from dinat_cli import ops
from dinat_cli.model import RestoreDiNAT
from dinat_cli.model.attention import NeighborhoodAttention2D
from dinat_cli.model.blocks import TransBlock, _band_matrix
from dinat_cli.model.layers import FeedForward
from dinat_cli.model.network import KERNEL_CHOOSERS
from dinat_cli.ops import native

MODEL_FILES = ["model_std_global", "model_std_tlc", "model_dualpixel_tlc", "model_nochan_custom"]


def _reference_model(load_reference, name: str) -> tuple[RestoreDiNAT, list[tuple[torch.Tensor, torch.Tensor]]]:
    data = load_reference(f"{name}.npz")
    model = RestoreDiNAT(**json.loads(str(data["config"]))).eval()
    model.load_state_dict(data.state_dict("param/"), strict=True)
    pairs = []
    index = 0
    while f"x{index}" in data:
        pairs.append((data.tensor(f"x{index}"), data.tensor(f"y{index}")))
        index += 1
    return model, pairs


@pytest.mark.parametrize("name", MODEL_FILES)
def test_network_matches_official_outputs(load_reference, monkeypatch, cpu_kernels: str, name: str) -> None:
    # Bands of 8 rows: every band edge of the feed-forward network is exercised.
    monkeypatch.setattr(FeedForward, "band_pixels", 1)
    model, pairs = _reference_model(load_reference, name)
    assert pairs
    with torch.inference_mode():
        for x, expected in pairs:
            assert (model(x) - expected).abs().max().item() <= 1e-5, f"{name} input {tuple(x.shape)}"


@pytest.mark.parametrize("case", ["case0", "case1", "case2"])
def test_attention_module_matches_natten(load_reference, case: str) -> None:
    data = load_reference("na2d_module.npz")
    x = data.tensor(f"{case}/x")
    layer = NeighborhoodAttention2D(
        x.shape[-1], int(data[f"{case}/num_heads"]), int(data[f"{case}/kernel_size"]), int(data[f"{case}/dilation"])
    )
    layer.load_state_dict(data.state_dict(f"{case}/param/"), strict=True)
    with torch.inference_mode():
        assert (layer(x) - data.tensor(f"{case}/y")).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", ["rgb", "dual_pixel"])
def test_official_size_model_has_official_keys_and_shapes(reference_dir, variant: str) -> None:
    reference = json.loads((reference_dir / "official_state_dict_shapes.json").read_text())[variant]
    model = RestoreDiNAT(**reference["config"])
    state = model.state_dict()
    assert list(state) == list(reference["keys"])
    assert {key: list(t.shape) for key, t in state.items()} == reference["keys"]
    assert sum(t.numel() for t in model.parameters()) == reference["num_params"]


def test_tlc_equals_global_pooling_on_small_images() -> None:
    # Below 384 px every TLC box covers the whole map, so both poolings agree exactly.
    torch.manual_seed(0)
    config = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True)
    plain = RestoreDiNAT(**config).eval()
    local = RestoreDiNAT(**config, tlc=True).eval()
    local.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 64, 48)
    with torch.inference_mode():
        assert torch.equal(plain(x), local(x))


def test_input_not_divisible_by_8_is_a_clear_error() -> None:
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.zeros(1, 3, 60, 64))


@pytest.mark.parametrize("channels", [5, 48, 384])  # fewer channels than taps, and the official widths
def test_channel_filter_band_matrix_equals_the_official_conv1d(channels: int) -> None:
    torch.manual_seed(channels)
    taps, series = torch.randn(7), torch.randn(50, channels)
    expected = torch.nn.functional.conv1d(series[:, None], taps[None, None], padding=3)[:, 0]
    assert (series @ _band_matrix(taps, channels) - expected).abs().max().item() <= 1e-5


def test_channel_filter_follows_a_checkpoint_load() -> None:
    """The kept band matrix is rebuilt when the filter's weight is replaced in place."""
    torch.manual_seed(4)
    block, other = (TransBlock(16, 1, 7, 1, 2.66, False, "WithBias", True, None).eval() for _ in range(2))
    x = torch.randn(1, 16, 9, 9)
    with torch.inference_mode():
        block.channel_modulation(x)  # builds and keeps the matrix
        block.load_state_dict(other.state_dict())
        assert torch.equal(block.channel_modulation(x), other.channel_modulation(x))


def test_a_model_made_under_inference_mode_runs() -> None:
    """Inference tensors have no version counter: weight-derived values are then derived afresh."""
    torch.manual_seed(5)
    with torch.inference_mode():
        model = RestoreDiNAT(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True).eval()
        x = torch.rand(1, 3, 64, 64)
        first = model(x)
        for parameter in model.parameters():
            parameter.mul_(0.5)  # in place, not counted: the derived weights must follow
        second = model(x)
    plain = RestoreDiNAT(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True).eval()
    plain.load_state_dict({name: value.clone() for name, value in model.state_dict().items()})
    with torch.inference_mode():
        assert not torch.equal(first, second)
        assert (second - plain(x)).abs().max().item() <= 1e-5


def test_the_network_trains_through_its_pytorch_expressions(monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/train_lite.py trains on `ops.EAGER`, PyTorch everywhere (the kernels compute forward passes only).

    The feed-forward adds its residual band by band and the channel filter is a band matrix
    kept between calls: both must carry exact gradients, and every parameter must get one.
    """
    monkeypatch.setattr(FeedForward, "band_pixels", 8 * 6)  # bands of 8 rows: 8, 8 and 4
    torch.manual_seed(6)
    block = TransBlock(8, 2, 3, 2, 2.66, False, "WithBias", True, None).double()
    x = torch.randn(1, 8, 20, 6, dtype=torch.float64, requires_grad=True)
    with native.use_variant("off"):
        # gradcheck perturbs the parameters in place; the function reads them from the module.
        assert torch.autograd.gradcheck(
            lambda x, *_: block.ffn.add_to(x, block.norm2), (x, *block.ffn.parameters()), fast_mode=True
        )
        taps = torch.randn(7, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda taps: x.detach() @ _band_matrix(taps, 6), (taps,))
    model = RestoreDiNAT(
        dim=8,
        num_blocks=[1, 1, 1, 1],
        num_refinement_blocks=1,
        dilations=[4, 2, 1, 1],
        kernel_size=3,
        chan_adapt=True,
        kernels=ops.EAGER,
    )
    model(torch.rand(2, 3, 32, 32)).square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


# What each kind of kernel calls in dinat_cli.ops.native.
NATIVE_FUNCTIONS = {
    "attention": ("na2d_native",),
    "norm_gate_pooling": ("layer_norm", "gated_dwconv_gelu", "channel_means", "box_means"),
}


@pytest.mark.parametrize("attention, norm_gate_pooling", [("torch", "torch"), ("native", "torch"), ("torch", "native")])
def test_pinned_kernels_run_only_what_they_name_and_match_the_official_outputs(
    load_reference, monkeypatch: pytest.MonkeyPatch, attention: str, norm_gate_pooling: str
) -> None:
    """`--attention torch` is the eager reference everywhere; every kind of kernel follows the pinned choice.

    The TLC model's 392 px input pools with boxes at level 1 and whole maps below; its 56x64 input whole maps only.
    """
    chosen = {"attention": attention, "norm_gate_pooling": norm_gate_pooling}
    if "native" in chosen.values() and native.unavailable_reason():
        pytest.skip(native.unavailable_reason())
    kernels = ops.Kernels(attention, norm_gate_pooling, native.kernel_status().variant)
    called: set[str] = set()

    def forbidden(name: str):
        def call(*args, **kwargs):
            raise AssertionError(f"native.{name} ran under {kernels.describe()}")

        return call

    def recorded(name: str, function):
        def call(*args, **kwargs):
            called.add(name)
            return function(*args, **kwargs)

        return call

    for kind, names in NATIVE_FUNCTIONS.items():
        for name in names:
            function = getattr(native, name)
            monkeypatch.setattr(native, name, recorded(name, function) if chosen[kind] == "native" else forbidden(name))
    if kernels == ops.EAGER:
        monkeypatch.setattr(native, "_library", forbidden("_library"))  # no kernel at all, by any path
    model, pairs = _reference_model(load_reference, "model_std_tlc")
    model.set_kernels(kernels)
    with torch.inference_mode():
        for x, expected in pairs:
            assert (model(x) - expected).abs().max().item() <= 1e-5, f"input {tuple(x.shape)}"
    expected_calls = {name for kind, names in NATIVE_FUNCTIONS.items() if chosen[kind] == "native" for name in names}
    assert called == expected_calls


def test_set_kernels_pins_every_module_that_has_a_choice() -> None:
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, chan_adapt=True, tlc=True)
    choosers = [module for module in model.modules() if isinstance(module, KERNEL_CHOOSERS)]
    assert {type(module) for module in choosers} == set(KERNEL_CHOOSERS)
    assert all(module.kernels is None for module in choosers)
    kernels = ops.Kernels("torch", "native")
    model.set_kernels(kernels)
    assert all(module.kernels is kernels for module in choosers)
    model.set_kernels(None)
    assert all(module.kernels is None for module in choosers)
    with pytest.raises(TypeError, match="ops.Kernels"):
        model.set_kernels("torch")
