"""Playing stories for players: the server's use of the same game session the terminal drives.

A turn request opens the story's `Session` on a database slot (kept in a small cache while its
version is current, so the turn pipeline's window state and the engine's per-story cache keep
paying), runs one line through `Session.handle`, exactly as the terminal does, and lets the
session save through the slot. One turn per story runs at a time. The commands that would leave
the story or touch the server's files (/load, /save NAME, /export, /quit) have HTTP routes
instead. No game logic lives here, and nothing here knows HTTP.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Config
from aidungeon.core.context import Layout
from aidungeon.core.errors import AIDungeonError, SaveError, StoryError
from aidungeon.core.story import Story
from aidungeon.game import commands
from aidungeon.game.events import Event, EventKind
from aidungeon.game.persist import SlotKeeper, settings_from_save
from aidungeon.game.session import Session
from aidungeon.game.turn import TurnPipeline
from aidungeon.model.protocol import EngineProtocol
from aidungeon.server.schemas import event_json
from aidungeon.server.store import DbSlot, DbStore
from aidungeon.storage import prompts, saves

# A streamed preview is not part of what a line showed: its result carries the whole text.
_NOT_KEPT = (EventKind.PIECE, EventKind.RESTART)
# Sessions kept open between turns: enough for the players of one machine; others reopen from the database.
OPEN_SESSIONS = 256

_ELSEWHERE = {
    "load": "open another story from your story list",
    "export": "export from the story list (GET /api/stories/ID/export)",
    "quit": "every turn is saved already; just close the page or the client",
}


class StoryBusy(AIDungeonError):
    """A turn of this story is running."""


@dataclass(frozen=True)
class GameModel:
    """The model every story on this server plays on."""

    engine: EngineProtocol
    name: str
    layout: Layout


def server_dispatch(session: Session, line: str) -> Iterator[Event]:
    """The game's commands, minus those that have HTTP routes on a server."""
    word, _, argument = line.lstrip("/").partition(" ")
    entry = commands.REGISTRY.get(word.lower())
    if entry is not None and entry.name in _ELSEWHERE:
        raise StoryError(f"/{word} is not used on a server: {_ELSEWHERE[entry.name]}")
    if entry is not None and entry.name == "save" and argument.strip():
        raise StoryError("every story on a server is saved under its id; /save alone saves it now")
    yield from commands.dispatch(session, line)


@dataclass
class TurnCost:
    """What a turn's generation cost, sent with the end of its stream (for clients and the bench)."""

    new_tokens: int = 0
    prefill_tokens: int = 0


@dataclass(frozen=True)
class Answer:
    """How to answer a line: with `replay`, what it showed when it was played already, or by
    playing `line` (the line as sent, or `/retry` to finish an action saved without its result)."""

    line: str
    replay: list[dict[str, Any]] | None = None


class Games:
    """Every player's stories on one model."""

    def __init__(self, db: Engine, model: GameModel, config: Config, *, stories_dir: Path | None = None) -> None:
        self.db, self.model, self.config = db, model, config
        self.settings, self.setting_warnings = prompts.load_settings(stories_dir)
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._open: OrderedDict[str, tuple[int, Session]] = OrderedDict()

    def store(self, owner_id: int) -> DbStore:
        return DbStore(self.db, owner_id)

    # -- new stories -------------------------------------------------------------------------

    def create(self, owner_id: int, story: Story) -> str:
        """Store a new story (no turn is played); returns its id."""
        slot = self.store(owner_id).new_slot()
        self._write_new(slot, story, self.config)
        return slot.name

    def from_setting(self, setting: str, character: str, player_name: str) -> Story:
        """A new story from a setting's character; StoryError naming the choices when unknown."""
        chosen = prompts.find_setting(self.settings, setting)
        start = prompts.starting_story_parts(chosen, chosen.character(character), player_name)
        return prompts.new_story(start, player_name)

    def import_save(self, owner_id: int, data: saves.SaveData) -> str:
        """Store an imported save (its settings kept where valid); returns the new story's id."""
        slot = self.store(owner_id).new_slot()
        self._write_new(slot, data.story, settings_from_save(self.config, data))
        return slot.name

    def _write_new(self, slot: DbSlot, story: Story, config: Config) -> None:
        settings = {k: v for k, v in config.to_dict().items() if k != "app"}
        slot.write(saves.SaveData(story=story, model=self.model.name, settings=settings))

    # -- turns -------------------------------------------------------------------------------

    def claim(self, story_id: str) -> None:
        """Mark the story's turn as running; StoryBusy if one already is."""
        with self._lock:
            if story_id in self._running:
                raise StoryBusy("a turn of this story is still running; wait for it or stop it")
            self._running.add(story_id)

    def release(self, story_id: str) -> None:
        with self._lock:
            self._running.discard(story_id)

    def answer(self, owner_id: int, story_id: str, line: str, key: str | None) -> Answer:
        """How to answer `line` sent under `key`, on a story claimed by `claim`. A key that is not
        the one of the line that last wrote the story is a new line: play it. The same key again
        means its connection dropped after it wrote: replay what it showed; or, when it never
        ended (its replica died, or its client left and the turn was stopped), finish it from
        what was saved: an action kept without its result is drawn again (`/retry`), a result
        that was saved is shown."""
        if key is None:
            return Answer(line)
        store = self.store(owner_id)
        last = store.last_line(story_id)
        if last.key != key:
            return Answer(line)
        if last.reply is not None:
            return Answer(line, replay=json.loads(last.reply))
        data, _warnings = store.slot(story_id).read()
        path = data.story.path()
        if path and not path[-1].result:
            return Answer("/retry")
        return Answer(line, replay=[{"kind": EventKind.RESULT.value, "text": path[-1].result}] if path else [])

    def play(
        self,
        owner_id: int,
        story_id: str,
        line: str,
        cancel: CancelToken,
        cost: TurnCost | None = None,
        key: str | None = None,
    ) -> Iterator[Event]:
        """Run one line on a story claimed by `claim`; releases the claim when done. What the
        line's generation cost, if it generated, goes into `cost`. With a `key`, the story's writes
        record it and, once the line ends (not stopped), what it showed (see `answer`)."""
        try:
            session = self.open(owner_id, story_id)
            before = session.turns.telemetry.stats
            shown: list[Event] = []
            slot = session.keeper.slot
            if isinstance(slot, DbSlot):
                slot.turn_key = key
            taken_over = False
            try:
                for event in session.handle(line, cancel):
                    if event.kind is EventKind.RESULT and key is not None and session.keeper.unsaved:
                        settled = self._settle(owner_id, story_id, key, session)
                        if settled is not None:
                            taken_over = True
                            yield Event(EventKind.RESULT, settled)
                            break
                    if event.kind not in _NOT_KEPT:
                        shown.append(event)
                    yield event
            finally:
                if isinstance(slot, DbSlot):
                    slot.turn_key = None
                self._keep_or_drop(story_id, owner_id, session)
            if key is not None and not cancel.is_set() and not taken_over:
                # Only a line that wrote the story matches its key; one that changed nothing plays again harmlessly.
                self.store(owner_id).keep_reply(story_id, key, json.dumps([event_json(e) for e in shown]))
            stats = session.turns.telemetry.stats
            if cost is not None and stats is not None and stats is not before:
                cost.new_tokens, cost.prefill_tokens = stats.new_tokens, stats.prefill_tokens
        finally:
            self.release(story_id)

    def _settle(self, owner_id: int, story_id: str, key: str, session: Session) -> str | None:
        """The result to show for the line `key`, whose save here conflicted with another run of
        the same line (sent again while the replica that first ran it still ran it), or None when
        the conflict is with another line. If the other run saved its result, that is what stands;
        if it was stopped and saved only the action, this run's results are written onto it."""
        store = self.store(owner_id)
        if store.last_line(story_id).key != key:
            return None
        slot = store.slot(story_id)
        data, _warnings = slot.read()
        stored, mine = data.story.last, session.story.last
        if stored is None or mine is None or stored.action != mine.action:
            return None
        if not stored.result:
            data.story.add_candidates(mine.candidates, choose=mine.chosen)  # onto `stored`
            slot.turn_key = key
            try:
                slot.write(data)
            except SaveError:  # yet another write came first: the plain "not saved" line stands
                return None
        return stored.result

    def open(self, owner_id: int, story_id: str) -> Session:
        """The story's session: the open one while it is current, else read from the database.
        StoryNotFound (a SaveError) for a story that is not this player's."""
        store = self.store(owner_id)
        with self._lock:
            cached = self._open.pop(story_id, None)
        slot_version = store.slot(story_id).version  # also checks the player owns it
        if cached is not None and cached[0] == owner_id and _version(cached[1]) == slot_version:
            return cached[1]
        keeper = SlotKeeper(store, story_id, model_name=self.model.name)
        data, _warnings = keeper.slot.read()
        config = settings_from_save(self.config, data)
        turns = TurnPipeline(self.model.engine, layout=self.model.layout, session_id=story_id, shared_engine=True)
        return Session(data.story, config, turns=turns, keeper=keeper, commands=server_dispatch)

    def _keep_or_drop(self, story_id: str, owner_id: int, session: Session) -> None:
        """Keep a session whose story is saved as it stands; one with unsaved changes (a write
        refused or failed) is dropped, so the next turn reads what the database holds."""
        if session.keeper.unsaved or session.save_name != story_id:
            return
        with self._lock:
            self._open[story_id] = (owner_id, session)
            while len(self._open) > OPEN_SESSIONS:
                self._open.popitem(last=False)

    def forget(self, story_id: str) -> None:
        with self._lock:
            self._open.pop(story_id, None)


def _version(session: Session) -> int | None:
    slot = session.keeper.slot
    return slot.version if isinstance(slot, DbSlot) else None
