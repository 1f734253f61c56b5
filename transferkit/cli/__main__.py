"""``python -m transferkit.cli`` (and ``torchrun -m transferkit.cli``) runs the command line."""

from transferkit.cli import run

run()
