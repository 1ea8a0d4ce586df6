"""The HTML report: a run's images before and after, on one page that works offline.

`write_page(Path("run.html"), document)` turns a report document (a restore run's or
`dinat eval`'s) into `run.html` and a folder `run_files/` beside it. The folder holds
previews, not originals: each image downscaled to PREVIEW_SIDE as WebP, a 100% crop of the
region that changed most, and the difference as a heat map. The page holds its CSS and
script inline and refers to nothing outside its folder: no CDN, no web font, no request
to a server. Every file is written atomically, the page last, so a page never points at a
preview that is not complete.

The page shows what the document holds and no more: a file whose preview cannot be read
(moved since the run) says so. Torch-free; the image libraries load with this module, so
the CLI imports it only when a page is written.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dinat_cli import files, io, reports, video
from dinat_cli.errors import DinatError

PREVIEW_SIDE = 1024  # the longest side of a preview, in pixels
CROP_SIDE = 256  # the side of the 100% crop
HEAT_GAIN = 4  # the heat map shows |difference| x 4: 64 levels of 255 reach its top colour
WEBP_QUALITY = 82
METRICS = ("psnr", "ssim", "mae")  # the scores a report row can hold, the first present ranks the table
_PREVIEW_NAME = re.compile(r"^\d+-(before|after|heat|crop-before|crop-after)\.webp$")


@dataclass
class Entry:
    """One image of the page: a report row, and the two files it compares."""

    name: str
    status: str
    before: str | None
    after: str | None
    scores: dict[str, float | None] = field(default_factory=dict)
    input_scores: dict[str, float | None] = field(default_factory=dict)
    seconds: float | None = None
    tile: int | None = None
    precision: str | None = None
    error: str | None = None
    # Videos: the frame the previews show, the worst one when the clip was scored (None: the middle).
    frame: int | None = None


@dataclass(frozen=True)
class Crop:
    x: int
    y: int
    side_x: int
    side_y: int


@dataclass(frozen=True)
class Previews:
    """The preview files of one entry (names inside the page's folder), or why there are none."""

    width: int = 0
    height: int = 0
    before: str | None = None
    after: str | None = None
    heat: str | None = None
    crop_before: str | None = None
    crop_after: str | None = None
    crop: Crop | None = None
    problem: str | None = None
    # What the previews of a video show: "frame 7 (the worst)".
    frame: str | None = None


def write_page(path: Path, document: Mapping[str, Any]) -> None:
    """Write the page of `document` (a restore or an eval report) at `path`, previews beside it."""
    document = reports.json_safe(document)
    folder = reports.page_folder(path)
    entries = to_entries(document)
    previews = [_write_previews(entry, index, folder) for index, entry in enumerate(entries, 1)]
    _remove_stale_previews(folder, previews)
    page = render(document, entries, previews, folder.name)
    files.write_atomically(path, page.encode("utf-8"))


def to_entries(document: Mapping[str, Any]) -> list[Entry]:
    """The rows of a restore report (`files`) or an eval report (`images`) as page entries."""
    if "images" in document:  # dinat eval: ground truth against prediction, every pair scored
        return [
            Entry(
                name=row["name"],
                status="scored",
                before=row.get("gt"),
                after=row.get("pred"),
                scores={key: row[key] for key in METRICS if key in row},
            )
            for row in document["images"]
        ]
    return [
        Entry(
            name=row["name"],
            status=row["status"],
            before=row.get("input"),
            after=row.get("output") if row["status"] != "failed" else None,
            scores={key: row[key] for key in METRICS if key in row},
            input_scores={key: row[f"input_{key}"] for key in METRICS if f"input_{key}" in row},
            seconds=row.get("seconds") if row["status"] != "skipped" else None,
            tile=row.get("tile"),
            precision=row.get("precision"),
            error=row.get("error"),
            frame=row.get("worst_frame"),
        )
        for row in document["files"]
    ]


# ---------------------------------------------------------------------------- previews


def display_rgb(image: io.DecodedImage) -> np.ndarray:
    """8-bit RGB as a screen shows the image: 16 bits rounded to 8, grey as three equal channels.

    Alpha is left out: the page shows the colour the model restored, under any transparency.
    """
    pixels = io.to_uint8(image.pixels)
    return np.repeat(pixels[..., None], 3, axis=2) if image.is_gray else pixels


def _write_previews(entry: Entry, index: int, folder: Path) -> Previews:
    if entry.after is None:
        return Previews()
    clip = video.is_video(Path(entry.after))
    try:
        after = display_rgb(_still(Path(entry.after), entry.frame, clip))
        before = display_rgb(_still(Path(entry.before), entry.frame, clip)) if entry.before else None
    except DinatError as error:
        return Previews(problem=f"no preview: {error}")
    shown = None
    if clip:
        shown = "the middle frame" if entry.frame is None else f"frame {entry.frame} (the worst)"
    if before is not None and before.shape != after.shape:
        return Previews(problem=f"no preview: {entry.before} and {entry.after} differ in size")
    height, width = _preview_size(after.shape[:2])
    names = {kind: f"{index}-{kind}.webp" for kind in ("before", "after", "heat", "crop-before", "crop-after")}
    _write_webp(folder / names["after"], _downscale(after, width, height))
    if before is None:
        return Previews(width, height, after=names["after"], frame=shown)
    _write_webp(folder / names["before"], _downscale(before, width, height))
    difference = np.abs(after.astype(np.int16) - before.astype(np.int16)).mean(axis=2)
    heat = cv2.applyColorMap(np.clip(difference * HEAT_GAIN, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    _write_webp(folder / names["heat"], _downscale(cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), width, height))
    crop = most_changed_region(difference, CROP_SIDE)
    window = np.s_[crop.y : crop.y + crop.side_y, crop.x : crop.x + crop.side_x]
    _write_webp(folder / names["crop-before"], before[window])
    _write_webp(folder / names["crop-after"], after[window])
    return Previews(
        width,
        height,
        names["before"],
        names["after"],
        names["heat"],
        names["crop-before"],
        names["crop-after"],
        crop,
        frame=shown,
    )


def _still(path: Path, frame: int | None, clip: bool) -> io.DecodedImage:
    """The image a preview shows: the file, or of a clip, its frame `frame` (None: the middle one)."""
    return video.read_frame(path, frame) if clip else io.read_image(path)


def most_changed_region(difference: np.ndarray, side: int) -> Crop:
    """The side x side window (smaller for a smaller image) whose summed `difference` is largest."""
    height, width = difference.shape
    side_y, side_x = min(side, height), min(side, width)
    sums = cv2.integral(difference.astype(np.float64))
    windows = sums[side_y:, side_x:] - sums[:-side_y, side_x:] - sums[side_y:, :-side_x] + sums[:-side_y, :-side_x]
    y, x = np.unravel_index(int(np.argmax(windows)), windows.shape)
    return Crop(int(x), int(y), side_x, side_y)


def _preview_size(shape: tuple[int, int]) -> tuple[int, int]:
    height, width = shape
    scale = min(1.0, PREVIEW_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _downscale(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    if pixels.shape[:2] == (height, width):
        return pixels
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)


def _write_webp(path: Path, pixels: np.ndarray) -> None:
    io.write_image(io.DecodedImage(np.ascontiguousarray(pixels)), path, quality=WEBP_QUALITY)


def _remove_stale_previews(folder: Path, previews: Sequence[Previews]) -> None:
    """Previews an earlier page of the same name left, and this one does not use."""
    if not folder.is_dir():
        return
    used = {
        name
        for item in previews
        for name in (item.before, item.after, item.heat, item.crop_before, item.crop_after)
        if name
    }
    for path in folder.iterdir():
        if _PREVIEW_NAME.match(path.name) and path.name not in used:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the page


def render(document: Mapping[str, Any], entries: Sequence[Entry], previews: Sequence[Previews], folder: str) -> str:
    """The page's HTML; `folder` is the previews' folder, relative to the page."""
    is_eval = "images" in document
    labels = ("ground truth", "prediction") if is_eval else ("input", "output")
    metric = next((key for key in METRICS if any(key in entry.scores for entry in entries)), None)
    with_gain = metric is not None and any(metric in entry.input_scores for entry in entries)
    title = "dinat eval" if is_eval else f"dinat {document.get('task', 'restore')}"
    statuses = list(dict.fromkeys(entry.status for entry in entries))
    rows = "".join(_table_row(index, entry, metric, with_gain, not is_eval) for index, entry in enumerate(entries, 1))
    cards = "".join(
        _card(index, entry, preview, folder, labels)
        for index, (entry, preview) in enumerate(zip(entries, previews, strict=True), 1)
    )
    options = "".join(f'<option value="{_text(status)}">{_text(status)}</option>' for status in statuses)
    headers = [("name", "Name", "text"), ("status", "Status", "text")]
    if metric is not None:
        headers.append(("score", metric.upper(), "number"))
    if with_gain:
        headers.append(("gain", f"Gain ({metric.upper()})", "number"))
    if not is_eval:
        headers.append(("seconds", "Seconds", "number"))
    head = "".join(
        f'<th scope="col" aria-sort="none"><button type="button" data-key="{key}" data-type="{kind}">'
        f"{label}</button></th>"
        for key, label, kind in headers
    )
    return _PAGE.format(
        title=_text(title),
        header=_header(document, entries, is_eval),
        head=head,
        rows=rows,
        options=options,
        cards=cards,
        css=_CSS,
        script=_SCRIPT,
        gain_note=(
            f"<p>Gain: the output's {metric.upper()} minus the input's, both against the same ground truth.</p>"
            if with_gain
            else ""
        ),
    )


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None) -> str:
    """A score as the page writes it in data attributes: JSON's null (an identical pair's PSNR) is inf."""
    return "inf" if value is None else repr(float(value))


def _shown(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "inf"
    return f"{value:.2f}" if name == "psnr" else f"{value:.4f}"


def _header(document: Mapping[str, Any], entries: Sequence[Entry], is_eval: bool) -> str:
    facts: list[tuple[str, str]] = []
    if is_eval:
        if document.get("command"):
            facts.append(("Command", str(document["command"])))
        facts.append(("Protocol", str(document.get("protocol"))))
        facts.append(("Images scored", str(document.get("count", len(entries)))))
        mean = document.get("mean") or {}
    else:
        facts += _model_facts(document)
        for key, label in (("device", "Device"), ("precision", "Precision"), ("kernels", "Kernels")):
            if document.get(key):
                facts.append((label, str(document[key])))
        facts.append(("Tile", _tiles(entries)))
        if document.get("shard"):
            facts.append(("Shard", str(document["shard"])))
        summary = document.get("summary") or {}
        counts = ", ".join(
            f"{summary[key]} {label}"
            for key, label in (
                ("done", "done"),
                ("skipped", "skipped"),
                ("failed", "failed"),
                ("not_started", "not started"),
            )
            if key in summary
        )
        facts.append(("Files", f"{summary.get('planned', len(entries))} planned: {counts}"))
        if summary.get("interrupted"):
            facts.append(("Interrupted", "yes: the run was stopped before its end"))
        if summary.get("stopped"):
            facts.append(("Stopped", str(summary["stopped"])))
        if "runs" in summary:  # merged by `dinat report`
            facts.append(("Time", f"{summary['seconds']} s: {summary['runs']} runs' times added up"))
        elif "seconds" in summary:
            facts.append(("Time", f"{summary['seconds']} s ({summary.get('images_per_second', 0)} images/s)"))
        mean = summary.get("mean") or {}
    if mean:
        facts.append(("Mean scores", ", ".join(f"{key.upper()} {_shown(key, value)}" for key, value in mean.items())))
    return "".join(f"<dt>{_text(label)}</dt><dd>{_text(value)}</dd>" for label, value in facts)


def _model_facts(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts = [("Command", str(document["command"]))] if document.get("command") else []
    if document.get("task"):
        facts.append(("Task", str(document["task"])))
    if document.get("model"):
        facts.append(("Model", str(document["model"])))
    if document.get("weights"):
        checksum = document.get("weights_sha256")
        facts.append(("Weights", str(document["weights"]) + (f" (sha256 {checksum})" if checksum else "")))
    return facts


def _tiles(entries: Iterable[Entry]) -> str:
    restored = [entry for entry in entries if entry.status == "done"]
    if not restored:
        return "no file restored in this run"
    counts: dict[str, int] = {}
    for entry in restored:
        kind = f"{entry.tile} px tiles" if entry.tile else "whole image"
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind} ({count} files)" for kind, count in counts.items())


def _gain(entry: Entry, metric: str | None) -> float | None:
    if metric is None or metric not in entry.input_scores or metric not in entry.scores:
        return None
    output, input_ = entry.scores[metric], entry.input_scores[metric]
    if output is None or input_ is None:  # an identical pair (inf): no finite gain to show
        return None
    return output - input_


def _table_row(index: int, entry: Entry, metric: str | None, with_gain: bool, with_seconds: bool) -> str:
    cells = [f'<td><a href="#image-{index}">{_text(entry.name)}</a></td>', f"<td>{_text(entry.status)}</td>"]
    data = {"name": entry.name, "status": entry.status}
    if metric is not None:
        has = metric in entry.scores
        data["score"] = _number(entry.scores[metric]) if has else ""
        cells.append(f"<td>{_shown(metric, entry.scores[metric]) if has else '–'}</td>")
    if with_gain:
        gain = _gain(entry, metric)
        data["gain"] = "" if gain is None else repr(gain)
        cells.append(f"<td>{'–' if gain is None else f'{gain:+.2f}'}</td>")
    if with_seconds:
        data["seconds"] = "" if entry.seconds is None else repr(float(entry.seconds))
        cells.append(f"<td>{'–' if entry.seconds is None else f'{entry.seconds:.2f}'}</td>")
    attributes = " ".join(f'data-{key}="{_text(value)}"' for key, value in data.items())
    return f"<tr {attributes}>{''.join(cells)}</tr>"


def _card(index: int, entry: Entry, preview: Previews, folder: str, labels: tuple[str, str]) -> str:
    before_label, after_label = labels
    name = _text(entry.name)
    details = [("Status", entry.status)]
    details += [(key.upper(), _shown(key, value)) for key, value in entry.scores.items()]
    details += [(f"Input {key.upper()}", _shown(key, value)) for key, value in entry.input_scores.items()]
    if entry.seconds is not None:
        details.append(("Seconds", f"{entry.seconds:.3f}"))
    if entry.status == "done":
        details.append(("Tile", f"{entry.tile} px" if entry.tile else "whole image"))
    if entry.precision:
        details.append(("Precision", entry.precision))
    if entry.error:
        details.append(("Error" if entry.status == "failed" else "Note", entry.error))
    if preview.problem:
        details.append(("Preview", preview.problem))
    if preview.frame:
        details.append(("Preview", preview.frame))
    scores = " ".join(f'data-{key}="{_number(value)}"' for key, value in entry.scores.items())
    facts = "".join(f"<dt>{_text(label)}</dt><dd>{_text(value)}</dd>" for label, value in details)
    return (
        f'<article class="card" id="image-{index}" data-status="{_text(entry.status)}" data-name="{name}" {scores}>'
        f"<h3>{name}</h3>{_figure(entry, preview, folder, before_label, after_label)}<dl>{facts}</dl></article>"
    )


def _image(folder: str, name: str, alt: str, width: int, height: int, extra: str = "") -> str:
    return (
        f'<img src="{_text(folder)}/{name}" alt="{_text(alt)}" width="{width}" height="{height}" '
        f'loading="lazy" decoding="async"{extra}>'
    )


def _figure(entry: Entry, preview: Previews, folder: str, before_label: str, after_label: str) -> str:
    if preview.after is None:
        return ""
    size = (preview.width, preview.height)
    after = _image(folder, preview.after, f"{after_label} of {entry.name}", *size, " class=after")
    if preview.before is None or preview.heat is None or preview.crop is None:
        return f"<figure>{after}</figure>"
    crop = preview.crop
    before = _image(folder, preview.before, f"{before_label} of {entry.name}", *size, " class=before")
    heat_alt = f"difference between {before_label} and {after_label} of {entry.name}"
    heat = _image(folder, preview.heat, heat_alt, *size, " class=heat hidden")
    before_crop = _image(folder, preview.crop_before, f"100% crop of the {before_label}", crop.side_x, crop.side_y)
    after_crop = _image(folder, preview.crop_after, f"100% crop of the {after_label}", crop.side_x, crop.side_y)
    where = f"{crop.side_x}×{crop.side_y} pixels at x {crop.x}, y {crop.y}"
    before_text, after_text = _text(before_label), _text(after_label)
    return (
        f'<div class="compare" style="--pos:50%">{after}{before}'
        '<span class="divider" aria-hidden="true"></span>'
        f'<span class="tag left" aria-hidden="true">{before_text}</span>'
        f'<span class="tag right" aria-hidden="true">{after_text}</span>{heat}</div>'
        f'<div class="controls"><label>{before_text} ◂ ▸ {after_text} '
        '<input type="range" class="slider" min="0" max="100" step="1" value="50" '
        f'aria-label="{before_text} to {after_text}, {_text(entry.name)}"></label>'
        f'<label><input type="checkbox" class="heat-toggle"> difference heat map (|difference| × {HEAT_GAIN})'
        "</label></div>"
        f'<figure class="crop">{before_crop}{after_crop}'
        f"<figcaption>100% crop, {before_text} then {after_text}: the region that changed most ({where})"
        "</figcaption></figure>"
    )


_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:12px;color:#111;background:#fafafa}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.2em}h3{font-size:1em;margin:.2em 0;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:.5em 0}dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
.table-wrap{overflow-x:auto}table{border-collapse:collapse;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;color:#0645ad}
th[aria-sort=ascending] button::after{content:" ▲"}th[aria-sort=descending] button::after{content:" ▼"}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;margin:14px 0}
.compare{position:relative;max-width:100%;display:inline-block;touch-action:pan-y;cursor:ew-resize;line-height:0}
.compare img{display:block;max-width:100%;height:auto}
.compare .before,.compare .heat{position:absolute;top:0;left:0;width:100%;height:100%}
.compare .before{clip-path:inset(0 calc(100% - var(--pos)) 0 0)}
.divider{position:absolute;top:0;bottom:0;left:var(--pos);width:2px;margin-left:-1px;background:#fff;
box-shadow:0 0 2px #000}
.tag{position:absolute;top:4px;font-size:12px;line-height:1.2;background:rgba(0,0,0,.6);color:#fff;padding:1px 5px}
.tag.left{left:4px}.tag.right{right:4px}
.controls{display:flex;flex-wrap:wrap;gap:6px 18px;margin:6px 0}.slider{width:min(320px,70vw);vertical-align:middle}
.crop{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}.crop img{max-width:calc(50% - 3px);height:auto}
.crop figcaption{flex-basis:100%;font-size:13px;color:#444}
[hidden]{display:none!important}
"""

# Plain script, no library: slider (range input, pointer on the image), heat map toggle, sorting, filtering.
_SCRIPT = """
(function(){
function setPos(card,value){var c=card.querySelector('.compare');if(c)c.style.setProperty('--pos',value+'%')}
document.querySelectorAll('.card').forEach(function(card){
 var slider=card.querySelector('.slider'),frame=card.querySelector('.compare');
 if(!slider)return;
 slider.addEventListener('input',function(){setPos(card,slider.value)});
 function follow(e){var r=frame.getBoundingClientRect();
  slider.value=Math.round(Math.min(100,Math.max(0,(e.clientX-r.left)/r.width*100)));setPos(card,slider.value)}
 frame.addEventListener('pointerdown',function(e){frame.setPointerCapture(e.pointerId);follow(e)});
 frame.addEventListener('pointermove',function(e){if(frame.hasPointerCapture(e.pointerId))follow(e)});
 card.querySelector('.heat-toggle').addEventListener('change',function(e){
  card.querySelector('.heat').hidden=!e.target.checked});
});
var table=document.getElementById('files'),body=table.tBodies[0];
table.querySelectorAll('th button').forEach(function(button){
 button.addEventListener('click',function(){
  var th=button.parentNode,key=button.dataset.key,number=button.dataset.type==='number';
  var up=th.getAttribute('aria-sort')!=='ascending';
  table.querySelectorAll('th').forEach(function(o){o.setAttribute('aria-sort','none')});
  th.setAttribute('aria-sort',up?'ascending':'descending');
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){var x=a.dataset[key],y=b.dataset[key];
   if(number){if(x===''||y==='')return (x==='')-(y==='');x=parseFloat(x);y=parseFloat(y);
    return up?x-y:y-x}
   return up?x.localeCompare(y):y.localeCompare(x)});
  rows.forEach(function(r){body.appendChild(r)});
 });
});
document.getElementById('status-filter').addEventListener('change',function(e){
 var want=e.target.value;
 document.querySelectorAll('#files tbody tr, .card').forEach(function(el){
  el.hidden=want!=='all'&&el.dataset.status!==want});
});
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self'; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title><style>{css}</style></head>
<body><header><h1>{title}</h1><dl>{header}</dl></header>
<main><h2>Files</h2>
<p><label>Show <select id="status-filter"><option value="all">all</option>{options}</select></label></p>
{gain_note}<div class="table-wrap"><table id="files"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>
<h2>Images</h2>{cards}</main><script>{script}</script></body></html>
"""
