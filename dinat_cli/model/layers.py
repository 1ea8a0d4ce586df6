"""Convolutional building blocks of DiNAT-IR (shared with Restormer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinat_cli import ops


class _NormBody(nn.Module):
    """Layer norm over channels of a channels-last tensor; 'BiasFree' keeps the mean."""

    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-5)
        # Restormer's bias-free variant scales by the centred variance without centring.
        variance = x.var(dim=-1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(variance + 1e-5) * self.weight


class LayerNorm(nn.Module):
    """Per-pixel layer norm of a `(B, C, H, W)` map over its channels."""

    def __init__(self, dim: int, layer_norm_type: str) -> None:
        super().__init__()
        if layer_norm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {layer_norm_type!r}")
        self.body = _NormBody(dim, with_bias=layer_norm_type == "WithBias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FeedForward(nn.Module):
    """Gated depth-wise convolution feed-forward network (GDFN).

    Runs in bands of rows, each with a one-row halo for the 3x3 depth-wise convolution
    (exact): the hidden maps, 5x wider than the input, stay band-sized instead of
    image-sized, so they are reused from the heap rather than faulted in afresh.
    """

    band_pixels = 1 << 15

    def __init__(self, dim: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._banded(x, norm=None, residual=False)

    def add_to(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """`x + self(norm(x))`, with the norm and the sum done band by band while the band is in cache."""
        return self._banded(x, norm=norm, residual=True)

    def _banded(self, x: torch.Tensor, norm: nn.Module | None, residual: bool) -> torch.Tensor:
        height, width = x.shape[-2:]
        rows = max(8, self.band_pixels // width)
        out = torch.empty_like(x)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            first, last = max(0, top - 1), min(height, bottom + 1)
            band = x[:, :, first:last] if norm is None else norm(x[:, :, first:last])
            result = self._hidden_to_output(band, top - first, bottom - top)
            if residual:
                torch.add(x[:, :, top:bottom], result, out=out[:, :, top:bottom])
            else:
                out[:, :, top:bottom] = result
        return out

    def _hidden_to_output(self, band: torch.Tensor, first: int, rows: int) -> torch.Tensor:
        """Output rows [first, first + rows) of a band whose other rows are their halo."""
        hidden = self.project_in(band)
        return self.project_out(ops.gated_dwconv_gelu(hidden, self.dwconv.weight, self.dwconv.bias, first, rows))


class PatchEmbed(nn.Module):
    """3x3 convolution from image channels to features."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Halve the resolution, double the channels (conv, then pixel-unshuffle)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, kernel_size=3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution, halve the channels (conv, then pixel-shuffle)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, kernel_size=3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
