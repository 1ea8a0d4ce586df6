"""Make the tests' reference data (tests/data/reference) with the authors' DiNAT-IR code.

Every expected output in tests/data/reference comes from the official code
(`basicsr/models/archs/RestoreDiNAT_arch.py`, github.com/HanzhouLiu/DiNAT-IR, commit 886609e)
running on the CPU kernels of natten 0.14.6, in float32. Nothing of the official code is
copied here: it is imported from a checkout at run time.

How to run, from the project root:

    # once: the authors' code and natten 0.14.6 (CPU) in a venv of their own (5-15 minutes)
    OFFICIAL_SRC=<checkout of github.com/HanzhouLiu/DiNAT-IR> REF_DIR=<dir> bash tools/setup_reference.sh
    # then (about a minute)
    <REF_DIR>/venv/bin/python tools/make_reference_data.py --official <REF_DIR>/official --out tests/data/reference

OFFICIAL_SRC may also be a bare git directory of that repository. The script writes
na2d_ops.npz, na2d_module.npz, model_*.npz and official_state_dict_shapes.json (the keys
are documented in tests/data/reference/README.md) and prints the size of each file. It
does not write metrics/ or official_checkpoints.json: those are kept as they are (the
official PSNR/SSIM values of fixed image pairs, and the facts of the released checkpoints).

Compact by design, and exact: the tests compare with max |error| <= 1e-5 in float32.
- Operator and module inputs (q, k, v, rpb, x) are normals rounded to multiples of 1/16,
  stored as float16, which holds them exactly; they are turned into float32 before natten
  runs, so the tests run on the very same numbers.
- Model inputs are uint8 images; the network sees `torch.from_numpy(u8).float() / 255`,
  computed exactly so here and in the tests' loader (tests/conftest.py).
- Module and model parameters are rounded to a grid that float16 holds exactly (1/4 of a
  power of two near each tensor's spread) and stored as float16; the official modules run
  with those values (as float32).
- Outputs are float32, as natten / the official network computed them.
All files are `np.savez_compressed`, without pickle.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn

# Parameters are rounded to multiples of 1 / GRID_STEPS of a power of two near each tensor's
# spread: random, non-trivial values that float16 holds exactly, in less than half the bytes
# that plain float16 rounding takes once compressed.
GRID_STEPS = 4
# Operator and module inputs are standard normals rounded to multiples of 1 / INPUT_GRID.
INPUT_GRID = 16
# (batch, heads, height, width, head size, kernel size, dilation)
OPERATOR_CASES = [
    (1, 2, 23, 25, 16, 7, 3),  # odd sizes, dilation 3
    (1, 1, 40, 23, 8, 7, 1),
    (2, 2, 63, 65, 4, 7, 9),  # batch 2, dilation 9 dividing neither side
    (1, 1, 35, 37, 48, 7, 5),  # head size 48
    (1, 1, 14, 14, 8, 7, 2),  # exactly kernel * dilation
    (1, 1, 255, 253, 4, 7, 36),  # dilation 36 (the model's level 1) on a map >= 252
    (1, 1, 7, 9, 8, 7, 1),  # the smallest legal input
    (1, 2, 29, 28, 48, 7, 4),  # head size 48 and 2 heads, groups of unequal length
]
# (batch, height, width, channels, heads, dilation), kernel size 7
MODULE_CASES = [
    (1, 30, 45, 16, 2, 9),  # smaller than 7 * 9 = 63: padded bottom/right, then cropped
    (2, 29, 30, 16, 4, 4),  # batch 2, 4 heads, no padding
    (1, 256, 12, 8, 1, 36),  # dilation 36 as at level 1: rows not padded (groups of 8 and 7), columns padded
]
SMALL = dict(
    dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 4, 8], chan_adapt=True, mode="hybrid"
)
# name: (constructor arguments, tlc, input shapes (B, C, H, W))
MODEL_CASES = {
    # 64x48 and the batch of two 40x32 pad at every level; 264x256 does not (groups of unequal length)
    "std_global": (dict(SMALL), False, [(1, 3, 64, 48), (1, 3, 264, 256), (2, 3, 40, 32)]),
    # 392x392: more than 384 on both sides, so every level pools locally; 56x64: global
    "std_tlc": (dict(SMALL), True, [(1, 3, 392, 392), (1, 3, 56, 64)]),
    "dualpixel_tlc": (dict(SMALL, inp_channels=6, dual_pixel_task=True), True, [(1, 6, 64, 72)]),
    "nochan_custom": (dict(SMALL, chan_adapt=False, dilations=[8, 4, 2, 1]), False, [(1, 3, 56, 64)]),
}
OFFICIAL_SIZES = {
    "rgb": dict(dim=48, chan_adapt=True, mode="hybrid"),
    "dual_pixel": dict(dim=48, chan_adapt=True, mode="hybrid", inp_channels=6, dual_pixel_task=True),
}


def load_official(root: str) -> types.ModuleType:
    """Import RestoreDiNAT_arch.py from an official checkout with light stubs for basicsr."""
    archs = os.path.join(root, "basicsr", "models", "archs")
    for name in ["basicsr", "basicsr.models", "basicsr.models.archs"]:
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    arch_util = types.ModuleType("basicsr.models.archs.arch_util")
    arch_util.LayerNorm2d = nn.Module  # imported but unused by RestoreDiNAT_arch
    sys.modules["basicsr.models.archs.arch_util"] = arch_util
    for name, file in [
        ("basicsr.models.archs.local_arch", "local_arch.py"),
        ("basicsr.models.archs.RestoreDiNAT_arch", "RestoreDiNAT_arch.py"),
    ]:
        spec = importlib.util.spec_from_file_location(name, os.path.join(archs, file))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["basicsr.models.archs.RestoreDiNAT_arch"]


def randomize(model: nn.Module, g: torch.Generator) -> None:
    """Give every parameter a non-trivial value (on a float16 grid) so that a wrong index or bias shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rpb"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) * 0.6 / fan_in**0.5)
        # keep the restored image near the input, as a trained model's would be
        parameters = dict(model.named_parameters())
        if "output.weight" in parameters:
            parameters["output.weight"].mul_(0.1)
        for p in model.parameters():
            p.copy_(float16_grid(p))


def float16_grid(t: torch.Tensor, steps: int = GRID_STEPS) -> torch.Tensor:
    """t rounded to multiples of 2**k / steps, 2**k nearest its spread: exact in float16, compact once compressed."""
    spread = t.std().item() if t.numel() > 1 else t.abs().item()
    step = 2.0 ** round(math.log2(spread if spread > 0 else 1.0)) / steps
    out = (t / step).round() * step
    assert torch.equal(out.half().float(), out)
    return out


def grid_normal(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Standard normals rounded to multiples of 1 / INPUT_GRID: float16 holds them exactly (as float32 here)."""
    t = (torch.randn(shape, generator=g) * INPUT_GRID).round() / INPUT_GRID
    assert torch.equal(t.half().float(), t)
    return t


def uint8_image(shape: tuple[int, ...], g: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """A random 8-bit image and the network's input made from it, exactly as the tests make it."""
    u8 = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).numpy()
    return u8, torch.from_numpy(u8).float() / 255


def state_dict_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for name, t in module.state_dict().items():
        if t.is_floating_point():
            assert torch.equal(t.half().float(), t), name
            t = t.half()
        out[prefix + name] = t.numpy()
    return out


def operator_cases(g: torch.Generator) -> dict[str, np.ndarray]:
    from natten.functional import natten2dav, natten2dqkrpb

    out = {}
    for i, (batch, heads, height, width, dim, kernel, dilation) in enumerate(OPERATOR_CASES):
        q, k, v = (grid_normal((batch, heads, height, width, dim), g) for _ in range(3))
        rpb = grid_normal((heads, 2 * kernel - 1, 2 * kernel - 1), g)
        scale = dim**-0.5
        attn = natten2dqkrpb(q * scale, k, rpb, kernel, dilation)
        o = natten2dav(attn.softmax(-1), v, kernel, dilation)
        p = f"case{i}/"
        out.update({p + "q": q.half(), p + "k": k.half(), p + "v": v.half(), p + "rpb": rpb.half(), p + "out": o})
        out.update({p + "kernel_size": torch.tensor(kernel), p + "dilation": torch.tensor(dilation)})
        out[p + "scale"] = torch.tensor(scale)
        print(f"  case{i}: q/k/v/out {tuple(q.shape)}, kernel {kernel}, dilation {dilation}")
    return {key: t.numpy() for key, t in out.items()}


def module_cases(g: torch.Generator) -> dict[str, np.ndarray]:
    from natten import NeighborhoodAttention2D

    out = {}
    for i, (batch, height, width, channels, heads, dilation) in enumerate(MODULE_CASES):
        m = NeighborhoodAttention2D(dim=channels, kernel_size=7, dilation=dilation, num_heads=heads)
        randomize(m, g)
        x = grid_normal((batch, height, width, channels), g)
        with torch.no_grad():
            y = m(x)
        p = f"case{i}/"
        out.update(state_dict_arrays(m, p + "param/"))
        out.update({p + "x": x.half().numpy(), p + "y": y.numpy()})
        out.update(
            {p + "num_heads": np.array(heads), p + "kernel_size": np.array(7), p + "dilation": np.array(dilation)}
        )
        print(f"  case{i}: x/y {tuple(x.shape)}, heads {heads}, dilation {dilation}")
    return out


def model_case(arch: types.ModuleType, g: torch.Generator, config: dict, local: bool, inputs: list) -> dict:
    cls = arch.RestoreDiNATLocal if local else arch.RestoreDiNAT
    model = cls(**config).eval()
    if local:  # the official test pipeline runs one 256x256 forward before loading weights
        with torch.no_grad():
            model(torch.rand(1, config.get("inp_channels", 3), 256, 256))
    randomize(model, g)
    out = {"config": np.array(json.dumps({**config, "tlc": local}))}
    out.update(state_dict_arrays(model, "param/"))
    for j, shape in enumerate(inputs):
        u8, x = uint8_image(shape, g)
        with torch.no_grad():
            y = model(x)
        out[f"x{j}"], out[f"y{j}"] = u8, y.numpy()
        print(f"  x{j}/y{j} {shape}: mean|y-x|={(y - x[:, :3]).abs().mean():.4f}")
    return out


def official_state_dict_shapes(arch: types.ModuleType) -> dict:
    shapes = {}
    for name, config in OFFICIAL_SIZES.items():
        state = arch.RestoreDiNAT(**config).state_dict()
        shapes[name] = {
            "config": config,
            "num_params": sum(t.numel() for t in state.values()),
            "keys": {key: list(t.shape) for key, t in state.items()},
        }
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="checkout of github.com/HanzhouLiu/DiNAT-IR")
    parser.add_argument("--out", required=True, help="folder to write, normally tests/data/reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import natten

    assert natten.__version__ == "0.14.6", f"natten {natten.__version__}: the references are natten 0.14.6's"
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    arch = load_official(args.official)
    written = []

    def save(name: str, arrays: dict) -> None:
        path = os.path.join(args.out, name)
        np.savez_compressed(path, **arrays)
        written.append(path)

    print("na2d_ops.npz")
    save("na2d_ops.npz", operator_cases(g))
    print("na2d_module.npz")
    save("na2d_module.npz", module_cases(g))
    for name, (config, local, inputs) in MODEL_CASES.items():
        print(f"model_{name}.npz")
        save(f"model_{name}.npz", model_case(arch, g, config, local, inputs))
    path = os.path.join(args.out, "official_state_dict_shapes.json")
    with open(path, "w") as f:
        json.dump(official_state_dict_shapes(arch), f, indent=1)
    written.append(path)
    for path in written:
        print(f"{os.path.getsize(path) / 1e6:8.3f} MB  {path}")
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(args.out) for f in files)
    print(f"{total / 1e6:8.3f} MB  total of {args.out}")


if __name__ == "__main__":
    main()
