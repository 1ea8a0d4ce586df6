"""Shared fixtures. The golden references live beside the project in ../shared/golden."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
