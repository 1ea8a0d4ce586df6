"""What the engine knows of a loaded network: the model descriptor.

The engine runs any image-to-image network through a `ModelDescriptor` and asks the
model itself nothing: channels, the side multiple it takes, the smallest tile that
gives the whole-image result, its memory per pixel, how its CPU time per pixel grows
with the image, and how to pin its kernels. `dinat_cli.checkpoints.load` builds one for
DiNAT-IR (after spandrel's `ImageModelDescriptor`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dinat_cli.tile_choice import FLAT, CostTable

if TYPE_CHECKING:
    import torch

    from dinat_cli.ops import Kernels


@dataclass(frozen=True)
class ModelDescriptor:
    """A loaded network in eval mode, and everything the engine needs to run it."""

    model: torch.nn.Module
    architecture: str
    # The registered variant the weights are (dinat_cli.model.variants), None for a file dinat does not know.
    variant: str | None
    task: str | None
    # The constructor arguments the network was built with.
    config: Mapping[str, Any]
    in_channels: int
    out_channels: int
    # Input sides must be multiples of this; the engine pads to it.
    size_multiple: int
    # Tiles smaller than this give another result than the whole image; `min_tile_reason` says why.
    min_exact_tile: int
    min_tile_reason: str
    # Peak working memory per input pixel in float32; 16-bit formats take about half.
    bytes_per_pixel: float
    # How its CPU time per pixel grows with the size of the map (`dinat_cli.tile_choice`): what
    # makes tiles faster than a whole large image.
    cpu_cost_per_pixel: CostTable
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    # Pins the kernels the network runs (None: the process-wide selection).
    set_kernels: Callable[[Kernels | None], None] = field(default=lambda kernels: None, repr=False)

    @classmethod
    def for_module(
        cls,
        model: torch.nn.Module,
        *,
        channels: int = 3,
        size_multiple: int = 8,
        bytes_per_pixel: float = 12_000.0,
        cpu_cost_per_pixel: CostTable = FLAT,
    ) -> ModelDescriptor:
        """A descriptor for any module that maps `(B, channels, H, W)` to an image of the same size.

        Tiles of any size give its whole-image result only where its receptive field is
        within the tile overlap (`dinat_cli.tiling`); nothing smaller than the multiple is allowed.
        """
        return cls(
            model=model,
            architecture=type(model).__name__,
            variant=None,
            task=None,
            config={},
            in_channels=channels,
            out_channels=channels,
            size_multiple=size_multiple,
            min_exact_tile=size_multiple,
            min_tile_reason=f"the network takes sides that are multiples of {size_multiple}",
            bytes_per_pixel=bytes_per_pixel,
            cpu_cost_per_pixel=cpu_cost_per_pixel,
        )
