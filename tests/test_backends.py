"""Attention backends against natten's outputs, backend selection, compile fallback, dinat bench."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dinat_cli import ops
from dinat_cli.cli.app import app
from dinat_cli.errors import UsageError
from dinat_cli.model import RestoreDiNAT
from dinat_cli.ops import backends, flex, native, neighborhood
from dinat_cli.ops.fused import na2d_fused
from dinat_cli.ops.windows import axis_windows

CASES = [f"case{i}" for i in range(8)]
# Every backend usable on this machine; the others are skipped with the reason.
CONCRETE = [name for name in ops.BACKENDS if name != "auto"]


def _skip_unavailable(name: str) -> None:
    reason = backends.unavailable_reason(name, "cpu")
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


@pytest.mark.parametrize("backend", CONCRETE)
@pytest.mark.parametrize("case", CASES)
def test_backend_matches_natten_float32(na2d_case, backend: str, case: str) -> None:
    _skip_unavailable(backend)
    c = na2d_case(case)
    with ops.use_backend(backend):
        out = ops.na2d(c["q"], c["k"], c["v"], c["kernel_size"], c["dilation"], rpb=c["rpb"], scale=c["scale"])
    assert (out - c["out"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", ["case0", "case1", "case4", "case6"])
def test_flex_masks_and_bias_match_natten(na2d_case, monkeypatch, case: str) -> None:
    # flex runs compiled on CUDA only; its mask and score modification are checked
    # here through flex_attention's eager (dense) implementation, on small maps.
    monkeypatch.setattr(flex, "_compiled_flex", lambda *args, fallback, **kwargs: flex._flex_attention(*args, **kwargs))
    c = na2d_case(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile"
        out = flex.na2d_flex(c["q"], c["k"], c["v"], c["kernel_size"], c["dilation"], c["rpb"], c["scale"])
    assert (out - c["out"]).abs().max().item() <= 1e-5


def _psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    peak = reference.abs().max().item()
    return 10 * math.log10(peak**2 / (output.float() - reference).pow(2).mean().item())


# Half precision is checked as the engine runs it: autocast, so that layer norms and
# softmax stay in float32. On the reference network (random, deliberately hard weights)
# bfloat16 measured 77 dB and float16 95 dB against the official float32 outputs (torch,
# native and compiled alike); pure bfloat16, layer norms and softmax included, measured 58 dB.
@pytest.mark.parametrize("dtype, min_psnr", [(torch.bfloat16, 70.0), (torch.float16, 88.0)])
@pytest.mark.parametrize("backend", ["torch", "native", "compiled"])
def test_half_precision_network_psnr(load_reference, backend: str, dtype: torch.dtype, min_psnr: float) -> None:
    _skip_unavailable(backend)
    data = load_reference("model_std_tlc.npz")
    model = RestoreDiNAT(**json.loads(str(data["config"])), kernels=ops.resolve_kernels(backend, "cpu")).eval()
    model.load_state_dict(data.state_dict("param/"), strict=True)
    x, expected = data.tensor("x1"), data.tensor("y1")  # the small input: float16 is slow on CPU
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
        assert _psnr(model(x), expected) >= min_psnr


def test_auto_falls_back_to_eager_without_a_compiler(monkeypatch) -> None:
    monkeypatch.setattr(backends, "compiler_unavailable_reason", lambda device_type: "no C++ compiler (test)")
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C++ compiler (test)")
    assert ops.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(UsageError, match="no C\\+\\+ compiler"):
        ops.resolve_backend("compiled", "cpu")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 13, 8) for _ in range(3))
    assert torch.equal(ops.na2d(q, k, v, 7, 1), neighborhood.na2d(q, k, v, 7, 1))


def test_native_reads_the_models_strided_views_and_writes_the_projections_layout(cpu_variant: str) -> None:
    torch.manual_seed(1)
    qkv = torch.randn(2, 30, 33, 3, 3, 48)  # (B, H, W, q/k/v, heads, D), as the attention layer makes it
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
    rpb = torch.randn(3, 13, 13)
    out = ops.na2d(q, k, v, 7, 4, rpb=rpb, backend="native")
    expected = neighborhood.na2d(q.contiguous(), k.contiguous(), v.contiguous(), 7, 4, rpb=rpb)
    assert (out - expected).abs().max().item() <= 1e-5
    assert out.permute(0, 2, 3, 1, 4).is_contiguous()


@pytest.mark.parametrize(
    "heads, dim, kernel_size, dilation",
    [(1, 96, 7, 1), (2, 20, 5, 2), (1, 400, 3, 1), (1, 16, 17, 1)],  # 20: padded; 400, K 17: beyond the variants
)
def test_native_matches_the_reference_for_any_head_size_and_window(
    cpu_variant: str, heads, dim, kernel_size, dilation
) -> None:
    torch.manual_seed(2)
    size = kernel_size * dilation + 3
    q, k, v = (torch.randn(1, heads, size, size + 2, dim) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1)
    out = ops.na2d(q, k, v, kernel_size, dilation, rpb=rpb, backend="native")
    expected = neighborhood.na2d(q, k, v, kernel_size, dilation, rpb=rpb)
    assert (out - expected).abs().max().item() <= 1e-5


# 16 and 48: an odd number of 16-lane vectors, whose last 16 channels take the tail paths
# of the pairwise bfloat16 dot products and value sums. 20x21 at dilation 2: groups of
# 10x11 keys, attended query by query; 21x21 at 3, 40x36 at 5 and 15x16 at 3 with a 5x5
# window: groups of at most 64 keys, packed once per group. 24x53 at dilation 1: tiles of
# 16 queries in lanes at columns 3, 19 and 34 (overlapping the one before), columns 0-2
# and 50-52 query by query; 16x45 at 2: groups of 23 and 22 columns, whose centred runs
# of 17 and exactly 16 queries are tiles.
@pytest.mark.parametrize("dim", [16, 32, 48, 96])
@pytest.mark.parametrize(
    "height, width, kernel_size, dilation",
    [(20, 21, 7, 2), (21, 21, 7, 3), (40, 36, 7, 5), (15, 16, 5, 3), (24, 53, 7, 1), (16, 45, 7, 2)],
)
def test_native_bfloat16_is_as_accurate_as_torch(
    cpu_variant: str, dim: int, height: int, width: int, kernel_size: int, dilation: int
) -> None:
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, height, width, dim) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel_size - 1, 2 * kernel_size - 1)
    exact = neighborhood.na2d(q, k, v, kernel_size, dilation, rpb=rpb)
    half = ops.na2d(*(t.bfloat16() for t in (q, k, v)), kernel_size, dilation, rpb=rpb, backend="native")
    assert half.dtype == torch.bfloat16
    # bfloat16 inputs (8 bits of mantissa) against float32 ones: the outputs' rounding and the inputs'.
    assert (half.float() - exact).abs().max().item() <= 0.05
    # The probabilities are rounded to bfloat16 for the value sums, as PyTorch's bfloat16
    # computation of the reference rounds them: no less accurate than that on average.
    pytorch = neighborhood.na2d(*(t.bfloat16() for t in (q, k, v)), kernel_size, dilation, rpb=rpb)
    error, pytorch_error = ((y.float() - exact).abs() for y in (half, pytorch))
    assert error.pow(2).mean() <= pytorch_error.pow(2).mean()


# Tiles in lanes with batch and heads above 1 on the model's interleaved q/k/v layout:
# 71 columns put a run's overlapping last tile alone in a chunk (two threads store it), 96
# make a chunk exactly 32 positions wide, 100 at dilation 2 runs two groups per chunk.
@pytest.mark.parametrize("height, width, dilation", [(9, 71, 1), (8, 96, 1), (15, 100, 2)])
def test_native_bfloat16_tiles_on_the_models_layout(cpu_variant: str, height: int, width: int, dilation: int) -> None:
    torch.manual_seed(4)
    qkv = torch.randn(2, height, width, 3, 3, 48)
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
    rpb = torch.randn(3, 13, 13)
    exact = neighborhood.na2d(q, k, v, 7, dilation, rpb=rpb)
    half_q, half_k, half_v = qkv.bfloat16().permute(3, 0, 4, 1, 2, 5).unbind(0)
    half = ops.na2d(half_q, half_k, half_v, 7, dilation, rpb=rpb, backend="native")
    pytorch = neighborhood.na2d(half_q, half_k, half_v, 7, dilation, rpb=rpb)
    assert (half.float() - exact).abs().max().item() <= 0.05
    error, pytorch_error = ((y.float() - exact).abs() for y in (half, pytorch))
    assert error.pow(2).mean() <= pytorch_error.pow(2).mean()


# A value that is not finite reaches exactly the queries whose windows hold it. Two bugs
# once spread it: the odd last window column was paired with the value beside the window
# (weight 0, but 0 * inf is NaN), and with the element after a chunk's packed row, left
# from the thread's previous chunk.
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("height, width, row, col", [(9, 53, 4, 30), (8, 96, 7, 32)])
def test_native_bfloat16_non_finite_values_stay_in_their_windows(
    cpu_variant: str, threads: int, height: int, width: int, row: int, col: int
) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, height, width, 32).bfloat16() for _ in range(3))
    v[0, 0, row, col, 5] = float("inf")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = ops.na2d(q, k, v, 7, 1, backend="native")
    finally:
        torch.set_num_threads(previous)
    reference = neighborhood.na2d(q.float(), k.float(), v.float(), 7, 1)
    assert torch.equal(torch.isfinite(out.float()), torch.isfinite(reference))


def test_kernels_off_is_one_reason_and_auto_moves_on() -> None:
    with native.use_variant("off"):
        assert native.unavailable_reason() == "DINAT_CPU_KERNELS=off"
        assert ops.resolve_backend("auto", "cpu") != "native"
        with pytest.raises(UsageError, match="--attention native is not available: DINAT_CPU_KERNELS=off"):
            ops.resolve_backend("native", "cpu")


@pytest.mark.parametrize(
    "requested, built, runnable, variant, reason",
    [
        ("auto", ("baseline", "avx2", "avx512"), ("baseline", "avx2"), "avx2", None),
        ("baseline", ("baseline", "avx2"), ("baseline", "avx2"), "baseline", None),
        ("avx512bf16", ("baseline", "avx512bf16"), ("baseline",), "none", "this CPU cannot run the avx512bf16 variant"),
        ("avx512", ("baseline",), ("baseline",), "none", "the avx512 variant was not built (built: baseline)"),
        ("auto", (), (), "none", "installed without its compiled kernels"),
        ("fastest", ("baseline",), ("baseline",), "none", "DINAT_CPU_KERNELS=fastest: expected auto, off, baseline"),
    ],
)
def test_variant_choice(monkeypatch, requested, built, runnable, variant, reason) -> None:
    # A variant the CPU cannot run is never loaded (it would die of an illegal instruction).
    opened = []
    monkeypatch.setattr(native, "_built", lambda: {name: None for name in built})
    monkeypatch.setattr(native, "_cpu_probe", lambda: (runnable, None))
    monkeypatch.setattr(native, "_open", opened.append)
    status = native._status.__wrapped__(requested)
    assert status.variant == variant
    assert (status.reason is None) if reason is None else (reason in status.reason and "\n" not in status.reason)
    assert status.variants_built == built and status.variants_runnable == runnable
    assert opened == ([] if variant == "none" else [variant])


@pytest.mark.parametrize("broken", ["baseline", "avx2"])
def test_a_library_that_cannot_be_loaded_is_a_reason_not_a_crash(monkeypatch, broken) -> None:
    # A corrupt file, or a system without the libgomp/libstdc++ it links to.
    def load(name: str) -> object:
        if name == broken:
            raise OSError(f"libgomp.so.1: cannot open shared object file\n(loading {name})")
        return types.SimpleNamespace(cpu_features=lambda: 1)

    monkeypatch.setattr(native, "_built", lambda: {"baseline": None, "avx2": None})
    monkeypatch.setattr(native, "_open", load)
    monkeypatch.setattr(native, "_cpu_probe", native._cpu_probe.__wrapped__)
    status = native._status.__wrapped__("auto")
    assert status.variant == "none"
    assert "could not be loaded: libgomp.so.1: cannot open shared object file" in status.reason
    assert "\n" not in status.reason


def test_use_variant_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown kernel variant 'avx3'"), native.use_variant("AVX3"):
        pass


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads /proc/cpuinfo")
def test_runnable_variants_agree_with_the_cpu_flags() -> None:
    # A CPU probe that under-reported would skip the fast variants' tests without a word.
    if "baseline" not in native.kernel_status().variants_built:
        pytest.skip(native.kernel_status().reason)
    flags = set(
        next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    )
    if not {"avx2", "fma"} <= flags:
        pytest.skip("not an x86 CPU with AVX2")
    expected = {"baseline", "avx2"}
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        expected |= {"avx512", *({"avx512bf16"} if "avx512_bf16" in flags else ())}
    assert set(native.runnable_variants()) == expected & set(native.kernel_status().variants_built)


def test_environment_selects_the_variant(monkeypatch) -> None:
    runnable = native.runnable_variants()
    if not runnable:
        pytest.skip(native.kernel_status().reason)
    monkeypatch.setenv("DINAT_CPU_KERNELS", runnable[0])
    assert native.kernel_status().variant == runnable[0]
    monkeypatch.setenv("DINAT_CPU_KERNELS", "auto")
    assert native.kernel_status().variant == runnable[-1]


def test_failed_compile_warns_once_and_runs_the_exact_fallback(monkeypatch) -> None:
    calls = []

    def broken_compile(fn, **options):
        def run(*args):
            calls.append(args)
            raise torch._inductor.exc.InductorError(RuntimeError("g++: not found"), "")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled = backends.Compiled(na2d_fused, dynamic=True)
    with pytest.warns(UserWarning, match="exact eager attention"):
        assert compiled(1, fallback=lambda: "eager") == "eager"
    assert compiled.failed
    assert compiled(2, fallback=lambda: "eager again") == "eager again"
    assert len(calls) == 1  # no second attempt at compiling


def test_one_compiled_graph_serves_odd_sizes() -> None:
    # The engine feeds every padded size of a folder of photos: sizes are symbolic from
    # the first compile, so new sizes reuse the graph (counted with a no-op backend).
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    # A function of its own: dynamo's cache is per code object, and na2d_fused's may
    # already hold the default backend's graphs.
    compiled = backends.Compiled(lambda *args: na2d_fused(*args), dynamic=True, backend=counter)
    torch.manual_seed(0)
    for height, width in [(24, 32), (40, 24), (56, 48)]:
        q, k, v = (torch.randn(1, 2, height, width, 8) for _ in range(3))
        rpb = torch.randn(2, 13, 13)
        key_rows, bias_rows = axis_windows(height, 7, 3)
        key_cols, bias_cols = axis_windows(width, 7, 3)
        out = compiled(q, k, v, key_rows, key_cols, bias_rows, bias_cols, rpb, 8**-0.5, fallback=lambda: None)
        assert (out - neighborhood.na2d(q, k, v, 7, 3, rpb=rpb)).abs().max().item() <= 1e-5
    assert counter.frame_count == 1


def test_auto_prefers_native_then_compiled_then_torch_on_cpu(monkeypatch) -> None:
    _skip_unavailable("native")
    assert ops.resolve_backend("auto", "cpu") == "native"
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C++ compiler (test)")
    expected = "compiled" if backends.unavailable_reason("compiled", "cpu") is None else "torch"
    assert ops.resolve_backend("auto", "cpu") == expected


def test_selection_globally_per_call_and_per_model() -> None:
    assert ops.current_backend() == "auto"
    with ops.use_backend("torch"):
        assert ops.current_backend() == "torch"
        assert ops.resolve_backend(None, "cpu") == "torch"
    assert ops.current_backend() == "auto"
    assert ops.resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(UsageError, match="expected one of"):
        ops.use_backend("fastest").__enter__()
    model = RestoreDiNAT(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, kernels=ops.EAGER)
    assert {m.kernels for m in model.modules() if hasattr(m, "kernels")} == {ops.EAGER}
    model.set_kernels(None)
    assert {m.kernels for m in model.modules() if hasattr(m, "kernels")} == {None}


def test_resolve_kernels_per_attention_value_on_cpu(monkeypatch) -> None:
    assert ops.resolve_kernels("torch", "cpu") == ops.EAGER == ops.Kernels("torch", "torch")
    for spec in ("flex", "natten"):
        reason = backends.unavailable_reason(spec, "cpu")
        if reason is not None:
            with pytest.raises(UsageError, match=f"--attention {spec} is not available"):
                ops.resolve_kernels(spec, "cpu")
    with pytest.raises(UsageError, match="expected one of"):
        ops.resolve_kernels("fastest", "cpu")
    status = native.kernel_status()
    if status.reason is None:
        native_kernels = ops.Kernels("native", "native", status.variant)
        assert ops.resolve_kernels("auto", "cpu") == ops.resolve_kernels("native", "cpu") == native_kernels
        if backends.unavailable_reason("compiled", "cpu") is None:
            assert ops.resolve_kernels("compiled", "cpu") == ops.Kernels("compiled", "native", status.variant)
    # Off the CPU (decided from the device type: no GPU needed) the native kernels never run.
    assert ops.resolve_kernels("auto", "cuda") == ops.Kernels(ops.resolve_backend("auto", "cuda"), "torch")
    with pytest.raises(UsageError, match="--attention native is not available: the native kernel runs on CPU only"):
        ops.resolve_kernels("native", "cuda")
    # Without the native kernels: the next attention backend, and PyTorch for the rest.
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C++ compiler (test)")
    with pytest.raises(UsageError, match="--attention native is not available: no C.. compiler"):
        ops.resolve_kernels("native", "cpu")
    assert ops.resolve_kernels("auto", "cpu") == ops.Kernels(ops.resolve_backend("auto", "cpu"), "torch")
    assert ops.resolve_kernels("auto", "cpu").attention != "native"


def test_kernels_describe_themselves_in_one_line() -> None:
    assert ops.EAGER.describe() == "attention torch, norm/gate/pooling torch"
    native_kernels = ops.Kernels("native", "native", "avx512bf16")
    assert native_kernels.describe() == "attention native (avx512bf16), norm/gate/pooling native"
    assert ops.Kernels("compiled", "native", "avx2").describe() == "attention compiled, norm/gate/pooling native (avx2)"
    assert ops.Kernels("natten", "torch").describe() == "attention natten, norm/gate/pooling torch"
    with pytest.raises(ValueError, match="concrete backend"):
        ops.Kernels("auto", "native")
    with pytest.raises(ValueError, match="native or torch"):
        ops.Kernels("torch", "compiled")


@pytest.mark.parametrize("torch_compile_takes_a_limit", [True, False])
def test_compiling_leaves_the_process_settings_alone(monkeypatch, torch_compile_takes_a_limit: bool) -> None:
    # A library call sets no TORCHINDUCTOR_* variable and no dynamo setting of the process,
    # yet the attention may compile more graphs than dynamo's default limit (8).
    from torch._dynamo.testing import CompileCounter

    if not torch_compile_takes_a_limit:  # torch before 2.12
        real_compile = torch.compile
        monkeypatch.setattr(torch, "compile", lambda fn, **options: real_compile(fn, **options))
    counter = CompileCounter()
    environment, limit = dict(os.environ), torch._dynamo.config.recompile_limit
    # A function of its own: dynamo's cache is per code object. Not dynamic: a graph per size.
    compiled = backends.Compiled(lambda x: x * 2, dynamic=False, backend=counter)
    for size in range(1, 13):
        assert torch.equal(compiled(torch.ones(size), fallback=lambda: None), torch.full((size,), 2.0))
    assert counter.frame_count == 12
    assert dict(os.environ) == environment
    assert torch._dynamo.config.recompile_limit == limit == 8


def test_bench_command_reports_json() -> None:
    # Any input is padded to the 252-px attention span at level 1: one small size is enough.
    result = CliRunner().invoke(
        app,
        ["bench", "--size", "72x64", "--dim", "8", "--repeat", "1", "--attention", "torch", "--batch", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(row["size"], row["batch"]) for row in rows] == [("72x64", 2)]
    assert all(row["attention"] == "torch" and row["ms"] > 0 and row["precision"] == "fp32" for row in rows)
    assert all(row["kernels"] == "attention torch, norm/gate/pooling torch" for row in rows)


def test_bench_table_fits_80_columns_and_cuts_nothing() -> None:
    # Cron mail and pipes get 80 columns.
    arguments = ["bench", "--size", "72x64", "--dim", "8", "--repeat", "1", "--attention", "torch"]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in result.output
    assert "on cpu, attention torch, norm/gate/pooling torch," in " ".join(result.output.split())
    [row] = [line.split("│")[1:-1] for line in lines if "72x64" in line]
    assert [cell.strip() for cell in row[:3]] == ["72x64", "fp32", "whole"]


def test_bench_rejects_a_bad_size() -> None:
    result = CliRunner().invoke(app, ["bench", "--size", "big", "--dim", "8"])
    assert result.exit_code != 0


def test_dynamo_is_imported_only_when_something_compiles(tmp_path) -> None:
    # Importing torch._dynamo takes a second or two: the CLI and the native kernels must not pay it.
    code = (
        "import sys, torch, dinat_cli.cli\n"
        "from dinat_cli import ops\n"
        "q = torch.randn(1, 1, 16, 16, 16)\n"
        "ops.na2d(q, q, q, 7, 2, backend='torch')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.strip() == "False"
