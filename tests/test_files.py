"""Writing where the user says: atomic replacement, and one line naming the place when it refuses."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dinat_cli import files, reports
from dinat_cli.errors import DinatError, StorageError, UsageError

# Under /proc nothing can be made, even by root: the stand-in for a read-only file system.
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system")


def _failing_fsync(code: int):
    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    return fsync


@pytest.mark.parametrize(
    "code, kind",
    [(errno.ENOSPC, StorageError), (errno.EROFS, StorageError), (errno.EDQUOT, StorageError), (errno.EIO, DinatError)],
)
def test_a_failed_write_keeps_the_old_file_and_says_whether_any_later_write_can_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: type
) -> None:
    target = tmp_path / "report.json"
    target.write_text("the previous report")
    monkeypatch.setattr(os, "fsync", _failing_fsync(code))
    with pytest.raises(DinatError) as raised:
        files.write_atomically(target, b"new")
    assert type(raised.value) is kind
    assert str(raised.value) == f"{target}: cannot write ({os.strerror(code)})"
    assert target.read_text() == "the previous report" and os.listdir(tmp_path) == ["report.json"]


def test_a_report_that_cannot_be_written_leaves_the_previous_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run.csv"
    document = {"files": [{"name": "a.png", "status": "done"}], "summary": {"done": 1}}
    reports.write_report(target, document, rows_key="files", summary_key="summary")
    before = target.read_bytes()
    monkeypatch.setattr(os, "fsync", _failing_fsync(errno.ENOSPC))
    bigger = {"files": document["files"] * 1000, "summary": {"done": 1000}}
    with pytest.raises(StorageError, match=r"run\.csv: cannot write \(No space left on device\)"):
        reports.write_report(target, bigger, rows_key="files", summary_key="summary")
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["run.csv"]


def test_prepare_folder_makes_missing_folders_and_leaves_nothing_else(tmp_path: Path) -> None:
    files.prepare_folder(tmp_path / "a" / "b", "output folder")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []


def test_prepare_folder_refuses_a_file_in_its_place(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(UsageError, match=r"^output folder .*taken: exists and is not a folder$"):
        files.prepare_folder(tmp_path / "taken", "output folder")
    with pytest.raises(UsageError, match=r"^output folder .*taken/sub: cannot create it \(Not a directory\)$"):
        files.prepare_folder(tmp_path / "taken" / "sub", "output folder")


@needs_proc
def test_prepare_folder_names_a_place_where_nothing_can_be_written() -> None:
    with pytest.raises(
        UsageError, match=r"^output folder /proc/dinat-x: cannot create it \(No such file or directory\)$"
    ):
        files.prepare_folder(Path("/proc/dinat-x"), "output folder")
    with pytest.raises(UsageError, match=r"^output folder /proc: cannot write there \(No such file or directory\)$"):
        files.prepare_folder(Path("/proc"), "output folder")
