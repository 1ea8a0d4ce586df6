"""The tests run the installed package, not the source folder that `python -m pytest` puts on sys.path."""

from __future__ import annotations

import importlib
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "dinat_cli"


def test_the_installed_package_is_imported(editable: bool) -> None:
    import dinat_cli

    if not editable:  # an editable install imports the source folder, by design
        assert not Path(dinat_cli.__file__).resolve().is_relative_to(SOURCE), (
            f"dinat_cli was imported from the source folder {SOURCE}, not from the installed package"
        )
    # Only the installed package has it: pyproject.toml maps the top-level weights/ folder there.
    weights = importlib.import_module("dinat_cli.weights")
    assert (Path(weights.__file__).parent / "registry.json").is_file()
