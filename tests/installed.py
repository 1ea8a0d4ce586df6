"""The `dinat` command as a user runs it: the console script installed with the package."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# Not `python -m dinat_cli`: started from the clone, that puts the clone first on the
# child's sys.path, where the source folder (no compiled kernels, no dinat_cli.weights)
# shadows the installed package. A console script puts its own folder there instead.
_SCRIPT = shutil.which("dinat", path=str(Path(sys.executable).parent)) or shutil.which("dinat")
if _SCRIPT is None:
    raise RuntimeError("the dinat command is not installed: pip install '.[test]' first")
DINAT = [_SCRIPT]
