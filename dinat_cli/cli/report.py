"""`dinat report`: one page or report from JSON reports, after the fact (shards, reruns)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dinat_cli import reports
from dinat_cli.cli.app import app

_EXAMPLES = """\
Examples:

  dinat report run.json -o run.html

  dinat report reports/restore-*.json -o all.html

  dinat report reports/restore-*.json -o all.json
"""


@app.command("report", epilog=_EXAMPLES)
def report(
    inputs: Annotated[
        list[Path], typer.Argument(metavar="REPORT", help="JSON reports of restore runs (or of `dinat eval`).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="FILE.html (a page to look at), FILE.json or FILE.csv.")
    ],
) -> None:
    """Merge JSON reports (shards, reruns) into one page or report, each file counted once."""
    from dinat_cli import merging

    reports.check_report_path(output, option="--output")
    merged = merging.merge([merging.read_report(path) for path in inputs])
    is_eval = "images" in merged
    reports.write_report(
        output, merged, rows_key="images" if is_eval else "files", summary_key="mean" if is_eval else "summary"
    )
    Console(stderr=True).print(f"report written to {output}", highlight=False)
