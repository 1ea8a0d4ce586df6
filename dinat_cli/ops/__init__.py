"""The network's operators and the choice of their implementations.

`na2d`, dilated neighbourhood attention, runs the backend named in its `backend`
argument, else the one selected with `use_backend` / `set_backend` (default `auto`);
`neighborhood.na2d` is the eager reference. `layer_norm`, `gated_dwconv_gelu`,
`channel_means` and `box_means` run the native CPU kernels or PyTorch, as their
`kernels` argument says (None: native wherever it can). `resolve_kernels` makes that
choice, attention included, once for a model and device (`Kernels`); the model's
modules pass it to these functions, and call no implementation directly.
"""

from __future__ import annotations

import torch

from dinat_cli.ops import neighborhood
from dinat_cli.ops.backends import (
    BACKENDS,
    Compiled,
    available_backends,
    current_backend,
    resolve_backend,
    set_backend,
    use_backend,
    validate_backend,
)
from dinat_cli.ops.fused import na2d_fused
from dinat_cli.ops.gated import gated_dwconv_gelu
from dinat_cli.ops.kernels import EAGER, Kernels, resolve_kernels, runs_native
from dinat_cli.ops.means import box_means, channel_means
from dinat_cli.ops.norm import layer_norm
from dinat_cli.ops.windows import axis_windows

__all__ = [
    "BACKENDS",
    "EAGER",
    "Kernels",
    "available_backends",
    "box_means",
    "channel_means",
    "current_backend",
    "gated_dwconv_gelu",
    "layer_norm",
    "na2d",
    "resolve_backend",
    "resolve_kernels",
    "runs_native",
    "set_backend",
    "use_backend",
    "validate_backend",
]


# One compiled kernel set serves every map size: sizes are symbolic from the start.
_compiled_na2d = Compiled(na2d_fused, dynamic=True)


def na2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Dilated neighbourhood attention over `(B, heads, H, W, D)` tensors, natten 0.14.6 semantics.

    `rpb` is the relative position bias `(heads, 2K-1, 2K-1)`; `scale` defaults to
    `D ** -0.5`. `backend` overrides the selected backend for this call (a model passes
    its `Kernels.attention`).
    """
    name = resolve_backend(backend, q.device)
    if name == "torch":
        return neighborhood.na2d(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale)
    neighborhood.check_inputs(q, k, v, kernel_size, dilation, rpb)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if name == "native":
        from dinat_cli.ops.native import na2d_native

        out = na2d_native(q, k, v, kernel_size, dilation, rpb, scale)
        if out is not None:
            return out
        # A head dimension or window beyond the kernel's variants: the exact reference.
        return neighborhood.na2d(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale)
    if name == "natten":
        from dinat_cli.ops.natten_backend import na2d_natten

        return na2d_natten(q, k, v, kernel_size, dilation, rpb, scale)
    if name == "flex":
        from dinat_cli.ops.flex import na2d_flex

        return na2d_flex(q, k, v, kernel_size, dilation, rpb, scale)
    # Kernels compiled for symbolic strides cannot prove D contiguous and stop
    # vectorising: the model's q, k, v (views of one qkv tensor) ran 1.4x slower.
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    # Dynamo keeps a Parameter's shape static, and through it the number of heads:
    # a plain tensor lets one graph serve every head count above one.
    rpb = None if rpb is None else rpb.detach()
    key_rows, bias_rows = axis_windows(q.shape[2], kernel_size, dilation, q.device)
    key_cols, bias_cols = axis_windows(q.shape[3], kernel_size, dilation, q.device)
    return _compiled_na2d(
        q,
        k,
        v,
        key_rows,
        key_cols,
        bias_rows,
        bias_cols,
        rpb,
        scale,
        # Where compiling fails, the banded reference computes the same thing.
        fallback=lambda: neighborhood.na2d(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale),
    )
