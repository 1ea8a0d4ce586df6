"""`python -m dinat_cli` is the `dinat` command."""

from dinat_cli.cli import main

main()
