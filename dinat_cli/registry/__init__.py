"""The checkpoint registry: which file is which model, where it lives, how to get it.

`weights/registry.json` (installed as `dinat_cli.weights`) lists every checkpoint dinat
knows; each entry names its configuration in `dinat_cli.model.variants`. A file is
recognised by its sha256, never by its name. One module per job:

- `catalogue`: the registry file, its entries, lookup by name and each task's default.
- `checksums`: a file's sha256, hashed once and remembered in the user cache.
- `locations`: what a file is, by checksum, and where an entry's file lies.
- `selection`: the weights file a restore command uses (`--model`, `--weights` or the default).
- `downloads`: getting files into the cache, by HTTP or by import; the only module that
  needs urllib and tqdm.

Torch-free: the command line imports it.
"""
