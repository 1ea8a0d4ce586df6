"""Only the package list: everything else is in pyproject.toml."""

from setuptools import find_packages, setup

# pyproject's packages.find cannot add dinat_cli.weights (mapped from weights/ by package-dir).
setup(packages=[*find_packages(include=["dinat_cli*"]), "dinat_cli.weights"])
