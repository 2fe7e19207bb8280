"""A turn's Server-Sent Events, read back into the game's `Event`s.

`FrameReader` collects lines into frames (a blank line ends one, as the SSE spec says) and
`event_from_json` turns a frame's `data:` into the `Event` the server rendered from (a table into
a `Table`). Pure: no network, no terminal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aidungeon.game.events import Event, EventKind, Table

END = "end"


class StreamError(ValueError):
    """A frame that is not the game API's: the client shows it as a dropped turn."""


@dataclass(frozen=True)
class Frame:
    """One SSE frame: its event type (`message` unless named) and its data lines joined."""

    event: str
    data: str


@dataclass
class FrameReader:
    """Feeds lines (without their line ends) and returns each frame as a blank line completes it."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Frame | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> Frame | None:
        if not self._data and not self._event:
            return None
        frame = Frame(self._event or "message", "\n".join(self._data))
        self._event, self._data = "", []
        return frame


def event_from_json(body: dict[str, Any]) -> Event:
    """An event as the server sent it (`{"kind", "text", ["table"], ["data"]}`) back into an Event.

    A kind this client does not know (a newer server) is shown as plain text rather than refused."""
    try:
        kind = EventKind(str(body.get("kind", "")))
    except ValueError:
        kind = EventKind.TEXT
    text = str(body.get("text", ""))
    table = body.get("table")
    if isinstance(table, dict):
        return Event(kind, text, _table(table))
    data = body.get("data")
    return Event(kind, text, data if isinstance(data, str) else None)


def _table(body: dict[str, Any]) -> Table:
    return Table(
        title=str(body.get("title", "")),
        columns=tuple(str(c) for c in body.get("columns", [])),
        rows=tuple(tuple(str(cell) for cell in row) for row in body.get("rows", [])),
        footer=str(body.get("footer", "")),
    )


def parse_data(frame: Frame) -> dict[str, Any]:
    """A frame's data as a JSON object; StreamError for anything else."""
    try:
        body = json.loads(frame.data)
    except json.JSONDecodeError as err:
        raise StreamError(f"the server sent a frame that is not JSON: {frame.data[:80]!r}") from err
    if not isinstance(body, dict):
        raise StreamError(f"the server sent a frame that is not an object: {frame.data[:80]!r}")
    return body
