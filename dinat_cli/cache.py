"""The user cache folder: checkpoints, checksum verdicts and compiled kernels go there.

Torch-free and network-free: the weights registry and the process settings both import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/dinat`, else `~/.cache/dinat`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dinat"
