"""`dinat weights ...` end to end, through the console entry point (exit codes, one-line errors)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from weights_server import PAYLOAD, closed_port_url, entry_for, serving, write_registry

from dinat_cli.cli import main
from dinat_cli.registry import catalogue, locations

GOPRO_SHA256 = "33ac76b9c05cc8d4c0179f62edc9d4d27c19d79c69ec2fbf6eb45e119d22b829"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "200")  # a wide table: paths are not cut
    monkeypatch.delenv(locations.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv(catalogue.REGISTRY_ENV, raising=False)
    return tmp_path / "xdg" / "dinat"


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `dinat weights ARGS...`; return (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["dinat", "weights", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code or 0, out, err

    return invoke


def _use_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    shipped = entry_for("lite", b"small", filename="lite.safetensors", variant="lite-denoise")
    path = write_registry(tmp_path / "registry", entry_for("tiny", PAYLOAD, url=url), shipped)
    monkeypatch.setenv(catalogue.REGISTRY_ENV, str(path))


@pytest.fixture
def tiny_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_registry(tmp_path, monkeypatch, closed_port_url())


def _put(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def test_missing_gopro_weights(run, cache: Path) -> None:
    code, out, err = run("path", "gopro")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("error: missing weights 'gopro' (deblur)")
    for part in (GOPRO_SHA256, "`dinat weights download gopro`", "`--weights PATH`", str(cache)):
        assert part in err


def test_an_entry_naming_an_unknown_variant_is_one_line_naming_file_and_entry(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_registry(tmp_path, entry_for("mine", b"a"), entry_for("typo", b"b", variant="gopr0"))
    monkeypatch.setenv(catalogue.REGISTRY_ENV, str(path))
    code, out, err = run("list")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(
        f"error: weights registry {path}: entry 'typo' names an unknown variant 'gopr0' (known: gopro,"
    )


def test_list_shows_every_official_entry(run) -> None:
    code, out, _ = run("list")
    assert code == 0
    for name in ("gopro", "spdd", "dpdd", "sidd", "rain13k"):
        assert name in out
    assert GOPRO_SHA256[:12] in out and "missing" in out
    code, out, _ = run("list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["gopro"]["sha256"] == GOPRO_SHA256
    assert {row["status"] for name, row in rows.items() if name != "lite-denoise"} == {"missing"}
    assert rows["lite-denoise"]["status"] == "present"  # ships with dinat


def test_list_json_reports_present_missing_and_damaged(run, tiny_registry: None, cache: Path) -> None:
    present = _put(cache, "tiny.pth", PAYLOAD)
    _put(cache, "lite.safetensors", b"smell")
    code, out, _ = run("list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0
    assert (rows["tiny"]["status"], rows["tiny"]["path"], rows["tiny"]["size"]) == (
        "present",
        str(present),
        len(PAYLOAD),
    )
    assert (rows["lite"]["status"], rows["lite"]["path"]) == (
        "damaged",
        str(cache / "lite.safetensors"),
    )
    present.unlink()
    _, out, _ = run("list", "--json")
    assert json.loads(out)[0]["status"] == "missing"


def test_verify_a_file(run, tiny_registry: None, tmp_path: Path) -> None:
    good = _put(tmp_path, "anything.bin", PAYLOAD)
    bad = _put(tmp_path, "tiny.pth", PAYLOAD[:-1])
    unknown = _put(tmp_path, "other.pth", b"x" * 10)
    code, out, _ = run("verify", str(good))
    assert code == 0 and "tiny" in out and "sha256 verified" in out
    code, _, err = run("verify", str(bad))
    assert code == 2 and "damaged" in err and "tiny" in err
    code, _, err = run("verify", str(unknown))
    assert code == 2 and "not a known checkpoint" in err
    code, _, err = run("verify", str(tmp_path / "nope.pth"))
    assert code == 2 and "no such file" in err
    code, _, err = run("verify")
    assert code == 2 and "give either a NAME or FILE, or --all" in err


def test_every_subcommand_takes_a_name_or_a_file(run, tiny_registry: None, tmp_path: Path, cache: Path) -> None:
    code, _, err = run("verify", "tiny")
    assert code == 2 and "missing weights 'tiny'" in err and "`dinat weights download tiny`" in err
    mine = _put(tmp_path / "mine", "net_g_latest.pth", PAYLOAD)
    code, out, _ = run("path", str(mine))
    assert (code, out) == (0, f"{mine}\n")
    code, _, err = run("download", str(mine))
    assert code == 2 and f"`dinat weights import {mine}`" in err
    assert run("import", str(mine))[0] == 0
    code, out, _ = run("verify", "tiny")
    assert code == 0 and f"{cache / 'tiny.pth'}: tiny" in out and "sha256 verified" in out
    code, _, err = run("import", "tiny")
    assert code == 2 and "`dinat weights download tiny`" in err
    # Bit rot the remembered verdict cannot see: verify reads the file again.
    stat = (cache / "tiny.pth").stat()
    (cache / "tiny.pth").write_bytes(PAYLOAD[:-1] + b"\0")
    os.utime(cache / "tiny.pth", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, _, err = run("verify", "tiny")
    assert code == 2 and f"damaged weights 'tiny' (deblur): {cache / 'tiny.pth'} does not have sha256" in err
    code, _, err = run("path", str(tmp_path / "nope.pth"))
    assert code == 2 and "unknown model" in err and "no such file" in err


def test_the_shipped_model_verifies_by_name(run) -> None:
    code, out, _ = run("verify", "lite-denoise")
    assert code == 0 and f"{locations.resolve('lite-denoise')}: lite-denoise" in out and "sha256 verified" in out


def test_list_fits_80_columns_without_cutting_names_or_paths(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # cron mail, pipes
    code, out, _ = run("list")
    assert code == 0
    lines = out.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert table and all(len(line) <= 80 for line in table)
    names = {line.split("│")[1].strip() for line in table if line.startswith("│")}
    assert names == set(catalogue.load_registry())
    assert f"lite-denoise: {locations.resolve('lite-denoise')}" in lines


def test_verify_all_rehashes_what_it_finds(run, tiny_registry: None, cache: Path) -> None:
    file = _put(cache, "tiny.pth", PAYLOAD)
    code, out, _ = run("verify", "--all")
    assert code == 0
    assert f"tiny: present ({file})" in out and "lite: missing" in out
    # Bit rot: other bytes, same size and mtime, so the verdict cache still says intact.
    stat = file.stat()
    file.write_bytes(PAYLOAD[:-1] + b"\0")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert locations.locate(catalogue.get("tiny")).status == "present"
    code, out, err = run("verify", "--all")
    assert code == 2 and "tiny: damaged" in out and "damaged: tiny" in err


def test_download_a_name_then_all(run, tmp_path: Path, monkeypatch, cache: Path) -> None:
    with serving() as server:
        _use_registry(tmp_path, monkeypatch, server.url)
        code, out, err = run("download", "tiny")
        assert code == 0, err
        assert f"tiny: downloaded and verified, {cache / 'tiny.pth'}" in out
        code, out, _ = run("download", "--all")
    assert code == 0
    assert "tiny: already present" in out and "lite: missing, ships with dinat" in out
    assert server.ranges == [None]
    assert (cache / "tiny.pth").read_bytes() == PAYLOAD


def test_download_offline(run, tiny_registry: None) -> None:
    code, out, err = run("download", "tiny")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "cannot download tiny" in err and "Connection refused" in err


def test_download_needs_a_known_name(run) -> None:
    code, _, err = run("download", "nope")
    assert code == 2 and "unknown model 'nope'" in err


def test_import_then_path(run, tiny_registry: None, tmp_path: Path, cache: Path) -> None:
    source = _put(tmp_path / "mine", "net_g_latest.pth", PAYLOAD)
    code, out, _ = run("import", str(source))
    assert code == 0 and f"tiny: verified and imported to {cache / 'tiny.pth'}" in out
    code, out, _ = run("path", "tiny")
    assert (code, out) == (0, f"{cache / 'tiny.pth'}\n")
    code, _, err = run("import", str(_put(tmp_path, "junk.pth", b"junk")))
    assert code == 2 and "not a known checkpoint" in err
