"""dinat: restore photos with DiNAT-IR (dilated neighbourhood attention).

The Python API: `dinat_cli.pipeline.restore_files` restores a batch of files in one call,
as the restore commands do; `Restorer` (engine) runs a network on float images;
`dinat_cli.model.RestoreDiNAT` is the network, `dinat_cli.checkpoints` loads weights;
`configure_process()` makes the process-wide settings the `dinat` command makes for itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Restorer", "__version__", "configure_process"]

if TYPE_CHECKING:
    from dinat_cli.engine import Restorer
    from dinat_cli.process import configure_process


def __getattr__(name: str) -> object:
    # Imported lazily: dinat_cli.io, .metrics and .registry work without loading torch.
    if name == "Restorer":
        from dinat_cli.engine import Restorer

        return Restorer
    if name == "configure_process":
        from dinat_cli.process import configure_process

        return configure_process
    raise AttributeError(f"module 'dinat_cli' has no attribute {name!r}")
