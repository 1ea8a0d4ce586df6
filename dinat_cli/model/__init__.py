"""The DiNAT-IR network and its named variants.

`variants` imports no torch (the weights registry reads it); the network is imported
when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["SIZE_MULTIPLE", "RestoreDiNAT"]

if TYPE_CHECKING:
    from dinat_cli.model.network import SIZE_MULTIPLE, RestoreDiNAT


def __getattr__(name: str) -> object:
    if name in __all__:
        from dinat_cli.model import network

        return getattr(network, name)
    raise AttributeError(f"module 'dinat_cli.model' has no attribute {name!r}")
