"""The official-size network, attention backends and precisions against each other, alternating.

Each configuration runs once for warm-up (compiling, or loading compiled code from the
cache: the `first` column), then the configurations take turns `--rounds` times, so
that load from other processes hits all of them alike. Reported: the best and median
wall-clock and the CPU time of the process per image.

    python benchmarks/bench_network.py                      # 256x256, fp32 torch/compiled/native, bf16 native
    python benchmarks/bench_network.py --size 1280x720 --rounds 2

natten 0.14.6 (the official code's operator) does not build against current torch, so
the official implementation is not run here: compare with its figure measured on the
same machine type (README.md, "Speed").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch

from dinat_cli import ops
from dinat_cli.cli.bench import OFFICIAL_CONFIG, parse_size
from dinat_cli.model import RestoreDiNAT

CONFIGS = {
    "fp32-torch": ("torch", torch.float32),
    "fp32-compiled": ("compiled", torch.float32),
    "fp32-native": ("native", torch.float32),
    "bf16-native": ("native", torch.bfloat16),
}


def run(
    model: RestoreDiNAT, image: torch.Tensor, backend: str, dtype: torch.dtype
) -> tuple[torch.Tensor, float, float]:
    precision = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode(), ops.use_backend(backend), precision:
        out = model(image)
    return out.float(), time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256", help="N or WxH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = parse_size(args.size)
    model = RestoreDiNAT(**OFFICIAL_CONFIG, tlc=True).eval()
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    names = args.configs.split(",")
    outputs, first, walls, cpus = {}, {}, {name: [] for name in names}, {name: [] for name in names}
    for name in names:
        outputs[name], first[name], _ = run(model, image, *CONFIGS[name])
    for _ in range(args.rounds):
        for name in names:
            _, wall, cpu = run(model, image, *CONFIGS[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    reference = outputs[names[0]]
    print(f"{width}x{height}, {args.threads} threads, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print(f"{'config':<15} {'first s':>8} {'best s':>8} {'median s':>9} {'cpu s':>7}  vs {names[0]}")
    for name in names:
        times = sorted(walls[name])
        error = (outputs[name] - reference).abs().max().item()
        mse = (outputs[name] - reference).pow(2).mean().item()
        psnr = "inf" if mse == 0 else f"{10 * torch.log10(torch.tensor(1.0 / mse)).item():.1f} dB"
        print(
            f"{name:<15} {first[name]:8.2f} {times[0]:8.2f} {times[len(times) // 2]:9.2f} "
            f"{min(cpus[name]):7.2f}  max|diff| {error:.1e}, PSNR {psnr}"
        )


if __name__ == "__main__":
    main()
