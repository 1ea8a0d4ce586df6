"""Dilated neighbourhood attention through PyTorch's `flex_attention` (CUDA).

The map is flattened to H*W tokens; the neighbourhood is a mask (a key is in a query's
window when it lies in the query's dilation group, at most K-1 dilated steps past the
window start) and the relative position bias a score modification. The block mask
lets the kernel skip key blocks that hold no window member.
"""

from __future__ import annotations

import torch

from dinat_cli.ops import neighborhood
from dinat_cli.ops.backends import Compiled
from dinat_cli.ops.windows import axis_windows


def _flex_attention(*args: object, **kwargs: object) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(*args, **kwargs)


# flex_attention only generates its fused kernel when compiled.
_compiled_flex = Compiled(_flex_attention, dynamic=False)


def na2d_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """`(B, heads, H, W, D)` attention outputs; inputs as `neighborhood.na2d` takes them."""
    from torch.nn.attention.flex_attention import create_block_mask

    height, width = q.shape[2], q.shape[3]
    row_start = axis_windows(height, kernel_size, dilation, q.device)[0][:, 0]
    col_start = axis_windows(width, kernel_size, dilation, q.device)[0][:, 0]
    span = kernel_size * dilation

    def offsets(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q_row, q_col = q_idx // width, q_idx % width
        kv_row, kv_col = kv_idx // width, kv_idx % width
        return q_row, q_col, kv_row - row_start[q_row], kv_col - col_start[q_col]

    def in_window(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        _, _, d_row, d_col = offsets(q_idx, kv_idx)
        inside = (d_row >= 0) & (d_row < span) & (d_col >= 0) & (d_col < span)
        return inside & (d_row % dilation == 0) & (d_col % dilation == 0)

    def add_bias(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        q_row, q_col, _, _ = offsets(q_idx, kv_idx)
        kv_row, kv_col = kv_idx // width, kv_idx % width
        # Offset in dilated steps, shifted to [0, 2K-2]; clamped so masked-out pairs
        # still index inside the table.
        bias_row = (kv_row // dilation - q_row // dilation + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
        bias_col = (kv_col // dilation - q_col // dilation + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
        return score + rpb[h, bias_row, bias_col].to(score.dtype)

    tokens = height * width
    mask = create_block_mask(in_window, None, None, tokens, tokens, device=q.device)
    flat = [t.flatten(2, 3) for t in (q, k, v)]
    out = _compiled_flex(
        *flat,
        score_mod=add_bias if rpb is not None else None,
        block_mask=mask,
        scale=scale,
        # flex_attention uncompiled would hold all H*W x H*W scores: use the reference.
        fallback=lambda: neighborhood.na2d(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale).flatten(2, 3),
    )
    return out.unflatten(2, (height, width))
