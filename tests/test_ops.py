"""The attention operator against natten 0.14.6 outputs (tests/data/reference/na2d_ops.npz)."""

from __future__ import annotations

import pytest
import torch

from dinat_cli.ops import na2d
from dinat_cli.ops.windows import axis_windows

CASES = [f"case{i}" for i in range(8)]


@pytest.mark.parametrize("case", CASES)
def test_matches_natten_float32(na2d_case, cpu_kernels: str, case: str) -> None:
    c = na2d_case(case)
    backend = "torch" if cpu_kernels == "off" else "native"
    out = na2d(c["q"], c["k"], c["v"], c["kernel_size"], c["dilation"], rpb=c["rpb"], scale=c["scale"], backend=backend)
    assert out.dtype == torch.float32
    assert (out - c["out"]).abs().max().item() <= 1e-5


# Outputs reach |3|: that is about 3 units in the last place of each format there.
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 6e-3), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("case", ["case0", "case3", "case5"])
def test_half_precision_close_to_natten(
    na2d_case, cpu_kernels: str, case: str, dtype: torch.dtype, tolerance: float
) -> None:
    c = na2d_case(case)
    q, k, v, rpb = (c[name].to(dtype) for name in ("q", "k", "v", "rpb"))
    backend = "torch" if cpu_kernels == "off" else "native"
    out = na2d(q, k, v, c["kernel_size"], c["dilation"], rpb=rpb, scale=c["scale"], backend=backend)
    assert out.dtype == dtype
    assert (out.float() - c["out"]).abs().max().item() <= tolerance


def test_default_scale_and_no_bias_is_plain_softmax_attention() -> None:
    # With the window covering the whole (7x7) map, every query sees every key.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 7, 8) for _ in range(3))
    out = na2d(q, k, v, kernel_size=7)
    flat = lambda t: t.flatten(2, 3)  # noqa: E731
    expected = torch.softmax(flat(q) @ flat(k).transpose(-1, -2) * 8**-0.5, dim=-1) @ flat(v)
    assert torch.allclose(out.flatten(2, 3), expected, atol=1e-6)


def test_window_semantics_on_one_axis() -> None:
    # Length 10, dilation 3: groups {0,3,6,9}, {1,4,7}, {2,5,8}; kernel 3.
    keys, bias = axis_windows(10, kernel_size=3, dilation=3)
    assert keys[0].tolist() == [0, 3, 6]  # shifted inwards at the start
    assert keys[9].tolist() == [3, 6, 9]  # and at the end
    assert keys[4].tolist() == [1, 4, 7]  # a short group holds exactly K keys
    assert keys[6].tolist() == [3, 6, 9]
    assert bias[6].tolist() == [1, 2, 3]  # offsets -1, 0, +1 shifted by K-1
    assert bias[0].tolist() == [2, 3, 4]  # offsets 0, +1, +2
    assert bias[9].tolist() == [0, 1, 2]


@pytest.mark.parametrize("height, width", [(20, 21), (21, 20)])
def test_too_small_input_is_a_clear_value_error(height: int, width: int) -> None:
    q = torch.zeros(1, 1, height, width, 4)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        na2d(q, q, q, kernel_size=7, dilation=3)


def test_bias_shape_is_checked() -> None:
    q = torch.zeros(1, 2, 8, 8, 4)
    with pytest.raises(ValueError, match="rpb"):
        na2d(q, q, q, kernel_size=7, rpb=torch.zeros(1, 13, 13))


def test_banding_does_not_change_results(monkeypatch) -> None:
    import dinat_cli.ops.neighborhood as neighborhood

    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 33, 8) for _ in range(3))
    rpb = torch.randn(2, 13, 13)
    whole = na2d(q, k, v, 7, 4, rpb=rpb)
    monkeypatch.setattr(neighborhood, "_BAND_ELEMENTS", 1)  # one query row per band
    assert torch.equal(na2d(q, k, v, 7, 4, rpb=rpb), whole)


@pytest.mark.parametrize("dim, dilation", [(48, 1), (48, 5), (16, 2)])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.bfloat16, 5e-2)])
def test_wide_maps_attended_in_column_strips_match_the_reference(
    cpu_variant: str, dim: int, dilation: int, dtype: torch.dtype, tolerance: float
) -> None:
    # Wider than the kernel's column strips (146 float32 and 292 bfloat16 columns at head size 48).
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 1000, dim) for _ in range(3))
    rpb = torch.randn(2, 13, 13) * 0.1
    reference = na2d(q, k, v, 7, dilation, rpb=rpb, backend="torch")
    q, k, v, rpb = (t.to(dtype) for t in (q, k, v, rpb))
    out = na2d(q, k, v, 7, dilation, rpb=rpb, backend="native")
    assert (out.float() - reference).abs().max().item() <= tolerance
