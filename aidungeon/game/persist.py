"""The session's hold on its save slot: writing, renaming, switching to another save.

It remembers whether the adventure has changes that could not be saved, opens a slot before
using it and closes the one it leaves (so a slot's lock, when slots get one, is held exactly
while a session plays in it). It decides nothing about when to save: the session does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterator

from aidungeon.core.config import Config
from aidungeon.core.errors import SaveError
from aidungeon.core.story import Story
from aidungeon.game.events import Event, EventKind
from aidungeon.game.turn import Turn
from aidungeon.storage.saves import SaveData
from aidungeon.storage.slots import SaveSlot, SaveStore


def settings_from_save(config: Config, data: SaveData) -> Config:
    """A save's sampling and context settings, with the running app settings (model, device).
    ConfigError when the save's values are out of range."""
    saved = Config.from_dict({k: v for k, v in data.settings.items() if k in ("sampling", "context")})
    return dataclasses.replace(saved, app=config.app)


def saved_before_shown(
    turn: Turn, autosave: Callable[[], Iterator[Event]]
) -> Generator[Event, None, tuple[Config, bool]]:
    """The turn's events with each result saved before it is shown, so a kill after the player
    read a result never loses it (a failed save is one line after the text). Returns the turn's
    settings and whether a result was saved."""
    result_saved = False
    while True:
        try:
            event = next(turn)
        except StopIteration as done:
            return done.value, result_saved
        failure: list[Event] = []
        if event.kind is EventKind.RESULT:
            failure, result_saved = list(autosave()), True
        yield event
        yield from failure


class SlotKeeper:
    """The slot a session saves in, and whether the last write to it failed."""

    def __init__(self, store: SaveStore, name: str, *, model_name: str) -> None:
        self.store = store
        self.model_name = model_name
        self.slot = store.slot(name)
        self.slot.open()
        self.unsaved = False

    @property
    def name(self) -> str:
        return self.slot.name

    def write(self, data: SaveData) -> str:
        """Save to the current slot; on failure SaveError, and `unsaved` stays true until a write works."""
        self.unsaved = True
        where = self.slot.write(data)
        self.unsaved = False
        return where

    def write_as(self, name: str, data: SaveData, *, force: bool) -> str:
        """Save under `name` and keep saving there. A save of another adventure under that name
        is replaced only with `force`; a failed write leaves the current slot as it was."""
        slot = self.store.slot(name)
        if slot.name == self.slot.name:
            return self.write(data)
        if slot.exists() and not force:
            raise SaveError(f"there is already a save named {slot.name!r}; /save {name} --force replaces it")
        slot.open()
        try:
            where = slot.write(data)
        except BaseException:
            slot.close()
            raise
        self._switch(slot)
        self.unsaved = False
        return where

    def load(self, name: str, config: Config, save_current: Callable[[], object]) -> tuple[Story, Config, list[str]]:
        """Read the save called `name` and its settings (on top of `config`'s app settings),
        save the current adventure, then play on in that slot. Any failure changes nothing."""
        slot = self.store.slot(name)
        same = slot.name == self.slot.name
        if not same:
            slot.open()
        try:
            data, warnings = (self.slot if same else slot).read()
            settings = settings_from_save(config, data)
            save_current()
        except BaseException:
            if not same:
                slot.close()
            raise
        if not same:
            self._switch(slot)
        self.unsaved = False
        if data.model != self.model_name:
            warnings.append(f"this adventure was played on {data.model}; it continues on {self.model_name}")
        return data.story, settings, warnings

    def _switch(self, slot: SaveSlot) -> None:
        self.slot.close()
        self.slot = slot

    def close(self) -> None:
        self.slot.close()
