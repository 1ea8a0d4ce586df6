"""A small DiNAT-IR whose every parameter matters, and its checkpoint: what the tests restore with."""

from __future__ import annotations

from pathlib import Path

import torch

from dinat_cli.model import RestoreDiNAT

SMALL = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "chan_adapt": True}


def random_small_model(**overrides: object) -> RestoreDiNAT:
    """SMALL with `overrides`, every parameter (biases and norms included) moved off its initial value."""
    torch.manual_seed(0)
    model = RestoreDiNAT(**{**SMALL, **overrides}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def save_checkpoint(path: Path, **overrides: object) -> Path:
    """`random_small_model(**overrides)` saved as BasicSR saves it: `{'params': state_dict}`."""
    torch.save({"params": random_small_model(**overrides).state_dict()}, path)
    return path
