"""Channel pooling for the channel-aware modulation: global, or TLC's local average.

The official test pipeline (TLC, "test-time local converter") replaces each global
average pool by a local box mean whose size is fixed by a 256x256 warm-up: 1.5x the
feature size seen in training, so that statistics at test time match training.
"""

from __future__ import annotations

import torch
from torch import nn

from dinat_cli import ops

# (left, right, top, bottom), as F.pad takes it for the last two dimensions.
Padding = tuple[int, int, int, int]

TLC_TRAIN_SIZE = 256
TLC_BASE_SIZE = 384  # 1.5x the training crop


def tlc_kernel(downscale: int) -> int:
    """Box size at a level whose features are `downscale` times smaller than the image."""
    return (TLC_TRAIN_SIZE // downscale) * TLC_BASE_SIZE // TLC_TRAIN_SIZE


class ChannelPool(nn.Module):
    """Mean of each channel: over the whole map, or over a `box` x `box` box around each pixel.

    Returns the means where the box fits and the replicate padding back to the map's size.
    """

    def __init__(self, box: int | None = None) -> None:
        super().__init__()
        self.box = box
        self.kernels: ops.Kernels | None = None  # the means' implementation; None: native wherever it can run

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Padding]:
        """The means where the box fits, and the replicate padding that restores the map's size.

        Per-pixel work on the means (the channel gate) can run before the padding: on a
        512 px map with a 384 px box that is 129x129 positions instead of 512x512.
        """
        height, width = x.shape[-2:]
        if self.box is None or (self.box >= height and self.box >= width):
            return ops.channel_means(x, kernels=self.kernels), (0, 0, 0, 0)
        mean = ops.box_means(x, min(height, self.box), min(width, self.box), kernels=self.kernels)
        missing_h, missing_w = height - mean.shape[-2], width - mean.shape[-1]
        return mean, (missing_w // 2, (missing_w + 1) // 2, missing_h // 2, (missing_h + 1) // 2)

    def extra_repr(self) -> str:
        return "global" if self.box is None else f"local box {self.box}"
