"""Transformer blocks: neighbourhood attention with channel modulation, then GDFN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinat_cli.model.attention import NeighborhoodAttention2D
from dinat_cli.model.layers import FeedForward, LayerNorm, version_key
from dinat_cli.model.pooling import ChannelPool

MODES = ("hybrid", "local_only", "globl_only")


class TransBlock(nn.Module):
    """x + attention(norm(x)) [* channel modulation], then x + ffn(norm(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int,
        ffn_expansion_factor: float,
        bias: bool,
        layer_norm_type: str,
        chan_adapt: bool,
        pool_kernel: int | None,
    ) -> None:
        super().__init__()
        self.na2d = NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation)
        self.norm1 = LayerNorm(dim, layer_norm_type)
        self.chan_adapt = chan_adapt
        if chan_adapt:
            self.pool = ChannelPool(pool_kernel)
            # A 7-tap filter across the channel axis of the pooled statistics.
            self.conv = nn.Conv1d(1, 1, kernel_size=7, padding=3, bias=False)
            self._filter: tuple[tuple, torch.Tensor] | None = None
        self.norm2 = LayerNorm(dim, layer_norm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        attended = self.na2d(normed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = torch.addcmul(x, attended, self.channel_modulation(normed)) if self.chan_adapt else x + attended
        return self.ffn.add_to(x, self.norm2)

    def channel_modulation(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid gate per channel (per pixel under TLC), from pooled channel statistics."""
        means, padding = self.pool(x)
        pooled = means.permute(0, 2, 3, 1)  # (B, h, w, C): the 7-tap filter runs along C
        # The filter as a product with its banded (C, C) matrix: one matrix product for all
        # positions. A one-channel conv1d over every position's channel series falls to
        # PyTorch's slow reference convolution, and unfolding the windows copies each
        # value 7 times (800 MB at level 1 of a 1280x720 image under TLC).
        gate = torch.sigmoid(pooled @ self._channel_filter(pooled.shape[-1], pooled.dtype))
        gate = gate.permute(0, 3, 1, 2)
        # The gate is per pixel, so padding it equals gating the padded means.
        return F.pad(gate, padding, mode="replicate") if any(padding) else gate

    def _channel_filter(self, channels: int, dtype: torch.dtype) -> torch.Tensor:
        """The filter's band matrix, kept while the weight is unchanged (building it is ten small operations)."""
        weight = self.conv.weight
        if torch.is_grad_enabled() and weight.requires_grad:  # training: the matrix carries the gradient
            return _band_matrix(weight.reshape(7), channels).to(dtype)
        key = version_key(weight)
        key = None if key is None else (key, channels, dtype, weight.device)
        if key is None or self._filter is None or self._filter[0] != key:
            self._filter = (key, _band_matrix(weight.detach().reshape(7), channels).to(dtype))
        return self._filter[1]


def _band_matrix(taps: torch.Tensor, channels: int) -> torch.Tensor:
    """`(C, C)` matrix M with `series @ M` = the zero-padded, centred filter `taps` along a series of C."""
    radius = taps.shape[0] // 2
    index = torch.arange(channels, device=taps.device)
    offsets = index[:, None] - index[None, :] + radius  # input - output + radius
    inside = (offsets >= 0) & (offsets < taps.shape[0])
    return torch.where(inside, taps[offsets.clamp(0, taps.shape[0] - 1)], taps.new_zeros(()))


class DualTransBlock(nn.Module):
    """A local (dilation 1) block followed by a global (dilated) block."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int,
        ffn_expansion_factor: float,
        bias: bool,
        layer_norm_type: str,
        chan_adapt: bool,
        mode: str,
        pool_kernel: int | None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        local_dilation = dilation if mode == "globl_only" else 1
        global_dilation = 1 if mode == "local_only" else dilation

        def block(block_dilation: int) -> TransBlock:
            return TransBlock(
                dim,
                num_heads,
                kernel_size,
                block_dilation,
                ffn_expansion_factor,
                bias,
                layer_norm_type,
                chan_adapt,
                pool_kernel,
            )

        self.local = block(local_dilation)
        self.globl = block(global_dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.globl(self.local(x))
