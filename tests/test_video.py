"""Videos through the restore commands: clips the tests make with PyAV, restored frame by frame."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from installed import DINAT
from small_model import save_checkpoint

from dinat_cli import pipeline, video
from dinat_cli.engine import Restorer
from dinat_cli.io import read_image
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.pipeline import RestoreRequest, restore_files

OPTIONS = EngineOptions(device="cpu", attention="torch")
TIME_BASE = Fraction(1, 12800)
# Variable frame rate: every third frame lasts twice as long.
STEPS = (1066, 533, 533)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "net_g_latest.pth")


@pytest.fixture(scope="module")
def restorer(checkpoint: Path) -> Restorer:
    return Restorer.load(ModelSource(checkpoint), OPTIONS)


def make_clip(
    path: Path,
    *,
    frames: int = 12,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: bool = True,
    size: tuple[int, int] = (64, 48),
    rotation: float = 0,
    encoder: dict[str, str] | None = None,
    rate: int = 24,
) -> Path:
    """A clip of smooth moving gradients (so that a lossy codec keeps them well), VFR, with a sine tone.

    `encoder`: the encoder's options, e.g. x264's keyframe interval and B-frames.
    """
    width, height = size
    deep = "10" in pix_fmt
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = TIME_BASE
        stream.options = encoder or {}
        if rotation:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=8000) if audio else None
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        pts = 0
        for index in range(frames):
            rgb = np.stack([x / width, y / height, (x + y + 4 * index) % 32 / 32], axis=2)
            if deep:
                frame = av.VideoFrame.from_ndarray((rgb * 65535).astype(np.uint16), format="rgb48le")
            else:
                frame = av.VideoFrame.from_ndarray((rgb * 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, TIME_BASE
            pts += STEPS[index % 3]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if sound is not None:
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)[None]
            for start in range(0, 8000, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[:, start : start + 1024].copy(), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 8000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


def decoded(path: Path, pixel_format: str = "rgb24") -> tuple[list[np.ndarray], list[float], dict[str, object]]:
    """Frames, their times in seconds and the video stream's facts."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times, rotations = [], [], []
        for frame in container.decode(stream):
            rotations.append(frame.rotation)
            frames.append(frame.to_ndarray(format=pixel_format))
            times.append(float(frame.pts * frame.time_base))
        facts = {
            "codec": stream.codec_context.name,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "pix_fmt": stream.codec_context.pix_fmt,
            "streams": [item.type for item in container.streams],
            "rate": stream.guessed_rate,
            "average_rate": round(float(stream.average_rate or 0), 2),
            "rotations": set(rotations),
        }
    return frames, times, facts


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


def round_trip(frames: list[np.ndarray], path: Path) -> list[np.ndarray]:
    """`frames` encoded as the restored clip is (libx264, yuv420p, crf 12, no B-frames) and decoded."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.max_b_frames = 0
        stream.options = {"crf": "12"}
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return decoded(path)[0]


def _mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def as_photos(restorer: Restorer, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Each frame restored as a photo is: float in [0, 1], the network, rounded to the frame's integers."""
    top = np.iinfo(frames[0].dtype).max
    return [
        np.rint(np.clip(restorer.restore(frame.astype(np.float32) / top).pixels, 0, 1) * top).astype(frame.dtype)
        for frame in frames
    ]


def test_a_clip_keeps_its_size_frames_timestamps_and_audio_and_frames_are_restored_within_the_codec_loss(
    tmp_path: Path, checkpoint: Path, restorer: Restorer
) -> None:
    (tmp_path / "in").mkdir()
    clip = make_clip(tmp_path / "in" / "clip.mp4", rotation=90)  # a phone held upright
    out = tmp_path / "out"
    request = RestoreRequest(
        "denoise",
        tmp_path / "in",
        out,
        ModelSource(checkpoint),
        OPTIONS,
        video=video.VideoOptions(crf=12, segment_frames=5),
    )
    progress = []
    run = restore_files(request, on_frames=lambda *frames: progress.append(frames))

    assert progress == [("clip.mp4", done, 12) for done in range(1, 13)]  # what a terminal's bar shows
    assert run.result.exit_code == 0
    row = run.document["files"][0]
    assert (row["name"], row["status"], row["frames"], row["restored_frames"]) == ("clip.mp4", "done", 12, 12)
    frames_in, times_in, facts_in = decoded(clip)
    frames_out, times_out, facts_out = decoded(out / "clip.mp4")
    expected = {"codec": "h264", "size": (64, 48), "pix_fmt": "yuv420p", "streams": ["video", "audio"], "rate": 24}
    expected["average_rate"] = 18.0  # 12 frames in 2/3 s: the last frame keeps its duration
    assert facts_out == facts_in == {**expected, "rotations": {90}}  # rotation metadata kept
    assert len(frames_out) == 12
    # The same presentation times, variable frame rate included (the mp4 time base may differ: 1 tick).
    assert np.allclose(times_out, times_in, atol=1 / 12800) and set(np.diff(times_in).round(2)) == {0.04, 0.08}
    assert audio_packets(out / "clip.mp4") == audio_packets(clip)  # copied, not encoded again
    photos = as_photos(restorer, frames_in)
    # What the codec alone loses on the photo-restored frames: the restored clip loses no more.
    through_codec = round_trip(photos, tmp_path / "photos.mp4")
    for got, photo, coded in zip(frames_out, photos, through_codec, strict=True):
        assert _mean_error(got, photo) <= 1.05 * _mean_error(coded, photo) + 0.1
    assert [path.name for path in out.iterdir() if path.name != ".dinat.lock"] == ["clip.mp4"]  # no work folder


def test_the_cli_restores_a_folder_of_a_clip_and_a_photo_losslessly_as_photos_are_restored(
    tmp_path: Path, checkpoint: Path, restorer: Restorer
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    clip = make_clip(source / "sub" / "clip.mp4")
    cv2.imwrite(str(source / "photo.png"), np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    command = [*DINAT, "denoise", str(source), str(out), "--weights", str(checkpoint), "--device", "cpu"]
    done = subprocess.run(
        [*command, "--attention", "torch", "--video-codec", "ffv1", "--ext", "mkv"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "done    sub/clip.mp4 -> " in done.stderr and " s, 12 frames, " in done.stderr  # one line per clip

    frames_in, times_in, _ = decoded(clip)
    frames_out, times_out, facts = decoded(out / "sub" / "clip.mkv")
    assert (facts["codec"], facts["size"], facts["streams"]) == ("ffv1", (64, 48), ["video", "audio"])
    for got, expected in zip(frames_out, as_photos(restorer, frames_in), strict=True):
        np.testing.assert_array_equal(got, expected)
    # Matroska counts milliseconds and shifts the start by the AAC priming: the intervals are kept.
    assert np.allclose(np.diff(times_out), np.diff(times_in), atol=1e-3)
    assert audio_packets(out / "sub" / "clip.mkv") == audio_packets(clip)
    photo = read_image(source / "photo.png")
    expected = photo.with_float_pixels(restorer.restore(photo.to_float()).pixels).pixels
    np.testing.assert_array_equal(read_image(out / "photo.png").pixels, expected)  # --ext mkv is for videos


def test_ten_bit_video_goes_through_sixteen_bit_frames_and_comes_out_deep(
    tmp_path: Path, checkpoint: Path, restorer: Restorer
) -> None:
    clip = make_clip(tmp_path / "deep.mkv", codec="ffv1", pix_fmt="yuv420p10le", audio=False)
    out = tmp_path / "out"
    lossless = RestoreRequest("denoise", clip, out / "deep.mkv", ModelSource(checkpoint), OPTIONS)
    restore_files(lossless)  # the input's codec, ffv1: RGB at 16 bits, exactly
    frames_in, _, _ = decoded(clip, "rgb48le")
    frames_out, _, facts = decoded(out / "deep.mkv", "rgb48le")
    assert facts["pix_fmt"] == "gbrp16le" and frames_in[0].dtype == np.uint16
    for got, expected in zip(frames_out, as_photos(restorer, frames_in), strict=True):
        np.testing.assert_array_equal(got, expected)

    lossy = RestoreRequest(
        "denoise", clip, out / "deep.mp4", ModelSource(checkpoint), OPTIONS, video=video.VideoOptions("libx264")
    )
    restore_files(lossy)
    assert decoded(out / "deep.mp4")[2]["pix_fmt"] == "yuv420p10le"
    tenbit = decoded(clip, "rgb48le")[0][3] >> 6
    assert len(np.unique(tenbit)) > 256  # the input used more than 8 bits


def test_a_clip_killed_mid_run_resumes_to_the_file_an_uninterrupted_run_writes(
    tmp_path: Path, checkpoint: Path
) -> None:
    clip = make_clip(tmp_path / "in" / "clip.mp4", frames=16) if _mkdir(tmp_path / "in") else None
    options = video.VideoOptions("ffv1", segment_frames=4)
    whole = restore_files(_request(clip, tmp_path / "whole", checkpoint, options))
    assert whole.document["files"][0]["restored_frames"] == 16

    # A run whose model stalls once two segments are written, as a long clip would be caught mid-way.
    interrupted = tmp_path / "resumed"
    work = video.work_folder(interrupted / "clip.mkv")
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from dinat_cli import engine, video
        from dinat_cli.options import EngineOptions, ModelSource
        from dinat_cli.pipeline import RestoreRequest, restore_files

        original = engine.Restorer.restore_batch
        def stalling(self, images):
            if Path({str(work / "segment-000001.nut")!r}).exists():
                time.sleep(600)
            return original(self, images)
        engine.Restorer.restore_batch = stalling
        options = video.VideoOptions("ffv1", segment_frames=4)
        model = ModelSource(Path({str(checkpoint)!r}))
        engine_options = EngineOptions(device="cpu", attention="torch")
        output = Path({str(interrupted)!r})
        restore_files(RestoreRequest("denoise", {str(clip)!r}, output, model, engine_options, ext="mkv", video=options))
    """)
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        while not (work / "segment-000001.nut").exists():
            assert child.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        time.sleep(0.5)  # the third segment is in flight
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not (interrupted / "clip.mkv").exists()  # nothing under the final name
    assert sorted(path.name for path in work.glob("segment-*")) == ["segment-000000.nut", "segment-000001.nut"]

    resumed = restore_files(_request(clip, interrupted, checkpoint, options))
    row = resumed.document["files"][0]
    assert (row["status"], row["frames"], row["restored_frames"]) == ("done", 16, 8)  # two segments were kept
    assert (interrupted / "clip.mkv").read_bytes() == (tmp_path / "whole" / "clip.mkv").read_bytes()
    assert not work.exists() and not list(interrupted.rglob(".*.tmp-*"))


def _mkdir(folder: Path) -> bool:
    folder.mkdir(parents=True)
    return True


def _request(clip: Path, out: Path, checkpoint: Path, options: video.VideoOptions) -> RestoreRequest:
    return RestoreRequest("denoise", clip, out, ModelSource(checkpoint), OPTIONS, ext="mkv", video=options)


def test_bad_videos_fail_with_one_line_each_and_the_batch_goes_on(tmp_path: Path, checkpoint: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    good = make_clip(source / "good.mp4")
    (source / "corrupt.mp4").write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (source / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with av.open(str(source / "silent.mkv"), "w") as container:  # audio only
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    run = restore_files(RestoreRequest("denoise", source, out, ModelSource(checkpoint), OPTIONS))
    rows = {row["name"]: row for row in run.document["files"]}
    assert rows["good.mp4"]["status"] == "done" and run.result.exit_code == 1
    assert rows["corrupt.mp4"]["error"].startswith(f"{source / 'corrupt.mp4'}: not a readable video (")
    assert rows["truncated.mp4"]["error"].startswith(f"{source / 'truncated.mp4'}: not a readable video (")
    assert rows["silent.mkv"]["error"] == f"{source / 'silent.mkv'}: no video stream"
    for row in rows.values():
        assert "\n" not in row.get("error", "")

    unsupported = RestoreRequest(
        "denoise", good, out / "again.mp4", ModelSource(checkpoint), OPTIONS, video=video.VideoOptions("no-such-codec")
    )
    row = restore_files(unsupported).document["files"][0]
    assert row["status"] == "failed" and row["error"].startswith("--video-codec no-such-codec: not an encoder")
    assert sorted(path.name for path in out.iterdir() if path.name != ".dinat.lock") == ["good.mp4"]  # nothing partial


def test_a_terminal_shows_a_bar_per_clip_while_it_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    from dinat_cli.cli.progress import RunDisplay
    from dinat_cli.results import FileResult

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with RunDisplay() as display:
        display.start(2, None)
        for done in range(1, 4):
            display.frames_done("clip.mp4", done, 12)
        bars = {task.description: task for task in display._progress.tasks}
        assert (bars["clip.mp4"].completed, bars["clip.mp4"].total) == (3, 12)
        assert bars["clip.mp4"].fields["pace"].endswith(" frames/s")
        display.file_finished(FileResult("clip.mp4", "out/clip.mp4", "done", frames=12, restored_frames=12))
        assert [task.description for task in display._progress.tasks] == ["clip.mp4"]  # the batch's bar, renamed
        assert display._progress.tasks[0].completed == 1


def test_gt_scores_a_clip_frame_by_frame_with_the_mean_and_the_worst_frame(tmp_path: Path, checkpoint: Path) -> None:
    from dinat_cli import evaluation, metrics

    source, gt, out = tmp_path / "in", tmp_path / "gt", tmp_path / "out"
    source.mkdir()
    gt.mkdir()
    make_clip(source / "clip.mp4")
    make_clip(source / "short.mp4")
    make_clip(source / "small.mp4")
    make_clip(gt / "clip.mkv", codec="ffv1", frames=12, audio=False)
    make_clip(gt / "short.mp4", frames=10)
    make_clip(gt / "small.mp4", size=(32, 24))
    make_clip(source / "fast.mp4", frames=12)
    make_clip(gt / "fast.mp4", frames=12, rate=30)
    options = video.VideoOptions("ffv1")
    request = RestoreRequest("denoise", source, out, ModelSource(checkpoint), OPTIONS, gt=gt, ext="mkv", video=options)
    rows = {row["name"]: row for row in restore_files(request).document["files"]}

    truth, restored = decoded(gt / "clip.mkv")[0], decoded(out / "clip.mkv")[0]
    frames = [metrics.score_pair(a, b, "dinat", 8, False, 0) for a, b in zip(truth, restored, strict=True)]
    worst = int(np.argmin([frame["psnr"] for frame in frames]))
    row = rows["clip.mp4"]
    assert row["psnr"] == pytest.approx(np.mean([frame["psnr"] for frame in frames]), rel=1e-9)
    assert row["ssim"] == pytest.approx(np.mean([frame["ssim"] for frame in frames]), rel=1e-9)
    assert (row["worst_frame"], row["worst_psnr"]) == (worst, pytest.approx(frames[worst]["psnr"], rel=1e-9))
    assert row["input_psnr"] > 30  # the input against its own lossless copy
    assert rows["short.mp4"]["error"] == (
        f"not scored: {gt / 'short.mp4'} vs {out / 'short.mkv'}: frame count mismatch (10 vs 12)"
    )
    assert rows["small.mp4"]["error"] == (
        f"not scored: {gt / 'small.mp4'} vs {out / 'small.mkv'}: size mismatch (32x24 vs 64x48)"
    )
    assert rows["fast.mp4"]["error"].startswith(
        f"not scored: {gt / 'fast.mp4'} vs {out / 'fast.mkv'}: frame rate mismatch (30 vs "
    )
    assert all(row["status"] == "done" for row in rows.values())

    # dinat eval scores video pairs the same way: the mean over frames.
    evaluated = evaluation.score_pairs([evaluation.Pair("clip", gt / "clip.mkv", out / "clip.mkv")])
    assert evaluated.images[0].scores == pytest.approx({"psnr": row["psnr"], "ssim": row["ssim"]}, rel=1e-9)


def test_segments_of_other_weights_or_engine_options_are_not_resumed(tmp_path: Path, checkpoint: Path) -> None:
    """A rerun with another model or engine setting would join frames restored two ways."""
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"stands in for a clip: only its size and time are read")
    work = video.work_folder(tmp_path / "out" / "clip.mp4")
    segment = work / "segment-000000.nut"

    def prepare(request: RestoreRequest) -> None:
        options = pipeline._video_options(request, hashlib.sha256(request.model.weights.read_bytes()).hexdigest())
        video._prepare_work_folder(work, source, options)

    first = RestoreRequest("denoise", source, tmp_path / "out", ModelSource(checkpoint), EngineOptions(tile=0))
    prepare(first)
    segment.write_bytes(b"a finished segment")
    prepare(first)
    assert segment.exists()  # the same run again: resumed
    other_weights = save_checkpoint(tmp_path / "other.pth", dim=16)
    for changed in (
        dataclasses.replace(first, options=EngineOptions(tile=512)),
        dataclasses.replace(first, model=ModelSource(checkpoint, tlc=False)),
        dataclasses.replace(first, model=ModelSource(other_weights)),
    ):
        prepare(first)
        segment.write_bytes(b"a finished segment")
        prepare(changed)
        assert not segment.exists(), changed


def test_segments_start_at_a_keyframe_near_their_length_and_decode_from_the_keyframe_before() -> None:
    def packets(count: int, keyframe_every: int) -> list[tuple[int, int, bool]]:
        return [(pts, pts, pts % keyframe_every == 0) for pts in range(count)]

    short_gops = video._cut(packets(12, 5), segment_frames=4)  # a keyframe within 4 to 8 frames: cut there
    assert [(s.start, s.end, s.seek, s.frames) for s in short_gops] == [
        (None, 5, None, 5),
        (5, 10, 5, 5),
        (10, None, 10, 2),
    ]
    one_gop = video._cut(packets(10, 100), segment_frames=4)  # none: cut at 4 frames, decode from the start
    assert [(s.start, s.end, s.seek, s.frames) for s in one_gop] == [
        (None, 4, None, 4),
        (4, 8, None, 4),
        (8, None, None, 2),
    ]
    # B-frames in an open GOP: decoding order I0 P3 B1 B2 I6 B4 B5 P9 B7 B8, where B4 and B5 (shown
    # before I6, decoded after it) need P3: their segment is decoded from I0; the next ones from I6.
    reordered = [(0, -2, True), (3, -1, False), (1, 0, False), (2, 1, False), (6, 2, True), (4, 3, False)]
    reordered += [(5, 4, False), (9, 5, False), (7, 6, False), (8, 7, False)]
    cut = video._cut(reordered, segment_frames=2)
    assert [(s.start, s.end, s.seek, s.frames) for s in cut] == [
        (None, 2, None, 2),
        (2, 4, None, 2),
        (4, 6, None, 2),
        (6, 8, 2, 2),
        (8, None, 2, 2),
    ]
    assert video._cut([(None, 0, True), (None, 1, False)], 1) == [video.Segment(0, None, None, None, 2)]


def test_shards_restore_segments_of_one_clip_into_the_file_a_local_run_writes(
    tmp_path: Path, checkpoint: Path, restorer: Restorer
) -> None:
    from dinat_cli import merging
    from dinat_cli.planning import Shard

    source = tmp_path / "in"
    source.mkdir()
    # Keyframes every 4 frames and B-frames: segments are decoded from keyframes, out of order.
    clip = make_clip(source / "clip.mp4", frames=16, encoder={"g": "4", "bf": "2"})
    options = video.VideoOptions("ffv1", segment_frames=3)
    local = restore_files(_request(source, tmp_path / "local", checkpoint, options))
    assert local.document["files"][0]["status"] == "done"

    documents = []
    for index in range(2):
        request = dataclasses.replace(_request(source, tmp_path / "shards", checkpoint, options), shard=Shard(index, 2))
        documents.append(restore_files(request).document)
        if index == 0:  # the plan is kept for the other shards, which need not demux the clip again
            kept = json.loads((video.work_folder(tmp_path / "shards" / "clip.mkv") / "segments.json").read_text())
            assert [video.Segment(**fields) for fields in kept] == video.plan_segments(clip, 3)
    rows = [document["files"][0] for document in documents]
    # Each shard restored some of the segments; the second, finishing the clip, joined it.
    assert [(row["name"], row["status"]) for row in rows] == [("clip.mp4", "partial"), ("clip.mp4", "done")]
    assert 0 < rows[0]["restored_frames"] < 16 and rows[0]["restored_frames"] + rows[1]["restored_frames"] == 16
    assert rows[0]["error"].startswith("restored ") and documents[0]["summary"]["partial"] == 1
    assert (tmp_path / "shards" / "clip.mkv").read_bytes() == (tmp_path / "local" / "clip.mkv").read_bytes()
    assert merging.merge(documents)["summary"]["done"] == 1
    # Decoded from keyframes, the frames are those of the clip decoded from its start.
    for got, expected in zip(
        decoded(tmp_path / "shards" / "clip.mkv")[0], as_photos(restorer, decoded(clip)[0]), strict=True
    ):
        np.testing.assert_array_equal(got, expected)
    assert not video.work_folder(tmp_path / "shards" / "clip.mkv").exists()


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv422p10le"])
def test_lossy_output_keeps_the_input_chroma_sampling_and_depth(tmp_path: Path, checkpoint: Path, pix_fmt: str) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=3, pix_fmt=pix_fmt, audio=False)
    restore_files(RestoreRequest("denoise", clip, tmp_path / "out.mp4", ModelSource(checkpoint), OPTIONS))
    assert decoded(tmp_path / "out.mp4")[2]["pix_fmt"] == decoded(clip)[2]["pix_fmt"] == pix_fmt


def test_videos_under_names_of_their_own_are_found_by_content_and_kept_in_their_container(
    tmp_path: Path, checkpoint: Path
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    make_clip(tmp_path / "gopro.mp4", frames=3, audio=False).rename(source / "GOPR0001.LRV")  # GoPro's preview
    make_clip(tmp_path / "take.mkv", frames=3, codec="ffv1", audio=False).rename(source / "take")  # no extension
    (source / "notes.txt").write_text("not a video\n")
    (source / "still.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic")  # ISO media, but an image
    assert [video.sniff_container(source / name) for name in ("GOPR0001.LRV", "take", "notes.txt", "still.heic")] == [
        "mp4",
        "matroska",
        None,
        None,
    ]
    from dinat_cli import io

    # Told apart once, when the folder is walked: planning does not open the files again.
    assert [(item.path.name, item.video) for item in io.collect_inputs(source)] == [
        ("GOPR0001.LRV", True),
        ("take", True),
    ]
    run = restore_files(RestoreRequest("denoise", source, out, ModelSource(checkpoint), OPTIONS))
    assert [(row["name"], row["status"]) for row in run.document["files"]] == [
        ("GOPR0001.LRV", "done"),
        ("take", "done"),
    ]
    assert (video.sniff_container(out / "GOPR0001.LRV"), video.sniff_container(out / "take")) == ("mp4", "matroska")
    assert [len(decoded(out / name)[0]) for name in ("GOPR0001.LRV", "take")] == [3, 3]


class _Dimming:
    """A frame restorer that dims the pixels to 0.6 (never half a level: 0.6 x an integer is not k + 0.5),
    a batch of up to `batch` frames per call, and notes each batch."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.batches: list[int] = []

    def batch_size(self, height: int, width: int) -> int:
        return self.batch

    def restore_batch(self, images: list[np.ndarray]) -> list[object]:
        from dinat_cli.engine import Restored

        assert 0 < len(images) <= self.batch and len({image.shape for image in images}) == 1
        self.batches.append(len(images))
        return [Restored(image * 0.6, None, "fp32", False, 0.0) for image in images]


def test_a_clips_frames_go_through_the_network_in_batches_of_the_engines_size(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mkv", frames=12, codec="ffv1", pix_fmt="yuv444p", audio=False)
    dimming = _Dimming(batch=4)
    options = video.VideoOptions("ffv1", segment_frames=5)
    progress = []
    video.restore_video(clip, tmp_path / "out.mkv", dimming, options, lambda *done: progress.append(done))
    assert dimming.batches == [4, 1, 4, 1, 2]  # batches never cross a segment (5, 5 and 2 frames)
    assert progress == [(4, 12), (5, 12), (9, 12), (10, 12), (12, 12)]
    for got, frame in zip(decoded(tmp_path / "out.mkv")[0], decoded(clip)[0], strict=True):
        np.testing.assert_array_equal(got, np.rint(frame * 0.6).astype(np.uint8))


def test_reading_ahead_hands_on_the_producers_error_and_stops_it_when_abandoned() -> None:
    import threading

    def failing():
        yield 1
        raise ValueError("a corrupt packet")

    with pytest.raises(ValueError, match="a corrupt packet"):
        list(video._read_ahead(failing(), 2))
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    ahead = video._read_ahead(endless(), 2)
    assert next(ahead) == 0
    ahead.close()  # the consumer gives up (an error in the network): the producer ends, not blocked for ever
    assert not [thread for thread in threading.enumerate() if thread.name == "dinat-decode"]
    assert len(produced) <= 4


def test_any_frame_is_read_from_the_keyframe_before_it_as_the_whole_clip_decodes_it(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=10, encoder={"g": "4", "bf": "2"}, audio=False)
    frames = decoded(clip)[0]
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(video.read_frame(clip, index).pixels, frame)
    np.testing.assert_array_equal(video.read_frame(clip).pixels, frames[5])  # None: the middle frame


def test_the_html_report_previews_a_clip_at_its_worst_frame_or_its_middle_one(tmp_path: Path) -> None:
    from dinat_cli import html_report

    before = make_clip(tmp_path / "in.mkv", frames=6, codec="ffv1", audio=False)
    after = make_clip(tmp_path / "out.mkv", frames=6, codec="ffv1", audio=False, size=(64, 48))
    rows = [
        {"name": "scored.mkv", "status": "done", "input": str(before), "output": str(after), "worst_frame": 4},
        {"name": "plain.mkv", "status": "done", "input": str(before), "output": str(after)},
        {"name": "broken.mkv", "status": "done", "input": str(before), "output": str(tmp_path / "missing.mkv")},
    ]
    html_report.write_page(tmp_path / "run.html", {"task": "denoise", "files": rows, "summary": {}})
    page = (tmp_path / "run.html").read_text()
    assert "frame 4 (the worst)" in page and "the middle frame" in page
    assert f"no preview: {tmp_path / 'missing.mkv'}: not a readable video" in page
    previews = sorted(path.name for path in (tmp_path / "run_files").iterdir())
    assert previews == sorted(
        f"{card}-{kind}.webp" for card in (1, 2) for kind in ("before", "after", "heat", "crop-before", "crop-after")
    )
