"""The weights file a restore command uses: `--weights`, else `--model`, else the task's default."""

from __future__ import annotations

from pathlib import Path

from dinat_cli.errors import UsageError
from dinat_cli.registry.catalogue import Entry, Registry, default_model, get, load_unless_given
from dinat_cli.registry.locations import identify, resolve


def select(
    task: str,
    *,
    model: str | None = None,
    weights: Path | None = None,
    dual_pixel: bool = False,
    registry: Registry | None = None,
) -> tuple[Path, Entry | None]:
    """The weights file a restore command uses and its entry (None for an unknown --weights file).

    Call it before creating any output: a missing checkpoint stops the run with exit code 2.
    """
    registry = load_unless_given(registry)
    if weights is not None:
        if model is not None:
            raise UsageError("--model and --weights exclude each other; give one")
        if not Path(weights).is_file():
            raise UsageError(f"--weights {weights}: no such file")
        return Path(weights), identify(weights, registry)
    entry = get(model, registry) if model else default_model(task, dual_pixel, registry)
    if entry.task != task:
        raise UsageError(f"--model {entry.name} is a {entry.task} model, not {task}; see `dinat weights list`")
    return resolve(entry.name, registry), entry
