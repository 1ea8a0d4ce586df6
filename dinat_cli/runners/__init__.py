"""Runners restore planned jobs with a model loaded once: `local.LocalRunner` in this process,
`ray.RayRunner` on Ray workers. Both have one interface (`base.Runner`): started as a context
manager from a `ModelSource` and `EngineOptions`, then `engine`, `ready_note` and `run`.

The modules are imported one by one: the local runner imports the engine (torch) when it
starts, the Ray runner imports Ray.
"""
