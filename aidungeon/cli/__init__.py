"""The command line: argument parsing and wiring only (play, admin, bench), with errors mapped
to one clear line and an exit code."""

from aidungeon.cli.app import main

__all__ = ["main"]
