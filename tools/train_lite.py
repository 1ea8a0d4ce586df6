"""Train `lite-denoise`, the small blind Gaussian denoiser that ships with dinat.

    python tools/train_lite.py examples        # examples/clean, examples/noisy
    OMP_WAIT_POLICY=PASSIVE nice -n 19 python tools/train_lite.py train --run-dir /tmp/lite --threads 2
    python tools/train_lite.py table           # README's held-out table, for the shipped weights

`train` writes weights/lite-denoise.safetensors; after a stop, the same command with
`--resume` continues from the run directory. The shipped weights were made by the
command above (nice, and threads that sleep rather than spin while they wait, because
the machine was shared).

The data are the sample photos scikit-image ships (a development dependency; the
package itself never needs it). Six photos, three in colour and three grey, are held
out and never trained on: they become `examples/`, downscaled, and with sigma 25 noise
from a fixed seed (grey ones stay grey files). Training draws random crops of the other
photos (and of their half-size versions), with flips, rotations and, for colour photos,
channel permutations, and adds Gaussian noise of a sigma drawn uniformly from [0, 50]
per crop, clipped and quantised to 8 bits as a saved photo would be. Grey crops (of the
grey photos, and a share of the colour crops made grey) carry one noise field on all
three channels, which is how dinat feeds a grey photo to the network; colour crops get
noise drawn per channel. Every batch is a function of (seed, step) alone, so a resumed
run draws the same batches as an uninterrupted one.

The network is the package's `RestoreDiNAT`, unchanged. Training runs its PyTorch
expressions (kernels `off`, attention `torch`): the compiled CPU kernels compute forward
passes only. The held-out scores in the log run as `dinat denoise` runs, kernels and all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from dinat_cli import metrics, ops
from dinat_cli.checkpoints import describe, save_model
from dinat_cli.engine import Restorer
from dinat_cli.io import read_image
from dinat_cli.model import RestoreDiNAT
from dinat_cli.model.variants import get_variant
from dinat_cli.options import EngineOptions, ModelSource

REPO = Path(__file__).resolve().parents[1]

HELD_OUT = ("chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "coins.png", "moon.png")
TRAIN_COLOUR = (
    "astronaut.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)
TRAIN_GREY = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "cell.png",
    "clock_motion.png",
    "page.png",
    "text.png",
)
if set(HELD_OUT) & set(TRAIN_COLOUR + TRAIN_GREY):
    raise AssertionError("a held-out photo is listed for training")
# Colour photos are drawn this many times as often as grey ones, and this share of their
# crops is made grey: most grey photos a user has were taken in colour, and the grey
# training photos are mostly textures and documents.
COLOUR_WEIGHT = 2.0
GREY_SHARE = 1 / 3

EXAMPLE_SIDE = 256  # longer side; below TLC's 384 px box, so TLC pools globally as in training
EXAMPLE_SIGMA = 25.0
EXAMPLE_SEED = 25
MAX_SIGMA = 50.0

# The lite-denoise variant (dinat_cli/model/variants.py).
CONFIG = dict(get_variant("lite-denoise").config)

log = logging.getLogger("train_lite")


def skimage_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8: (H, W, 3) RGB, or (H, W) for a grey photo."""
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"{path}: scikit-image's sample photo is missing")
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)


def make_examples(folder: Path) -> None:
    """Write the held-out photos, downscaled, to `folder/clean` and with sigma 25 noise to `folder/noisy`."""
    rng = np.random.default_rng(EXAMPLE_SEED)
    for name in HELD_OUT:
        photo = skimage_photo(name)
        scale = EXAMPLE_SIDE / max(photo.shape[:2])
        clean = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        noise = rng.standard_normal(clean.shape) * EXAMPLE_SIGMA
        noisy = np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8)
        stem = Path(name).stem
        for kind, image in (("clean", clean), ("noisy", noisy)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(folder / kind / f"{stem}.png"), bgr)
        print(f"{stem}: {clean.shape[1]}x{clean.shape[0]}, noisy PSNR {metrics.psnr(clean, noisy, 255.0):.2f} dB")


class Photos:
    """The training photos at full and half size, and how often each is drawn."""

    def __init__(self, crop: int) -> None:
        self.images: list[np.ndarray] = []
        for name in TRAIN_COLOUR + TRAIN_GREY:
            photo = skimage_photo(name)
            half = cv2.resize(photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            self.images += [image for image in (photo, half) if min(image.shape[:2]) >= crop]
        weights = np.array([COLOUR_WEIGHT if image.ndim == 3 else 1.0 for image in self.images])
        self.weights = weights / weights.sum()

    def batch(self, seed: int, step: int, size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy, clean) float32 `(size, 3, crop, crop)` in [0, 1], determined by (seed, step)."""
        rng = np.random.default_rng([seed, step])
        clean, noisy = [], []
        for _ in range(size):
            index = rng.choice(len(self.images), p=self.weights)
            image = self.images[index]
            top = rng.integers(0, image.shape[0] - crop + 1)
            left = rng.integers(0, image.shape[1] - crop + 1)
            patch = np.rot90(image[top : top + crop, left : left + crop], k=rng.integers(4))
            if rng.integers(2):
                patch = patch[:, ::-1]
            if patch.ndim == 3 and rng.random() < GREY_SHARE:
                patch = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY)
            elif patch.ndim == 3:
                patch = patch[..., rng.permutation(3)]
            patch = patch.astype(np.float32)
            sigma = rng.uniform(0.0, MAX_SIGMA)
            # Clipped and rounded as in a saved 8-bit photo, which is what users denoise.
            corrupted = np.clip(np.rint(patch + rng.standard_normal(patch.shape) * sigma), 0, 255)
            if patch.ndim == 2:  # as dinat feeds a grey photo: its one channel, noise and all, three times
                patch, corrupted = (np.repeat(array[..., None], 3, axis=2) for array in (patch, corrupted))
            clean.append(patch / 255)
            noisy.append(corrupted.astype(np.float32) / 255)

        def stack(patches: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()

        return stack(noisy), stack(clean)


def charbonnier(output: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """A smooth L1: robust to the clipped pixels, and good for PSNR."""
    return torch.sqrt((output - target) ** 2 + eps * eps).mean()


def learning_rate(step: int, steps: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warm-up, then a cosine decay from `peak` to `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


# OpenCV's non-local means filter strengths h; its best on the examples lies inside this range.
NLM_STRENGTHS = (5, 10, 15, 20, 25, 30)


@dataclass(frozen=True)
class HeldOutScore:
    """PSNR (dB) of one held-out example against its clean photo: noisy, restored, and OpenCV's best."""

    name: str
    grey: bool
    noisy: float
    restored: float
    nlm: float | None = None
    nlm_strength: int | None = None


def best_nlm(clean: np.ndarray, noisy: np.ndarray) -> tuple[float, int]:
    """PSNR of OpenCV's non-local means at its best strength for this image, and that strength."""
    bgr = noisy if noisy.ndim == 2 else cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR)

    def score(strength: int) -> float:
        if noisy.ndim == 2:
            denoised = cv2.fastNlMeansDenoising(bgr, None, strength, 7, 21)
        else:
            denoised = cv2.cvtColor(
                cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, 7, 21), cv2.COLOR_BGR2RGB
            )
        return metrics.psnr(clean, denoised, 255.0)

    return max((score(strength), strength) for strength in NLM_STRENGTHS)


def held_out_scores(restorer: Restorer, examples: Path, with_nlm: bool = False) -> list[HeldOutScore]:
    """Scores per example, restored through the engine and the file layer as `dinat denoise` does."""
    scores = []
    for path in sorted((examples / "noisy").glob("*.png")):
        noisy = read_image(path)
        clean = read_image(examples / "clean" / path.name).pixels
        restored = noisy.with_float_pixels(restorer.restore(noisy.to_float()).pixels).pixels
        nlm, strength = best_nlm(clean, noisy.pixels) if with_nlm else (None, None)
        scores.append(
            HeldOutScore(
                name=path.stem,
                grey=noisy.is_gray,
                noisy=metrics.psnr(clean, noisy.pixels, 255.0),
                restored=metrics.psnr(clean, restored, 255.0),
                nlm=nlm,
                nlm_strength=strength,
            )
        )
    return scores


def held_out_psnr(model: RestoreDiNAT, examples: Path) -> list[HeldOutScore]:
    """The model's scores on the examples, in the middle of training, on the engine's kernels."""
    device = str(next(model.parameters()).device)
    restorer = Restorer(describe(model), EngineOptions(device=device, precision="fp32", tile=0))
    scores = held_out_scores(restorer, examples)
    model.train()
    model.set_kernels(ops.EAGER)  # back to the differentiable expressions (the kernels compute forward passes only)
    return scores


def table(weights: Path, examples: Path) -> str:
    """README's table: PSNR on the held-out examples, noisy, OpenCV NLM at its best, and these weights."""
    restorer = Restorer.load(ModelSource(weights, "lite-denoise"), EngineOptions(device="cpu", precision="fp32"))
    scores = held_out_scores(restorer, examples, with_nlm=True)
    lines = ["| image | noisy | OpenCV NLM (best h) | lite-denoise |", "|---|---|---|---|"]
    for grey in (False, True):
        group = [score for score in scores if score.grey == grey]
        kind = "grey" if grey else "colour"
        lines += [
            f"| {s.name} ({kind}) | {s.noisy:.2f} | {s.nlm:.2f} (h {s.nlm_strength}) | {s.restored:.2f} |"
            for s in group
        ]
        means = [np.mean([getattr(s, field) for s in group]) for field in ("noisy", "nlm", "restored")]
        lines.append(f"| mean, {kind} | " + " | ".join(f"{mean:.2f}" for mean in means) + " |")
    return "\n".join(lines)


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    partial = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, partial)
    os.replace(partial, path)  # a stop while saving never leaves half a checkpoint


def train(args: argparse.Namespace) -> None:
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler(), logging.FileHandler(run_dir / "train.log")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(args.seed)
    model = RestoreDiNAT(**CONFIG).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    checkpoint = run_dir / "last.pt"
    start = 0
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        log.info("resumed from %s at step %d", checkpoint, start)
    elif checkpoint.exists():
        raise SystemExit(f"{checkpoint} exists: pass --resume to continue it, or choose another --run-dir")
    parameters = sum(p.numel() for p in model.parameters())
    log.info("config %s, %d parameters, device %s, %d threads", json.dumps(CONFIG), parameters, device, args.threads)
    log.info("options %s", json.dumps({key: str(value) for key, value in vars(args).items()}))

    photos = Photos(args.crop)
    model.train()
    model.set_kernels(ops.EAGER)  # the differentiable expressions
    running, began = [], time.perf_counter()
    for step in range(start, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup, args.lr * 0.01)
        noisy, clean = photos.batch(args.seed, step, args.batch, args.crop)
        loss = charbonnier(model(noisy.to(device)), clean.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        done = step + 1
        if done % args.log_every == 0:
            elapsed = time.perf_counter() - began
            log.info(
                "step %d/%d loss %.5f lr %.2e %.2f s/step",
                done,
                args.steps,
                float(np.mean(running)),
                optimizer.param_groups[0]["lr"],
                elapsed / len(running),
            )
            running, began = [], time.perf_counter()
        if done % args.checkpoint_every == 0 or done == args.steps:
            save_checkpoint(checkpoint, model, optimizer, done)
        if done % args.eval_every == 0 or done == args.steps:
            scores = held_out_psnr(model, args.examples)
            detail = ", ".join(f"{s.name} {s.noisy:.2f}->{s.restored:.2f}" for s in scores)
            colour, grey = (np.mean([s.restored for s in scores if s.grey == g]) for g in (False, True))
            log.info("step %d held-out PSNR %s; mean colour %.2f, grey %.2f dB", done, detail, colour, grey)

    scores = held_out_psnr(model, args.examples)
    metadata = {
        "name": "lite-denoise",
        "task": "blind Gaussian denoising, sigma 0-50 (8-bit scale)",
        "trained_with": "tools/train_lite.py",
        "training_photos": ",".join(TRAIN_COLOUR + TRAIN_GREY),
        "held_out_photos": ",".join(HELD_OUT),
        "steps": str(args.steps),
        "batch": str(args.batch),
        "crop": str(args.crop),
        "seed": str(args.seed),
        "loss": "charbonnier",
        "optimizer": f"AdamW lr {args.lr} wd {args.weight_decay}, warm-up {args.warmup}, cosine to 1%",
        "grey_crops": f"all of the grey photos' and {GREY_SHARE:.3f} of the colour photos'; one noise on 3 channels",
        "held_out_psnr_sigma25": json.dumps({s.name: round(s.restored, 2) for s in scores}),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), args.out, metadata)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    log.info("wrote %s: %d bytes, sha256 %s", args.out, args.out.stat().st_size, digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    examples = commands.add_parser("examples", help="Write the held-out example photos, clean and noisy.")
    examples.add_argument("--out", type=Path, default=REPO / "examples")
    run = commands.add_parser("train", help="Train (or --resume) and write the safetensors file.")
    run.add_argument("--run-dir", type=Path, required=True, help="Log and resumable checkpoint go here.")
    run.add_argument("--out", type=Path, default=REPO / "weights" / "lite-denoise.safetensors")
    run.add_argument("--examples", type=Path, default=REPO / "examples", help="Held-out photos, for the log.")
    run.add_argument("--resume", action="store_true", help="Continue from RUN_DIR/last.pt.")
    run.add_argument("--steps", type=int, default=2400)
    run.add_argument("--batch", type=int, default=8)
    run.add_argument("--crop", type=int, default=64)
    run.add_argument("--lr", type=float, default=2e-3)
    run.add_argument("--weight-decay", type=float, default=1e-4)
    run.add_argument("--warmup", type=int, default=100)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=1, help="CPU threads for torch.")
    run.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda.")
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--checkpoint-every", type=int, default=50)
    run.add_argument("--eval-every", type=int, default=400)
    scores = commands.add_parser("table", help="Print README's table of PSNR on the held-out examples.")
    scores.add_argument("--weights", type=Path, default=REPO / "weights" / "lite-denoise.safetensors")
    scores.add_argument("--examples", type=Path, default=REPO / "examples")
    args = parser.parse_args()
    if args.command == "examples":
        make_examples(args.out)
    elif args.command == "table":
        print(table(args.weights, args.examples))
    else:
        train(args)


if __name__ == "__main__":
    main()
