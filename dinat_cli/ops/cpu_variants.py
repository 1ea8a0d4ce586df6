"""The instruction-set variants of the CPU kernels: one table for the build and the loader.

`setup.py` compiles each variant of this machine's architecture from `csrc/` into its
own library, `_cpu_kernels_<name>`; `native.py` loads the fastest one the running CPU
supports. Kept free of imports beyond the standard library, so that `setup.py` can read
it before anything is installed.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

# Bits of the kernels' `cpu_features()` (csrc/cpu_features.h).
AVX2_FMA = 1
AVX512 = 2
AVX512_BF16 = 4


@dataclass(frozen=True)
class CpuVariant:
    """One compiled variant: its compile unit, the flags choosing its instruction set, the CPU features it needs."""

    name: str
    source: str  # in csrc/
    flags: tuple[str, ...]
    features: int

    @property
    def module(self) -> str:
        return f"_cpu_kernels_{self.name}"


_X86_BASE = ("-march=x86-64", "-mtune=generic")
_AVX2 = (*_X86_BASE, "-mavx2", "-mfma")
_AVX512 = (*_AVX2, "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl")

X86_VARIANTS = (
    CpuVariant("baseline", "kernels_portable.cpp", _X86_BASE, 0),
    CpuVariant("avx2", "kernels_portable.cpp", _AVX2, AVX2_FMA),
    CpuVariant("avx512", "kernels_portable.cpp", _AVX512, AVX2_FMA | AVX512),
    CpuVariant("avx512bf16", "kernels_avx512bf16.cpp", (*_AVX512, "-mavx512bf16"), AVX2_FMA | AVX512 | AVX512_BF16),
)
# Elsewhere the portable kernels, vectorised for the compiler's default target.
OTHER_VARIANTS = (CpuVariant("baseline", "kernels_portable.cpp", (), 0),)

# Every variant compiles with these; OpenMP binds to the libgomp torch loads. GCC 12's
# AVX-512 headers (their _mm512_undefined_*) trip its uninitialized-value warnings.
COMMON_FLAGS = (
    "-O3",
    "-g0",
    "-std=c++17",
    "-fopenmp",
    "-fvisibility=hidden",
    "-Wno-psabi",
    "-Wno-uninitialized",
    "-Wno-maybe-uninitialized",
)
LINK_FLAGS = ("-fopenmp",)


def variants_for(machine: str | None = None) -> tuple[CpuVariant, ...]:
    """The variants built for an architecture (default: this machine's), slowest first."""
    machine = (machine or platform.machine()).lower()
    return X86_VARIANTS if machine in ("x86_64", "amd64", "i686", "i386") else OTHER_VARIANTS
