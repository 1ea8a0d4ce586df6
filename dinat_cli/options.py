"""What a restore run asks of the engine, as typed values: built once from the command line
(or by a Python caller) and sent as is to the local engine and to every Ray worker.

Torch-free: the command line checks its options before it imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dinat_cli.choices import (
    DEFAULT_TILE_OVERLAP,
    check_attention,
    check_device,
    check_precision,
    check_tile_overlap,
    parse_batch,
    parse_tile,
)

if TYPE_CHECKING:
    from dinat_cli.descriptor import ModelDescriptor


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs a network: device, precision, tiling, batching and kernels.

    `tile` is None for `auto` (the fastest way that fits in memory), 0 for the whole
    image, or a tile side in pixels. `batch` is how many network inputs (images of one
    size, or tiles of one image) go through one forward pass: None for `auto` (from free
    memory, like the tile), else at least 1. Use `parse` for command-line strings.
    """

    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    attention: str = "auto"
    batch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))
        object.__setattr__(self, "precision", check_precision(self.precision))
        check_attention(self.attention)
        if self.tile is not None and self.tile < 0:
            raise ValueError(f"tile {self.tile}: expected None (auto), 0 (whole image) or a size in pixels")
        check_tile_overlap(self.tile_overlap, self.tile)
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch {self.batch}: expected None (auto) or at least 1")

    @classmethod
    def parse(
        cls,
        *,
        device: str = "auto",
        precision: str = "auto",
        tile: str | int | None = "auto",
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        attention: str = "auto",
        batch: str | int | None = "auto",
    ) -> EngineOptions:
        """Options from command-line values; a value that cannot be is a UsageError saying why."""
        return cls(
            device=device,
            precision=precision,
            tile=parse_tile(tile),
            tile_overlap=tile_overlap,
            attention=attention,
            batch=parse_batch(batch),
        )


@dataclass(frozen=True)
class ModelSource:
    """Which network to run: a weights file, the registered variant it is, and the test-time pooling.

    `variant` (`dinat_cli.model.variants`) gives a `.pth` file the dilations and mode its
    tensors cannot record; None for a file dinat does not know. `tlc=False` pools channel
    statistics over the whole image, as in training.
    """

    weights: Path
    variant: str | None = None
    tlc: bool = True

    def load(self) -> ModelDescriptor:
        """The network, loaded on the CPU in eval mode, with its descriptor."""
        from dinat_cli import checkpoints

        return checkpoints.load(Path(self.weights), variant=self.variant, tlc=self.tlc)
