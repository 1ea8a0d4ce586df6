"""Convolutional building blocks of DiNAT-IR (shared with Restormer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    """Gated depth-wise convolution feed-forward network (GDFN)."""

    def __init__(self, dim: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


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
