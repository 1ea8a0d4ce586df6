"""CPU kernels in C++ (`cpu_kernels.cpp`), built for this CPU on first use.

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

The library is built with the system C++ compiler (`$CXX`, else `c++`), loaded with
ctypes and kept in the user cache (`kernels/`) under a name hashed from the source, the
compiler, the flags and the CPU, so a machine pays the build (about 10 s) once. Kernels
run on `torch.get_num_threads()` threads with the GIL released.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from dinat_cli.ops.windows import axis_windows, group_order

_SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp")
_NATIVE_DTYPES = (torch.float32, torch.bfloat16)
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _cpu_identity() -> str:
    # A cache folder shared by machines of different CPUs must not hand one the other's build.
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    from dinat_cli.registry import cache_dir

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        "\0".join([_SOURCE.read_text(), compiler, version, *_FLAGS, _cpu_identity()]).encode()
    ).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    library = folder / f"cpu_kernels-{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: processes building at once never load half a file.
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", partial], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            first_error = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            raise OSError(f"{compiler} failed: {first_error[:300]}")
        os.replace(partial, library)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return library


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    compiler = _compiler()
    if compiler is None:
        return None, "no C++ compiler found (set CXX)"
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except OSError as error:
        return None, f"the native kernel could not be built: {error}"
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
    return library, None


def unavailable_reason() -> str | None:
    """Why the native kernels cannot run here (building them on first use), or None."""
    return _load()[1]


def usable_for(tensor: torch.Tensor) -> bool:
    """Whether the native kernels can take `tensor` (a CPU tensor, the library built)."""
    return tensor.device.type == "cpu" and unavailable_reason() is None


def _library() -> ctypes.CDLL:
    library, reason = _load()
    if library is None:
        raise RuntimeError(reason)
    return library


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
    library, _ = _load()
    if library is None:
        return ()
    dims = (_I64 * 32)()
    return tuple(dims[: library.na2d_dims(dims, 32)])


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

    Equal, value for value, to `pooling.box_means_reference`; channels-last output.
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
