"""The game API's request and response bodies (pydantic), and events as JSON.

These are the wire format the OpenAPI schema at /docs shows; routes stay thin around them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aidungeon.game.events import Event, Table
from aidungeon.game.session import MAX_LINE_CHARS

MAX_NAME_CHARS = 200
MAX_OPENING_CHARS = 20_000


class NewStory(BaseModel):
    """A story from a setting (with a character and the player's name), or from a custom opening."""

    model_config = ConfigDict(extra="forbid")

    setting: str | None = Field(default=None, max_length=MAX_NAME_CHARS, examples=["fantasy"])
    character: str | None = Field(default=None, max_length=MAX_NAME_CHARS, examples=["knight"])
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS, examples=["Aria"])
    prompt: str | None = Field(default=None, max_length=MAX_OPENING_CHARS, examples=["You wake up on the moon."])

    @model_validator(mode="after")
    def _one_kind(self) -> NewStory:
        if (self.prompt is None) == (self.setting is None):
            raise ValueError("give either `setting` (with `character` and `name`) or `prompt`")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("the opening `prompt` is empty")
        return self


class Line(BaseModel):
    """One line exactly as typed in the terminal: an action, or a command such as /retry."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=MAX_LINE_CHARS, examples=["eat the moon"])


class Created(BaseModel):
    id: str


class StorySummary(BaseModel):
    id: str
    title: str
    turns: int
    model: str
    created_at: datetime
    updated_at: datetime


class StoryTurn(BaseModel):
    action: str
    result: str


class StoryDetail(StorySummary):
    opening: str
    player_name: str
    memory: list[str]
    author_note: str
    path: list[StoryTurn]
    settings: dict[str, dict[str, Any]]


class SettingChoice(BaseModel):
    id: str
    title: str
    description: str
    characters: list[str]


def event_json(event: Event) -> dict[str, Any]:
    """An event as the SSE stream and tests see it: `kind` and `text`, plus a table or edit data."""
    body: dict[str, Any] = {"kind": event.kind.value, "text": event.text}
    if isinstance(event.data, Table):
        body["table"] = {
            "title": event.data.title,
            "columns": list(event.data.columns),
            "rows": [list(row) for row in event.data.rows],
            "footer": event.data.footer,
        }
    elif isinstance(event.data, str):
        body["data"] = event.data
    return body
