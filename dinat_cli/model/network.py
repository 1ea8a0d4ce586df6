"""RestoreDiNAT: a four-level U-shaped transformer of dilated neighbourhood attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dinat_cli import ops
from dinat_cli.model.attention import NeighborhoodAttention2D
from dinat_cli.model.blocks import DualTransBlock
from dinat_cli.model.layers import Downsample, FeedForward, PatchEmbed, Upsample, _NormBody
from dinat_cli.model.pooling import ChannelPool, tlc_kernel

# The modules that call an operator with more than one implementation; each holds a `kernels`.
KERNEL_CHOOSERS = (NeighborhoodAttention2D, _NormBody, FeedForward, ChannelPool)

# The network takes sides that are multiples of this (three 2x pixel-unshuffles).
SIZE_MULTIPLE = 8


class RestoreDiNAT(nn.Module):
    """DiNAT-IR, with the official constructor arguments and parameter names.

    `tlc=True` pools the channel modulation locally as the official test pipeline
    does (boxes 1.5x the 256-pixel training feature sizes); `tlc=False` pools over
    the whole image, as in training. `kernel_size` (7 in every official model) is the
    attention window's side. `kernels` pins the implementations this model runs
    (`set_kernels`).
    """

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 32,
        num_blocks: Sequence[int] = (2, 3, 3, 4),
        num_refinement_blocks: int = 2,
        heads: Sequence[int] = (1, 2, 4, 8),
        dilations: Sequence[int] = (36, 18, 9, 4),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",
        chan_adapt: bool = False,
        mode: str = "hybrid",
        dual_pixel_task: bool = False,
        tlc: bool = False,
        kernel_size: int = 7,
        *,
        kernels: ops.Kernels | None = None,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4 or len(dilations) != 4:
            raise ValueError("num_blocks, heads and dilations need one value per level (4)")
        self.config = dict(
            inp_channels=inp_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=list(num_blocks),
            num_refinement_blocks=num_refinement_blocks,
            heads=list(heads),
            dilations=list(dilations),
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            LayerNorm_type=LayerNorm_type,
            chan_adapt=chan_adapt,
            mode=mode,
            dual_pixel_task=dual_pixel_task,
            kernel_size=kernel_size,
        )
        self.tlc = tlc

        def stage(level: int, width: int, count: int) -> nn.Sequential:
            downscale = 2**level
            return nn.Sequential(
                *(
                    DualTransBlock(
                        width,
                        heads[level],
                        kernel_size,
                        dilations[level],
                        ffn_expansion_factor,
                        bias,
                        LayerNorm_type,
                        chan_adapt,
                        mode,
                        pool_kernel=tlc_kernel(downscale) if tlc else None,
                    )
                    for _ in range(count)
                )
            )

        self.patch_embed = PatchEmbed(inp_channels, dim)
        self.encoder_level1 = stage(0, dim, num_blocks[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = stage(1, dim * 2, num_blocks[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = stage(2, dim * 4, num_blocks[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = stage(3, dim * 8, num_blocks[3])

        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(2, dim * 4, num_blocks[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(1, dim * 2, num_blocks[1])
        # Level 1 keeps the concatenated 2*dim channels: no reduction.
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = stage(0, dim * 2, num_blocks[0])
        self.refinement = stage(0, dim * 2, num_refinement_blocks)

        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, padding=1, bias=bias)
        self.set_kernels(kernels)

    def set_kernels(self, kernels: ops.Kernels | None) -> None:
        """Pin every module's implementation to `kernels` (`ops.resolve_kernels`).

        None: the attention follows the process-wide selection (`ops.use_backend`), and
        layer norm, gate and pooling run natively wherever they can.
        """
        if kernels is not None and not isinstance(kernels, ops.Kernels):
            raise TypeError(f"kernels must be an ops.Kernels or None, not {kernels!r}")
        for module in self.modules():
            if isinstance(module, KERNEL_CHOOSERS):
                module.kernels = kernels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Restore `(B, inp_channels, H, W)` with H and W divisible by 8."""
        height, width = image.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"input {height}x{width} must have sides divisible by {SIZE_MULTIPLE}; pad it first")
        # Channels-last all the way: convolutions take oneDNN's fast NHWC kernels, and
        # layer norm and attention, which work on (B, H, W, C), read it without copies.
        embedded = self.patch_embed(image.contiguous(memory_format=torch.channels_last))
        skip1 = self.encoder_level1(embedded)
        skip2 = self.encoder_level2(self.down1_2(skip1))
        skip3 = self.encoder_level3(self.down2_3(skip2))
        x = self.latent(self.down3_4(skip3))

        x = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(x), skip3], 1)))
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), skip2], 1)))
        x = self.decoder_level1(torch.cat([self.up2_1(x), skip1], 1))
        x = self.refinement(x)

        if self.dual_pixel_task:
            return self.output(x + self.skip_conv(embedded)).contiguous()
        return (self.output(x) + image).contiguous()
