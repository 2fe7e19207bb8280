"""Sessions for tests, built as the CLI builds them (`start_session`) on the test's data folder."""

from __future__ import annotations

from typing import Any

from aidungeon.core.config import Config
from aidungeon.core.story import Story
from aidungeon.game.events import Event
from aidungeon.game.session import Session
from aidungeon.game.start import start_session
from aidungeon.model.protocol import EngineProtocol
from aidungeon.storage import saves
from aidungeon.storage.paths import default_paths
from aidungeon.storage.prompts import custom_story

OPENING = "You are in a dark cave. Water drips from the ceiling."


def make_session(
    engine: EngineProtocol,
    *,
    story: Story | None = None,
    seed: int | None = 7,
    save_name: str = "t",
    model_name: str = "fake",
    **settings: Any,
) -> Session:
    """A session on `engine` with 16 new tokens a turn, the given seed and settings."""
    config = Config().with_value("max_new_tokens", 16).with_value("seed", seed)
    for key, value in settings.items():
        config = config.with_value(key, value)
    return start_session(
        story or custom_story(OPENING), engine, config, default_paths(), save_name=save_name, model_name=model_name
    )


def run(session: Session, line: str) -> list[Event]:
    return list(session.handle(line))


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def only(events: list[Event], kind: str) -> Event:
    found = [e for e in events if e.kind == kind]
    assert len(found) == 1, f"expected one {kind!r} event, got {events}"
    return found[0]


def saved_story(session: Session) -> dict[str, Any]:
    data, _ = saves.read_save(default_paths().saves_dir, session.save_name)
    return data.story.to_dict()
