"""Dilated neighbourhood attention as one whole-map expression, written for a compiler.

The same arithmetic as the reference (`neighborhood.na2d`): scale the queries, dot them
with the K*K keys of their window, add the relative position bias, softmax in float32,
weight the values. Written as gathers feeding reductions over the whole map so that
inductor fuses each gather into the reduction that consumes it: no K*K copy of the
keys is ever stored. Run eagerly it would materialise those copies; the reference
backend is the eager path.
"""

from __future__ import annotations

import torch


def na2d_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_rows: torch.Tensor,
    key_cols: torch.Tensor,
    bias_rows: torch.Tensor,
    bias_cols: torch.Tensor,
    rpb: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """`(B, heads, H, W, D)` attention outputs.

    The window tables come from `windows.axis_windows` as inputs rather than being
    computed in the graph: with symbolic sizes, inline index arithmetic (divisions,
    modulo) ends up in the innermost loop and was 10x slower than loading the tables.
    """
    rows = key_rows[:, None, :, None]
    cols = key_cols[None, :, None, :]
    # Reducing over the last axis (D) for the logits and over the window axis for the
    # output keeps D innermost in both kernels, where it vectorises; a (K, K, D) layout
    # put D in an outer loop and ran 10x slower.
    keys = k[:, :, rows, cols].flatten(-3, -2)  # (B, heads, H, W, K*K, D), fused away
    logits = ((q * scale)[..., None, :] * keys).sum(-1)
    if rpb is not None:
        logits = logits + rpb[:, bias_rows[:, None, :, None], bias_cols[None, :, None, :]].flatten(-2)
    attn = logits.float().softmax(dim=-1).to(v.dtype)
    values = v[:, :, rows, cols].flatten(-3, -2)
    return (attn[..., None] * values).sum(-2)
