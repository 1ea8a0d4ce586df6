"""The benchmark scripts: against an "official" model given as a file; the prepared device check on a CPU."""

from __future__ import annotations

import json
import math
import runpy
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_network.py"
GPU_CHECK = BENCH.parent / "gpu_check.py"


@pytest.fixture
def official(tmp_path) -> Path:
    """A stand-in for the authors' code: a small network of the same architecture, seeded
    differently from ours, so that equal outputs mean its weights were loaded into ours."""
    official = tmp_path / "official.py"
    official.write_text(
        textwrap.dedent(
            """
            import torch
            from dinat_cli.model import RestoreDiNAT

            def build_official_model():
                torch.manual_seed(7)
                return RestoreDiNAT(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, chan_adapt=True, tlc=True)
            """
        )
    )
    return official


def test_official_model_is_the_first_configuration_and_shares_its_weights(official, monkeypatch, capsys) -> None:
    argv = ["bench_network.py", "--official", str(official), "--configs", "fp32-torch", "--size", "48", "--rounds", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCH), run_name="__main__")
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["official", "fp32-torch"]
    assert "1.00x" in rows["official"] and "max|diff| 0.0e+00" in rows["official"]
    difference = float(rows["fp32-torch"].split("max|diff| ")[1].split(",")[0])
    assert difference <= 1e-5


@pytest.mark.parametrize("name", ["missing.py", "notes.txt"])
def test_official_file_that_is_not_a_module_is_one_clear_error(tmp_path, monkeypatch, name) -> None:
    (tmp_path / "notes.txt").write_text("not python")
    monkeypatch.setattr(sys, "argv", ["bench_network.py", "--official", str(tmp_path / name)])
    with pytest.raises(SystemExit, match="not a Python file"):
        runpy.run_path(str(BENCH), run_name="__main__")


def test_configurations_can_force_a_kernel_variant(official, cpu_variant, monkeypatch, capsys) -> None:
    configs = f"fp32-native@{cpu_variant}"
    argv = ["bench_network.py", "--official", str(official), "--configs", configs, "--size", "48", "--rounds", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCH), run_name="__main__")
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["official", configs]
    assert float(rows[f"fp32-native@{cpu_variant}"].split("max|diff| ")[1].split(",")[0]) <= 1e-5


@pytest.mark.parametrize(
    "config, message", [("fp32-native@sse9", "unknown kernel variant 'sse9'"), ("fp64", "expected one of")]
)
def test_unknown_configuration_or_variant_is_one_clear_error(official, monkeypatch, config, message) -> None:
    monkeypatch.setattr(
        sys, "argv", ["bench_network.py", "--official", str(official), "--configs", config, "--size", "48"]
    )
    with pytest.raises(SystemExit, match=message):
        runpy.run_path(str(BENCH), run_name="__main__")


def test_profile_counts_each_kind_exclusive_of_the_kinds_it_calls() -> None:
    profile_network = runpy.run_path(str(BENCH.parent / "profile_network.py"))
    ticks = iter(range(100))
    profile = profile_network["Profile"](clock=lambda: float(next(ticks)))
    inner = profile.wrap("attention", lambda: None, lambda: 10.0)
    outer = profile.wrap("other", lambda: [inner(), inner()], lambda: 0.0)
    outer()  # clock: outer starts 0, inner 1-2 and 3-4, outer ends 5
    assert dict(profile.seconds) == {"attention": 2.0, "other": 3.0}
    assert profile.work["attention"] == 20.0


def test_the_device_check_runs_quick_on_a_cpu_and_reports_every_section(tmp_path, monkeypatch, capsys) -> None:
    # A stand-in for a swz30/Restormer checkout: the script imports the architecture by file path.
    arch = tmp_path / "Restormer" / "basicsr" / "models" / "archs" / "restormer_arch.py"
    arch.parent.mkdir(parents=True)
    arch.write_text(
        "import torch\n\n"
        "class Restormer(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)\n\n"
        "    def forward(self, x):\n"
        "        return x + self.conv(x)\n"
    )
    report = tmp_path / "check.json"
    argv = ["gpu_check.py", "--device", "cpu", "--quick", "--restormer", str(arch.parents[3]), "--json", str(report)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(GPU_CHECK), run_name="__main__")
    document = json.loads(report.read_text())
    assert document["quick"] and document["device"] == "cpu" and "errors" not in document
    parity = {item["backend"]: item for item in document["parity"]}
    assert {"torch", "native"} <= set(parity)
    for item in parity.values():
        assert item["exact"] and item["worst"] <= 1e-5
        assert set(item["max_diff"]) == {
            "model_std_global",
            "model_std_tlc",
            "model_dualpixel_tlc",
            "model_nochan_custom",
        }
    half = {item["precision_asked"]: item for item in document["half_precision"]}
    assert set(half) == {"bf16", "fp16"}
    for item in half.values():
        # 16-bit arithmetic changes the output a little; where the CPU has none, float32 runs: identical.
        assert item["min_psnr_db"] >= 40 and (item["precision"] != "fp32" or item["min_psnr_db"] == math.inf)
    rows = {(row["model"], row["batch"]): row for row in document["throughput"]}
    assert set(rows) == {("dinat", 1), ("dinat", 2), ("restormer", 1), ("restormer", 2)}
    assert all(row["size"] == "256x256" and row["megapixels_per_s"] > 0 for row in rows.values())
    assert rows["dinat", 2]["batch_max_diff"] <= 1e-5
    [large] = document["large"]
    assert large["size"] == "512x384" and large["tile"] == 256
    assert document["fastest_exact"]["backend"] == document["auto_backend"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["check", "configuration", "result", "note"]
    assert any(line.startswith("parity fp32 vs golden") and line.endswith("exact") for line in lines)
