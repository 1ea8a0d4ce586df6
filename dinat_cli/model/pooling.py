"""Channel pooling for the channel-aware modulation: global, or TLC's local average.

The official test pipeline (TLC, "test-time local converter") replaces each global
average pool by a local box mean whose size is fixed by a 256x256 warm-up: 1.5x the
feature size seen in training, so that statistics at test time match training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinat_cli.ops import native

# (left, right, top, bottom), as F.pad takes it for the last two dimensions.
Padding = tuple[int, int, int, int]

TLC_TRAIN_SIZE = 256
TLC_BASE_SIZE = 384  # 1.5x the training crop


def tlc_kernel(downscale: int) -> int:
    """Box size at a level whose features are `downscale` times smaller than the image."""
    return (TLC_TRAIN_SIZE // downscale) * TLC_BASE_SIZE // TLC_TRAIN_SIZE


class ChannelPool(nn.Module):
    """Mean of each channel: over the whole map, or over a `kernel` box around each pixel.

    Returns the means where the box fits and the replicate padding back to the map's size.
    """

    def __init__(self, kernel: int | None = None) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Padding]:
        """The means where the box fits, and the replicate padding that restores the map's size.

        Per-pixel work on the means (the channel gate) can run before the padding: on a
        512 px map with a 384 px box that is 129x129 positions instead of 512x512.
        """
        height, width = x.shape[-2:]
        if self.kernel is None or (self.kernel >= height and self.kernel >= width):
            return _global_mean(x), (0, 0, 0, 0)
        mean = _local_mean(x, min(height, self.kernel), min(width, self.kernel))
        missing_h, missing_w = height - mean.shape[-2], width - mean.shape[-1]
        return mean, (missing_w // 2, (missing_w + 1) // 2, missing_h // 2, (missing_h + 1) // 2)

    def extra_repr(self) -> str:
        return "global" if self.kernel is None else f"local box {self.kernel}"


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of each channel over the whole map (the native kernel on CPU)."""
    if native.usable_for(x):
        return native.channel_means(x).to(x.dtype)
    return x.mean(dim=(-2, -1), keepdim=True)


def _local_mean(x: torch.Tensor, box_h: int, box_w: int) -> torch.Tensor:
    """Box mean at every position where the box fits (the native kernel on CPU)."""
    if native.usable_for(x):
        return native.box_means(x, box_h, box_w).to(x.dtype)
    return box_means_reference(x, box_h, box_w).to(x.dtype)


def box_means_reference(x: torch.Tensor, box_h: int, box_w: int) -> torch.Tensor:
    """Float32 box means from an integral image, in PyTorch operations.

    Computed in the same order as the official exact implementation (cumulative sums
    over W then H), whose rounding the checkpoints were evaluated with; the cost does
    not grow with the box.
    """
    integral = x.float().cumsum(dim=-1).cumsum(dim=-2)
    integral = F.pad(integral, (1, 0, 1, 0))
    sums = (
        integral[..., box_h:, box_w:]
        + integral[..., :-box_h, :-box_w]
        - integral[..., :-box_h, box_w:]
        - integral[..., box_h:, :-box_w]
    )
    return sums / (box_h * box_w)
