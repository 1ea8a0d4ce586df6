"""Errors a user can cause. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class DinatError(Exception):
    """A problem the user can fix (bad file, wrong option); never shown as a traceback."""

    exit_code = 1


class UsageError(DinatError):
    """Bad option or missing setup, detected before any output is written."""

    exit_code = 2


class CheckpointError(DinatError):
    """A weights file that cannot be used with this network."""

    exit_code = 2


class StorageError(DinatError):
    """A file system that takes no more writes (full, over quota, read-only): a batch stops at once."""

    exit_code = 2
