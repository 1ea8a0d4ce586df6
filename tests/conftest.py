"""Shared fixtures. The reference data (outputs of the authors' official code) lives in the
repository, in tests/data/reference: see its README.md, and tools/make_reference_data.py,
which made it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]

REFERENCE_DIR = Path(os.environ.get("DINAT_REFERENCE", PROJECT_ROOT / "tests" / "data" / "reference"))


def reference_tensor(array: np.ndarray) -> torch.Tensor:
    """The float32 tensor that a stored reference array stands for: the one place that converts.

    uint8 arrays are images: the network's input is `torch.from_numpy(u8).float() / 255`,
    computed exactly so by tools/make_reference_data.py. float16 arrays (operator and module
    inputs, parameters) hold their values exactly. Everything else is returned as stored.
    """
    tensor = torch.from_numpy(array)
    if array.dtype == np.uint8:
        return tensor.float() / 255
    if array.dtype == np.float16:
        return tensor.float()
    return tensor


class Reference:
    """One reference .npz file (no pickle): raw arrays by key, float32 tensors by `tensor` / `state_dict`."""

    def __init__(self, path: Path) -> None:
        self._data = np.load(path, allow_pickle=False)
        self.files = self._data.files

    def __getitem__(self, key: str) -> np.ndarray:
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def tensor(self, key: str) -> torch.Tensor:
        return reference_tensor(self._data[key])

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The float32 parameters stored under `prefix`, named without it."""
        return {key.removeprefix(prefix): self.tensor(key) for key in self.files if key.startswith(prefix)}


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference folder; its absence is a failure, never a silent skip."""
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE_DIR} (DINAT_REFERENCE overrides it)", pytrace=False)
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def load_reference(reference_dir: Path):
    """Open one reference .npz file by name, as a `Reference`."""

    def load(name: str) -> Reference:
        return Reference(reference_dir / name)

    return load


@pytest.fixture(scope="session")
def na2d_case(load_reference):
    """One operator case of na2d_ops.npz as float32 tensors plus its kernel size, dilation and scale."""

    def case(name: str) -> dict:
        data = load_reference("na2d_ops.npz")
        arrays = {key: data.tensor(f"{name}/{key}") for key in ("q", "k", "v", "rpb", "out")}
        arrays.update(
            kernel_size=int(data[f"{name}/kernel_size"]),
            dilation=int(data[f"{name}/dilation"]),
            scale=float(data[f"{name}/scale"]),
        )
        return arrays

    return case
