"""The game's exceptions. Each message is written for the player: the UI shows it as one line.

Errors are raised deep (where the problem is known) and caught once, at the UI boundary.
"""


class AIDungeonError(Exception):
    """A problem the player can understand and act on; `str(err)` is the whole message."""

    exit_code = 1


class ConfigError(AIDungeonError):
    """A bad setting value, setting name or config file."""

    exit_code = 2


class SaveError(AIDungeonError):
    """A save that cannot be read, written or found."""


class ModelError(AIDungeonError):
    """A model that cannot be found, fetched, converted or loaded."""


class OutOfMemoryError(ModelError):
    """The model or a generation does not fit in the device's memory."""


class StoryError(AIDungeonError):
    """An action the story cannot take (nothing to undo, an unknown branch, ...)."""


class BackendError(AIDungeonError):
    """A model server the game uses as its engine cannot be reached, fails or drops mid-turn."""
