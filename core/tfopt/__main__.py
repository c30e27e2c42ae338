"""``python -m tfopt``: the same command as ``tfopt``."""

from .cli import main

main(prog_name="tfopt")
