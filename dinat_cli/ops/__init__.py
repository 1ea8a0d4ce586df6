"""Attention operators: dilated neighbourhood attention and its backends."""

from dinat_cli.ops.neighborhood import na2d

__all__ = ["na2d"]
