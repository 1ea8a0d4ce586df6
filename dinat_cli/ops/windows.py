"""Where each query looks: natten's dilated neighbourhood windows along one axis.

Positions with the same index modulo the dilation form a group; a query sees the
`kernel_size` nearest members of its own group, the window shifted inwards (not cut)
at the borders. Groups may have unequal lengths when the dilation does not divide the
axis. The relative position bias is indexed by the key's offset from the query,
counted in dilated steps, shifted into `[0, 2 * kernel_size - 2]`.
"""

from __future__ import annotations

from functools import lru_cache

import torch


def check_extent(length: int, kernel_size: int, dilation: int, axis: str) -> None:
    """Reject axes too short for a full window, as natten does."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if dilation < 1:
        raise ValueError(f"dilation must be positive, got {dilation}")
    if length < kernel_size * dilation:
        raise ValueError(
            f"{axis} = {length} is smaller than kernel_size * dilation = "
            f"{kernel_size} * {dilation} = {kernel_size * dilation}; pad the input first"
        )


@lru_cache(maxsize=256)
def _axis_windows_cpu(length: int, kernel_size: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    position = torch.arange(length)
    group = position % dilation
    rank = position // dilation  # index of the position inside its group
    group_length = (length - group + dilation - 1) // dilation
    start = torch.minimum((rank - kernel_size // 2).clamp(min=0), group_length - kernel_size)
    member = start[:, None] + torch.arange(kernel_size)  # (length, K) group ranks of the keys
    keys = group[:, None] + member * dilation
    bias = member - rank[:, None] + (kernel_size - 1)
    return keys, bias


def axis_windows(
    length: int, kernel_size: int, dilation: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions and bias indices, each `(length, kernel_size)` int64, for one axis."""
    keys, bias = _axis_windows_cpu(length, kernel_size, dilation)
    return keys.to(device), bias.to(device)


@lru_cache(maxsize=256)
def group_order(length: int, dilation: int) -> torch.Tensor:
    """Positions `0..length-1` grouped by dilation group: 0, d, 2d, ..., 1, 1 + d, ...

    Walking queries in this order, each step's window shares all but one key row with
    the previous one's.
    """
    position = torch.arange(length)
    return torch.cat([position[group::dilation] for group in range(min(dilation, length))])
