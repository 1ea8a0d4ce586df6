"""Loading weights files: layouts, configuration inference, safetensors, bad files."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from code_running_pickle import CodeRunningPayload
from small_model import random_small_model

from dinat_cli.checkpoints import describe, infer_config, load, read_state_dict, save_model
from dinat_cli.errors import CheckpointError
from dinat_cli.model import RestoreDiNAT
from dinat_cli.model.variants import OFFICIAL_CONFIG, get_variant

# Several blocks and heads per level: what the configuration is read from.
LEVELS = dict(num_blocks=[1, 2, 1, 1], heads=[1, 2, 2, 4])


def _random_model(**overrides) -> RestoreDiNAT:
    return random_small_model(**{**LEVELS, **overrides})


def _output(model: RestoreDiNAT, channels: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.inference_mode():
        return model(torch.rand(1, channels, 64, 56))


@pytest.mark.parametrize(
    "layout",
    [
        lambda sd: {"params": sd},
        lambda sd: {"params_ema": sd},
        lambda sd: {"params": sd, "params_ema": {k: torch.zeros_like(v) for k, v in sd.items()}},
        lambda sd: sd,
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"params": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["params", "params_ema", "params_wins_over_ema", "bare", "module_prefix", "params_module_prefix"],
)
def test_basicsr_layouts_load_with_identical_outputs(tmp_path: Path, layout) -> None:
    model = _random_model()
    path = tmp_path / "net_g_latest.pth"
    torch.save(layout(model.state_dict()), path)
    loaded = load(path, tlc=False).model
    assert torch.equal(_output(loaded), _output(model))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(bias=True),
        dict(LayerNorm_type="BiasFree"),
        dict(chan_adapt=False),
        dict(inp_channels=6, dual_pixel_task=True),
        dict(ffn_expansion_factor=2.0),
        dict(ffn_expansion_factor=3.3),
        dict(kernel_size=5),
        dict(out_channels=1, inp_channels=1),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults",
)
def test_configuration_is_inferred_from_tensor_shapes(overrides: dict) -> None:
    model = _random_model(**overrides)
    config = infer_config(model.state_dict())
    rebuilt = RestoreDiNAT(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    expected = {**model.config}
    if "ffn_expansion_factor" in overrides:  # only int(width * factor) is recorded
        assert all(
            int(w * config["ffn_expansion_factor"]) == int(w * overrides["ffn_expansion_factor"])
            for w in (8, 16, 32, 64)
        )
        expected["ffn_expansion_factor"] = config["ffn_expansion_factor"]
    assert config == expected


def test_official_configuration_is_inferred(reference_dir: Path) -> None:
    import json

    facts = json.loads((reference_dir / "official_checkpoints.json").read_text())["architecture"]
    config = infer_config(RestoreDiNAT(dim=48, chan_adapt=True).state_dict())
    for key in (
        "dim",
        "num_blocks",
        "num_refinement_blocks",
        "heads",
        "dilations",
        "ffn_expansion_factor",
        "bias",
        "LayerNorm_type",
        "chan_adapt",
        "mode",
        "kernel_size",
    ):
        assert config[key] == facts[key], key


def test_dilations_and_mode_can_be_overridden(tmp_path: Path) -> None:
    model = _random_model(dilations=[8, 4, 2, 1], mode="local_only")
    path = tmp_path / "custom.pth"
    torch.save({"params": model.state_dict()}, path)
    assert not torch.equal(_output(load(path, tlc=False).model), _output(model))  # defaults differ
    loaded = load(path, dilations=[8, 4, 2, 1], mode="local_only", tlc=False).model
    assert torch.equal(_output(loaded), _output(model))


def test_a_registered_variant_gives_a_pth_its_configuration(tmp_path: Path) -> None:
    """A .pth carries no dilations, mode or window: the variant the registry names for the file does."""
    config = get_variant("lite-denoise").config
    torch.manual_seed(0)
    model = RestoreDiNAT(**config).eval()
    path = tmp_path / "lite.pth"
    torch.save({"params": model.state_dict()}, path)
    described = load(path, variant="lite-denoise", tlc=False)
    assert described.model.config == model.config
    assert (described.variant, described.task) == ("lite-denoise", "denoise")
    assert torch.equal(_output(described.model), _output(model))
    guessed = load(path, tlc=False).model  # read from the tensors: the official dilations
    assert guessed.config["dilations"] == list(OFFICIAL_CONFIG["dilations"]) != model.config["dilations"]


def test_the_descriptor_tells_the_engine_what_it_needs(tmp_path: Path) -> None:
    official = describe(RestoreDiNAT(**OFFICIAL_CONFIG))
    assert (official.in_channels, official.out_channels, official.size_multiple) == (3, 3, 8)
    # The widest attention span: 7 x 36 px at level 1, 7 x 18 x 2 at level 2, ...
    assert official.min_exact_tile == 256 and "252 px" in official.min_tile_reason
    dual_pixel = describe(RestoreDiNAT(**get_variant("dpdd").config), "dpdd")
    assert (dual_pixel.in_channels, dual_pixel.task) == (6, "defocus")
    lite = describe(RestoreDiNAT(**get_variant("lite-denoise").config))
    assert lite.min_exact_tile == 40 and lite.bytes_per_pixel == official.bytes_per_pixel / 3


def test_safetensors_round_trip_keeps_the_full_configuration(tmp_path: Path) -> None:
    model = _random_model(dilations=[8, 4, 2, 1], mode="globl_only", bias=True)
    path = tmp_path / "ours.safetensors"
    save_model(model, path, metadata={"description": "test"})
    _tensors, config = read_state_dict(path)
    assert config == model.config
    loaded = load(path, tlc=False).model
    assert loaded.config == model.config
    assert torch.equal(_output(loaded), _output(model))


def test_tlc_flag_is_the_callers_choice(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    torch.save({"params": _random_model().state_dict()}, path)
    assert load(path).model.tlc is True
    assert load(path, tlc=False).model.tlc is False


# ---- files that do not fit: one clear error naming the problem -------------------


def _save_params(path: Path, state_dict: dict) -> Path:
    torch.save({"params": state_dict}, path)
    return path


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    state = _random_model().state_dict()
    state["encoder_level1.0.attn.temperature"] = torch.ones(1, 1, 1)  # a Restormer key
    with pytest.raises(CheckpointError, match=r"unknown keys encoder_level1\.0\.attn\.temperature"):
        load(_save_params(tmp_path / "x.pth", state))


def test_missing_keys_are_named(tmp_path: Path) -> None:
    state = _random_model().state_dict()
    del state["decoder_level2.0.globl.ffn.dwconv.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys decoder_level2\.0\.globl\.ffn\.dwconv\.weight"):
        load(_save_params(tmp_path / "x.pth", state))


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    state = _random_model().state_dict()
    state["latent.0.local.na2d.proj.weight"] = torch.zeros(64, 63)
    with pytest.raises(CheckpointError, match=r"wrong shapes latent\.0\.local\.na2d\.proj\.weight \(64, 63\)"):
        load(_save_params(tmp_path / "x.pth", state))


def test_other_networks_are_not_mistaken_for_dinat(tmp_path: Path) -> None:
    state = {"conv_first.weight": torch.zeros(64, 3, 3, 3)}
    with pytest.raises(CheckpointError, match="not a DiNAT-IR checkpoint: missing patch_embed.proj.weight"):
        load(_save_params(tmp_path / "esrgan.pth", state))


def test_truncated_pth_is_reported(tmp_path: Path) -> None:
    path = _save_params(tmp_path / "cut.pth", _random_model().state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth: truncated or damaged"):
        load(path)


def test_truncated_safetensors_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_model(_random_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors: truncated or damaged"):
        load(path)


@pytest.mark.parametrize(
    "content", [b"", b"hello, I am a text file\n", os.urandom(4096)], ids=["empty", "text", "noise"]
)
def test_non_checkpoints_are_reported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pth: .*(empty|not a PyTorch|truncated)"):
        load(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such weights file"):
        load(tmp_path / "absent.pth")


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"params": _random_model().state_dict(), "extra": CodeRunningPayload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pth: refused, the file holds Python objects"):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_raw_pickle_is_refused_as_code_carrying_and_not_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(CodeRunningPayload(marker), protocol=protocol))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warnings must not reach the user either
        with pytest.raises(
            CheckpointError, match="weights.pkl: refused, the file holds raw pickle data, which can carry"
        ):
            load(path)
    assert not marker.exists()


def test_the_legacy_torch_format_is_not_taken_for_a_raw_pickle(tmp_path: Path) -> None:
    model = _random_model()
    path = tmp_path / "old.pth"
    torch.save({"params": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(_output(load(path, tlc=False).model), _output(model))


def test_non_tensor_entries_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"params": {"patch_embed.proj.weight": [1, 2, 3]}}, path)
    with pytest.raises(CheckpointError, match="not tensors: patch_embed.proj.weight"):
        load(path)
