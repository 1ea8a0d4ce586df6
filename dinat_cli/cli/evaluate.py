"""`dinat eval`: PSNR/SSIM of restored images against ground truth, as the papers compute them."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dinat_cli import evaluation, reports
from dinat_cli.cli.app import app, command_line

_EXAMPLES = """\
Examples:

  dinat eval --gt GoPro/test/target --pred results/GoPro

  dinat eval --gt Rain100H/target --pred results/Rain100H --y-channel --protocol restormer --match order

  dinat eval --gt DPDD/test_c/target --pred results/DPDD --protocol dpdd --report dpdd.csv

  dinat eval --gt gt.png --pred out.png --json
"""


class ProtocolName(str, Enum):
    dinat = "dinat"
    restormer = "restormer"
    dpdd = "dpdd"


class MatchMode(str, Enum):
    name = "name"
    order = "order"


@app.command("eval", epilog=_EXAMPLES)
def evaluate(
    gt: Annotated[Path, typer.Option("--gt", help="Ground-truth folder (searched recursively) or one image.")],
    pred: Annotated[Path, typer.Option("--pred", help="Folder of restored images (or one image) to score.")],
    protocol: Annotated[
        ProtocolName,
        typer.Option(
            "--protocol",
            help="dinat: the official DiNAT-IR code; restormer: Restormer's MATLAB scripts; "
            "dpdd: the dual-pixel defocus scripts ([0, 1] floats, scikit-image SSIM, plus MAE).",
        ),
    ] = ProtocolName.dinat,
    y_channel: Annotated[
        bool, typer.Option("--y-channel", help="Score the Y of BT.601 YCbCr (deraining tables) instead of RGB.")
    ] = False,
    crop_border: Annotated[int, typer.Option("--crop-border", min=0, help="Pixels ignored at each edge.")] = 0,
    match: Annotated[
        MatchMode,
        typer.Option("--match", help="Pair files by relative path and stem (name) or by natural sort order (order)."),
    ] = MatchMode.name,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only JSON on stdout (PSNR of identical images: null).")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the scores to FILE.csv, FILE.json or FILE.html (a page to look at)."),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", min=1, help="Images scored in parallel (default: one per CPU).")
    ] = None,
) -> None:
    """Score restored images against ground truth (PSNR, SSIM) with a paper's protocol."""
    if report is not None:
        reports.check_report_path(report)
    pairs = evaluation.pair_files(gt, pred, match.value)
    result = _score_with_progress(pairs, protocol.value, y_channel, crop_border, jobs)
    document = {"command": command_line(), **evaluation.to_document(result)}
    if report is not None:
        reports.write_report(report, document, rows_key="images", summary_key="mean")
    if as_json:
        typer.echo(reports.dumps_json(document))
    else:
        Console().print(_table(result, y_channel, crop_border))
    if report is not None:
        Console(stderr=True).print(f"report written to {report}", highlight=False)


def _score_with_progress(
    pairs: list[evaluation.Pair], protocol: str, y_channel: bool, crop_border: int, jobs: int | None
) -> evaluation.Evaluation:
    # Progress goes to stderr and only to a terminal, so stdout stays clean for --json.
    console = Console(stderr=True)
    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("scoring", total=len(pairs))
        return evaluation.score_pairs(
            pairs, protocol, y_channel, crop_border, jobs, on_scored=lambda _: progress.advance(task)
        )


def _format(name: str, value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if name == "psnr" else f"{value:.6f}"


def _table(result: evaluation.Evaluation, y_channel: bool, crop_border: int) -> Table:
    channel = "Y" if y_channel else "RGB"
    table = Table(title=f"{result.protocol} protocol, {channel}, crop border {crop_border}", show_footer=True)
    # A long name is folded onto more lines, never cut (80 columns: cron mail, pipes).
    table.add_column("image", footer=f"mean of {len(result.images)}", overflow="fold")
    for name in result.mean:
        header = "PSNR (dB)" if name == "psnr" else name.upper()
        table.add_column(header, justify="right", footer=_format(name, result.mean[name]))
    for image in result.images:
        table.add_row(image.name, *(_format(name, image.scores[name]) for name in result.mean))
    return table
