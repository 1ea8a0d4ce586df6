"""What a command-line user expects of every command: quick start without torch where no
network runs, -h, plain usage lines, help that says which models are installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from dinat_cli.cli.app import app
from dinat_cli.registry import locations

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Runs each command line of argv[1] (JSON) through the console script's entry point, in
# one process, and writes [arguments, exit code, whether torch is loaded] for each to argv[2].
_RUN_COMMANDS = """
import json, sys
from dinat_cli.cli import main

commands, results_file = json.loads(sys.argv[1]), sys.argv[2]
results = []
for arguments in commands:
    sys.argv, code = ["dinat", *arguments], 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code
    results.append([arguments, code, "torch" in sys.modules])
with open(results_file, "w") as stream:
    json.dump(results, stream)
"""


def test_the_command_line_is_parsed_without_importing_torch(tmp_path) -> None:
    # `dinat --help`, usage errors, `dinat eval` and `dinat weights` never need torch (3 s or more
    # to import on a slow machine), and the restore commands check their options before they import it.
    # Nor the HTTP client and progress bar, which only `dinat weights download` uses.
    code = "import sys, dinat_cli.cli\nprint([m for m in ('torch', 'urllib.request', 'tqdm') if m in sys.modules])\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.strip() == "[]"

    noisy, clean, out = str(EXAMPLES / "noisy"), str(EXAMPLES / "clean"), str(tmp_path / "out")
    lite = str(locations.resolve("lite-denoise"))
    restore = ["denoise", "--model", "lite-denoise"]
    expected_exit_codes = [
        (["--help"], 0),
        (["denoise", "--help"], 0),
        (["doctor", "--help"], 0),
        (["eval", "--pred", noisy, "--gt", clean], 0),
        (["weights", "list"], 0),
        (["weights", "path", "lite-denoise"], 0),
        (["weights", "verify", "lite-denoise"], 0),
        (["weights", "import", lite], 0),
        (["denoise"], 2),
        ([*restore, "--tile", "100", noisy, out], 2),
        ([*restore, "--tile", "256", "--tile-overlap", "300", noisy, out], 2),
        ([*restore, "--precision", "fp64", noisy, out], 2),
        ([*restore, "--device", "tpu", noisy, out], 2),
        ([*restore, "--attention", "fastest", noisy, out], 2),
        ([*restore, "--shard", "2/2", noisy, out], 2),
        ([*restore, "--report", "run.txt", noisy, out], 2),
        ([*restore, str(tmp_path / "missing"), out], 2),
        (["denoise", "--model", "nope", noisy, out], 2),
    ]
    commands = [arguments for arguments, _ in expected_exit_codes]
    results_file = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "-c", _RUN_COMMANDS, json.dumps(commands), str(results_file)],
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "80"},
        check=True,
        timeout=300,
    )
    results = json.loads(results_file.read_text())
    assert [(arguments, code) for arguments, code, _ in results] == expected_exit_codes
    # Once loaded, torch stays: the first command listed here is the one that imported it.
    assert [arguments for arguments, _, loaded in results if loaded] == []
    assert not Path(out).exists()


def _command_paths(command: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


def test_every_command_takes_h_and_shows_plain_usage_and_no_bool_metavars(tmp_path: Path) -> None:
    paths = _command_paths(typer.main.get_command(app))
    assert ("weights", "verify") in paths and ("denoise",) in paths
    env = {"COLUMNS": "120", "XDG_CACHE_HOME": str(tmp_path)}  # restore help finds the models' files
    for path in paths:
        result = CliRunner().invoke(app, [*path, "-h"], env=env)
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: dinat {' '.join(path)}".rstrip() in result.output
        assert "<bool>" not in result.output and "{" not in result.output, (path, result.output)
    for task in ("deblur", "defocus", "denoise", "derain"):
        result = CliRunner().invoke(app, [task, "-h"], env=env)
        assert f"Usage: dinat {task} [OPTIONS] INPUT OUTPUT" in result.output


def test_restore_help_names_the_task_models_and_whether_each_is_installed(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["denoise", "--help"], env={"XDG_CACHE_HOME": str(tmp_path)})
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # the help is wrapped to the terminal's width
    assert "Example: dinat denoise --model lite-denoise noisy/ clean/" in text
    assert "sidd (default, not installed: `dinat weights download sidd`): Real image denoising" in text
    assert "lite-denoise (installed): Small blind Gaussian denoiser" in text
    assert "or synthetic Gaussian noise (lite-denoise)" in text
