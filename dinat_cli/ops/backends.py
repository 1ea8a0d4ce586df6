"""Attention backends: which implementation of `na2d` runs, chosen globally or per call.

- `torch`: the eager reference (`neighborhood.na2d`); exact, any device, slow.
- `native`: C++ kernels compiled with the package, one variant per instruction set
  (`native.py`); exact to float32 rounding, float32 and bfloat16. CPU only.
- `compiled`: `fused.na2d_fused` through `torch.compile` (inductor: C++ on CPU,
  Triton on CUDA); exact to float32 rounding. Needs a working C++ compiler on CPU.
- `flex`: PyTorch's `flex_attention`, the bias as a score modification and the
  neighbourhood as a block mask; CUDA only.
- `natten`: natten's fused kernels, where a natten with relative position bias
  support (0.14 to 0.17) is installed.
- `auto`: the fastest exact one available on the tensor's device: on CPU native, then
  compiled, then torch; on CUDA natten, then compiled, then torch.

Where compiled code is cached is the process owner's choice: the `dinat` command puts
it in the user cache (`dinat_cli.process.configure_process`); this module sets no
environment variable and no dynamo setting of the process.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from dinat_cli.choices import ATTENTION_BACKENDS, check_attention
from dinat_cli.errors import UsageError

BACKENDS = ATTENTION_BACKENDS
# Preference of `auto` per device type; the first available wins.
# Measured on the official network at 256x256, 2 threads: native 3x faster than compiled.
_AUTO_ORDER = {"cpu": ("native", "compiled", "torch"), "cuda": ("natten", "compiled", "torch")}
_AUTO_DEFAULT = ("compiled", "torch")

_selected = "auto"


def set_backend(name: str) -> None:
    """Select the backend every later `na2d` call without an explicit one uses."""
    global _selected
    _selected = validate_backend(name)


def current_backend() -> str:
    """The selected backend name (possibly `auto`, resolved per call by device)."""
    return _selected


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select a backend for the calls made inside the `with` block."""
    previous = _selected
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """Why backend `name` cannot run on `device`, or None if it can."""
    device_type = torch.device(device).type
    if name == "torch":
        return None
    if name == "compiled":
        return compiler_unavailable_reason(device_type)
    if name == "native":
        if device_type != "cpu":
            return "the native kernel runs on CPU only"
        from dinat_cli.ops import native

        return native.unavailable_reason()
    if name == "flex":
        if device_type != "cuda":
            return "flex_attention is used on CUDA only"
        return compiler_unavailable_reason(device_type)
    if name == "natten":
        return _natten_unavailable_reason()
    raise ValueError(f"unknown attention backend {name!r}")


def resolve_backend(name: str | None, device: torch.device | str) -> str:
    """The concrete backend for `name` (None: the selected one) on `device`.

    `auto` falls back silently; a backend asked for by name that cannot run is a
    UsageError that says why.
    """
    name = validate_backend(name or _selected)
    if name == "auto":
        order = _AUTO_ORDER.get(torch.device(device).type, _AUTO_DEFAULT)
        return next(candidate for candidate in order if unavailable_reason(candidate, device) is None)
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise UsageError(f"--attention {name} is not available: {reason}")
    return name


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """Every concrete backend with the reason it is unavailable on `device` (None: usable)."""
    return {name: unavailable_reason(name, device) for name in BACKENDS if name != "auto"}


def validate_backend(name: str) -> str:
    """`name` itself if it is a backend name (available or not), else a UsageError."""
    return check_attention(name)


# --- compilation ---------------------------------------------------------------------


@functools.cache
def compiler_unavailable_reason(device_type: str) -> str | None:
    """Why torch.compile cannot be used for `device_type`, or None if it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device_type == "cpu":
        from torch._inductor import cpp_builder

        try:
            compiler = cpp_builder.get_cpp_compiler()
        except Exception as error:  # inductor raises plain RuntimeErrors for a missing compiler
            return f"no C++ compiler for inductor ({error})"
        if shutil.which(compiler) is None and not os.path.isfile(compiler):
            return f"no C++ compiler for inductor ({compiler} not found)"
        return None
    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed"
    return f"torch.compile is not used on {device_type}"


# Past dynamo's default limit (8 graphs per function) it would run the fused expression
# eagerly, storing K*K copies of the keys; the network needs a graph per precision, for
# one head and for several, and for square and oblong maps.
RECOMPILE_LIMIT = 64


def _compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """torch.compile `fn` with RECOMPILE_LIMIT for it alone, leaving the process's limit as it is."""
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return torch.compile(fn, recompile_limit=RECOMPILE_LIMIT, **options)
    compiled = torch.compile(fn, **options)

    def call(*args: Any, **kwargs: Any) -> Any:
        # Before torch 2.12 the limit is the process's: raised for the duration of our calls only.
        with torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)):
            return compiled(*args, **kwargs)

    return call


def _compile_errors() -> tuple[type[BaseException], ...]:
    # Named only once an error is raised: importing torch._dynamo costs a second or two,
    # which every process that never compiles (the native kernels, --help) would pay.
    return (torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.InductorError, OSError)


class Compiled:
    """`fn` through torch.compile on first call; the caller's exact eager `fallback` if compiling fails.

    A failure is remembered (`failed`), warned about once, and later calls go straight
    to their fallback. Inside a region that is itself being compiled `fn` is called as
    is, so that the outer graph traces through it.
    """

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        self.fn = fn
        self.options = options
        self.failed: str | None = None
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any, fallback: Callable[[], Any], **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.fn(*args, **kwargs)
        if self.failed:
            return fallback()
        if self._compiled is None:
            self._compiled = _compile(self.fn, **self.options)
        try:
            return self._compiled(*args, **kwargs)
        except _compile_errors() as error:
            first_line = next(iter(str(error).splitlines()), "")
            self.failed = f"compiling {self.fn.__name__} failed: {type(error).__name__}: {first_line}"
            warnings.warn(f"dinat: {self.failed}; using the exact eager attention instead", stacklevel=2)
            return fallback()


# --- natten --------------------------------------------------------------------------


@functools.cache
def _natten_unavailable_reason() -> str | None:
    if importlib.util.find_spec("natten") is None:
        return "natten is not installed"
    from dinat_cli.ops import natten_backend

    return natten_backend.unavailable_reason()
