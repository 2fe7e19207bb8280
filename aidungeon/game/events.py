"""What the game tells the player: `Event`s (their kind an `EventKind`) and `Table`s.

A terminal renders them, a server would send them; tests and the benchmark read them. This
module builds no events beyond `recap`, and renders nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from aidungeon.core.story import Story


class EventKind(enum.StrEnum):
    """A StrEnum, so a renderer may dispatch on the kind's name."""

    OPENING = "opening"  # the story's opening text
    STORY = "story"  # story text (a recap, a redo, an altered result)
    ACTION = "action"  # the action as it entered the story
    PIECE = "piece"  # streamed text of a result in progress
    RESTART = "restart"  # drop the streamed text: the turn is being drawn again
    RESULT = "result"  # the final text of a turn, which replaces the streamed preview
    INFO = "info"
    ERROR = "error"
    TEXT = "text"  # a block such as /help or /print
    TABLE = "table"  # data is a Table
    EDIT = "edit"  # the UI lets the player edit `text`, then sends `data` + the edited text
    QUIT = "quit"


# The data of an ERROR event when every attempt at a turn gave no usable text (the benchmark
# counts those rather than stopping).
STALLED = "stalled"


@dataclass(frozen=True)
class Table:
    """Tabular output (/context, /saves, /settings, ...), rendered by the UI."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    footer: str = ""


@dataclass(frozen=True)
class Event:
    """Something for the player. `kind` may be given by name ("info"); it is kept as an EventKind."""

    kind: EventKind
    text: str = ""
    data: object = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))


def recap(story: Story, turns: int = 3) -> Iterator[Event]:
    """The opening (for a young story) or the last few turns of the current branch: what the
    player sees on starting, which needs no model."""
    path = [t for t in story.path() if t.result]
    if len(path) <= turns:
        yield Event(EventKind.OPENING, story.opening.strip())
    else:
        yield Event(EventKind.INFO, f"... {len(path) - turns} earlier turns (/print shows the whole story)")
    for turn in path[-turns:]:
        if turn.action:
            yield Event(EventKind.ACTION, turn.action)
        yield Event(EventKind.STORY, turn.result)
