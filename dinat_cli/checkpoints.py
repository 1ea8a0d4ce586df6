"""Reading, recognising and writing DiNAT-IR weights files.

Detection follows the spandrel approach: a few key conditions say whether a state
dict is DiNAT-IR at all, and every hyper-parameter that shapes the tensors is read
from the tensors themselves. Dilations and mode leave no trace in the weights, so
they take the official values unless the file's metadata (our safetensors files) or
the caller says otherwise. Files are only ever read through loaders that cannot
run code: `torch.load(weights_only=True)` and safetensors.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dinat_cli.descriptor import ModelDescriptor
from dinat_cli.errors import CheckpointError
from dinat_cli.model import SIZE_MULTIPLE, RestoreDiNAT
from dinat_cli.model.variants import OFFICIAL_CONFIG, get_variant
from dinat_cli.tile_choice import CostTable

StateDict = dict[str, torch.Tensor]

# BasicSR writes {'params': ...} and, with EMA, {'params_ema': ...} beside it; the
# official test scripts load 'params', so that layout wins when both are present.
_NESTED_KEYS = ("params", "params_ema", "state_dict", "model")
_REQUIRED_KEYS = ("patch_embed.proj.weight", "output.weight", "encoder_level1.0.local.na2d.rpb")
_LEVEL_STAGES = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
_METADATA_FORMAT = "dinat-ir"

_COMMON_FFN_FACTORS = (2.66, 2.0, 4.0, 1.0, 2.5, 3.0)

# A pickle of protocol 2 or later opens with PROTO; torch.save's legacy format opens with this
# pickle of its magic number, its current format with a zip header.
_PICKLE_PROTOCOL = b"\x80"
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def read_state_dict(path: Path) -> tuple[StateDict, dict[str, Any] | None]:
    """Tensors of a `.pth`/`.pt`/`.safetensors` file, and the saved config if it has one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty, not a checkpoint")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    if _is_raw_pickle(path):
        raise CheckpointError(
            f"{path}: refused, the file holds raw pickle data, which can carry code that runs when loaded; "
            "dinat does not run it (use a torch.save checkpoint or a .safetensors file)"
        )
    return _unwrap(_read_torch(path), path), None


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The constructor arguments of the network that produced `state_dict`.

    Dilations and mode are not recorded in the tensors: they get the official values.
    """
    missing = [key for key in _REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise CheckpointError(f"not a DiNAT-IR checkpoint: missing {_name_keys(missing)}")
    embed = state_dict["patch_embed.proj.weight"]
    dim = embed.shape[0]
    blocks = [_count_blocks(state_dict, stage) for stage in _LEVEL_STAGES]
    heads = [
        state_dict[f"{stage}.0.local.na2d.rpb"].shape[0] if count else default
        for stage, count, default in zip(_LEVEL_STAGES, blocks, (1, 2, 4, 8), strict=False)
    ]
    rpb_side = state_dict["encoder_level1.0.local.na2d.rpb"].shape[-1]
    return dict(
        inp_channels=embed.shape[1],
        out_channels=state_dict["output.weight"].shape[0],
        dim=dim,
        num_blocks=blocks,
        num_refinement_blocks=_count_blocks(state_dict, "refinement"),
        heads=heads,
        dilations=list(OFFICIAL_CONFIG["dilations"]),
        ffn_expansion_factor=_ffn_factor(state_dict, dim),
        bias="output.bias" in state_dict,
        LayerNorm_type="WithBias" if "encoder_level1.0.local.norm1.body.bias" in state_dict else "BiasFree",
        chan_adapt="encoder_level1.0.local.conv.weight" in state_dict,
        mode=OFFICIAL_CONFIG["mode"],
        dual_pixel_task="skip_conv.weight" in state_dict,
        kernel_size=(rpb_side + 1) // 2,
    )


def load(
    path: Path,
    *,
    variant: str | None = None,
    tlc: bool = True,
    dilations: Sequence[int] | None = None,
    mode: str | None = None,
) -> ModelDescriptor:
    """Build the network a weights file describes, load it strictly in eval mode, and describe it.

    The configuration is the one saved in the file (our safetensors files), else that of
    `variant` (a registered name, `dinat_cli.model.variants`), else read from the tensors
    with the official dilations and mode; `dilations` and `mode` override it.
    """
    state_dict, saved_config = read_state_dict(path)
    if saved_config:
        config = dict(saved_config)
    elif variant is not None:
        config = dict(get_variant(variant).config)
    else:
        config = infer_config(state_dict)
    if dilations is not None:
        config["dilations"] = list(dilations)
    if mode is not None:
        config["mode"] = mode
    try:
        model = RestoreDiNAT(**config, tlc=tlc)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: unusable configuration ({error})") from None
    check_compatible(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return describe(model.eval(), variant)


# Peak working memory of the official-size network (width 48) per input pixel in float32:
# measured 11.7 KB at 256x256 and 11.0 KB at 512x512 (peak RSS above the loaded model).
# Taken to scale with the width.
_BYTES_PER_PIXEL_WIDTH_48 = 12_000
# CPU time per pixel of a whole float32 map of that many pixels, relative to 256x256, by the
# network's width: the official checkpoints (48) and lite-denoise (16). Measured with
# benchmarks/bench_tiles.py in steady state (the second image of a size) on an AMD EPYC
# (Zen 5) with 2 threads; another width takes the table of the nearest.
_CPU_COST_PER_PIXEL: dict[int, CostTable] = {
    48: ((65_536, 1.00), (262_144, 1.02), (589_824, 1.00), (921_600, 1.10), (1_048_576, 1.35)),
    16: ((65_536, 1.00), (262_144, 1.00), (1_048_576, 1.00), (4_194_304, 1.75), (6_000_000, 1.64)),
}


def describe(model: RestoreDiNAT, variant: str | None = None) -> ModelDescriptor:
    """What the engine needs to know of `model`, a DiNAT-IR network of registered `variant` (or None)."""
    config = model.config
    # A map smaller than an attention window's span is padded up to it, which changes the
    # result: the smallest exact tile is the widest span, in input pixels, over the levels.
    spans = [config["kernel_size"] * dilation * 2**level for level, dilation in enumerate(config["dilations"])]
    span = max(spans)
    return ModelDescriptor(
        model=model,
        architecture="DiNAT-IR",
        variant=variant,
        task=get_variant(variant).task if variant is not None else None,
        config=config,
        in_channels=config["inp_channels"],
        out_channels=config["out_channels"],
        size_multiple=SIZE_MULTIPLE,
        min_exact_tile=-(-span // SIZE_MULTIPLE) * SIZE_MULTIPLE,
        min_tile_reason=f"smaller tiles change the network's output: its attention spans {span} px",
        bytes_per_pixel=_BYTES_PER_PIXEL_WIDTH_48 * config["dim"] / 48,
        cpu_cost_per_pixel=_CPU_COST_PER_PIXEL[min(_CPU_COST_PER_PIXEL, key=lambda width: abs(width - config["dim"]))],
        set_kernels=model.set_kernels,
    )


def check_compatible(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise one clear error naming the first keys that do not fit `model`."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} (expected {tuple(tensor.shape)})"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    problems = []
    if unexpected:
        problems.append(f"unknown keys {_name_keys(unexpected)}")
    if missing:
        problems.append(f"missing keys {_name_keys(missing)}")
    if wrong_shape:
        problems.append(f"wrong shapes {_name_keys(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{path}: does not fit DiNAT-IR: {'; '.join(problems)}")


def save_model(model: RestoreDiNAT, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write `model` as safetensors with its full configuration, so it loads without guessing."""
    from safetensors.torch import save_file

    tensors = {key: tensor.detach().contiguous().cpu() for key, tensor in model.state_dict().items()}
    header = {"format": _METADATA_FORMAT, "config": json.dumps(model.config), **(metadata or {})}
    save_file(tensors, str(path), metadata=header)


def _is_raw_pickle(path: Path) -> bool:
    """Whether the file is a bare pickle (protocol 2 or later): not torch.save's zip, nor its legacy format."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(_LEGACY_TORCH_HEAD))
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    return head.startswith(_PICKLE_PROTOCOL) and not head.startswith(_LEGACY_TORCH_HEAD)


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # The safe unpickler warns about what it will refuse; the error below says it in one line.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The safe unpickler names the callable it refused to import.
        if "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path}: refused, the file holds Python objects that would run code when "
                "loaded; only plain tensors are accepted"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch or safetensors checkpoint") from None
    except Exception as error:  # garbage makes the unpickler fail in many ways
        reason = "truncated or damaged" if _looks_truncated(error) else "not a PyTorch or safetensors checkpoint"
        raise CheckpointError(f"{path}: {reason}") from None


def _looks_truncated(error: Exception) -> bool:
    return isinstance(error, EOFError) or bool(
        re.search(r"zip archive|central directory|unexpected EOF|file_size|Ran out of input", str(error))
    )


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, Any] | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or damaged safetensors file ({error})") from None
    config = None
    if metadata.get("format") == _METADATA_FORMAT and "config" in metadata:
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: damaged configuration in the file's metadata") from None
    return tensors, config


def _unwrap(content: Any, path: Path) -> StateDict:
    """The state dict inside any layout BasicSR or plain PyTorch writes."""
    if isinstance(content, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if not isinstance(content, Mapping) or not content:
        raise CheckpointError(f"{path}: holds no state dict (expected a dict of tensors)")
    not_tensors = [key for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {_name_keys(not_tensors)}")
    # DataParallel / DistributedDataParallel prefix every key with 'module.'.
    return {key.removeprefix("module."): value for key, value in content.items()}


def _count_blocks(state_dict: Mapping[str, torch.Tensor], stage: str) -> int:
    pattern = re.compile(rf"^{stage}\.(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _ffn_factor(state_dict: Mapping[str, torch.Tensor], dim: int) -> float:
    """An expansion factor `f` with `int(width * f)` equal to every level's hidden width."""
    hidden = {
        width: state_dict[f"{stage}.0.local.ffn.project_out.weight"].shape[1]
        for stage, width in zip(_LEVEL_STAGES, (dim, dim * 2, dim * 4, dim * 8), strict=False)
        if f"{stage}.0.local.ffn.project_out.weight" in state_dict
    }

    def fits(factor: float) -> bool:
        return all(int(width * factor) == size for width, size in hidden.items())

    for factor in _COMMON_FFN_FACTORS:
        if fits(factor):
            return factor
    low = max(size / width for width, size in hidden.items())
    high = min((size + 1) / width for width, size in hidden.items())
    for decimals in range(2, 8):
        factor = round((low + high) / 2, decimals)
        if fits(factor):
            return factor
    raise CheckpointError(f"feed-forward widths {sorted(hidden.values())} fit no single expansion factor")


def _name_keys(keys: list[str], shown: int = 3) -> str:
    names = ", ".join(keys[:shown])
    return names + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")
