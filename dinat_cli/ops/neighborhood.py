"""Dilated neighbourhood attention in plain PyTorch: the reference backend.

Semantics are natten 0.14.6's `natten2dqkrpb` + softmax + `natten2dav`. Keys and
values of each query's window are gathered for a band of query rows at a time, so
memory stays linear in H*W with a bounded constant (a whole-image gather would hold
K*K copies of the keys).
"""

from __future__ import annotations

import torch

from dinat_cli.ops.windows import axis_windows, check_extent

# Upper bound on the gathered window tensor of one band of rows, in elements.
_BAND_ELEMENTS = 1 << 23


def na2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Dilated neighbourhood attention over `(B, heads, H, W, D)` tensors.

    `rpb` is the relative position bias `(heads, 2K-1, 2K-1)`; `scale` defaults to
    `D ** -0.5`. Each query attends to the `K*K` keys of its dilation group nearest to
    it, the window shifted inwards at the borders.
    """
    check_inputs(q, k, v, kernel_size, dilation, rpb)
    batch, heads, height, width, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    key_rows, bias_rows = axis_windows(height, kernel_size, dilation, q.device)
    key_cols, bias_cols = axis_windows(width, kernel_size, dilation, q.device)

    window = kernel_size * kernel_size
    per_row = batch * heads * width * window * max(dim, v.shape[-1])
    band = max(1, _BAND_ELEMENTS // per_row)
    out = q.new_empty(batch, heads, height, width, v.shape[-1])
    for top in range(0, height, band):
        rows = slice(top, min(top + band, height))
        bias = None
        if rpb is not None:
            bias = rpb[:, bias_rows[rows, None, :, None], bias_cols[None, :, None, :]]
        out[:, :, rows] = attend_band(q[:, :, rows] * scale, k, v, key_rows[rows], key_cols, bias)
    return out


def attend_band(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_rows: torch.Tensor,
    key_cols: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Attention of a band of (already scaled) query rows over their gathered windows.

    `q` is `(B, heads, R, W, D)`; `key_rows` `(R, K)` and `key_cols` `(W, K)` hold key
    positions; `bias` is `(heads, R, W, K, K)` or None.
    """
    # Flat key positions, gathered with index_select: its gradient (an index_add) costs a
    # third of advanced indexing's (an accumulating index_put) when training.
    positions = (key_rows[:, None, :, None] * k.shape[3] + key_cols[None, :, None, :]).flatten()
    window = (*q.shape[:4], key_rows.shape[1] * key_cols.shape[1])

    def gather(x: torch.Tensor) -> torch.Tensor:  # (B, heads, R, W, K*K, D)
        return x.flatten(2, 3).index_select(2, positions).view(*window, x.shape[-1])

    logits = torch.einsum("bhrwd,bhrwnd->bhrwn", q, gather(k))
    if bias is not None:
        logits = logits + bias.flatten(-2)
    # Half-precision softmax over 49 terms loses digits; accumulate in float32.
    attn = logits.float().softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhrwn,bhrwnd->bhrwd", attn, gather(v))


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
) -> None:
    """Raise ValueError for shapes natten would reject (every backend checks the same)."""
    if q.dim() != 5 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            "q, k, v must be (B, heads, H, W, D) with matching shapes, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    check_extent(q.shape[2], kernel_size, dilation, "H")
    check_extent(q.shape[3], kernel_size, dilation, "W")
    if rpb is not None and tuple(rpb.shape) != (q.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(
            f"rpb must be (heads, 2K-1, 2K-1) = ({q.shape[1]}, {2 * kernel_size - 1}, "
            f"{2 * kernel_size - 1}), got {tuple(rpb.shape)}"
        )
