"""The DiNAT-IR network."""

from dinat_cli.model.network import SIZE_MULTIPLE, RestoreDiNAT

__all__ = ["SIZE_MULTIPLE", "RestoreDiNAT"]
