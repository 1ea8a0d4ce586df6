"""`build_official_model()` for `bench_network.py --official`: the authors' network.

The upstream `RestoreDiNATLocal` (dim 48, `chan_adapt=True`, hybrid, TLC) on natten
0.14.6's CPU kernels, imported from an official checkout at run time. Run it with the
Python that `tools/setup_reference.sh` makes (it has natten), with dinat installed there:

    OFFICIAL_SRC=<DiNAT-IR checkout> REF_DIR=ref bash tools/setup_reference.sh
    ref/venv/bin/pip install .
    DINAT_OFFICIAL_SRC=ref/official ref/venv/bin/python benchmarks/bench_network.py \\
        --official benchmarks/official_model.py --configs fp32-native,bf16-native
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import torch

_REFERENCE_TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_reference_data.py"
# The released configuration where it differs from the upstream constructor's defaults.
_RELEASED = dict(dim=48, chan_adapt=True, mode="hybrid")


def build_official_model() -> torch.nn.Module:
    root = os.environ.get("DINAT_OFFICIAL_SRC")
    if not root:
        raise SystemExit("set DINAT_OFFICIAL_SRC to an official DiNAT-IR checkout (see this file's docstring)")
    arch = runpy.run_path(str(_REFERENCE_TOOL))["load_official"](root)
    model = arch.RestoreDiNATLocal(**_RELEASED).eval()
    # The official test pipeline runs one 256x256 forward before loading weights: that
    # fixes TLC's pooling kernels from the training size.
    with torch.no_grad():
        model(torch.rand(1, 3, 256, 256))
    return model
