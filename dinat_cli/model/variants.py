"""The named DiNAT-IR configurations dinat knows, declared once: the five official models and lite-denoise.

A variant is what the tensors of a checkpoint cannot say (dilations, attention mode, the
window's side) together with what they can, so that a known file loads without guessing.
The weights registry (`weights/registry.json`) keeps files, URLs and checksums, and names
the variant of each file. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Variant:
    """A named configuration: `config` holds `RestoreDiNAT`'s keyword arguments."""

    name: str
    task: str
    config: Mapping[str, Any]


# The released configuration: width 48, channel-adaptive hybrid attention, used at test
# time with TLC (github.com/HanzhouLiu/DiNAT-IR, options/test/*.yml).
OFFICIAL_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "inp_channels": 3,
        "out_channels": 3,
        "dim": 48,
        "num_blocks": (2, 3, 3, 4),
        "num_refinement_blocks": 2,
        "heads": (1, 2, 4, 8),
        "dilations": (36, 18, 9, 4),
        "ffn_expansion_factor": 2.66,
        "bias": False,
        "LayerNorm_type": "WithBias",
        "chan_adapt": True,
        "mode": "hybrid",
        "dual_pixel_task": False,
        "kernel_size": 7,
    }
)

VARIANTS: dict[str, Variant] = {}


def register(name: str, task: str, **changes: Any) -> Variant:
    """Declare variant `name`: the official configuration with `changes`."""
    if name in VARIANTS:
        raise ValueError(f"variant {name!r} is declared twice")
    unknown = set(changes) - set(OFFICIAL_CONFIG)
    if unknown:
        raise ValueError(f"variant {name!r}: unknown settings {sorted(unknown)}")
    variant = Variant(name, task, MappingProxyType({**OFFICIAL_CONFIG, **changes}))
    VARIANTS[name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The variant called `name`; a KeyError names the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown DiNAT-IR variant {name!r}; known: {', '.join(VARIANTS)}") from None


register("gopro", "deblur")
register("spdd", "defocus")
register("dpdd", "defocus", inp_channels=6, dual_pixel_task=True)
register("sidd", "denoise")
register("rain13k", "derain")
# Small enough to ship in the package and to train on a CPU (tools/train_lite.py), and every
# attention span fits a 64 px crop with no padding: K * dilation = 40, 20, 10, 5 against
# features of 64, 32, 16, 8 pixels.
register(
    "lite-denoise",
    "denoise",
    dim=16,
    num_blocks=(1, 1, 1, 1),
    num_refinement_blocks=1,
    dilations=(8, 4, 2, 1),
    kernel_size=5,
)
