"""Shared fixtures. The golden references live beside the project in ../shared/golden."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dinat_cli.ops import native
from dinat_cli.ops.cpu_variants import variants_for

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("DINAT_GOLDEN", PROJECT_ROOT.parent / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The reference folder; its absence is a failure, never a silent skip."""
    if not GOLDEN_DIR.is_dir():
        pytest.fail(
            f"golden references not found at {GOLDEN_DIR}: clone the project beside ../shared or set DINAT_GOLDEN",
            pytrace=False,
        )
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def load_golden(golden_dir: Path):
    """Open one golden .npz file (no pickle) by name."""

    def load(name: str) -> np.lib.npyio.NpzFile:
        return np.load(golden_dir / name, allow_pickle=False)

    return load


@pytest.fixture(scope="session")
def na2d_case(load_golden):
    """One operator case of na2d_ops.npz as tensors plus its kernel size, dilation and scale."""

    def case(name: str) -> dict:
        data = load_golden("na2d_ops.npz")
        arrays = {key: torch.from_numpy(data[f"{name}/{key}"]) for key in ("q", "k", "v", "rpb", "out")}
        arrays.update(
            kernel_size=int(data[f"{name}/kernel_size"]),
            dilation=int(data[f"{name}/dilation"]),
            scale=float(data[f"{name}/scale"]),
        )
        return arrays

    return case


CPU_VARIANTS = [variant.name for variant in variants_for()]


def _use_cpu_kernels(name: str) -> Iterator[str]:
    """Run the test with kernel variant `name` (or `off`, the PyTorch fallbacks).

    A variant this CPU cannot run is skipped; one that was not built is skipped too,
    unless DINAT_REQUIRE_CPU_KERNELS is set (CI), where it fails.
    """
    with native.use_variant(name):
        status = native.kernel_status()
        if name != "off" and status.reason is not None:
            if name not in status.variants_built and os.environ.get("DINAT_REQUIRE_CPU_KERNELS"):
                pytest.fail(status.reason, pytrace=False)
            pytest.skip(status.reason)
        yield name


@pytest.fixture(params=[*CPU_VARIANTS, "off"])
def cpu_kernels(request) -> Iterator[str]:
    """Each compiled kernel variant in turn, then `off`."""
    yield from _use_cpu_kernels(request.param)


@pytest.fixture(params=CPU_VARIANTS)
def cpu_variant(request) -> Iterator[str]:
    """Each compiled kernel variant in turn."""
    yield from _use_cpu_kernels(request.param)
