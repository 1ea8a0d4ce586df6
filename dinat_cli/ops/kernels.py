"""Which implementation runs each kind of operation: one choice, resolved once per model and device.

The attention has its backends (`backends.py`); layer norm, the feed-forward gate and
the channel means have two implementations, the native CPU kernels (`native.py`) and
the PyTorch reference. `resolve_kernels` turns `--attention`'s value into a `Kernels`
for a device; the engine pins it on the model, whose modules hand it to every `ops` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dinat_cli.ops import native
from dinat_cli.ops.backends import BACKENDS, resolve_backend, unavailable_reason, validate_backend

NON_ATTENTION_KERNELS = ("native", "torch")


@dataclass(frozen=True)
class Kernels:
    """The attention backend, and the implementation of layer norm, gate and pooling (native or torch).

    `cpu_variant` names the native kernels' instruction-set variant where they run, for reports.
    """

    attention: str
    norm_gate_pooling: str
    cpu_variant: str | None = None

    def __post_init__(self) -> None:
        if self.attention not in BACKENDS or self.attention == "auto":
            raise ValueError(f"attention {self.attention!r}: expected a concrete backend of {', '.join(BACKENDS)}")
        if self.norm_gate_pooling not in NON_ATTENTION_KERNELS:
            raise ValueError(f"norm_gate_pooling {self.norm_gate_pooling!r}: expected native or torch")

    def describe(self) -> str:
        """One line for reports, e.g. `attention native (avx512bf16), norm/gate/pooling native`."""
        parts = [("attention", self.attention), ("norm/gate/pooling", self.norm_gate_pooling)]
        words = [f"{kind} {name}" for kind, name in parts]
        if self.cpu_variant:
            # The variant once, after the first kind that runs the native kernels.
            first_native = next((i for i, (_, name) in enumerate(parts) if name == "native"), None)
            if first_native is not None:
                words[first_native] += f" ({self.cpu_variant})"
        return ", ".join(words)


EAGER = Kernels("torch", "torch")


def resolve_kernels(spec: str, device: torch.device | str) -> Kernels:
    """The kernels `--attention spec` runs on `device`.

    `torch` is the eager PyTorch reference for every operation. Any other value picks
    the attention as `resolve_backend` does (a backend that cannot run here is a
    UsageError), and the native layer norm, gate and pooling where the native kernels
    run on `device` (a CPU with a runnable variant), else their PyTorch reference.
    """
    if validate_backend(spec) == "torch":
        return EAGER
    attention = resolve_backend(spec, device)
    others = "native" if unavailable_reason("native", device) is None else "torch"
    variant = native.kernel_status().variant if "native" in (attention, others) else None
    return Kernels(attention, others, variant)


def runs_native(x: torch.Tensor, kernels: Kernels | None) -> bool:
    """Whether layer norm, gate and pooling run the native kernels on `x` under `kernels`.

    None: wherever the native kernels can take `x` (a CPU tensor, the library loaded).
    """
    if kernels is None:
        return native.usable_for(x)
    return kernels.norm_gate_pooling == "native" and x.device.type == "cpu"
