"""Command-line interface: `dinat <command>`.

Each command lives in its own module and registers itself on the shared `app`.
"""

from __future__ import annotations

import sys

from rich.console import Console

from dinat_cli.cli.app import app
from dinat_cli.errors import DinatError

# Command modules register on import.
# (command modules are imported below as they are added)
from dinat_cli.cli import weights  # noqa: E402,F401


def main() -> None:
    """Console-script entry point: user errors end in one line and a non-zero exit code."""
    try:
        app()
    except DinatError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted", highlight=False)
        sys.exit(130)
