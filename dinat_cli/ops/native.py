"""CPU kernels in C++ (`csrc/`), compiled when the package is built, one library per instruction set.

- `na2d_native`: the `native` attention backend. It computes what the reference
  computes, query by query, without the K*K copies of keys an eager gather makes; in
  bfloat16, small dilation groups are packed once, and 16 queries whose windows are
  centred share the vector lanes.
- `gated_dwconv_gelu`: the feed-forward network's depth-wise convolution, GELU gate and
  product in one pass over the hidden map.
- `layer_norm`: layer norm over the channels of a channels-last map, writing the
  input's dtype (PyTorch's bfloat16 layer norm is about 2x slower).
- `channel_means`: the global mean of each channel (PyTorch's bfloat16 mean over the
  rows and columns of a channels-last map copies it to float32 first: 6x slower).
- `box_means`: TLC's local channel means, equal bit for bit to the PyTorch expression,
  in one pass that keeps only the integral-image rows a box starts on.

The variants (`cpu_variants.py`: x86-64 baseline, AVX2, AVX-512, AVX-512 with BF16) are
loaded with ctypes; the fastest one this CPU runs is taken, or the one that
`DINAT_CPU_KERNELS` (`auto`, a variant's name, `off`) or `use_variant` names. The
libraries bind to no Python or torch symbol, so one build serves any torch; kernels run
on `torch.get_num_threads()` threads with the GIL released.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.machinery
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dinat_cli.choices import CPU_KERNELS_ENV
from dinat_cli.ops.cpu_variants import CpuVariant, variants_for
from dinat_cli.ops.windows import axis_windows, group_order

ENV_VARIABLE = CPU_KERNELS_ENV
_NATIVE_DTYPES = (torch.float32, torch.bfloat16)
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_VARIANTS = {variant.name: variant for variant in variants_for()}
CHOICES = ("auto", "off", *_VARIANTS)  # what DINAT_CPU_KERNELS and use_variant take
_forced: str | None = None


@dataclass(frozen=True)
class KernelStatus:
    """Which kernel variant runs here and why: what `dinat doctor` reports."""

    variant: str  # the one in use; "none" when no variant can run
    requested: str  # "auto", "off" or a variant's name
    variants_built: tuple[str, ...]  # installed with the package, slowest first
    variants_runnable: tuple[str, ...]  # built and supported by this CPU
    reason: str | None  # why `variant` is "none", or None


def _library_path(variant: CpuVariant) -> Path | None:
    folder = Path(__file__).parent
    return next(
        (
            folder / f"{variant.module}{suffix}"
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if (folder / f"{variant.module}{suffix}").is_file()
        ),
        None,
    )


@functools.cache
def _built() -> dict[str, Path]:
    return {name: path for name, variant in _VARIANTS.items() if (path := _library_path(variant)) is not None}


@functools.cache
def _open(name: str) -> ctypes.CDLL:
    # torch is imported above, so the library's libgomp.so.1 resolves to the one torch loaded.
    library = ctypes.CDLL(str(_built()[name]))
    library.cpu_features.restype = ctypes.c_int
    library.cpu_features.argtypes = []
    library.na2d_forward.restype = ctypes.c_int
    library.na2d_forward.argtypes = [ctypes.c_int, *[_PTR] * 8, *[_I64] * 6, *[_PTR] * 7, ctypes.c_float, ctypes.c_int]
    library.box_means.restype = ctypes.c_int
    library.box_means.argtypes = [ctypes.c_int, *[_PTR] * 3, *[_I64] * 6, ctypes.c_int]
    library.gated_dwconv_gelu.restype = ctypes.c_int
    library.gated_dwconv_gelu.argtypes = [ctypes.c_int, _PTR, _I64, *[_PTR] * 2, *[_I64] * 6, _PTR, _PTR, ctypes.c_int]
    library.layer_norm.restype = ctypes.c_int
    library.layer_norm.argtypes = [ctypes.c_int, *[_PTR] * 3, *[_I64] * 4, _PTR, _PTR, ctypes.c_float, ctypes.c_int]
    library.channel_means.restype = ctypes.c_int
    library.channel_means.argtypes = [ctypes.c_int, *[_PTR] * 3, *[_I64] * 4, ctypes.c_int]
    return library


@functools.cache
def _cpu_probe() -> tuple[tuple[str, ...], str | None]:
    """The built variants this CPU supports, slowest first, and why there are none if the probe failed."""
    built = _built()
    if not built:
        return (), None
    if "baseline" not in built:
        return (), "the baseline variant, which detects the CPU's instruction sets, was not built"
    try:
        # Only the baseline library is safe to load on any CPU of the architecture: it asks cpuid.
        features = _open("baseline").cpu_features()
    except OSError as error:
        return (), f"the compiled kernels could not be loaded: {_one_line(error)}"
    return tuple(name for name in built if _VARIANTS[name].features & ~features == 0), None


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def runnable_variants() -> tuple[str, ...]:
    """The built variants this CPU supports, slowest first."""
    return _cpu_probe()[0]


def _requested() -> str:
    return _forced or os.environ.get(ENV_VARIABLE, "").strip().lower() or "auto"


@functools.cache
def _status(requested: str) -> KernelStatus:
    built = tuple(_built())
    runnable, probe_error = _cpu_probe()

    def status(variant: str, reason: str | None) -> KernelStatus:
        return KernelStatus(variant, requested, built, runnable, reason)

    if requested not in CHOICES:
        return status("none", f"{ENV_VARIABLE}={requested}: expected {', '.join(CHOICES)}")
    if requested == "off":
        return status("none", f"{ENV_VARIABLE}=off")
    if not built:
        return status("none", "the package was installed without its compiled kernels (no C++ compiler at build time)")
    if requested != "auto" and requested not in built:
        return status("none", f"the {requested} variant was not built (built: {', '.join(built)})")
    if not runnable:
        return status("none", probe_error or "no built variant runs on this CPU")
    if requested != "auto" and requested not in runnable:
        return status("none", f"this CPU cannot run the {requested} variant (runnable: {', '.join(runnable)})")
    variant = runnable[-1] if requested == "auto" else requested
    try:
        _open(variant)
    except OSError as error:
        return status("none", f"the {variant} kernels could not be loaded: {_one_line(error)}")
    return status(variant, None)


def kernel_status() -> KernelStatus:
    """The variant in use for the current request (environment or `use_variant`), and why."""
    return _status(_requested())


@contextlib.contextmanager
def use_variant(name: str) -> Iterator[None]:
    """Run the kernels of variant `name` (one of CHOICES) inside the `with` block; ValueError for other names.

    The choice is the process's, not the thread's (kernels called from other threads
    meanwhile use it too); child processes follow DINAT_CPU_KERNELS instead.
    """
    global _forced
    name = name.strip().lower()
    if name not in CHOICES:
        raise ValueError(f"unknown kernel variant {name!r}: expected {', '.join(CHOICES)}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def unavailable_reason() -> str | None:
    """Why the native kernels cannot run here, or None."""
    return kernel_status().reason


def usable_for(tensor: torch.Tensor) -> bool:
    """Whether the native kernels can take `tensor` (a CPU tensor, the library built)."""
    return tensor.device.type == "cpu" and unavailable_reason() is None


def _library() -> ctypes.CDLL:
    status = kernel_status()
    if status.reason is not None:
        raise RuntimeError(status.reason)
    return _open(status.variant)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' dtype for `dtype`: itself if float32 or bfloat16, else float32 (a copy)."""
    return dtype if dtype in _NATIVE_DTYPES else torch.float32


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` in the kernels' dtype with unit channel stride, copied only where it is not."""
    x = x.to(_compute_dtype(x.dtype))
    return x if x.stride(1) == 1 else x.contiguous(memory_format=torch.channels_last)


def gated_dwconv_gelu(
    blocks: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, first: int, rows: int
) -> torch.Tensor:
    """`gelu(dw(gates)) * dw(values)` for `rows` rows of a channels-last `(B, 2C, R, W)` map.

    The map is given as `blocks`, consecutive bands of its rows (the kernel reads them
    where they lie, without concatenating). Output row i is centred on input row
    `first + i`; rows beyond the input are zeros, as the convolution's padding is at the
    image's top and bottom. `weight` is the depth-wise `(2C, 1, 3, 3)`, `bias` `(2C,)` or
    None. Returns `(B, C, rows, W)` channels-last.
    """
    dtype = blocks[0].dtype
    blocks = [_channels_last(block) for block in blocks]
    batch, channels, _, width = blocks[0].shape
    # The kernel walks every block's columns with the first block's column stride.
    layouts = {(block.shape[:2], block.shape[3], block.stride(3), block.dtype) for block in blocks}
    if len(layouts) > 1:
        raise ValueError("the blocks of rows must share batch, channels, width, column stride and dtype")
    rows_in = sum(block.shape[2] for block in blocks)
    element = blocks[0].element_size()
    row_starts = (_PTR * (batch * rows_in))(
        *(
            block.data_ptr() + (b * block.stride(0) + r * block.stride(2)) * element
            for b in range(batch)
            for block in blocks
            for r in range(block.shape[2])
        )
    )
    out = torch.empty(batch, channels // 2, rows, width, dtype=blocks[0].dtype, memory_format=torch.channels_last)
    taps = weight.detach().float().reshape(channels, 9).t().contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
    _library().gated_dwconv_gelu(
        int(blocks[0].dtype == torch.bfloat16),
        row_starts,
        blocks[0].stride(3),
        out.data_ptr(),
        (_I64 * 3)(out.stride(0), out.stride(2), out.stride(3)),
        batch,
        rows,
        rows_in,
        first,
        width,
        channels // 2,
        taps.data_ptr(),
        None if bias is None else bias.data_ptr(),
        torch.get_num_threads(),
    )
    return out.to(dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Layer norm of a `(B, H, W, C)` map over C, in its dtype; without `bias`, Restormer's bias-free norm.

    The bias-free norm scales by the variance around the mean but does not subtract it.
    """
    dtype = x.dtype
    x = x.to(_compute_dtype(dtype))
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, height, width, channels = x.shape
    out = torch.empty(batch, height, width, channels, dtype=x.dtype)
    weight = weight.detach().float().contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
    _library().layer_norm(
        int(x.dtype == torch.bfloat16),
        x.data_ptr(),
        out.data_ptr(),
        (_I64 * 3)(x.stride(0), x.stride(1), x.stride(2)),
        batch,
        height,
        width,
        channels,
        weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        eps,
        torch.get_num_threads(),
    )
    return out.to(dtype)


@functools.cache
def supported_dims() -> tuple[int, ...]:
    """Head dimensions the kernel has a variant for; others are zero-padded to the next one."""
    dims = (_I64 * 32)()
    return tuple(dims[: _library().na2d_dims(dims, 32)])


def _strides(tensor: torch.Tensor) -> ctypes.Array:
    return (_I64 * 4)(*tensor.stride()[:4])


def na2d_native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
    scale: float,
) -> torch.Tensor | None:
    """`(B, heads, H, W, D)` attention outputs, or None where the kernel has no variant (D or K too large).

    Inputs are validated by the caller. The output is laid out `(B, H, W, heads, D)` in
    memory, which is what the attention layer's output projection reads.
    """
    dim = q.shape[-1]
    padded_dim = next((size for size in supported_dims() if size >= dim), None)
    if padded_dim is None:
        return None
    dtype = q.dtype
    compute = _compute_dtype(dtype)
    # Zero channels add nothing to the dot products and produce outputs that are cut off.
    q, k, v = (F.pad(t.to(compute), (0, padded_dim - dim)) if padded_dim != dim else t.to(compute) for t in (q, k, v))
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    batch, heads, height, width, _ = q.shape
    out = torch.empty(batch, height, width, heads, padded_dim, dtype=compute).permute(0, 3, 1, 2, 4)
    key_rows, bias_rows = axis_windows(height, kernel_size, dilation)
    key_cols, bias_cols = axis_windows(width, kernel_size, dilation)
    rows, cols = group_order(height, dilation), group_order(width, dilation)
    bias = None if rpb is None else rpb.detach().float().contiguous()
    status = _library().na2d_forward(
        int(compute == torch.bfloat16),
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        _strides(q),
        _strides(k),
        _strides(v),
        _strides(out),
        batch,
        heads,
        height,
        width,
        padded_dim,
        kernel_size,
        key_rows.data_ptr(),
        key_cols.data_ptr(),
        bias_rows.data_ptr(),
        bias_cols.data_ptr(),
        rows.data_ptr(),
        cols.data_ptr(),
        None if bias is None else bias.data_ptr(),
        scale,
        torch.get_num_threads(),
    )
    if status != 0:
        return None
    out = out[..., :dim] if padded_dim != dim else out
    return out.to(dtype)


def channel_means(x: torch.Tensor) -> torch.Tensor:
    """Float32 mean of each channel of a `(B, C, H, W)` map, `(B, C, 1, 1)`: summed in double, rounded once."""
    x = _channels_last(x)
    batch, channels, height, width = x.shape
    out = torch.empty(batch, channels, 1, 1, dtype=torch.float32)
    _library().channel_means(
        int(x.dtype == torch.bfloat16),
        x.data_ptr(),
        out.data_ptr(),
        (_I64 * 3)(x.stride(0), x.stride(2), x.stride(3)),
        batch,
        height,
        width,
        channels,
        torch.get_num_threads(),
    )
    return out


def box_means(x: torch.Tensor, box_h: int, box_w: int) -> torch.Tensor:
    """Float32 means of every `box_h x box_w` box of a `(B, C, H, W)` map: `(B, C, H-box_h+1, W-box_w+1)`.

    Equal, value for value, to `means.box_means_reference`; channels-last output.
    """
    x = _channels_last(x)
    batch, channels, height, width = x.shape
    out = torch.empty(
        batch, channels, height - box_h + 1, width - box_w + 1, dtype=torch.float32, memory_format=torch.channels_last
    )
    _library().box_means(
        int(x.dtype == torch.bfloat16),
        x.data_ptr(),
        out.data_ptr(),
        (_I64 * 3)(x.stride(0), x.stride(2), x.stride(3)),
        batch,
        channels,
        height,
        width,
        box_h,
        box_w,
        torch.get_num_threads(),
    )
    return out
