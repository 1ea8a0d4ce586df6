"""Multi-head dilated neighbourhood attention layer, as natten 0.14.6 builds it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinat_cli import ops


class NeighborhoodAttention2D(nn.Module):
    """qkv projection, dilated neighbourhood attention with bias, output projection.

    Works on channels-last maps `(B, H, W, C)`. A side shorter than the attention
    span `kernel_size * dilation` is zero-padded at the bottom/right before the qkv
    projection and cropped afterwards: natten 0.14.6 does this and the official
    checkpoints were evaluated with it.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(dim, dim)
        self.kernels: ops.Kernels | None = None  # None: the globally selected backend (ops.use_backend)

    @property
    def span(self) -> int:
        return self.kernel_size * self.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        pad_h, pad_w = max(0, self.span - height), max(0, self.span - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        qkv = _pointwise(self.qkv, x).reshape(batch, padded_h, padded_w, 3, self.num_heads, -1)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
        backend = None if self.kernels is None else self.kernels.attention
        out = ops.na2d(q, k, v, self.kernel_size, self.dilation, rpb=self.rpb, scale=self.scale, backend=backend)
        out = out.permute(0, 2, 3, 1, 4).reshape(batch, padded_h, padded_w, channels)
        return _pointwise(self.proj, out[:, :height, :width])

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}"


def _pointwise(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` for a `(B, H, W, C)` map, as the 1x1 convolution it is.

    On the channels-last memory of the map oneDNN adds the bias inside the matrix
    product; nn.Linear first copies the bias into the whole output (10% slower on CPU).
    """
    weight = linear.weight[:, :, None, None]
    return F.conv2d(x.permute(0, 3, 1, 2), weight, linear.bias).permute(0, 2, 3, 1)
