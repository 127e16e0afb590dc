"""`python -m controller.cli` runs the same CLI as the `xlt` script."""

from controller.cli import main

main()
