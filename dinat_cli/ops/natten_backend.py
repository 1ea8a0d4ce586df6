"""natten's fused kernels as a backend, where an rpb-capable natten (0.14 to 0.17) is installed.

The reference semantics are exactly natten's `natten2dqkrpb` + softmax + `natten2dav`,
so this is the same computation, only in natten's kernels.
"""

from __future__ import annotations

import torch


def unavailable_reason() -> str | None:
    """Why the installed natten cannot serve as a backend, or None if it can."""
    try:
        from natten.functional import natten2dav, natten2dqkrpb  # noqa: F401
    except ImportError:
        return "this natten has no natten2dqkrpb/natten2dav (relative position bias was removed in 0.20)"
    return None


def na2d_natten(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """`(B, heads, H, W, D)` attention outputs through natten."""
    from natten.functional import natten2dav, natten2dqkrpb

    logits = natten2dqkrpb(q * scale, k, rpb, kernel_size, dilation)
    attn = logits.float().softmax(dim=-1).to(v.dtype)
    return natten2dav(attn, v, kernel_size, dilation)
