"""The embedded `lite-denoise` model on the held-out examples: the bar it must clear.

The examples are scikit-image photos the model never saw in training, three in colour
and three grey (see tools/train_lite.py), with sigma 25 Gaussian noise. The model runs
as `dinat denoise` runs it: through the registry, the file layer and the engine, CPU,
float32, TLC on. tools/train_lite.py scores it, as for README's table (`train_lite.py table`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from installed import DINAT

from dinat_cli import checkpoints
from dinat_cli.engine import Restorer
from dinat_cli.model.variants import get_variant
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.registry import catalogue, locations, selection

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = PROJECT_ROOT / "examples"
MIN_GAIN_DB = 8.0


def _train_lite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_lite", PROJECT_ROOT / "tools" / "train_lite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


train_lite = _train_lite()


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> list[train_lite.HeldOutScore]:
    """The lite model's scores and OpenCV's best, the model found through the shipped registry as the CLI finds it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        patch.delenv(locations.WEIGHTS_DIR_ENV, raising=False)
        patch.delenv(catalogue.REGISTRY_ENV, raising=False)
        path, entry = selection.select("denoise", model="lite-denoise")
    assert entry is not None and path.parent == catalogue.registry_dir()
    restorer = Restorer.load(ModelSource(path, entry.variant), EngineOptions(device="cpu", precision="fp32"))
    return train_lite.held_out_scores(restorer, EXAMPLES, with_nlm=True)


@pytest.mark.parametrize("grey", [False, True], ids=["colour", "grey"])
def test_lite_model_gains_8_db_and_beats_opencv_nlm(scores: list[train_lite.HeldOutScore], grey: bool) -> None:
    """Grey photos reach the network as three equal channels with equal noise: they must gain as much."""
    group = [score for score in scores if score.grey == grey]
    assert len(group) >= 3
    summary = "; ".join(
        f"{s.name}: noisy {s.noisy:.2f}, best OpenCV NLM {s.nlm:.2f} (h {s.nlm_strength}), lite {s.restored:.2f} dB"
        for s in group
    )
    # OpenCV at its best strength for each image: the most favourable comparison for it.
    assert all(s.nlm_strength < max(train_lite.NLM_STRENGTHS) for s in group), summary
    assert np.mean([s.restored - s.noisy for s in group]) >= MIN_GAIN_DB, summary
    assert all(s.restored > s.nlm for s in group), summary


def test_lite_model_is_small_and_self_describing() -> None:
    entry = catalogue.get("lite-denoise")
    assert entry.url is None and entry.task == "denoise"
    assert entry.size <= 5_000_000
    _, config = checkpoints.read_state_dict(catalogue.registry_dir() / entry.filename)
    assert config == json.loads(json.dumps(dict(get_variant(entry.variant).config)))  # as JSON holds it
    assert catalogue.default_model("denoise").name == "sidd"  # the official model stays the default


def test_quick_start_command_scores_what_the_engine_gives(
    scores: list[train_lite.HeldOutScore], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    overrides = (locations.WEIGHTS_DIR_ENV, catalogue.REGISTRY_ENV)
    env = {key: value for key, value in os.environ.items() if key not in overrides}
    completed = subprocess.run(
        [
            *DINAT,
            "denoise",
            "--model",
            "lite-denoise",
            "examples/noisy",
            str(out),
            "--gt",
            "examples/clean",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**env, "XDG_CACHE_HOME": str(tmp_path / "xdg")},
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["model"] == "lite-denoise"
    assert document["summary"]["done"] == len(scores)
    assert sorted(path.stem for path in out.glob("*.png")) == sorted(score.name for score in scores)
    assert document["summary"]["mean"]["psnr"] == pytest.approx(np.mean([s.restored for s in scores]), abs=0.01)
