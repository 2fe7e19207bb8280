"""aidungeon: an AI text adventure for the terminal, played on a local language model."""

__version__ = "0.1.0"
