"""Video files -> restored video files, frame by frame, in segments that survive an interrupted run.

PyAV decodes the clip and encodes the restored frames; no ffmpeg process is started. A clip is cut
into segments of about `VideoOptions.segment_frames` frames (`plan_segments`), at a keyframe where
one is near, each a range of presentation timestamps that is decoded from the keyframe before it.
Each restored segment is a small NUT file (NUT keeps any time base, so timestamps are exact) in a
hidden work folder beside the output, under its final name only when complete: a run killed at any
point loses at most the segments in flight, and a rerun restores only the missing ones. Segments
are independent units: shards (`--shard`) and Ray workers restore different segments of one clip
into the same work folder, and whichever run finishes the last one joins them. Joining muxes their
packets with the input's audio and subtitle packets (copied, never re-encoded) into a temporary
file renamed to the output, bit-exactly (no muxer time stamps or random ids), so every way of
running writes the same file; then the work folder is removed. Memory is flat in the clip's length.

Frames keep their timestamps (pts copied, so variable frame rate stays), the clip its size, and the
encoder the input's colour metadata. 8-bit input goes through the network as 8-bit frames, deeper input
(10-bit) as 16-bit frames and out in the codec's deep pixel format.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import heapq
import itertools
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from queue import Empty, Full, Queue
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dinat_cli import files
from dinat_cli.errors import DinatError, StorageError

if TYPE_CHECKING:
    from dinat_cli.engine import Restored
    from dinat_cli.io import DecodedImage  # torch: only the caller of restore_video needs it

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})
# ISO media brands of still images (HEIF, AVIF): an `ftyp` box alone does not make a video.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})
_TS_PACKET = 188

# The input's codec -> the encoder that writes it again ("keep").
_ENCODERS = {
    "h264": "libx264",
    "hevc": "libx265",
    "vp9": "libvpx-vp9",
    "vp8": "libvpx",
    "av1": "libsvtav1",
    "mpeg4": "mpeg4",
    "mjpeg": "mjpeg",
    "ffv1": "ffv1",
}
# Codecs that store every frame exactly: their output equals the frames restored as photos.
LOSSLESS_CODECS = ("ffv1",)

WORK_MARKER = ".dinat-video"
_BITEXACT = {"fflags": "+bitexact"}


@dataclass(frozen=True)
class VideoOptions:
    """How videos are written: `codec` None keeps the input's; `crf` None takes the encoder's default quality.

    `segment_frames` frames make a segment, the work an interrupted run can lose. `restored_with`
    names what restores the frames (the weights' checksum, the model's and the engine's options):
    a rerun keeps an earlier run's segments only where it is the same.
    """

    codec: str | None = None
    crf: int | None = None
    segment_frames: int = 120
    restored_with: str = ""


@dataclass(frozen=True)
class VideoRestored:
    """What restoring a clip did: frames restored now (not those of segments an earlier run finished).

    `joined`: this call wrote the output. False when it restored only some segments and the others
    are still missing (another shard's or worker's), or another run joined them first.
    """

    frames: int
    restored_frames: int
    model_seconds: float
    tile: int | None
    precision: str | None
    joined: bool = True


@dataclass(frozen=True)
class Segment:
    """The frames `start <= pts < end` of a clip (stream time base; None: from the first, to the last).

    `seek` is the decoding timestamp of the keyframe their decoding starts from (None: the clip's
    start); `frames` how many frames the container holds in the range.
    """

    index: int
    start: int | None
    end: int | None
    seek: int | None
    frames: int


class FrameRestorer(Protocol):
    """What restores a clip's frames: `engine.Restorer`, or a runner's stand-in for it."""

    def restore_batch(self, images: Sequence[np.ndarray]) -> list[Restored]: ...

    def batch_size(self, height: int, width: int) -> int: ...


# Batches of decoded frames waiting for the network: the decoder works while the network does.
_BATCHES_AHEAD = 2


def is_video(path: Path) -> bool:
    """A video by its extension, or, under any other name, by its content (`sniff_container`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS or sniff_container(path) is not None


def sniff_container(path: Path) -> str | None:
    """The FFmpeg muxer of the video container `path` holds, from its first bytes; None for anything else.

    ISO media (mp4, mov, 3gp; not HEIF/AVIF images), Matroska/WebM, AVI and MPEG transport streams:
    what cameras write under names of their own (GoPro's .LRV, a recorder's .MTS, no extension).
    """
    try:
        with open(path, "rb") as file:
            head = file.read(_TS_PACKET * 2 + 1)
    except OSError:
        return None
    if head[4:8] == b"ftyp" and head[8:12] not in _IMAGE_BRANDS:
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if len(head) > _TS_PACKET * 2 and head[0] == head[_TS_PACKET] == head[_TS_PACKET * 2] == 0x47:
        return "mpegts"
    return None


def work_folder(output: Path) -> Path:
    """The hidden folder beside `output` where its segments wait for the final mux."""
    output = Path(output)
    return output.with_name(f".{output.name}{WORK_MARKER}")


def restore_video(
    source: Path,
    output: Path,
    restore: FrameRestorer,
    options: VideoOptions,
    on_frame: Callable[[int, int | None], None] | None = None,
    segments: Collection[int] | None = None,
) -> VideoRestored:
    """Restore the frames of `source` with `restore` (float32 HxWx3 in [0, 1] -> `Restored`) into `output`.

    `segments` are the indices (`plan_segments`) this call restores, None for all. When every
    segment is there, the output is joined. `on_frame(frames done, frames to restore)` follows
    each restored frame.

    Finished segments of an earlier, interrupted run with the same options are kept. A problem with
    the input raises a DinatError naming it; a run of the whole clip then removes the work folder
    (nothing partial stays), a run of some segments leaves the others' segments there.
    """
    import av

    source, output = Path(source), Path(output)
    work = work_folder(output)
    try:
        probe = _probe(source)
        _prepare_work_folder(work, source, options)
        plan = _planned_segments(source, work, options.segment_frames)
        mine = [segment for segment in plan if segments is None or segment.index in segments]
        stats = _restore_segments(source, work, restore, options, probe, mine, on_frame)
        joined = _join_when_complete(source, work, output, probe, plan)
    except StorageError:
        raise
    except (av.FFmpegError, ValueError, DinatError) as error:
        if segments is None:
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(error, DinatError):
            raise
        raise DinatError(f"{source}: cannot restore the video ({_reason(error)})") from error
    except OSError as error:
        if segments is None:
            shutil.rmtree(work, ignore_errors=True)
        raise files.write_failure(output, error) from error
    return replace(stats, frames=sum(segment.frames for segment in plan), joined=joined)


def plan_segments(source: Path, segment_frames: int) -> list[Segment]:
    """How `source` is cut into segments of at least `segment_frames` frames, from its packets (no decoding).

    A segment ends at the first keyframe from `segment_frames` to twice that many frames after its
    start, or at `segment_frames` frames where there is none. A stream whose packets have no
    presentation timestamps is one segment.
    """
    return _cut(_packets(source), segment_frames)


def read_frame(source: Path, index: int | None = None) -> DecodedImage:
    """Frame `index` of the clip (from 0, in presentation order; None: the middle one) as an image,
    decoded from the keyframe before it; 16-bit for a deep clip."""
    packets = _packets(source)
    if any(pts is None for pts, _, _ in packets):
        segment = Segment(0, None, None, None, len(packets))
        skip = len(packets) // 2 if index is None else index
    else:
        shown = _presentation_order(packets)
        at = min(len(shown) - 1, len(shown) // 2 if index is None else index)
        segment, skip = _segment_of(packets, shown, _keyframes(packets), at, at, at + 1), 0
    import av

    from dinat_cli.io import DecodedImage

    deep = _probe(source).deep
    try:
        frame = next(itertools.islice(_decode(source, segment), skip, None), None)
        pixels = None if frame is None else frame.to_ndarray(format="rgb48le" if deep else "rgb24")
    except av.FFmpegError as error:
        raise DinatError(f"{source}: cannot decode ({_reason(error)})") from None
    if pixels is None:
        raise DinatError(f"{source}: no frame {index}")
    return DecodedImage(pixels)


def _packets(source: Path) -> list[tuple[int | None, int | None, bool]]:
    """(pts, dts, keyframe) of the video stream's packets in decoding order, from demuxing alone."""
    import av

    with _open_video(source) as container:
        stream = container.streams.video[0]
        try:
            packets = [(item.pts, item.dts, item.is_keyframe) for item in container.demux(stream) if item.size]
        except av.FFmpegError as error:
            raise DinatError(f"{source}: not a readable video ({_reason(error)})") from None
    if not packets:
        raise DinatError(f"{source}: no frame could be decoded")
    return packets


def _cut(packets: Sequence[tuple[int | None, int | None, bool]], segment_frames: int) -> list[Segment]:
    """Segments of packets (pts, dts, keyframe) in decoding order."""
    if any(pts is None for pts, _, _ in packets):
        return [Segment(0, None, None, None, len(packets))]
    shown = _presentation_order(packets)
    count = len(shown)
    starts = [0]
    while starts[-1] + segment_frames < count:
        first = starts[-1] + segment_frames
        keyframes = (at for at in range(first, min(first + segment_frames, count)) if packets[shown[at]][2])
        starts.append(next(keyframes, first))
    keyframes = _keyframes(packets)
    ends = [*starts[1:], count]
    pairs = enumerate(zip(starts, ends, strict=True))
    return [_segment_of(packets, shown, keyframes, index, first, last) for index, (first, last) in pairs]


def _presentation_order(packets: Sequence[tuple[int | None, int | None, bool]]) -> list[int]:
    """The decoding index of each frame, in presentation order."""
    return sorted(range(len(packets)), key=lambda index: packets[index][0])


def _keyframes(packets: Sequence[tuple[int | None, int | None, bool]]) -> list[int]:
    return [index for index, (_, _, key) in enumerate(packets) if key]


def _segment_of(
    packets: Sequence[tuple[int | None, int | None, bool]],
    shown: Sequence[int],
    keyframes: Sequence[int],
    index: int,
    first: int,
    last: int,
) -> Segment:
    """Segment `index`: the frames shown from `first` to before `last`, and where decoding them starts.

    Decoding starts at the last keyframe before their first packet in decoding order that none of
    them is shown before (those would be an open GOP's leading frames, which need the keyframe
    before it).
    """
    earliest = min(shown[first:last])
    candidates = keyframes[: bisect.bisect_right(keyframes, earliest)]
    shown_first = packets[shown[first]][0]
    key = next((key for key in reversed(candidates) if packets[key][0] <= shown_first), 0)
    pts, dts, _ = packets[key]
    return Segment(
        index=index,
        start=shown_first if first else None,
        end=packets[shown[last]][0] if last < len(shown) else None,
        seek=(dts if dts is not None else pts) if key else None,
        frames=last - first,
    )


@dataclass(frozen=True)
class _Probe:
    codec: str
    width: int
    height: int
    deep: bool
    # The input's chroma sampling, "420", "422" or "444": lossy output keeps it where the encoder can.
    chroma: str
    time_base: Fraction
    rate: Fraction | None
    colour: dict[str, int]
    # Degrees the player turns the frames (the display matrix): the pixels are restored as stored.
    rotation: float


def _probe(source: Path) -> _Probe:
    with _open_video(source) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        if context is None or stream.codec_context.name is None:
            raise DinatError(f"{source}: unsupported video codec")
        if stream.time_base is None:
            raise DinatError(f"{source}: the video stream has no time base")
        format_name = context.format.name if context.format is not None else ""
        colour = {
            name: int(getattr(context, name))
            for name in ("color_primaries", "color_trc", "colorspace", "color_range")
            if getattr(context, name, None) is not None
        }
        first = next(container.decode(stream), None)
        return _Probe(
            codec=context.name,
            width=context.width,
            height=context.height,
            deep=any(bits in format_name for bits in ("p10", "p12", "p16", "48")),
            chroma=_chroma(format_name),
            time_base=stream.time_base,
            rate=stream.guessed_rate or stream.average_rate,
            colour=colour,
            rotation=first.rotation if first is not None else 0.0,
        )


def _open_video(source: Path) -> object:
    """`source` opened for reading, with a video stream; a DinatError naming it otherwise."""
    import av

    try:
        container = av.open(str(source))
    except av.FFmpegError as error:
        raise DinatError(f"{source}: not a readable video ({_reason(error)})") from None
    if not container.streams.video:
        container.close()
        raise DinatError(f"{source}: no video stream")
    return container


def _prepare_work_folder(work: Path, source: Path, options: VideoOptions) -> None:
    """Keep segments an earlier run wrote for the same input and options; start afresh otherwise.

    Shards of one run may come here at once: a folder without settings yet is another's, just made.
    """
    stat = source.stat()
    settings = {"options": asdict(options), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
    manifest = work / "settings.json"
    try:
        same = json.loads(manifest.read_text()) == settings
    except FileNotFoundError:
        same = True
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not manifest.exists():
        files.write_atomically(manifest, json.dumps(settings).encode())


def _planned_segments(source: Path, work: Path, segment_frames: int) -> list[Segment]:
    """The clip's segments, planned once and kept in the work folder: the shards and Ray tasks of a
    long clip read them instead of demuxing the whole clip again each."""
    kept = work / "segments.json"
    try:
        return [Segment(**fields) for fields in json.loads(kept.read_text())]
    except (OSError, ValueError, TypeError):
        plan = plan_segments(source, segment_frames)
        files.write_atomically(kept, json.dumps([asdict(segment) for segment in plan]).encode())
        return plan


def _segment_path(work: Path, index: int) -> Path:
    return work / f"segment-{index:06d}.nut"


def _restore_segments(
    source: Path,
    work: Path,
    restore: FrameRestorer,
    options: VideoOptions,
    probe: _Probe,
    segments: Sequence[Segment],
    on_frame: Callable[[int, int | None], None] | None,
) -> VideoRestored:
    """Restore the segments not yet in `work`: frames decoded on one thread, a batch of them in the
    network on the calling thread, the previous batch encoded on another; memory is a few batches."""
    from dinat_cli.io import DecodedImage  # a frame goes through the network as a photo does

    todo = [segment for segment in segments if not _segment_path(work, segment.index).exists()]
    total = sum(segment.frames for segment in todo)
    batch = max(1, restore.batch_size(probe.height, probe.width))
    restored = 0
    model_seconds = 0.0
    tile = precision = None
    pixel_format = "rgb48le" if probe.deep else "rgb24"
    with ThreadPoolExecutor(1, thread_name_prefix="dinat-encode") as encoder:
        for segment in todo:
            writer = _SegmentWriter(work, segment.index, options, probe)
            writing: Future[None] | None = None
            decoded = (
                (frame, DecodedImage(frame.to_ndarray(format=pixel_format))) for frame in _decode(source, segment)
            )
            for pairs in _read_ahead(_batches(decoded, batch), _BATCHES_AHEAD):
                results = restore.restore_batch([image.to_float() for _, image in pairs])
                model_seconds += sum(result.seconds for result in results)
                tile, precision = results[-1].tile, results[-1].precision
                if writing is not None:
                    writing.result()  # one batch encoded at a time, in order
                writing = encoder.submit(_encode, writer, pairs, results)
                restored += len(pairs)
                if on_frame is not None:
                    on_frame(restored, total)
            if writing is not None:
                writing.result()
            writer.finish()
    return VideoRestored(0, restored, model_seconds, tile, precision)


def _encode(writer: _SegmentWriter, pairs: Sequence[tuple[object, object]], results: Sequence[Restored]) -> None:
    """Write restored frames: each decoded frame's timestamps, its image's depth."""
    for (frame, image), result in zip(pairs, results, strict=True):
        writer.write(image.with_float_pixels(result.pixels).pixels, frame)


def _batches(items: Iterator[object], size: int) -> Iterator[list[object]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _read_ahead(items: Iterator[object], ahead: int) -> Iterator[object]:
    """`items`, produced on a thread of their own up to `ahead` before they are taken."""
    queue: Queue[tuple[object, BaseException | None]] = Queue(maxsize=ahead)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((done, None))
        except BaseException as error:  # handed to the consumer, which raises it
            queue.put((done, error))

    producer = threading.Thread(target=produce, name="dinat-decode", daemon=True)
    producer.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(Empty):
            while True:
                queue.get_nowait()  # unblocks a producer waiting to put
        producer.join()


def _decode(source: Path, segment: Segment) -> Iterator[object]:
    """The frames of `segment`, decoded from the keyframe before it."""
    import av

    seek = segment.seek
    while True:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if seek is not None:
                container.seek(seek, stream=stream, backward=True)
            frames = container.decode(stream)
            first = next(frames, None)
            if seek is not None and first is not None and first.pts is not None and first.pts > segment.start:
                seek = None  # the demuxer landed past the segment's start: decode from the clip's start
                continue
            for frame in itertools.chain([first] if first is not None else [], frames):
                if frame.pts is not None and segment.start is not None and frame.pts < segment.start:
                    continue
                if frame.pts is not None and segment.end is not None and frame.pts >= segment.end:
                    return
                yield frame
            return


class _SegmentWriter:
    """Encodes one segment into a temporary NUT file, renamed to its final name by `finish`."""

    def __init__(self, work: Path, index: int, options: VideoOptions, probe: _Probe) -> None:
        import av

        self.index = index
        self._path = _segment_path(work, index)
        self._temp = self._path.with_name(f".{self._path.name}{files.TEMP_MARKER}{secrets.token_hex(4)}")
        self._container = av.open(str(self._temp), "w", format="nut")
        codec = options.codec or _ENCODERS.get(probe.codec)
        if codec is None:
            raise DinatError(f"no encoder for the input's codec {probe.codec}: choose one with --video-codec")
        try:
            stream = self._container.add_stream(codec, rate=probe.rate)
        except (ValueError, av.FFmpegError) as error:
            raise DinatError(f"--video-codec {codec}: not an encoder this PyAV has ({_reason(error)})") from None
        stream.width, stream.height = probe.width, probe.height
        stream.time_base = probe.time_base
        stream.pix_fmt = _pixel_format(stream.codec_context.codec, probe.deep, probe.chroma)
        context = stream.codec_context
        context.time_base = probe.time_base
        for name, value in probe.colour.items():
            setattr(context, name, value)
        encoder_options: dict[str, str] = {}
        if options.crf is not None:
            encoder_options["crf"] = str(options.crf)
        if codec in ("libx264", "libx265"):
            # No B-frames: each segment's decoding timestamps then follow the previous segment's.
            context.max_b_frames = 0
        stream.options = encoder_options
        self._stream = stream

    def write(self, pixels: np.ndarray, source: object) -> None:
        """Encode `pixels`, the restored `source` frame, with its timestamp and duration."""
        import av

        frame = av.VideoFrame.from_ndarray(pixels, format="rgb48le" if pixels.dtype == np.uint16 else "rgb24")
        frame.pts, frame.time_base, frame.duration = source.pts, source.time_base, source.duration
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def finish(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        os.replace(self._temp, self._path)


def _chroma(format_name: str) -> str:
    """The chroma sampling of a pixel format: "444" for RGB and 4:4:4 YUV, "422", else "420"."""
    if format_name.startswith(("gbr", "rgb", "bgr", "argb", "abgr", "rgba", "bgra")) or "444" in format_name:
        return "444"
    return "422" if "422" in format_name else "420"


def _pixel_format(codec: object, deep: bool, chroma: str = "420") -> str:
    """RGB when the codec stores it losslessly (its frames come back exactly), else YUV with the
    input's chroma sampling and depth where the encoder has them, 4:2:0 otherwise."""
    formats = [item.name for item in (getattr(codec, "video_formats", None) or [])]
    if getattr(codec, "name", "") in LOSSLESS_CODECS:
        wanted: tuple[str, ...] = ("gbrp16le",) if deep else ("gbrp", "bgr0")
    elif deep:
        wanted = (f"yuv{chroma}p10le", "yuv420p10le", f"yuv{chroma}p", "yuv420p")
    else:
        wanted = (f"yuv{chroma}p", "yuv420p")
    for name in wanted:
        if not formats or name in formats:
            return name
    return formats[0]


def _join_when_complete(source: Path, work: Path, output: Path, probe: _Probe, plan: Sequence[Segment]) -> bool:
    """Join the segments into `output` if all are there and no other run did; True if this call did.

    The lock makes one of the runs that finish a clip's last segments at once join them; the
    others find the work folder gone.
    """
    try:
        lock = open(work / "join.lock", "a")  # noqa: SIM115 - held while joining
    except FileNotFoundError:
        return False  # another run joined the clip and removed the folder
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (work / "settings.json").exists():
            return False
        if not all(_segment_path(work, segment.index).exists() for segment in plan):
            return False
        _mux(source, work, output, probe)
        shutil.rmtree(work, ignore_errors=True)
    return True


def _mux(source: Path, work: Path, output: Path, probe: _Probe) -> None:
    """The segments' video packets and the input's other streams, copied into `output` atomically.

    Bit-exact: the muxer writes no time of day and no random ids, so the file depends only on the packets.
    """
    import av

    segments = sorted(work.glob("segment-*.nut"))
    temp = output.with_name(f".{output.name}{files.TEMP_MARKER}{secrets.token_hex(4)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(source)) as inputs, av.open(segments[0].as_posix()) as first:
            others = [stream for stream in inputs.streams if stream.type in ("audio", "subtitle")]
            with av.open(str(temp), "w", format=_container_format(output, source), options=_BITEXACT) as target:
                video = target.add_stream_from_template(first.streams.video[0])
                if probe.rotation:
                    video.set_display_rotation(probe.rotation)
                copies = {}
                for stream in others:
                    try:
                        copies[stream.index] = target.add_stream_from_template(stream)
                    except (ValueError, av.FFmpegError):
                        continue  # a stream this container cannot hold (e.g. mov_text in mkv)
                for packet in heapq.merge(
                    _segment_packets(segments), _input_packets(inputs, list(copies)), key=_packet_time
                ):
                    packet.stream = video if packet.stream.type == "video" else copies[packet.stream.index]
                    target.mux(packet)
        os.replace(temp, output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _container_format(output: Path, source: Path) -> str | None:
    """The muxer: the output's extension names it, else (a name of a camera's own) the input's content."""
    named = {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".mp4": "mp4", ".avi": "avi"}
    return named.get(output.suffix.lower()) or sniff_container(source)


def _segment_packets(segments: list[Path]) -> Iterator[object]:
    import av

    for path in segments:
        with av.open(path.as_posix()) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.dts is not None or packet.pts is not None:
                    yield packet


def _input_packets(container: object, indices: list[int]) -> Iterator[object]:
    if not indices:
        return
    streams = [container.streams[index] for index in indices]
    for packet in container.demux(streams):
        if packet.dts is not None or packet.pts is not None:
            yield packet


def _packet_time(packet: object) -> Fraction:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return stamp * packet.time_base


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(": '", 1)[0]


@dataclass(frozen=True)
class VideoScores:
    """A restored clip against its ground truth: the mean over frames, and the worst frame (lowest PSNR)."""

    mean: dict[str, float]
    worst_frame: int
    worst: dict[str, float]


def score_videos(gt: Path, pred: Path, score: Callable[[object, object], dict[str, float]]) -> VideoScores:
    """Score `pred` against `gt` frame by frame with `score(gt frame, pred frame)` (`DecodedImage`s).

    Clips of another size, frame rate or frame count are refused with a DinatError naming both.
    """
    import av

    from dinat_cli.evaluation import mean_scores
    from dinat_cli.io import DecodedImage

    gt_probe, pred_probe = _probe(gt), _probe(pred)
    for what, left, right in (
        ("size", f"{gt_probe.width}x{gt_probe.height}", f"{pred_probe.width}x{pred_probe.height}"),
        ("frame rate", gt_probe.rate, pred_probe.rate),
    ):
        if left != right:
            raise DinatError(f"{gt} vs {pred}: {what} mismatch ({left} vs {right})")
    deep = gt_probe.deep or pred_probe.deep
    scores: list[dict[str, float]] = []
    try:
        with av.open(str(gt)) as truth, av.open(str(pred)) as restored:
            truths, predictions = _frames(truth, deep), _frames(restored, deep)
            while (left := next(truths, None)) is not None and (right := next(predictions, None)) is not None:
                scores.append(score(DecodedImage(left), DecodedImage(right)))
            # Counted to the end only when one clip ended first.
            counts = (
                len(scores) + (left is not None) + sum(1 for _ in truths),
                len(scores) + sum(1 for _ in predictions),
            )
    except av.FFmpegError as error:
        raise DinatError(f"{gt} vs {pred}: cannot decode ({_reason(error)})") from None
    if counts[0] != counts[1]:
        raise DinatError(f"{gt} vs {pred}: frame count mismatch ({counts[0]} vs {counts[1]})")
    if not scores:
        raise DinatError(f"{gt} vs {pred}: no frames")
    worst = min(range(len(scores)), key=lambda index: scores[index].get("psnr", 0.0))
    return VideoScores(mean_scores(scores), worst, scores[worst])


def _frames(container: object, deep: bool) -> Iterator[np.ndarray]:
    for frame in container.decode(container.streams.video[0]):
        yield frame.to_ndarray(format="rgb48le" if deep else "rgb24")
