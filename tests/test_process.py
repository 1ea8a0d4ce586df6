"""Process-wide settings are made by whoever owns the process (the dinat command, its Ray
workers, a program that opts in with `dinat_cli.configure_process()`), never by the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from dinat_cli import process
from dinat_cli.cli.app import app

# Restores an image through the library, then frees a 200 MB block, before and after
# opting in: glibc's defaults map such a block afresh and give it back when it is freed,
# dinat's heap settings keep it in the heap for reuse.
_LIBRARY_USE = """
import json, os, sys
import numpy as np
import torch
import dinat_cli
from dinat_cli.checkpoints import describe
from dinat_cli.engine import Restorer
from dinat_cli.options import EngineOptions
from dinat_cli.model import RestoreDiNAT

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def kept_mb():
    before = resident_mb()
    block = torch.ones(50 << 20)
    del block
    return resident_mb() - before

environment = dict(os.environ)
model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
image = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
Restorer(describe(model), EngineOptions(device="cpu")).restore(image)
library = {"kept_mb": kept_mb(), "environment_changed": dict(os.environ) != environment}
dinat_cli.configure_process()
opted_in = {"kept_mb": kept_mb(), "compile_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
print(json.dumps({"library": library, "opted_in": opted_in}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the heap settings are glibc's")
def test_the_library_leaves_the_process_alone_until_the_program_opts_in(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MALLOC_") and key not in ("DINAT_SYSTEM_MALLOC", process.COMPILE_CACHE_ENV)
    }
    env["XDG_CACHE_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", _LIBRARY_USE], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    )
    report = json.loads(result.stdout)
    assert report["library"]["kept_mb"] < 50, report  # given back
    assert not report["library"]["environment_changed"]
    assert report["opted_in"]["kept_mb"] > 150, report  # kept for the next image
    assert report["opted_in"]["compile_cache"] == str(tmp_path / "dinat" / "inductor")


def test_a_compile_cache_of_the_users_own_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(process.COMPILE_CACHE_ENV, raising=False)
    assert process.compile_cache_dir() == tmp_path / "dinat" / "inductor"
    monkeypatch.setenv(process.COMPILE_CACHE_ENV, "/somewhere/else")
    assert process.compile_cache_dir() == Path("/somewhere/else")


def test_the_restore_commands_configure_their_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(process, "configure_process", lambda: calls.append("configured"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    result = CliRunner().invoke(
        app, ["denoise", "--model", "lite-denoise", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    )
    assert result.exit_code == 0, result.output
    assert calls == ["configured"] and (tmp_path / "b.png").is_file()
