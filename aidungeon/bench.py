"""`aidungeon bench`: measured speed of the turn loop on this machine (written next)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--turns", type=int, default=20)
