"""Heap settings for CPU inference: keep freed tensor memory for reuse (glibc only).

PyTorch's CPU allocator gives every tensor to malloc, and glibc by default serves
blocks over 32 MB with a fresh mmap and returns freed memory at the heap's top to the
system beyond 128 KB. The network's intermediates are tens of MB to gigabytes, so every
forward pass faulted its working memory in again, page by page: at 256x256 that was a
quarter of the run time, at 1280x720 a third (maps of 350 MB to 1 GB). Blocks up to 1 GB
now come from the heap and freed ones are kept for reuse (trim threshold: the largest
glibc accepts, 2 GB). Larger blocks (the q/k/v map of a float32 megapixel image) are
still mapped afresh: keeping them too saved another 13% at 1024x1024 but raised peak
memory by 26%, which then grew faster than the pixel count.

Applied once per process by whoever owns it (`dinat_cli.process.configure_process`:
the command line, the Ray workers, or a program that opts in), never as a side effect
of running the network, unless `DINAT_SYSTEM_MALLOC=1`; settings a user made with
`MALLOC_*` variables are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_LARGEST = (1 << 31) - 1  # mallopt takes an int
SETTINGS = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: _LARGEST, _M_TOP_PAD: 64 << 20}


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"))


def release_free_memory() -> None:
    """Give the heap's free memory back to the system (glibc's malloc_trim).

    For measurements: with freed memory kept, a process's resident size stays at its
    largest working set so far, which would hide a later, smaller one.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings (once); True if they are in effect."""
    if os.environ.get("DINAT_SYSTEM_MALLOC") == "1" or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in SETTINGS.items())
