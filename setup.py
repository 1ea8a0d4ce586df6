"""The package list and the compiled CPU kernels: everything else is in pyproject.toml.

Each instruction-set variant of `dinat_cli/ops/csrc` (see `cpu_variants.py`) becomes a
library of its own. A variant that does not compile (no C++ compiler, one too old for
its flags) is left out with one line on stderr, and the package still installs: dinat
then runs the variants that did build, or its PyTorch fallbacks (`dinat doctor` says
which). With DINAT_REQUIRE_CPU_KERNELS set (CI), such a failure stops the build.
"""

import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError
from setuptools.modified import newer_group

HERE = Path(__file__).resolve().parent
OPS = Path("dinat_cli", "ops")
CSRC = OPS / "csrc"
variants = runpy.run_path(str(HERE / OPS / "cpu_variants.py"))


class BuildCpuKernels(build_ext):
    """Builds each variant in its own folder (the portable variants share a source), in parallel."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext: Extension) -> None:
        target = self.get_ext_fullpath(ext.name)
        if not (self.force or newer_group([*ext.sources, *ext.depends], target)):
            return
        try:
            objects = self.compiler.compile(
                ext.sources,
                output_dir=os.path.join(self.build_temp, ext.name),
                extra_postargs=ext.extra_compile_args,
                depends=ext.depends,
            )
            self.compiler.link_shared_object(objects, target, extra_postargs=ext.extra_link_args, target_lang="c++")
        except (CCompilerError, CompileError, ExecError, LinkError, OSError) as error:
            lines = str(error).strip().splitlines() or [type(error).__name__]
            message = f"dinat: CPU kernels {ext.name} not built: {lines[0][:200]}"
            if os.environ.get("DINAT_REQUIRE_CPU_KERNELS"):
                # Not a compiler error, which setuptools would forgive an optional extension.
                raise RuntimeError(message) from error
            print(message, file=sys.stderr)


# Paths relative to this folder, as setuptools wants them; a change to any of these rebuilds.
depends = [str(path.relative_to(HERE)) for path in sorted((HERE / CSRC).glob("*.h"))]
depends += [str(OPS / "cpu_variants.py"), "setup.py"]
kernels = [
    Extension(
        f"dinat_cli.ops.{variant.module}",
        sources=[str(CSRC / variant.source)],
        depends=depends,
        extra_compile_args=[*variants["COMMON_FLAGS"], *variant.flags],
        extra_link_args=list(variants["LINK_FLAGS"]),
        language="c++",
        # An editable install copies only the variants that were built.
        optional=True,
    )
    for variant in variants["variants_for"]()
]

# pyproject's packages.find cannot add dinat_cli.weights (mapped from weights/ by package-dir).
setup(
    packages=[*find_packages(include=["dinat_cli*"]), "dinat_cli.weights"],
    ext_modules=kernels,
    cmdclass={"build_ext": BuildCpuKernels},
)
