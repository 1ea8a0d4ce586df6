"""Where the official-size network spends its time, per kind of work, against each kind's floor.

    python benchmarks/profile_network.py --size 256 --size 1280x720 --configs fp32-native@avx2,fp32-native

Every configuration (as in `bench_network.py`: a precision, a backend and optionally a
kernel variant) runs `--rounds` times per size after a warm-up; the kinds of work are
timed by wrapping the functions that do them, exclusive of what they call:

- attention: the dilated neighbourhood attention operator;
- projections: the attention's q/k/v and output projections (1x1 convolutions);
- feed-forward: its two 1x1 convolutions and the residual sum, band by band;
- gate: the feed-forward's depth-wise convolution, GELU and product;
- layer norm;
- modulation: the channel modulation (pooled means, channel filter, sigmoid);
- other: the rest (3x3 convolutions of the embedding and resampling, residual of the
  attention, copies).

Floors: matrix products (projections, feed-forward) and the attention are given in
GFLOP/s next to the rate of a plain 1x1 convolution measured in the same run (48 to 144
channels, channels-last, this precision); the passes over memory (gate, layer norm) in
GB/s of the bytes they must read and write once, next to a large copy's rate. The table
gives milliseconds per image and nanoseconds per pixel, so sizes compare.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from dinat_cli import ops
from dinat_cli.cli.bench import parse_size
from dinat_cli.model import RestoreDiNAT, attention, blocks, layers
from dinat_cli.model.variants import OFFICIAL_CONFIG
from dinat_cli.ops import native
from dinat_cli.process import configure_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import ours

KINDS = ("attention", "projections", "feed-forward", "gate", "layer norm", "modulation", "other")


class Profile:
    """Exclusive wall time and work (FLOPs or bytes) per kind, from nested wrapped calls."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.work: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # per open call: [start, time spent in wrapped callees]

    def wrap(self, kind: str, function: Callable, work: Callable[..., float]) -> Callable:
        @functools.wraps(function)
        def timed(*args: object, **kwargs: object) -> object:
            self._stack.append([self.clock(), 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                start, inner = self._stack.pop()
                elapsed = self.clock() - start
                self.seconds[kind] += elapsed - inner
                self.work[kind] += work(*args, **kwargs)
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed


def _attention_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, *_a, **_k) -> float:
    return 4.0 * q.numel() * kernel_size**2  # q.k and p.v: a multiply and an add per element


def _projection_flops(linear: torch.nn.Linear, x: torch.Tensor) -> float:
    return 2.0 * x.numel() * linear.out_features


def _feed_forward_flops(ffn: layers.FeedForward, x: torch.Tensor, *_a, **_k) -> float:
    pixels = x.numel() / x.shape[1]
    return (
        2.0
        * pixels
        * (
            ffn.project_in.in_channels * ffn.project_in.out_channels
            + ffn.project_out.in_channels * ffn.project_out.out_channels
        )
    )


def _gate_bytes(blocks_: list[torch.Tensor], _weight, _bias, _offset: int, rows: int, **_k) -> float:
    hidden = blocks_[0]
    read = hidden.element_size() * hidden.shape[0] * hidden.shape[1] * rows * hidden.shape[3]
    return read * 1.5  # all hidden channels read, half as many written


def _norm_bytes(_body, x: torch.Tensor) -> float:
    return 2.0 * x.numel() * x.element_size()


def _none(*_a, **_k) -> float:
    return 0.0


@contextlib.contextmanager
def profiled(profile: Profile) -> Iterator[None]:
    """The network's functions wrapped for `profile`, restored afterwards."""
    patches = [
        (ops, "na2d", "attention", _attention_flops),
        (attention, "_pointwise", "projections", _projection_flops),
        (layers.FeedForward, "_banded", "feed-forward", _feed_forward_flops),
        (ops, "gated_dwconv_gelu", "gate", _gate_bytes),
        (layers._NormBody, "forward", "layer norm", _norm_bytes),
        (blocks.TransBlock, "channel_modulation", "modulation", _none),
        (RestoreDiNAT, "forward", "other", _none),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in patches]
    try:
        for owner, name, kind, work in patches:
            setattr(owner, name, profile.wrap(kind, getattr(owner, name), work))
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def rates(dtype: torch.dtype, threads: int) -> tuple[float, float]:
    """GFLOP/s of a 48-to-144-channel 1x1 convolution and GB/s of a 256 MB copy, on this machine now."""
    x = torch.rand(1, 48, 256, 256).to(memory_format=torch.channels_last)
    weight = torch.rand(144, 48, 1, 1)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        F.conv2d(x, weight)
        best = min(_seconds(lambda: F.conv2d(x, weight)) for _ in range(20))
    source = torch.rand(64 << 20)
    target = torch.empty_like(source)
    copy = min(_seconds(lambda: target.copy_(source)) for _ in range(5))
    return 2 * x.numel() * 144 / best / 1e9, 2 * source.numel() * 4 / copy / 1e9


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="append", help="N or WxH (repeatable; default 256 and 1280x720)")
    parser.add_argument("--configs", default="fp32-native", help="comma-separated, as bench_network.py takes them")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_process()  # as the dinat command does: the heap keeps freed memory
    model = RestoreDiNAT(**OFFICIAL_CONFIG, tlc=True).eval()
    print(
        f"{args.threads} threads, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
        f"kernels {native.kernel_status().variant} by default"
    )
    for size in args.size or ["256", "1280x720"]:
        height, width = parse_size(size)
        image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        for config in args.configs.split(","):
            dtype = torch.bfloat16 if config.startswith("bf16") else torch.float32
            conv_rate, copy_rate = rates(dtype, args.threads)
            forward = ours(model, image, config)
            with torch.inference_mode():
                forward()
            profile = Profile()
            wall = []
            with profiled(profile), torch.inference_mode():
                for _ in range(args.rounds):
                    wall.append(_seconds(forward))
            report(
                f"{width}x{height} {config}", profile, args.rounds, height * width, sorted(wall), conv_rate, copy_rate
            )


def report(
    title: str, profile: Profile, rounds: int, pixels: int, wall: list[float], conv_rate: float, copy_rate: float
) -> None:
    total = sum(profile.seconds.values()) / rounds
    median = wall[len(wall) // 2]
    print(f"\n{title}: {median:.2f} s per image (median of {rounds}), {total * 1e9 / pixels:.0f} ns per pixel")
    print(f"  plain 1x1 convolution {conv_rate:.0f} GFLOP/s, copy {copy_rate:.1f} GB/s")
    print(f"  {'kind':<14} {'ms':>9} {'share':>6} {'ns/px':>7} {'rate':>14}")
    for kind in KINDS:
        seconds = profile.seconds[kind] / rounds
        work = profile.work[kind] / rounds
        if kind in ("attention", "projections", "feed-forward"):
            rate = f"{work / seconds / 1e9:.0f} GFLOP/s" if seconds else ""
        elif kind in ("gate", "layer norm"):
            rate = f"{work / seconds / 1e9:.1f} GB/s" if seconds else ""
        else:
            rate = ""
        print(f"  {kind:<14} {seconds * 1e3:9.1f} {seconds / total:6.1%} {seconds * 1e9 / pixels:7.0f} {rate:>14}")


if __name__ == "__main__":
    main()
