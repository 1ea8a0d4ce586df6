"""`dinat doctor`: the report's facts match the library's, its verdict matches what works, and --json is clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner
from weights_server import PAYLOAD, closed_port_url, entry_for, write_registry

from dinat_cli import doctor, ops
from dinat_cli.cli.app import app
from dinat_cli.model import RestoreDiNAT
from dinat_cli.ops import native
from dinat_cli.registry import catalogue, locations

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache and a two-entry registry: `tiny` (downloadable, missing) and `lite` (shipped, present)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(locations.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv(native.ENV_VARIABLE, raising=False)
    shipped = entry_for("lite", b"small", filename="lite.safetensors", variant="lite-denoise")
    path = write_registry(tmp_path / "registry", entry_for("tiny", PAYLOAD, url=closed_port_url()), shipped)
    (path.parent / "lite.safetensors").write_bytes(b"small")
    monkeypatch.setenv(catalogue.REGISTRY_ENV, str(path))
    return tmp_path / "xdg" / "dinat"


def doctor_json(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["doctor", "--json", *args])
    # stdout is the JSON document and nothing else (json.loads refuses anything around it).
    return result.exit_code, json.loads(result.stdout)


def test_json_reports_the_kernel_status_and_a_passing_smoke_test() -> None:
    code, report = doctor_json()
    status = native.kernel_status()
    kernels = report["cpu_kernels"]
    assert kernels["variant"] == status.variant
    assert kernels["variants_runnable"] == list(status.variants_runnable)
    assert kernels["variants_built"] == list(status.variants_built)
    assert kernels["requested"] == "auto"
    assert kernels["reason"] == status.reason
    assert (kernels["variant"] == "none") == isinstance(kernels["reason"], str)

    assert code == 0
    assert report["ok"] is True
    smoke = report["smoke_test"]
    assert smoke["ran"] and smoke["ok"] and smoke["error"] is None and smoke["seconds"] > 0

    import torch

    import dinat_cli

    assert report["dinat"]["version"] == dinat_cli.__version__
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["threads"] == torch.get_num_threads()
    assert report["devices"][0]["name"] == "cpu"
    assert [device["name"] for device in report["devices"] if device["name"].startswith("cuda")] == [
        f"cuda:{index}" for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    ]
    cpu_attention = next(entry for entry in report["attention"] if entry["device"] == "cpu")
    assert cpu_attention["backends"]["torch"] is None
    assert cpu_attention["auto"] == ops.resolve_backend("auto", "cpu")
    assert (cpu_attention["auto"] == "native") == (status.reason is None)
    assert smoke["attention"] == cpu_attention["auto"]
    # The whole kernel choice of `auto`, as the engine resolves it and the smoke test ran it.
    auto = ops.resolve_kernels("auto", "cpu")
    native_runs = status.reason is None
    assert cpu_attention["norm_gate_pooling"] == auto.norm_gate_pooling == ("native" if native_runs else "torch")
    assert cpu_attention["kernels"] == smoke["kernels"] == auto.describe()
    assert report["cpu"]["logical_cores"] == os.cpu_count()
    assert {cache["name"] for cache in report["caches"]} == {"weights", "inductor"}


def test_kernels_off_is_reported_with_its_reason_and_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_VARIABLE, "off")
    code, report = doctor_json("--no-smoke-test")
    kernels = report["cpu_kernels"]
    assert kernels["variant"] == "none"
    assert kernels["requested"] == "off"
    assert "off" in kernels["reason"]
    assert any(f"{native.ENV_VARIABLE}=off" in line and "fallbacks" in line for line in report["advice"])
    # The kernels are slow to miss, not fatal; the smoke test did not run.
    assert report["smoke_test"]["ran"] is False
    assert code == 0 and report["ok"] is True
    cpu_attention = next(entry for entry in report["attention"] if entry["device"] == "cpu")
    assert cpu_attention["auto"] != "native"
    assert cpu_attention["backends"]["native"] == kernels["reason"]
    assert cpu_attention["norm_gate_pooling"] == "torch"
    assert cpu_attention["kernels"] == f"attention {cpu_attention['auto']}, norm/gate/pooling torch"


def test_a_failing_smoke_test_exits_1_with_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, image):
        raise RuntimeError("simulated kernel crash")

    monkeypatch.setattr(RestoreDiNAT, "forward", broken)
    code, report = doctor_json()
    assert code == 1
    assert report["ok"] is False
    assert report["smoke_test"]["ok"] is False
    assert "simulated kernel crash" in report["smoke_test"]["error"]
    assert any("smoke test failed" in line for line in report["advice"])


def test_weights_statuses_and_download_advice(environment: Path) -> None:
    environment.mkdir(parents=True)
    (environment / "tiny.pth").write_bytes(b"not the checkpoint")
    _, report = doctor_json("--no-smoke-test")
    statuses = {entry["name"]: entry["status"] for entry in report["weights"]["entries"]}
    assert statuses == {"tiny": "damaged", "lite": "present"}
    assert any("tiny" in line and "damaged" in line for line in report["advice"])
    assert any("dinat weights download" in line for line in report["advice"])
    cache = next(cache for cache in report["caches"] if cache["name"] == "weights")
    assert cache["exists"] and cache["size"] == len(b"not the checkpoint")


def test_text_report_has_the_kernels_line_and_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    status = native.kernel_status()
    if status.reason is None:
        expected = f"cpu kernels: {status.variant} (runnable: {', '.join(status.variants_runnable)})"
    else:
        expected = f"cpu kernels: none - {status.reason}"
    assert expected in result.stdout
    assert "smoke test: ok" in result.stdout
    assert f"kernels on cpu: {ops.resolve_kernels('auto', 'cpu').describe()} (--attention auto)" in result.stdout
    assert "advice:" in result.stdout  # the registry's checkpoint is missing: there is advice
    assert "dinat can restore on this machine." in result.stdout


def test_a_broken_section_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> native.KernelStatus:
        raise OSError("cannot load the kernels")

    monkeypatch.setattr(native, "kernel_status", broken)
    report = doctor.diagnose(smoke_test=False)
    assert report.cpu_kernels.variant == "none"
    assert "cannot load the kernels" in report.cpu_kernels.error
    assert report.torch.error is None and report.ok
    assert json.loads(report.to_json())["cpu_kernels"]["reason"] == report.cpu_kernels.reason


def test_python_m_dinat_cli_doctor_json(tmp_path) -> None:
    # Outside the clone: `python -m` puts the working directory first on sys.path.
    result = subprocess.run(
        [sys.executable, "-m", "dinat_cli", "doctor", "--json", "--no-smoke-test"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ.copy(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["cpu_kernels"]["variant"] == native.kernel_status().variant
    assert report["cpu_kernels"]["variants_runnable"] == list(native.kernel_status().variants_runnable)
