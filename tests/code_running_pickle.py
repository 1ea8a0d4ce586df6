"""A pickled object whose loading runs code: what dinat must refuse to unpickle."""

from __future__ import annotations

from pathlib import Path


class CodeRunningPayload:
    """Unpickling it creates `marker`: the file's existence shows the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
