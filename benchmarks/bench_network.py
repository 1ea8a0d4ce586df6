"""The official-size network, attention backends and precisions against each other, alternating.

Each configuration runs once for warm-up (compiling, or loading compiled code from the
cache: the `first` column), then the configurations take turns `--rounds` times, so
that load from other processes hits all of them alike. Reported: the best and median
wall-clock and the CPU time of the process per image.

    python benchmarks/bench_network.py                      # 256x256, fp32 torch/compiled/native, bf16 native
    python benchmarks/bench_network.py --size 1280x720 --rounds 2
    python benchmarks/bench_network.py --official official.py --configs official,fp32-native,bf16-native
    python benchmarks/bench_network.py --configs fp32-native@avx2,fp32-native@avx512,fp32-native@avx512bf16

A `native` configuration runs the kernel variant `auto` picks for this CPU; `@VARIANT`
forces one (`baseline`, `avx2`, `avx512`, `avx512bf16`; see `dinat doctor`).

`--official FILE` adds the authors' implementation as the first configuration: FILE is
a Python file whose `build_official_model()` returns the official network (float32,
eval mode, TLC-wrapped as the official test pipeline builds it), e.g. the upstream
`RestoreDiNATLocal` on natten 0.14.6. Its weights are loaded into ours, so the outputs
compare, and every configuration is also reported as a speed-up over it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import time
from collections.abc import Callable

import torch

from dinat_cli import ops
from dinat_cli.checkpoints import infer_config
from dinat_cli.cli.bench import parse_size
from dinat_cli.model import RestoreDiNAT
from dinat_cli.model.variants import OFFICIAL_CONFIG
from dinat_cli.ops import native
from dinat_cli.process import configure_process

CONFIGS = {
    "fp32-torch": ("torch", torch.float32),
    "fp32-compiled": ("compiled", torch.float32),
    "fp32-native": ("native", torch.float32),
    "bf16-native": ("native", torch.bfloat16),
}


def timed(forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = forward()
    return out.float(), time.perf_counter() - wall, time.process_time() - cpu


def ours(model: RestoreDiNAT, image: torch.Tensor, config: str) -> Callable[[], torch.Tensor]:
    """The forward pass of configuration `config`: a name of CONFIGS, optionally `@VARIANT`."""
    name, _, variant = config.partition("@")
    if name not in CONFIGS:
        raise SystemExit(f"--configs {config}: expected one of {', '.join(CONFIGS)}, optionally @VARIANT")
    backend, dtype = CONFIGS[name]

    def kernels() -> contextlib.AbstractContextManager:
        return native.use_variant(variant) if variant else contextlib.nullcontext()

    try:
        with kernels():
            reason = native.kernel_status().reason if variant else None
    except ValueError as error:
        raise SystemExit(f"--configs {config}: {error}") from None
    if reason:
        raise SystemExit(f"--configs {config}: {reason}")

    def forward() -> torch.Tensor:
        precision = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with ops.use_backend(backend), kernels(), precision:
            return model(image)

    return forward


def official_model(path: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("official_model", path)
    if not os.path.isfile(path) or spec is None or spec.loader is None:
        raise SystemExit(f"--official {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_official_model().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256", help="N or WxH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--official", metavar="FILE", help="a Python file with build_official_model() (see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_process()  # as the dinat command does: the heap keeps freed memory
    height, width = parse_size(args.size)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    names = args.configs.split(",")
    forwards = {}
    if args.official:
        official = official_model(args.official)
        model = RestoreDiNAT(**infer_config(official.state_dict()), tlc=True).eval()
        model.load_state_dict(official.state_dict())
        forwards["official"] = lambda: official(image)
        names = ["official", *(name for name in names if name != "official")]
    else:
        model = RestoreDiNAT(**OFFICIAL_CONFIG, tlc=True).eval()
    forwards.update({name: ours(model, image, name) for name in names if name != "official"})
    outputs, first, walls, cpus = {}, {}, {name: [] for name in names}, {name: [] for name in names}
    for name in names:
        outputs[name], first[name], _ = timed(forwards[name])
    for _ in range(args.rounds):
        for name in names:
            _, wall, cpu = timed(forwards[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    reference = outputs[names[0]]
    median = {name: sorted(walls[name])[len(walls[name]) // 2] for name in names}
    print(
        f"{width}x{height}, {args.threads} threads, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
        f"kernels {native.kernel_status().variant} by default"
    )
    print(f"{'config':<24} {'first s':>8} {'best s':>8} {'median s':>9} {'cpu s':>7} {'speed-up':>9}  vs {names[0]}")
    for name in names:
        error = (outputs[name] - reference).abs().max().item()
        mse = (outputs[name] - reference).pow(2).mean().item()
        psnr = "inf" if mse == 0 else f"{10 * torch.log10(torch.tensor(1.0 / mse)).item():.1f} dB"
        print(
            f"{name:<24} {first[name]:8.2f} {min(walls[name]):8.2f} {median[name]:9.2f} {min(cpus[name]):7.2f} "
            f"{median[names[0]] / median[name]:8.2f}x  max|diff| {error:.1e}, PSNR {psnr}"
        )


if __name__ == "__main__":
    main()
