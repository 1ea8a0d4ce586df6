"""The registry file: its entries, lookup by name, and the default entry of each task.

The file in use is `$DINAT_REGISTRY`, else `registry.json` of the installed package
`dinat_cli.weights`. Each entry names a variant (`dinat_cli.model.variants`), which
holds its task and configuration; the entry holds the file: name, size, sha256, url.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dinat_cli.errors import DinatError, UsageError
from dinat_cli.model.variants import VARIANTS, get_variant

REGISTRY_ENV = "DINAT_REGISTRY"
DUAL_PIXEL_SUFFIX = "-dual-pixel"

_PACKAGE = "dinat_cli.weights"
_REGISTRY_FILE = "registry.json"


@dataclass(frozen=True)
class Entry:
    """One checkpoint of the registry; `variant` names its configuration in `dinat_cli.model.variants`."""

    name: str
    variant: str
    description: str
    sha256: str
    size: int
    filename: str
    default_for: tuple[str, ...] = ()
    url: str | None = None

    @property
    def task(self) -> str:
        """What the checkpoint restores (e.g. "deblur"): its variant's task."""
        return get_variant(self.variant).task


Registry = Mapping[str, Entry]


def registry_dir() -> Path:
    """The folder of the registry file in use; checkpoints that ship with dinat lie in it."""
    override = os.environ.get(REGISTRY_ENV)
    if override:
        return Path(override).expanduser().resolve().parent
    # A regular (non-zip) package: its resources are plain files.
    return Path(str(resources.files(_PACKAGE)))


def load_registry(path: Path | None = None) -> dict[str, Entry]:
    """Entries by name, from `path`, else `$DINAT_REGISTRY`, else the installed registry."""
    if path is None:
        override = os.environ.get(REGISTRY_ENV)
        path = Path(override).expanduser() if override else registry_dir() / _REGISTRY_FILE
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))["models"]
        entries = [Entry(**{**item, "default_for": tuple(item.get("default_for", ()))}) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DinatError(f"cannot read the weights registry {path}: {error}") from None
    for entry in entries:
        if entry.variant not in VARIANTS:
            raise DinatError(
                f"weights registry {path}: entry {entry.name!r} names an unknown variant {entry.variant!r} "
                f"(known: {', '.join(VARIANTS)})"
            )
    registry = {entry.name: entry for entry in entries}
    defaults = [key for entry in entries for key in entry.default_for]
    if len(registry) != len(entries) or len(set(defaults)) != len(defaults):
        raise DinatError(f"weights registry {path}: names and default_for values must be unique")
    return registry


def load_unless_given(registry: Registry | None) -> Registry:
    """`registry` itself, or the registry in use when it is None."""
    return load_registry() if registry is None else registry


def get(name: str, registry: Registry | None = None) -> Entry:
    """The entry called `name`; an unknown name is a usage error that lists the known ones."""
    registry = load_unless_given(registry)
    if name not in registry:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(registry)}")
    return registry[name]


def default_model(task: str, dual_pixel: bool = False, registry: Registry | None = None) -> Entry:
    """The entry used for `task` (e.g. "deblur") when no --model or --weights is given."""
    registry = load_unless_given(registry)
    key = task + DUAL_PIXEL_SUFFIX if dual_pixel else task
    for entry in registry.values():
        if key in entry.default_for:
            return entry
    raise UsageError(f"no default weights for {key}; pick one with --model NAME (see `dinat weights list`)")
