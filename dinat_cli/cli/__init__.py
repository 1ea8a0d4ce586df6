"""Command-line interface: `dinat <command>`.

Each command lives in its own module and registers itself on the shared `app`.
"""

from __future__ import annotations

import sys

from rich.console import Console

# Command modules register on import.
from dinat_cli.cli import (
    bench,  # noqa: F401
    doctor,  # noqa: F401
    evaluate,  # noqa: F401
    report,  # noqa: F401
    restore,  # noqa: F401
    weights,  # noqa: F401
)
from dinat_cli.cli.app import app
from dinat_cli.errors import DinatError


def main() -> None:
    """Console-script entry point: user errors end in one line and a non-zero exit code."""
    try:
        app()
    except DinatError as error:
        # The message is plain text (paths may hold brackets): never parse it as markup.
        console = Console(stderr=True, highlight=False, soft_wrap=True)
        console.print("error:", style="bold red", end=" ")
        console.print(str(error), markup=False)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted", highlight=False)
        sys.exit(130)
