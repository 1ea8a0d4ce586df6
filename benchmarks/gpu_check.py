"""One prepared device check of the engine: parity, speed, memory, against Restormer's architecture.

On one GPU it answers, within `--budget` seconds (default 480):
- parity: every attention backend available on the device in float32 (TF32 off) against
  the golden references of `tests/data/reference` (the official code's outputs); a backend
  is exact within 1e-4;
- half precision: bfloat16 and float16 against float32 as PSNR, on real photos
  (`examples/noisy`, through the shipped lite-denoise weights or `--weights FILE`);
- speed: megapixels per second of the official-size network (random weights) at 1280x720
  for each backend and precision, at batch 1 and at the engine's chosen batch, with peak
  memory and the largest difference of the batched result from batch 1;
- the same for Restormer's architecture (`restormer_arch.py` of a swz30/Restormer checkout
  given with `--restormer PATH`, imported from there by file path; random weights, same input);
- a 3840x2160 image as `--tile auto` restores it (and in 512 px tiles, batched);
- the whole network through `torch.compile` (CUDA graphs where they apply), if time is left;
- which backend is the fastest exact one, what `auto` takes, and the issue's targets.
It prints one table and, with `--json FILE`, writes every figure as JSON.

    python benchmarks/gpu_check.py --restormer ../Restormer --json gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick --json cpu_check.json   # under 2 minutes

`--quick` checks that the script works, not how fast anything is: smaller sizes, fewer
backends, one round without warm-up, batch 2 in place of the chosen batch; it says so.
A configuration that fails is a row with its error: the other rows still get measured.
What matters most is measured first (parity, then the GPU's default precision, then the
large image, then the other precisions); past the budget, the rest is a row saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinat_cli import io, ops
from dinat_cli.checkpoints import describe
from dinat_cli.cli.bench import peak_memory
from dinat_cli.descriptor import ModelDescriptor
from dinat_cli.engine import Restorer
from dinat_cli.model import RestoreDiNAT
from dinat_cli.model.variants import OFFICIAL_CONFIG
from dinat_cli.options import EngineOptions, ModelSource
from dinat_cli.process import configure_process
from dinat_cli.registry import locations

PROJECT = Path(__file__).resolve().parents[1]
REFERENCE = PROJECT / "tests" / "data" / "reference"
REFERENCE_FILES = ("model_std_global", "model_std_tlc", "model_dualpixel_tlc", "model_nochan_custom")
EXACT = 1e-4  # float32 with TF32 off against the golden references
# The targets on one GPU: bfloat16 megapixels per second at 1280x720, and the ratio to Restormer's.
TARGET_MEGAPIXELS_PER_S = 40.0
TARGET_RESTORMER_RATIO = 3.0
RESTORMER_ARCH = Path("basicsr") / "models" / "archs" / "restormer_arch.py"


class Check:
    """The rows of the table, the JSON document and the time budget."""

    def __init__(self, budget: float) -> None:
        self.began = time.perf_counter()
        self.budget = budget
        self.rows: list[tuple[str, str, str, str]] = []
        self.document: dict[str, Any] = {"skipped": []}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.began)

    def row(self, check: str, configuration: str, result: str, note: str = "") -> None:
        self.rows.append((check, configuration, result, note))

    def skip(self, what: str, why: str) -> None:
        self.document["skipped"].append({"what": what, "why": why})
        self.row("skipped", what, "-", why)

    def attempt(self, what: str, work: Callable[[], Any], *, needs: float = 0.0) -> Any:
        """`work()`, or None where the budget has less than `needs` seconds left or it fails (a row says why)."""
        if self.left() < needs:
            self.skip(what, f"time budget: {self.left():.0f} s left")
            return None
        try:
            return work()
        except Exception as error:  # one failing configuration must not cost the others
            first_line = next(iter(str(error).splitlines()), "")
            self.document.setdefault("errors", []).append(
                {"what": what, "error": f"{type(error).__name__}: {first_line}"}
            )
            self.row("error", what, "-", f"{type(error).__name__}: {first_line}"[:120])
            return None

    def print_table(self) -> None:
        header = ("check", "configuration", "result", "note")
        widths = [max(len(row[index]) for row in [header, *self.rows]) for index in range(3)]
        for row in [header, *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3])


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def reference_tensor(array: np.ndarray) -> torch.Tensor:
    """A stored reference array as the float32 tensor it stands for (tests/data/reference/README.md)."""
    if array.dtype == np.uint8:
        return torch.from_numpy(array).float() / 255
    return torch.from_numpy(array.astype(np.float32))


def parity(check: Check, device: torch.device, backend: str) -> dict[str, Any]:
    """Largest difference from the golden outputs of each reference network, float32, TF32 off."""
    differences = {}
    for name in REFERENCE_FILES:
        with np.load(REFERENCE / f"{name}.npz", allow_pickle=False) as data:
            model = RestoreDiNAT(**json.loads(str(data["config"]))).eval()
            state = {key[6:]: reference_tensor(data[key]) for key in data.files if key.startswith("param/")}
            model.load_state_dict(state, strict=True)
            describe(model).set_kernels(ops.resolve_kernels(backend, device))
            model.to(device)
            worst = 0.0
            index = 0
            with tf32_off(), torch.inference_mode():
                while f"x{index}" in data.files:
                    output = model(reference_tensor(data[f"x{index}"]).to(device)).cpu()
                    worst = max(worst, (output - reference_tensor(data[f"y{index}"])).abs().max().item())
                    index += 1
        differences[name] = worst
    worst = max(differences.values())
    result = {"backend": backend, "max_diff": differences, "worst": worst, "exact": worst <= EXACT}
    check.row("parity fp32 vs golden", backend, f"max|diff| {worst:.1e}", "exact" if worst <= EXACT else "NOT exact")
    return result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def half_precision(check: Check, device: torch.device, weights: Path, photos: list[Path], crop: int | None) -> list:
    """bfloat16 and float16 outputs against float32 on real photos, as PSNR."""
    descriptor = ModelSource(weights).load()
    images = []
    for path in photos:
        pixels = io.read_image(path).to_float()
        images.append(pixels[:crop, :crop] if crop else pixels)

    def outputs(precision: str) -> tuple[str, list[np.ndarray]]:
        restorer = Restorer(descriptor, EngineOptions(device=str(device), precision=precision, tile=0, batch=1))
        restored = [restorer.restore(image) for image in images]
        return restored[0].precision, [item.pixels for item in restored]

    _, reference = outputs("fp32")
    results = []
    for asked in ("bf16", "fp16"):
        ran, pixels = outputs(asked)
        scores = {path.name: psnr(ref, out) for path, ref, out in zip(photos, reference, pixels, strict=True)}
        lowest = min(scores.values())
        results.append({"precision_asked": asked, "precision": ran, "psnr_db": scores, "min_psnr_db": lowest})
        note = f"{len(photos)} photos, {weights.name}" + ("" if ran == asked else f"; ran {ran} on this device")
        check.row("half vs fp32 (PSNR)", asked, f"min {lowest:.1f} dB", note)
    return results


def official_network() -> ModelDescriptor:
    torch.manual_seed(0)
    return describe(RestoreDiNAT(**OFFICIAL_CONFIG, tlc=True).eval())


def load_restormer(checkout: Path) -> ModelDescriptor:
    """Restormer's architecture from a checkout, by file path, with random weights."""
    path = checkout / RESTORMER_ARCH
    spec = importlib.util.spec_from_file_location("restormer_arch", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected a swz30/Restormer checkout)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"{path} needs {error.name}: pip install {error.name}") from None
    torch.manual_seed(0)
    return ModelDescriptor.for_module(module.Restormer().eval())


def throughput(
    check: Check,
    model: str,
    restorer: Restorer,
    size: tuple[int, int],
    rounds: int,
    warmup: bool,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """Time `restore_batch` of as many images of `size` as the restorer batches; the first one's output
    is compared to `reference`, and returned as `first_output`."""
    height, width = size
    batch = restorer.batch_size(height, width)
    rng = np.random.default_rng(0)
    images = [rng.random((height, width, restorer.descriptor.in_channels), dtype=np.float32) for _ in range(batch)]
    with peak_memory(restorer.device) as peak:
        if warmup:
            start = time.perf_counter()
            restorer.restore_batch(images)
            # A slow configuration (the eager reference) is timed once: the budget is for all of them.
            rounds = rounds if time.perf_counter() - start < 5 else 1
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            restored = restorer.restore_batch(images)
            times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    result = {
        "model": model,
        "backend": restorer.attention if model == "dinat" else None,
        "precision": restored[0].precision,
        "size": f"{width}x{height}",
        "batch": batch,
        "tile": restored[0].tile,
        "ms": median * 1e3,
        "megapixels_per_s": batch * height * width / median / 1e6,
        "peak_mb": peak[0] / 2**20,
        "batch_max_diff": None if reference is None else float(np.abs(restored[0].pixels - reference).max()),
    }
    configuration = f"{model} {result['backend'] or ''} {result['precision']} batch {batch}".replace("  ", " ")
    if result["tile"]:
        configuration += f", tile {result['tile']}"
    note = f"peak {result['peak_mb']:.0f} MB"
    if result["batch_max_diff"] is not None:
        note += f", batch vs 1 max|diff| {result['batch_max_diff']:.1e}"
    check.row(f"MP/s at {width}x{height}", configuration, f"{result['megapixels_per_s']:.3f}", note)
    result["first_output"] = restored[0].pixels
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="a CPU smoke run: small sizes, few configurations")
    parser.add_argument("--restormer", type=Path, help="a swz30/Restormer checkout (its restormer_arch.py is imported)")
    parser.add_argument("--weights", type=Path, help="weights for the half-precision PSNR (default: lite-denoise)")
    parser.add_argument("--json", type=Path, dest="json_path", help="write every figure to this file")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")
    args = parser.parse_args()

    configure_process()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: this machine or torch build has no CUDA GPU")
    check = Check(args.budget)
    quick = args.quick
    # Quick: 256x256, as small as the network gets (it pads every input to its 252 px attention span).
    size = (256, 256) if quick else (720, 1280)
    large = (384, 512) if quick else (2160, 3840)
    rounds, warmup = (1, False) if quick else (3, True)
    available = [name for name, why in ops.available_backends(device).items() if why is None]
    # Quick: the exact reference and the default CPU backend; compiling would take most of the budget.
    backends = [name for name in available if name in ("torch", "native")] if quick else available
    # Quick: the eager reference takes half a minute an image; its parity is checked, its speed not.
    auto = ops.resolve_backend("auto", device)
    timed_backends = [auto] if quick else backends
    precisions = ("fp32",) if quick else ("fp32", "bf16", "fp16")
    fast_precision = "fp32" if device.type == "cpu" else "bf16"
    document = check.document
    document.update(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        quick=quick,
        budget_s=args.budget,
        backends_available=available,
        auto_backend=auto,
        sizes={"throughput": f"{size[1]}x{size[0]}", "large": f"{large[1]}x{large[0]}"},
    )
    if quick:
        check.row(
            "note", "--quick", "-", "smaller sizes, parity torch/native, speed auto, fp32, 1 round, no warm-up, batch 2"
        )
    for name in sorted(set(available) - set(backends)):
        check.skip(f"backend {name}", "--quick")

    document["parity"] = [
        item for name in backends if (item := check.attempt(f"parity {name}", lambda n=name: parity(check, device, n)))
    ]

    weights = args.weights or locations.resolve("lite-denoise")
    photos = sorted((PROJECT / "examples" / "noisy").glob("*.png"))[: 2 if quick else None]
    document["half_precision"] = (
        check.attempt("half precision", lambda: half_precision(check, device, weights, photos, 128 if quick else None))
        or []
    )

    dinat = official_network()
    chosen = 2 if quick else Restorer(dinat, EngineOptions(device=str(device), tile=0)).batch_size(*size)
    document["chosen_batch"] = chosen
    restormer = None
    if args.restormer is not None:
        restormer = check.attempt("restormer", lambda: load_restormer(args.restormer))
    else:
        check.skip("restormer", "no --restormer checkout given")
    rows: list[dict[str, Any]] = []

    def measure(model: str, descriptor: ModelDescriptor, backend: str, precision: str) -> None:
        """Batch 1, then the chosen batch, whose first output is compared with batch 1's."""
        reference = None
        for batch in sorted({1, chosen}):
            options = EngineOptions(device=str(device), precision=precision, tile=0, attention=backend, batch=batch)
            row = check.attempt(
                f"{model} {backend} {precision} batch {batch}",
                lambda o=options, r=reference: throughput(
                    check, model, Restorer(descriptor, o), size, rounds, warmup, r
                ),
                needs=20,
            )
            if row is not None:
                output = row.pop("first_output")
                reference = output if reference is None else reference
                rows.append(row)

    def measure_precision(precision: str) -> None:
        for backend in timed_backends:
            measure("dinat", dinat, backend, precision)
        if restormer is not None:
            measure("restormer", restormer, "auto", precision)

    # What matters most first, should the budget run out: the precision a GPU runs by default,
    # then a large image, then the other precisions.
    measure_precision(fast_precision)
    document["throughput"] = rows
    large_options = [
        EngineOptions(device=str(device), precision="auto", tile=256 if quick else None, batch=2 if quick else None)
    ]
    if not quick:
        large_options.append(EngineOptions(device=str(device), precision="auto", tile=512))
    document["large"] = []
    for options in large_options:
        what = f"dinat {large[1]}x{large[0]} tile {options.tile or 'auto'}"
        item = check.attempt(
            what, lambda o=options: throughput(check, "dinat", Restorer(dinat, o), large, 1, warmup), needs=30
        )
        if item is not None:
            item.pop("first_output")
            document["large"].append(item)
    for precision in precisions:
        if precision != fast_precision:
            measure_precision(precision)

    if device.type == "cuda" and not quick:
        document["whole_network_compiled"] = [
            item
            for mode in ("default", "reduce-overhead")
            if (
                item := check.attempt(
                    f"torch.compile {mode}", lambda m=mode: compiled_network(check, m, device, size, chosen), needs=150
                )
            )
            is not None
        ]
    else:
        check.skip("whole network through torch.compile", "CUDA only, not --quick")

    summarise(check, device, fast_precision, chosen)
    document["seconds"] = time.perf_counter() - check.began
    document["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        document["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"gpu_check on {document['device_name']} ({device}), torch {torch.__version__}, {document['seconds']:.0f} s")
    check.print_table()
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(document, indent=1, allow_nan=True) + "\n")


def compiled_network(check: Check, mode: str, device: torch.device, size: tuple[int, int], batch: int) -> dict:
    """The official network through torch.compile as a whole, bf16, fixed shapes (`reduce-overhead`: CUDA graphs)."""
    descriptor = official_network()
    options = EngineOptions(device=str(device), precision="bf16", tile=0, batch=batch)
    restorer = Restorer(descriptor, options)
    restorer.model = torch.compile(restorer.model, mode=mode, dynamic=False)
    result = throughput(check, "dinat-compiled", restorer, size, 3, True)
    result.pop("first_output")
    return result | {"mode": mode}


def summarise(check: Check, device: torch.device, precision: str, chosen: int) -> None:
    """The fastest exact backend, what auto takes, and the issue's targets."""
    document = check.document
    exact = {item["backend"] for item in document["parity"] if item["exact"]}
    candidates = [
        row
        for row in document["throughput"]
        if row["model"] == "dinat"
        and row["backend"] in exact
        and row["precision"] == precision
        and row["batch"] == chosen
    ]
    fastest = max(candidates, key=lambda row: row["megapixels_per_s"], default=None)
    document["fastest_exact"] = (
        None if fastest is None else {"backend": fastest["backend"], "megapixels_per_s": fastest["megapixels_per_s"]}
    )
    if fastest is not None:
        auto = document["auto_backend"]
        check.row("fastest exact", f"{precision} batch {chosen}", fastest["backend"], f"auto takes {auto}")
    restormer = [
        row
        for row in document["throughput"]
        if row["model"] == "restormer" and row["precision"] == precision and row["batch"] == chosen
    ]
    if fastest is not None and restormer:
        ratio = fastest["megapixels_per_s"] / restormer[0]["megapixels_per_s"]
        document["restormer_ratio"] = ratio
        check.row(
            "vs Restormer", f"{precision} batch {chosen}", f"{ratio:.3g}x", f"target {TARGET_RESTORMER_RATIO}x on GPU"
        )
    if device.type == "cuda" and fastest is not None:
        document["targets"] = {
            "megapixels_per_s": fastest["megapixels_per_s"] >= TARGET_MEGAPIXELS_PER_S,
            "restormer_ratio": document.get("restormer_ratio", 0.0) >= TARGET_RESTORMER_RATIO,
        }
        check.row("target", f">= {TARGET_MEGAPIXELS_PER_S:.0f} MP/s bf16", str(document["targets"]["megapixels_per_s"]))


if __name__ == "__main__":
    main()
