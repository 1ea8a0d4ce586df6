"""dinat: restore photos with DiNAT-IR (dilated neighbourhood attention)."""

__version__ = "0.1.0"
