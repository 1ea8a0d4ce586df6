"""What a command-line user expects of every command: -h, plain usage lines, help that
says which models are installed."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from dinat_cli.cli.app import app


def _command_paths(command: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


def test_every_command_takes_h_and_shows_plain_usage_and_no_bool_metavars() -> None:
    paths = _command_paths(typer.main.get_command(app))
    assert ("weights", "verify") in paths and ("denoise",) in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "-h"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: dinat {' '.join(path)}".rstrip() in result.output
        assert "<bool>" not in result.output and "{" not in result.output, (path, result.output)
    for task in ("deblur", "defocus", "denoise", "derain"):
        result = CliRunner().invoke(app, [task, "-h"], env={"COLUMNS": "120"})
        assert f"Usage: dinat {task} [OPTIONS] INPUT OUTPUT" in result.output


def test_restore_help_names_the_task_models_and_whether_each_is_installed(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["denoise", "--help"], env={"XDG_CACHE_HOME": str(tmp_path)})
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # the help is wrapped to the terminal's width
    assert "Example: dinat denoise --model lite-denoise noisy/ clean/" in text
    assert "sidd (default, not installed: `dinat weights download sidd`): Real image denoising" in text
    assert "lite-denoise (installed): Small blind Gaussian denoiser" in text
    assert "or synthetic Gaussian noise (lite-denoise)" in text
