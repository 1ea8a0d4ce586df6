"""Reports after the fact: read JSON reports and merge them into one document (`dinat report`).

The reports of N shards, or of a run and its reruns, become one document in which each
file is counted once. Rows are matched by their output (for `dinat eval` reports: by
name); a later row replaces an earlier one, except that a file once done stays done until
a later run does it again: a rerun skips it, and a failed rewrite leaves the done output
in place (outputs are written atomically); and a clip some shard restored only in part does
not hide another shard's failure on it. Torch-free, and no image library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dinat_cli.errors import UsageError

_COUNTED = ("done", "partial", "skipped", "failed")
_METRICS = ("psnr", "ssim", "mae")
_HEADER = ("task", "command", "weights", "weights_sha256", "model", "device", "precision", "kernels")


def read_report(path: Path) -> dict[str, Any]:
    """A JSON report a restore command or `dinat eval` wrote; a UsageError names the file otherwise."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: not a JSON report ({error})") from None
    if not isinstance(document, dict) or not (
        isinstance(document.get("files"), list) or isinstance(document.get("images"), list)
    ):
        raise UsageError(f"{path}: not a dinat report (no list of files or images)")
    return document


def merge(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document from several, each file once; a single document comes back as it is."""
    if len(documents) == 1:
        return dict(documents[0])
    kinds = {"images" if "images" in document else "files" for document in documents}
    if len(kinds) > 1:
        raise UsageError("cannot merge a restore report with a `dinat eval` report")
    if kinds == {"images"}:
        return _merge_evaluations(documents)
    return _merge_runs(documents)


def _merge_runs(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for document in documents:
        for row in document["files"]:
            earlier = rows.get(row["output"])
            if earlier is None or _replaces(row["status"], earlier["status"]):
                rows[row["output"]] = row
    files = sorted(rows.values(), key=lambda row: row["name"])
    summaries = [document.get("summary") or {} for document in documents]
    # Files a run did not start have no rows: the last run of each shard says how many are left.
    last_of_shard = {document.get("shard"): summary for document, summary in zip(documents, summaries, strict=True)}
    not_started = sum(int(summary.get("not_started", 0)) for summary in last_of_shard.values())
    counts = {status: sum(row["status"] == status for row in files) for status in _COUNTED}
    merged: dict[str, Any] = {key: _agreed(documents, key) for key in _HEADER}
    shards = [str(shard) for shard in dict.fromkeys(document.get("shard") for document in documents) if shard]
    merged["shard"] = ", ".join(shards) or None
    merged["summary"] = {
        "planned": len(files) + not_started,
        **counts,
        "not_started": not_started,
        "retried": sum(int(row.get("attempts", 1)) > 1 for row in files),
        "interrupted": any(summary.get("interrupted") for summary in summaries),
        "stopped": next((summary["stopped"] for summary in reversed(summaries) if summary.get("stopped")), None),
        # The runs' times added up: shards that ran side by side took less wall time.
        "seconds": round(math.fsum(float(summary.get("seconds", 0.0)) for summary in summaries), 3),
        "runs": len(documents),
        "mean": _means(files),
    }
    merged["files"] = files
    return merged


def _replaces(later: str, earlier: str) -> bool:
    """Whether a later row of a file replaces an earlier one. A file once done stays done; a clip
    partly restored by one shard does not hide another shard's failure on it."""
    if later == "done" or earlier == "partial":
        return True
    return earlier != "done" and later != "partial"


def _merge_evaluations(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    images = {row["name"]: row for document in documents for row in document["images"]}
    rows = sorted(images.values(), key=lambda row: row["name"])
    return {
        "command": _agreed(documents, "command"),
        "protocol": _agreed(documents, "protocol"),
        "count": len(rows),
        "images": rows,
        "mean": _means(rows),
    }


def _agreed(documents: Sequence[Mapping[str, Any]], key: str) -> Any:
    """The documents' common value of `key`, or their distinct values joined: the page shows both honestly."""
    values = list(dict.fromkeys(document.get(key) for document in documents))
    return values[0] if len(values) == 1 else "; ".join(str(value) for value in values)


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The mean of each score over the rows that hold it; JSON's null PSNR (identical images) is inf."""
    from dinat_cli.evaluation import mean_scores

    names = [name for name in _METRICS if any(name in row for row in rows)]
    scored = [row for row in rows if all(name in row for name in names)]
    values = [{name: math.inf if row[name] is None else float(row[name]) for name in names} for row in scored]
    means = mean_scores(values)
    return {name: None if math.isinf(value) else value for name, value in means.items()}
