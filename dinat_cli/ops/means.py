"""Channel means for the channel modulation: over the whole map, or TLC's boxes; the native kernels or PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinat_cli.ops import native
from dinat_cli.ops.kernels import Kernels, runs_native


def channel_means(x: torch.Tensor, *, kernels: Kernels | None = None) -> torch.Tensor:
    """Mean of each channel of a `(B, C, H, W)` map, `(B, C, 1, 1)` in its dtype.

    `kernels` chooses the implementation (None: the native kernel wherever it can take `x`).
    """
    if runs_native(x, kernels):
        return native.channel_means(x).to(x.dtype)
    return x.mean(dim=(-2, -1), keepdim=True)


def box_means(x: torch.Tensor, box_h: int, box_w: int, *, kernels: Kernels | None = None) -> torch.Tensor:
    """Means of every `box_h x box_w` box of a `(B, C, H, W)` map, `(B, C, H-box_h+1, W-box_w+1)` in its dtype.

    `kernels` chooses the implementation (None: the native kernel wherever it can take `x`);
    both compute float32 means equal value for value.
    """
    if runs_native(x, kernels):
        return native.box_means(x, box_h, box_w).to(x.dtype)
    return box_means_reference(x, box_h, box_w).to(x.dtype)


def box_means_reference(x: torch.Tensor, box_h: int, box_w: int) -> torch.Tensor:
    """Float32 box means from an integral image, in PyTorch operations.

    Computed in the same order as the official exact implementation (cumulative sums
    over W then H), whose rounding the checkpoints were evaluated with; the cost does
    not grow with the box.
    """
    integral = x.float().cumsum(dim=-1).cumsum(dim=-2)
    integral = F.pad(integral, (1, 0, 1, 0))
    sums = (
        integral[..., box_h:, box_w:]
        + integral[..., :-box_h, :-box_w]
        - integral[..., :-box_h, box_w:]
        - integral[..., box_h:, :-box_w]
    )
    return sums / (box_h * box_w)
