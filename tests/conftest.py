"""Shared fixtures. The reference data (outputs of the authors' official code) lives in the
repository, in tests/data/reference: see its README.md, and tools/make_reference_data.py,
which made it."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _is_project_root(entry: str) -> bool:
    try:
        return Path(entry or os.curdir).resolve() == PROJECT_ROOT
    except (OSError, RuntimeError):
        return False


def editable_install() -> bool:
    """Whether dinat-cli is installed in editable (development) mode, as pip records it."""
    try:
        direct_url = metadata.distribution("dinat-cli").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return False
    return bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"))


def _use_the_installed_package() -> str | None:
    """Make `import dinat_cli` find the installed package, not the source folder.

    `python -m pytest` (and PYTHONPATH=.) put the clone's root on sys.path, where
    `import dinat_cli` finds the source folder: it lacks what only the installed package
    holds (dinat_cli.weights, mapped from weights/ by pyproject.toml; built kernels).
    Returns why the tests cannot run, or None.
    """
    original = list(sys.path)
    sys.path[:] = [entry for entry in original if not _is_project_root(entry)]
    dropped = len(sys.path) < len(original)
    if dropped:
        importlib.invalidate_caches()
    # An editable install resolves through a meta-path finder, without the root on sys.path.
    if importlib.util.find_spec("dinat_cli") is not None:
        return None
    if dropped and editable_install():  # an older editable install that works through the path
        sys.path[:] = original
        return None
    return "dinat_cli is not installed: run `pip install .` (or `pip install '.[test]'`) in the project first"


_NOT_INSTALLED = _use_the_installed_package()  # before any test module imports dinat_cli

from dinat_cli.ops import native  # noqa: E402
from dinat_cli.ops.cpu_variants import variants_for  # noqa: E402

REFERENCE_DIR = Path(os.environ.get("DINAT_REFERENCE", PROJECT_ROOT / "tests" / "data" / "reference"))


def pytest_configure(config: pytest.Config) -> None:
    if _NOT_INSTALLED:
        raise pytest.UsageError(_NOT_INSTALLED)  # one line: "ERROR: dinat_cli is not installed: ..."


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
def editable() -> bool:
    """Whether dinat-cli is installed in editable mode (pip's direct_url.json says so)."""
    return editable_install()


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
