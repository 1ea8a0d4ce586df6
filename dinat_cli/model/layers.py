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
        self.kernels: ops.Kernels | None = None  # None: native wherever it can run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, 1e-5, kernels=self.kernels)


def version_key(*tensors: torch.Tensor | None) -> tuple | None:
    """Identity and in-place version of `tensors`, to key values derived from them.

    None where one is an inference tensor (made under `torch.inference_mode`): those do
    not count their in-place changes, so values derived from them are derived afresh.
    """
    if any(t is not None and t.is_inference() for t in tensors):
        return None
    return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)


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

    Runs in bands of rows: the hidden maps, 5x wider than the input, stay band-sized
    instead of image-sized, so they stay in cache and are reused from the heap rather
    than faulted in afresh. The 3x3 depth-wise convolution reads one row above and below
    a band; those rows of the hidden map are computed once, with the band they belong to,
    and read from there (recomputing them cost 11% of the input projection at 256 px).
    """

    band_pixels = 1 << 12

    def __init__(self, dim: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)
        self._aligned: tuple[tuple, tuple[torch.Tensor | None, ...]] | None = None
        self.kernels: ops.Kernels | None = None  # the gate's; None: native wherever it can run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._banded(x, norm=None, residual=False)

    def add_to(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """`x + self(norm(x))`, with the norm and the sum done band by band while the band is in cache."""
        return self._banded(x, norm=norm, residual=True)

    def _banded(self, x: torch.Tensor, norm: nn.Module | None, residual: bool) -> torch.Tensor:
        height, width = x.shape[-2:]
        rows = max(8, self.band_pixels // width)
        project_in, project_in_bias, dwconv, dwconv_bias, project_out = (
            self._aligned_weights() if ops.runs_native(x, self.kernels) else self._weights()
        )
        out = torch.empty_like(x)
        hidden = x.new_empty(0)  # hidden rows [computed - hidden rows, computed)
        computed = 0
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            first, last = max(0, top - 1), min(height, bottom + 1)  # the hidden rows this band reads
            blocks = [hidden[:, :, hidden.shape[2] - (computed - first) :]] if first < computed else []
            if computed < last:
                band = x[:, :, computed:last] if norm is None else norm(x[:, :, computed:last])
                hidden = F.conv2d(band, project_in, project_in_bias)
                blocks.append(hidden)
                computed = last
            gated = ops.gated_dwconv_gelu(blocks, dwconv, dwconv_bias, top - first, bottom - top, kernels=self.kernels)
            result = F.conv2d(gated, project_out, self.project_out.bias)
            if residual and result.requires_grad:  # training: out= records no gradient
                out[:, :, top:bottom] = x[:, :, top:bottom] + result
            elif residual:
                torch.add(x[:, :, top:bottom], result, out=out[:, :, top:bottom])
            else:
                out[:, :, top:bottom] = result
        return out

    def _weights(self) -> tuple[torch.Tensor | None, ...]:
        return (
            self.project_in.weight,
            self.project_in.bias,
            self.dwconv.weight,
            self.dwconv.bias,
            self.project_out.weight,
        )

    def _aligned_weights(self) -> tuple[torch.Tensor | None, ...]:
        """The weights with each half of the hidden channels padded by zero channels to a multiple of 16.

        The native gate reads 16 channels at a time; with aligned halves no load straddles
        two cache lines (1.5x faster). Padded channels are zero throughout (gelu(0) * 0),
        so the output is unchanged. Rebuilt when a weight changes (e.g. a checkpoint load).
        """
        weights = self._weights()
        hidden = self.project_out.in_channels
        if hidden % 16 == 0:
            return weights
        key = version_key(*weights)
        if key is None or self._aligned is None or self._aligned[0] != key:
            pad = -hidden % 16
            with torch.no_grad():
                halves = [
                    None
                    if w is None
                    else torch.cat([F.pad(half, (0, 0) * (w.dim() - 1) + (0, pad)) for half in w.chunk(2)])
                    for w in weights[:4]
                ]
                project_out = F.pad(weights[4], (0, 0, 0, 0, 0, pad))
            self._aligned = (key, (*halves, project_out))
        return self._aligned[1]


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
