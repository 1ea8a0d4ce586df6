"""The feed-forward network's gate: gelu(dwconv3x3(gates)) * dwconv3x3(values), on a band of rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dinat_cli.ops import native
from dinat_cli.ops.kernels import Kernels, runs_native


def gated_dwconv_gelu(
    blocks: torch.Tensor | Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    first: int,
    rows: int,
    *,
    kernels: Kernels | None = None,
) -> torch.Tensor:
    """Rows `[first, first + rows)` of `gelu(dw(hidden)[:C]) * dw(hidden)[C:]` for a `(B, 2C, R, W)` map.

    `hidden` is given whole or as `blocks`, consecutive bands of its rows. `weight` `(2C, 1, 3, 3)`
    and `bias` are the depth-wise convolution's; the rows of `hidden` beyond the band are
    the convolution's zero padding (the image's edge). The native kernel does it in one
    pass over the blocks where they lie; PyTorch concatenates them first. `kernels`
    chooses (None: the native kernel wherever it can take the blocks).
    """
    if isinstance(blocks, torch.Tensor):
        blocks = [blocks]
    if runs_native(blocks[0], kernels):
        return native.gated_dwconv_gelu(blocks, weight, bias, first, rows)
    return gated_dwconv_gelu_reference(torch.cat(list(blocks), dim=2), weight, bias, first, rows)


def gated_dwconv_gelu_reference(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, first: int, rows: int
) -> torch.Tensor:
    """The same on one `(B, 2C, R, W)` tensor, in PyTorch operations."""
    convolved = F.conv2d(hidden, weight, bias, padding=1, groups=hidden.shape[1])[:, :, first : first + rows]
    gate, value = convolved.chunk(2, dim=1)
    return F.gelu(gate) * value
