"""Installed as `dinat_cli.weights`: the checkpoint registry and the checkpoints dinat ships.

`registry.json` lists every checkpoint dinat knows, official or ours. An entry with a
`url` is downloaded into the user cache; an entry without one names a small file
(e.g. `.safetensors`) kept beside `registry.json` in this folder, which setuptools
installs with the package (see `package-dir` and `package-data` in pyproject.toml).
"""
