"""The benchmark script against an "official" model given as a file."""

from __future__ import annotations

import runpy
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_network.py"


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
