"""What this CPU is and computes natively: model, cores and instruction sets, without torch.

`dinat doctor` reports it; the engine asks it whether a 16-bit precision would run in
hardware or be emulated (many times slower than float32).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from dataclasses import dataclass

# Instruction sets reported, by their /proc/cpuinfo flag names.
X86_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_bf16",
    "amx_bf16",
    "avx512_fp16",
    "amx_fp16",
)
_SYSCTL_TIMEOUT_S = 10


@dataclass
class CpuInfo:
    model: str | None = None
    architecture: str | None = None
    logical_cores: int | None = None
    usable_cores: int | None = None  # the cores this process may run on (affinity)
    # The instruction sets; None where they cannot be read on this system.
    sse4_2: bool | None = None
    avx: bool | None = None
    avx2: bool | None = None
    fma: bool | None = None
    avx512f: bool | None = None
    avx512bw: bool | None = None
    avx512dq: bool | None = None
    avx512vl: bool | None = None
    avx512_bf16: bool | None = None
    amx_bf16: bool | None = None
    avx512_fp16: bool | None = None
    amx_fp16: bool | None = None
    native_bf16: bool | None = None  # bfloat16 arithmetic in hardware (AVX512-BF16, AMX-BF16, Arm BF16)
    native_fp16: bool | None = None  # float16 arithmetic in hardware (AVX512-FP16, AMX-FP16, Arm FP16)
    error: str | None = None


def cpu_info() -> CpuInfo:
    """This machine's CPU, probed afresh."""
    fields = _proc_cpuinfo()
    machine = platform.machine()
    arch = machine.lower()
    info = CpuInfo(
        model=fields.get("model name") or platform.processor() or None,
        architecture=machine or None,
        logical_cores=os.cpu_count(),
        usable_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    )
    x86 = arch in ("x86_64", "amd64", "i686", "i386")
    if "flags" in fields or (not x86 and "features" in fields):
        flags = set(fields.get("flags", "").split())
        for name in X86_FLAGS:
            setattr(info, name, name in flags)
        if x86:
            info.native_bf16 = bool(info.avx512_bf16 or info.amx_bf16)
            info.native_fp16 = bool(info.avx512_fp16 or info.amx_fp16)
        else:
            features = fields.get("features", "").split()
            info.native_bf16 = "bf16" in features
            info.native_fp16 = "asimdhp" in features
    elif not x86 and platform.system() == "Darwin":
        for name in X86_FLAGS:
            setattr(info, name, False)
        info.model = sysctl("machdep.cpu.brand_string") or info.model
        bf16, fp16 = sysctl("hw.optional.arm.FEAT_BF16"), sysctl("hw.optional.arm.FEAT_FP16")
        info.native_bf16 = None if bf16 is None else bf16 == "1"
        info.native_fp16 = None if fp16 is None else fp16 == "1"
    return info


@functools.cache
def native_arithmetic() -> dict[str, bool | None]:
    """Whether this CPU computes `bf16` and `fp16` in hardware (None: cannot tell), probed once."""
    info = cpu_info()
    return {"bf16": info.native_bf16, "fp16": info.native_fp16}


def sysctl(name: str) -> str | None:
    """A macOS/BSD sysctl value, None where there is no such value or no sysctl."""
    try:
        result = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=_SYSCTL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if not line.strip():
                if fields:
                    break
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    return fields
