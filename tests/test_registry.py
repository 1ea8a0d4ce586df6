"""The checkpoint registry: official entries, lookup, checksum cache, download and import."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from weights_server import PAYLOAD, closed_port_url, entry_for, serving, write_registry

from dinat_cli.errors import CheckpointError, DinatError, UsageError
from dinat_cli.model.variants import get_variant
from dinat_cli.registry import catalogue, checksums, downloads, locations, selection

TASK_DEFAULTS = {
    ("deblur", False): "gopro",
    ("defocus", False): "spdd",
    ("defocus", True): "dpdd",
    ("denoise", False): "sidd",
    ("derain", False): "rain13k",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache folder and no user overrides; returns the cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(locations.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv(catalogue.REGISTRY_ENV, raising=False)
    return tmp_path / "xdg" / "dinat"


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> catalogue.Entry:
    """A temporary registry holding one small downloadable entry, `tiny`."""
    return _use_registry(tmp_path, monkeypatch, url="http://127.0.0.1:9/unused")["tiny"]


def _use_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> dict[str, catalogue.Entry]:
    path = write_registry(tmp_path / "registry", entry_for("tiny", PAYLOAD, url=url))
    monkeypatch.setenv(catalogue.REGISTRY_ENV, str(path))
    return catalogue.load_registry()


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = checksums.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(checksums, "sha256_file", counting)
    return calls


# --- the shipped registry --------------------------------------------------------


def test_shipped_registry_matches_the_official_facts(reference_dir: Path) -> None:
    facts = json.loads((reference_dir / "official_checkpoints.json").read_text())
    # Entries with a url are the official downloads; the others ship with dinat.
    entries = {entry.sha256: entry for entry in catalogue.load_registry().values() if entry.url}
    assert len(entries) == len(facts["checkpoints"]) == 5
    for fact in facts["checkpoints"]:
        entry = entries[fact["sha256"]]
        assert entry.size == fact["size"]
        assert entry.url == facts["download_base"] + fact["path"]
        config = get_variant(entry.variant).config
        assert config["inp_channels"] == fact["inp_channels"]
        assert config["dual_pixel_task"] == fact["dual_pixel_task"]
        assert list(config["dilations"]) == facts["architecture"]["dilations"]
        assert config["mode"] == facts["architecture"]["mode"]


def test_each_task_has_its_default() -> None:
    for (task, dual_pixel), name in TASK_DEFAULTS.items():
        assert catalogue.default_model(task, dual_pixel=dual_pixel).name == name
    with pytest.raises(UsageError, match="no default weights for derain-dual-pixel"):
        catalogue.default_model("derain", dual_pixel=True)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown model 'goprp'.*gopro, spdd"):
        catalogue.get("goprp")


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    path = write_registry(tmp_path, entry_for("twin", b"a"), entry_for("twin", b"b"))
    with pytest.raises(DinatError, match="unique"):
        catalogue.load_registry(path)


def test_missing_gopro_message_names_sha256_and_both_fixes(isolated: Path) -> None:
    with pytest.raises(UsageError) as error:
        locations.resolve("gopro")
    message = str(error.value)
    assert error.value.exit_code == 2
    assert "\n" not in message
    assert "'gopro'" in message
    assert "33ac76b9c05cc8d4c0179f62edc9d4d27c19d79c69ec2fbf6eb45e119d22b829" in message
    assert "`dinat weights download gopro`" in message
    assert "--weights PATH" in message
    assert str(isolated) in message


# --- lookup ----------------------------------------------------------------------


def test_lookup_order_is_env_dir_then_cache_then_beside_the_registry(
    tiny: catalogue.Entry, tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_dir = tmp_path / "env"
    places = [env_dir, isolated, catalogue.registry_dir()]
    for folder in places:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / tiny.filename).write_bytes(PAYLOAD)
    monkeypatch.setenv(locations.WEIGHTS_DIR_ENV, str(env_dir))
    assert locations.search_dirs() == places
    for folder in places:
        assert locations.resolve("tiny") == folder / tiny.filename
        (folder / tiny.filename).unlink()
    assert locations.locate(tiny).status == "missing"


def test_files_are_recognised_by_checksum_whatever_their_name(tiny: catalogue.Entry, isolated: Path) -> None:
    isolated.mkdir(parents=True)
    (isolated / "decoy.bin").write_bytes(bytes(len(PAYLOAD)))  # right size, wrong content
    (isolated / "net_g_latest.pth").write_bytes(PAYLOAD)
    assert locations.resolve("tiny") == isolated / "net_g_latest.pth"


def test_a_damaged_file_is_reported_not_used(tiny: catalogue.Entry, isolated: Path) -> None:
    isolated.mkdir(parents=True)
    (isolated / tiny.filename).write_bytes(PAYLOAD[:1000])
    location = locations.locate(tiny)
    assert (location.status, location.path) == ("damaged", isolated / tiny.filename)
    with pytest.raises(UsageError, match=r"damaged weights 'tiny'.*dinat weights download tiny.*--weights PATH"):
        locations.resolve("tiny")


def test_a_shipped_entry_lives_beside_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "package"
    path = write_registry(folder, entry_for("lite", PAYLOAD, filename="lite.safetensors"))
    monkeypatch.setenv(catalogue.REGISTRY_ENV, str(path))
    with pytest.raises(UsageError, match="Fix: reinstall dinat, or pass `--weights PATH`"):
        locations.resolve("lite")
    (folder / "lite.safetensors").write_bytes(PAYLOAD)
    assert locations.resolve("lite") == folder / "lite.safetensors"
    with pytest.raises(UsageError, match="ships with dinat"):
        downloads.download(catalogue.get("lite"))


# --- checksums -------------------------------------------------------------------


def test_the_verdict_cache_hashes_each_file_once(
    tiny: catalogue.Entry, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated.mkdir(parents=True)
    file = isolated / tiny.filename
    file.write_bytes(PAYLOAD)
    calls = _count_hashes(monkeypatch)
    for _ in range(3):
        locations.resolve("tiny")
        locations.identify(file)
    assert calls == [file]
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    locations.resolve("tiny")
    assert len(calls) == 2, "a changed mtime must be hashed again"
    checksums.checksum(file, fresh=True)
    assert len(calls) == 3


def test_check_tells_intact_damaged_and_unknown(tiny: catalogue.Entry, tmp_path: Path) -> None:
    intact, damaged, unknown = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    intact.write_bytes(PAYLOAD)
    damaged.write_bytes(PAYLOAD[:-1] + b"\0")
    unknown.write_bytes(b"hello")
    assert locations.check(intact).status == "intact"
    assert locations.identify(intact) == tiny
    verdict = locations.check(damaged)
    assert (verdict.status, verdict.entry) == ("damaged", None)
    assert "size or name of tiny" in verdict.reason
    assert locations.check(unknown).status == "unknown"
    assert locations.identify(unknown) is None


def test_a_cache_that_cannot_be_written_leaves_no_temporary_file(
    tiny: catalogue.Entry, tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated.mkdir(parents=True)
    file = tmp_path / "a.pth"
    file.write_bytes(PAYLOAD)

    def full_disk(source: Path, target: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full_disk)
    assert checksums.checksum(file) == tiny.sha256  # the verdict is lost, the run goes on
    assert list(isolated.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="no /proc on this system")
def test_a_weights_file_that_cannot_be_read_is_one_line_naming_it() -> None:
    with pytest.raises(CheckpointError, match=r"^/proc/\d+/mem: cannot read \(Input/output error\)$"):
        locations.identify(Path("/proc/self/mem"))


def test_select_follows_model_weights_and_task(tiny: catalogue.Entry, tmp_path: Path, isolated: Path) -> None:
    isolated.mkdir(parents=True)
    (isolated / tiny.filename).write_bytes(PAYLOAD)
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"any compatible file")
    assert selection.select("deblur", model="tiny") == (isolated / tiny.filename, tiny)
    assert selection.select("deblur", weights=mine) == (mine, None)
    with pytest.raises(UsageError, match="exclude each other"):
        selection.select("deblur", model="tiny", weights=mine)
    with pytest.raises(UsageError, match="is a deblur model, not derain"):
        selection.select("derain", model="tiny")


# --- download and import ---------------------------------------------------------


def test_full_download(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving() as server:
        entry = _use_registry(tmp_path, monkeypatch, server.url)["tiny"]
        path = downloads.download(entry, progress=True)
    assert path == isolated / entry.filename
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [None]
    assert not (isolated / "tiny.pth.part").exists()
    calls = _count_hashes(monkeypatch)
    assert locations.resolve("tiny") == path
    assert calls == [], "the download's own checksum is remembered"


@pytest.mark.parametrize("honour_range", [True, False], ids=["range", "server-ignores-range"])
def test_resumed_download(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, honour_range: bool) -> None:
    isolated.mkdir(parents=True)
    (isolated / "tiny.pth.part").write_bytes(PAYLOAD[:100_000])
    with serving() as server:
        server.honour_range = honour_range
        entry = _use_registry(tmp_path, monkeypatch, server.url)["tiny"]
        path = downloads.download(entry)
    assert server.ranges == ["bytes=100000-"]
    assert path.read_bytes() == PAYLOAD
    assert not (isolated / "tiny.pth.part").exists()


def test_an_interrupted_download_resumes(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving() as server:
        server.cut_after = 200_000
        entry = _use_registry(tmp_path, monkeypatch, server.url)["tiny"]
        with pytest.raises(DinatError, match=r"cannot download tiny.*closed after 200000 of 524288"):
            downloads.download(entry)
        assert (isolated / "tiny.pth.part").stat().st_size == 200_000
        server.cut_after = None
        path = downloads.download(entry)
    assert server.ranges == [None, "bytes=200000-"]
    assert path.read_bytes() == PAYLOAD


def test_a_corrupted_download_is_refused_and_removed(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving() as server:
        server.payload = PAYLOAD[:-1] + b"\0"
        entry = _use_registry(tmp_path, monkeypatch, server.url)["tiny"]
        with pytest.raises(CheckpointError, match="refused and removed"):
            downloads.download(entry)
    assert list(isolated.iterdir()) == []


def test_offline_is_one_clear_error(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _use_registry(tmp_path, monkeypatch, closed_port_url())["tiny"]
    with pytest.raises(DinatError) as error:
        downloads.download(entry)
    message = str(error.value)
    assert message.startswith("cannot download tiny from http://127.0.0.1:")
    assert "Connection refused" in message and "[Errno" not in message
    assert "dinat weights import FILE" in message
    assert not (isolated / entry.filename).exists()


def test_import_copies_a_verified_file_into_the_cache(tiny: catalogue.Entry, tmp_path: Path, isolated: Path) -> None:
    source = tmp_path / "downloads" / "net_g_latest.pth"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    assert downloads.import_file(source) == (tiny, isolated / tiny.filename)
    assert (isolated / tiny.filename).read_bytes() == PAYLOAD
    assert downloads.import_file(isolated / tiny.filename) == (tiny, isolated / tiny.filename)
    source.write_bytes(b"something else")
    with pytest.raises(CheckpointError, match="not a known checkpoint"):
        downloads.import_file(source)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system")
def test_a_cache_folder_that_cannot_be_made_is_one_line_naming_it(
    tiny: catalogue.Entry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "net_g_latest.pth"
    source.write_bytes(PAYLOAD)
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/dinat-test-cache")  # nothing can be made there, even by root
    expected = r"^cache folder /proc/dinat-test-cache/dinat: cannot create it \(No such file or directory\)$"
    with pytest.raises(UsageError, match=expected):
        downloads.download(tiny)
    with pytest.raises(UsageError, match=expected):
        downloads.import_file(source)
