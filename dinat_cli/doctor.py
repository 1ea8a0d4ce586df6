"""`dinat doctor`: whether dinat can restore on this machine, and how well.

`diagnose()` collects a `Report`: versions, install, devices, CPU instruction sets,
which compiled CPU kernel variant runs and why, the kernels `auto` picks per device
(attention backend; native or PyTorch layer norm, gate and pooling),
the compiler, Ray, caches, weights, memory, a smoke test (a tiny random network
restoring a 32x32 image on the CPU) and one-line advice. It never raises: a section
that fails records its error and the rest is still collected. The CLI only prints it.

torch and the rest of dinat are imported inside the collectors, so that importing
this module is cheap and works where torch is broken.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dinat_cli.choices import CPU_KERNELS_ENV
from dinat_cli.cpu import CpuInfo, cpu_info, sysctl

SMOKE_SIZE = 32
_DISTRIBUTION = "dinat-cli"
_COMMAND_TIMEOUT_S = 10


@dataclass
class DinatInfo:
    version: str | None = None
    path: str | None = None  # the folder of the imported package
    distribution: str | None = None  # the installed distribution's version; None: not installed
    editable: bool = False  # installed with `pip install -e`
    source_tree: bool = False  # imported from a checkout (setup.py beside the package)
    error: str | None = None


@dataclass
class PythonInfo:
    version: str | None = None
    executable: str | None = None
    platform: str | None = None
    error: str | None = None


@dataclass
class TorchInfo:
    version: str | None = None
    cuda: str | None = None  # torch.version.cuda; None: a build without CUDA
    hip: str | None = None
    debug: bool | None = None
    threads: int | None = None  # torch.get_num_threads()
    cpu_capability: str | None = None  # torch.backends.cpu.get_cpu_capability()
    error: str | None = None


@dataclass
class DeviceInfo:
    name: str  # "cpu", "cuda:0", "mps"
    description: str | None = None
    total_memory: int | None = None  # bytes
    free_memory: int | None = None  # bytes
    capability: str | None = None  # CUDA compute capability
    error: str | None = None


@dataclass
class CpuKernelsInfo:
    """`dinat_cli.ops.native.kernel_status()`: the compiled CPU kernel variant in use, and why."""

    variant: str = "none"  # in use; "none" when no variant runs
    requested: str | None = None  # "auto", "off" or a variant (DINAT_CPU_KERNELS)
    variants_built: list[str] = field(default_factory=list)
    variants_runnable: list[str] = field(default_factory=list)
    reason: str | None = None  # why `variant` is "none"; None when the kernels run
    error: str | None = None


@dataclass
class AttentionInfo:
    device: str
    auto: str | None = None  # the backend `auto` picks on this device
    norm_gate_pooling: str | None = None  # "native" or "torch": what `auto` runs for the other kernels
    kernels: str | None = None  # the whole choice of `auto` in one line (ops.Kernels.describe())
    backends: dict[str, str | None] = field(default_factory=dict)  # name -> why unavailable, None: usable
    error: str | None = None


@dataclass
class CompilerInfo:
    command: str | None = None  # $CXX, else the first of c++, g++, clang++ on PATH
    path: str | None = None
    version: str | None = None  # the first line of `--version`
    needed_for: str = "the `compiled` attention backend only; the CPU kernels are compiled when dinat is built"
    error: str | None = None


@dataclass
class RayInfo:
    installed: bool = False
    version: str | None = None
    error: str | None = None


@dataclass
class CacheInfo:
    name: str  # "weights", "inductor"
    path: str | None = None
    exists: bool = False
    size: int = 0  # bytes, not counting another cache nested inside
    error: str | None = None


@dataclass
class WeightsInfo:
    entries: list[dict[str, Any]] = field(default_factory=list)  # registry.locations.Location.to_dict()
    error: str | None = None


@dataclass
class MemoryInfo:
    total: int | None = None  # bytes of system memory
    free: int | None = None  # bytes available to a new process
    error: str | None = None


@dataclass
class SmokeTestInfo:
    ran: bool = False
    ok: bool | None = None  # None: not run
    seconds: float | None = None
    attention: str | None = None  # the backend the network ran on
    kernels: str | None = None  # every kernel it ran on (ops.Kernels.describe())
    size: str = f"{SMOKE_SIZE}x{SMOKE_SIZE}"
    error: str | None = None


@dataclass
class Report:
    ok: bool = False  # dinat can restore here: torch works and the smoke test passed
    dinat: DinatInfo = field(default_factory=DinatInfo)
    python: PythonInfo = field(default_factory=PythonInfo)
    torch: TorchInfo = field(default_factory=TorchInfo)
    cpu: CpuInfo = field(default_factory=CpuInfo)
    cpu_kernels: CpuKernelsInfo = field(default_factory=CpuKernelsInfo)
    devices: list[DeviceInfo] = field(default_factory=list)
    attention: list[AttentionInfo] = field(default_factory=list)
    compiler: CompilerInfo = field(default_factory=CompilerInfo)
    ray: RayInfo = field(default_factory=RayInfo)
    memory: MemoryInfo = field(default_factory=MemoryInfo)
    caches: list[CacheInfo] = field(default_factory=list)
    weights: WeightsInfo = field(default_factory=WeightsInfo)
    smoke_test: SmokeTestInfo = field(default_factory=SmokeTestInfo)
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# --- collecting ----------------------------------------------------------------------

T = TypeVar("T")


def _describe(error: BaseException) -> str:
    first_line = next(iter(str(error).splitlines()), "")
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _collect(collector: Callable[[], T], on_error: Callable[[str], T]) -> T:
    try:
        return collector()
    except Exception as error:  # a doctor reports what is broken; it must not break itself
        return on_error(_describe(error))


def diagnose(*, smoke_test: bool = True) -> Report:
    """Everything `dinat doctor` reports; never raises."""
    report = Report()
    report.dinat = _collect(_dinat_info, lambda e: DinatInfo(error=e))
    report.python = _collect(_python_info, lambda e: PythonInfo(error=e))
    report.torch = _collect(_torch_info, lambda e: TorchInfo(error=e))
    report.cpu = _collect(cpu_info, lambda e: CpuInfo(error=e))
    report.memory = _collect(_memory_info, lambda e: MemoryInfo(error=e))
    report.cpu_kernels = _collect(_cpu_kernels_info, lambda e: CpuKernelsInfo(reason=e, error=e))
    report.devices = _collect(lambda: _devices(report.cpu, report.memory), lambda e: [DeviceInfo("cpu", error=e)])
    report.attention = _collect(
        # One entry per device type: every CUDA device has the same backends.
        lambda: [_attention_info(kind) for kind in dict.fromkeys(d.name.split(":")[0] for d in report.devices)],
        lambda e: [AttentionInfo("cpu", error=e)],
    )
    report.compiler = _collect(_compiler_info, lambda e: CompilerInfo(error=e))
    report.ray = _collect(_ray_info, lambda e: RayInfo(error=e))
    report.caches = _collect(_caches, lambda e: [CacheInfo("weights", error=e)])
    report.weights = _collect(_weights_info, lambda e: WeightsInfo(error=e))
    if smoke_test:
        report.smoke_test = _collect(_smoke_test, lambda e: SmokeTestInfo(ran=True, ok=False, error=e))
    report.ok = report.torch.error is None and (report.smoke_test.ok is True or not smoke_test)
    report.advice = _collect(lambda: advise(report), lambda e: [f"(advice failed: {e})"])
    return report


def _dinat_info() -> DinatInfo:
    import dinat_cli

    folder = Path(dinat_cli.__file__).resolve().parent
    info = DinatInfo(
        version=dinat_cli.__version__, path=str(folder), source_tree=(folder.parent / "setup.py").is_file()
    )
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        distribution = importlib.metadata.distribution(_DISTRIBUTION)
        info.distribution = distribution.version
        direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
        info.editable = bool(direct_url.get("dir_info", {}).get("editable", False))
    return info


def _python_info() -> PythonInfo:
    return PythonInfo(platform.python_version(), sys.executable, platform.platform())


def _torch_info() -> TorchInfo:
    import torch

    return TorchInfo(
        version=torch.__version__,
        cuda=torch.version.cuda,
        hip=getattr(torch.version, "hip", None),
        debug=bool(getattr(torch.version, "debug", False)),
        threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )


def _memory_info() -> MemoryInfo:
    import torch

    from dinat_cli.engine import free_memory

    total = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="utf-8") as stream:
        for line in stream:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    if total is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if total is None and platform.system() == "Darwin":
        total = int(sysctl("hw.memsize") or 0) or None
    free = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        free = int(free_memory(torch.device("cpu")))
    return MemoryInfo(total=total, free=free)


def _cpu_kernels_info() -> CpuKernelsInfo:
    from dinat_cli.ops import native

    status = native.kernel_status()
    return CpuKernelsInfo(
        variant=status.variant,
        requested=status.requested,
        variants_built=list(status.variants_built),
        variants_runnable=list(status.variants_runnable),
        reason=status.reason,
    )


def _devices(cpu: CpuInfo, memory: MemoryInfo) -> list[DeviceInfo]:
    import torch

    devices = [DeviceInfo("cpu", cpu.model, memory.total, memory.free)]

    def cuda_device(index: int) -> DeviceInfo:
        properties = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        return DeviceInfo(
            f"cuda:{index}", properties.name, int(total), int(free), f"{properties.major}.{properties.minor}"
        )

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            devices.append(_collect(lambda index=index: cuda_device(index), lambda e: DeviceInfo("cuda", error=e)))

    def mps_device() -> DeviceInfo:
        from dinat_cli.engine import free_memory

        total = int(torch.mps.recommended_max_memory())
        return DeviceInfo("mps", "Apple Metal (MPS)", total, int(free_memory(torch.device("mps"))))

    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append(_collect(mps_device, lambda e: DeviceInfo("mps", error=e)))
    return devices


def _attention_info(device: str) -> AttentionInfo:
    from dinat_cli import ops

    kernels = ops.resolve_kernels("auto", device)
    return AttentionInfo(
        device=device,
        auto=kernels.attention,
        norm_gate_pooling=kernels.norm_gate_pooling,
        kernels=kernels.describe(),
        backends=dict(ops.available_backends(device)),
    )


def _compiler_info() -> CompilerInfo:
    info = CompilerInfo()
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for candidate in candidates:
        words = shlex.split(candidate)
        path = shutil.which(words[0]) if words else None
        if path:
            info.command, info.path = candidate, path
            break
    if info.path is None:
        info.command = candidates[0] if len(candidates) == 1 else None
        return info
    try:
        result = subprocess.run(
            [info.path, *shlex.split(info.command)[1:], "--version"],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
        info.version = next(iter((result.stdout or result.stderr).splitlines()), None)
    except (OSError, subprocess.SubprocessError) as error:
        info.error = _describe(error)
    return info


def _ray_info() -> RayInfo:
    # Ray takes seconds to import: its metadata says enough.
    try:
        return RayInfo(installed=True, version=importlib.metadata.version("ray"))
    except importlib.metadata.PackageNotFoundError:
        return RayInfo(installed=False)


def _folder_size(folder: Path, skip: set[Path]) -> int:
    total = 0
    for root, dirs, files in os.walk(folder, onerror=lambda error: None):
        dirs[:] = [name for name in dirs if Path(root, name).resolve() not in skip]
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _caches() -> list[CacheInfo]:
    from dinat_cli.cache import cache_dir
    from dinat_cli.process import compile_cache_dir

    folders = {"weights": Path(cache_dir()), "inductor": Path(compile_cache_dir())}
    resolved = {name: path.expanduser().resolve() for name, path in folders.items()}

    def cache(name: str) -> CacheInfo:
        path = resolved[name]
        # A cache nested inside another (inductor inside the weights folder) counts once, as itself.
        others = {other for key, other in resolved.items() if key != name and other != path}
        return CacheInfo(name, str(path), path.is_dir(), _folder_size(path, others) if path.is_dir() else 0)

    return [_collect(lambda name=name: cache(name), lambda e, name=name: CacheInfo(name, error=e)) for name in folders]


def _weights_info() -> WeightsInfo:
    from dinat_cli.registry import catalogue, locations

    return WeightsInfo([locations.locate(entry).to_dict() for entry in catalogue.load_registry().values()])


def _smoke_test() -> SmokeTestInfo:
    import numpy as np
    import torch

    from dinat_cli.checkpoints import describe
    from dinat_cli.engine import Restorer
    from dinat_cli.model import RestoreDiNAT
    from dinat_cli.options import EngineOptions

    info = SmokeTestInfo(ran=True)
    start = time.perf_counter()
    # The user's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RestoreDiNAT(
            dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1], dilations=[1, 1, 1, 1]
        )
        image = torch.rand(SMOKE_SIZE, SMOKE_SIZE, 3).numpy()

    restorer = Restorer(describe(model), EngineOptions(device="cpu", precision="fp32", tile=0))
    info.attention = restorer.attention
    info.kernels = restorer.kernels.describe()
    try:
        result = restorer.restore(image).pixels
    except Exception as error:
        info.ok, info.error = False, _describe(error)
    else:
        if result.shape != image.shape:
            info.ok, info.error = False, f"output shape {result.shape}, expected {image.shape}"
        elif not np.isfinite(result).all():
            info.ok, info.error = False, "the output holds NaN or infinite values"
        else:
            info.ok = True
    info.seconds = round(time.perf_counter() - start, 3)
    return info


# --- advice ----------------------------------------------------------------------------


def advise(report: Report) -> list[str]:
    """One-line suggestions from a report, most important first."""
    advice: list[str] = []
    env = CPU_KERNELS_ENV
    if report.torch.error:
        advice.append(f"torch does not work ({report.torch.error}): install the torch build for this machine")
    smoke = report.smoke_test
    if smoke.ok is False:
        advice.append(f"the smoke test failed ({smoke.error}): dinat cannot restore here")

    kernels = report.cpu_kernels
    runnable = kernels.variants_runnable
    best = runnable[-1] if runnable else None
    fallbacks = "dinat runs the PyTorch fallbacks, several times slower"
    if kernels.error:
        advice.append(f"the CPU kernels cannot be checked ({kernels.error}); {fallbacks}")
    elif kernels.reason is not None:
        if kernels.requested == "off":
            hint = f": unset {env} to use {best}" if best else ""
            advice.append(f"the CPU kernels are off ({kernels.reason}), so {fallbacks}{hint}")
        elif not kernels.variants_built:
            advice.append(
                f"the CPU kernels are unavailable ({kernels.reason}), so {fallbacks}: install a C++ compiler "
                "(e.g. g++) and reinstall from the source checkout: `pip install --force-reinstall --no-deps .`"
            )
        else:
            hint = f"; unset {env} (or set it to auto) to use {best}" if best else ""
            advice.append(f"the CPU kernels are unavailable ({kernels.reason}), so {fallbacks}{hint}")
    elif kernels.requested not in (None, "auto") and best and kernels.variant != best:
        advice.append(
            f"{env}={kernels.requested} forces a slower variant than {best}, which this CPU runs: unset {env}"
        )

    cpu = report.cpu
    arch = (cpu.architecture or "").lower()
    if cpu.native_bf16 is False:
        measured = (
            " (measured: bf16 matrix products at ~1.3 GFLOP/s against ~98 for float32 on an AVX2-only CPU)"
            if arch in ("x86_64", "amd64")
            else ""
        )
        advice.append(
            "this CPU has no native bfloat16, so `--precision bf16` runs float32 here: emulated bfloat16 would be "
            f"many times slower{measured}"
        )
    elif cpu.native_bf16 and kernels.variant == "avx512bf16":
        advice.append("this CPU computes bfloat16 natively: `--precision bf16` can be faster than float32 on CPU")

    threads, cores = report.torch.threads, cpu.usable_cores
    if threads and cores and threads < cores:
        why = f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})" if os.environ.get("OMP_NUM_THREADS") else ""
        advice.append(f"torch uses {threads} threads but {cores} cores are usable{why}: more threads restore faster")

    if report.torch.cuda and not any(device.name.startswith("cuda") for device in report.devices):
        advice.append(f"this torch is built for CUDA {report.torch.cuda} but sees no GPU: check the NVIDIA driver")

    weights = report.weights
    if weights.error:
        advice.append(
            f"the weights registry cannot be read ({weights.error}): install dinat (`pip install .` in a checkout) "
            "or point DINAT_REGISTRY at a registry.json"
        )
    else:
        for entry in weights.entries:
            if entry["status"] == "damaged":
                fix = f"`dinat weights download {entry['name']}`" if entry["url"] else "reinstall dinat"
                advice.append(f"the {entry['name']} checkpoint at {entry['path']} is damaged: {fix} to replace it")
        official = [entry for entry in weights.entries if entry["url"]]
        if official and not any(entry["status"] == "present" for entry in official):
            example = next((entry for entry in official if entry["default_for"]), official[0])
            advice.append(
                f"no official checkpoint present yet: `dinat weights download NAME` "
                f"(e.g. {example['name']} for {example['task']}; `dinat weights list` shows all)"
            )

    if report.compiler.path is None and not report.compiler.error:
        advice.append("no C++ compiler on PATH: `--attention compiled` is unavailable (no other backend needs one)")
    return advice
