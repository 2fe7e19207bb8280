"""Lets `python -m aidungeon` run the game."""

from aidungeon.cli import main

raise SystemExit(main())
