"""Reports: one row per image plus a summary, as JSON or CSV, or as a page to look at (HTML)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dinat_cli import files
from dinat_cli.errors import UsageError

REPORT_SUFFIXES = (".json", ".csv", ".html")


def check_report_path(path: Path, option: str = "--report") -> None:
    """Refuse an unsupported report type, or a folder that is missing or takes no file, before any work starts.

    `option` names where the path came from in the error line.
    """
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(f"{option} {path}: use a .csv, .json or .html file name")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; name a file in it")
    files.prepare_folder(path.parent, f"{option} {path}: folder")
    if path.suffix.lower() == ".html":
        previews = page_folder(path)
        if previews.exists() and not previews.is_dir():
            raise UsageError(f"{option} {path}: {previews} is a file; the page's previews go in a folder of that name")


def page_folder(path: Path) -> Path:
    """The folder of an HTML report's previews: run.html -> run_files/, as browsers save a page."""
    return path.with_name(f"{path.stem}_files")


def json_safe(value: Any) -> Any:
    """JSON has no infinity or NaN: they become null (an identical pair's PSNR is inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def dumps_json(document: Mapping[str, Any]) -> str:
    return json.dumps(json_safe(document), indent=2, allow_nan=False)


def write_report(path: Path, document: Mapping[str, Any], rows_key: str, summary_key: str) -> None:
    """HTML: the page of `html_report`, previews beside it. JSON: `document` as is. CSV: a
    `name` column, one line per row of `document[rows_key]`, then a line named by
    `summary_key` holding `document[summary_key]` (inf written as `inf`); a mapping inside
    the summary (a run's mean scores) comes before it as a line of its own, named by its
    key, a column per item as in the rows."""
    check_report_path(path)
    if path.suffix.lower() == ".html":
        from dinat_cli import html_report  # the image libraries, only for a page

        html_report.write_page(path, document)
        return
    text = dumps_json(document) + "\n" if path.suffix.lower() == ".json" else _csv_text(document, rows_key, summary_key)
    files.write_atomically(path, text.encode("utf-8"))


def _csv_text(document: Mapping[str, Any], rows_key: str, summary_key: str) -> str:
    rows: Sequence[Mapping[str, Any]] = document[rows_key]
    summary: Mapping[str, Any] = document.get(summary_key) or {}
    lines = {key: value for key, value in summary.items() if isinstance(value, Mapping)}
    lines[summary_key] = {key: value for key, value in summary.items() if not isinstance(value, Mapping)}
    # The first column names each line: a file, or a summary line (even when no file was planned).
    columns = list(dict.fromkeys(["name", *(key for row in [*rows, *lines.values()] for key in row)]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    for name, line in lines.items():
        if line:
            # Row names keep their file extension, so these lines cannot be mistaken for images.
            writer.writerow([name, *(_cell(line.get(column)) for column in columns[1:])])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)
