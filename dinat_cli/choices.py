"""Choices and defaults the command line offers, kept free of torch: parsing the command
line, `--help` and usage errors import nothing heavier than this."""

from __future__ import annotations

# Attention backends (see dinat_cli.ops.backends): `auto` picks the fastest exact one.
ATTENTION_BACKENDS = ("auto", "torch", "native", "compiled", "flex", "natten")
# Pixels shared by neighbouring tiles.
DEFAULT_TILE_OVERLAP = 64
# The environment variable that picks the CPU kernels' variant: auto, off or a variant's
# name (see dinat_cli.ops.native).
CPU_KERNELS_ENV = "DINAT_CPU_KERNELS"
