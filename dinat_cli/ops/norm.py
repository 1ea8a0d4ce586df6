"""Layer norm over the channels of a channels-last map: the native kernel or PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinat_cli.ops import native
from dinat_cli.ops.kernels import Kernels, runs_native


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, *, kernels: Kernels | None = None
) -> torch.Tensor:
    """Layer norm of a `(B, H, W, C)` map over C, in its dtype; without `bias`, Restormer's bias-free norm.

    `kernels` chooses the implementation (None: the native kernel wherever it can take `x`).
    """
    if runs_native(x, kernels):
        return native.layer_norm(x, weight, bias, eps)
    return layer_norm_reference(x, weight, bias, eps)


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The same in PyTorch operations."""
    if bias is not None:
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps=eps)
    # Restormer's bias-free variant scales by the centred variance without centring.
    variance = x.var(dim=-1, keepdim=True, unbiased=False)
    return x * torch.rsqrt(variance + eps) * weight
