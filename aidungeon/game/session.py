"""A session: one adventure driven by lines of player input, yielding events. No terminal I/O.

`Session.handle(line)` cleans the line, then runs a slash command (through the dispatcher it
was given, so this module never imports the commands) or plays a turn (`turn.py`), and saves
explicitly at the end of it through its save slot (`persist.py`). It owns the settings and is
the only way commands change the story: a change is checked before it is kept, so a failed
command changes nothing. A failed save is one error line, and the session remembers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Config, normalize_key
from aidungeon.core.context import Context
from aidungeon.core.errors import AIDungeonError, SaveError, StoryError
from aidungeon.core.story import Story
from aidungeon.core.text import clean_text
from aidungeon.game.events import Event, EventKind
from aidungeon.game.persist import SlotKeeper, saved_before_shown
from aidungeon.game.turn import MIN_BUDGET, Turn, TurnPipeline
from aidungeon.storage.saves import SaveData

# The longest line (and so memory entry, note, world entry or altered result) a player may enter.
MAX_LINE_CHARS = 10_000

Dispatch = Callable[["Session", str], Iterator[Event]]
T = TypeVar("T")


class Session:
    """A running adventure: the story, its settings, its turn pipeline and its save slot."""

    def __init__(
        self,
        story: Story,
        config: Config,
        *,
        turns: TurnPipeline,
        keeper: SlotKeeper,
        commands: Dispatch,
        exports_dir: Path | None = None,
    ) -> None:
        self.story, self.config, self.turns, self.keeper = story, config, turns, keeper
        self.exports_dir = exports_dir
        self._commands = commands

    @property
    def save_name(self) -> str:
        return self.keeper.name

    def handle(self, line: str, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Run one line of player input; every error comes back as one ERROR event."""
        line = clean_text(line)  # piped bytes arrive as lone surrogates; control characters as typed
        try:
            if len(line) > MAX_LINE_CHARS:
                raise StoryError(f"that line has {len(line):,} characters; the limit is {MAX_LINE_CHARS:,}")
            if line.strip().startswith("/"):
                yield from self._commands(self, line.strip())
            else:
                yield from self.act(line, cancel)
        except AIDungeonError as err:
            yield Event(EventKind.ERROR, str(err))

    def begin(self, *, show_recap: bool = True, cancel: CancelToken | None = None) -> Iterator[Event]:
        """The recap, then the first result of a story that has none (see TurnPipeline.begin)."""
        return self._run(
            self.turns.begin(self.story, self.config, show_recap=show_recap, cancel=cancel or CancelToken())
        )

    def act(self, line: str, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Play one action (an empty line continues the story)."""
        return self._run(self.turns.act(self.story, self.config, line, cancel or CancelToken()))

    def retry(self, cancel: CancelToken | None = None) -> Iterator[Event]:
        """Show another continuation of the last turn."""
        return self._run(self.turns.retry(self.story, self.config, cancel or CancelToken()))

    def _run(self, turn: Turn) -> Iterator[Event]:
        """A turn, its result saved before it is shown; what it leaves is saved at its end."""
        before = self.config
        try:
            self.config, result_saved = yield from saved_before_shown(turn, self.autosave)
        except AIDungeonError:
            yield from self.autosave()
            raise
        if not result_saved or self.config != before:
            yield from self.autosave()

    def autosave(self) -> Iterator[Event]:
        """Save now; a failure is one line after what the player already saw."""
        try:
            self.save()
        except SaveError as err:
            yield Event(EventKind.ERROR, f"not saved: {err}. It stays in memory; /save tries again")

    def save(self) -> str:
        """Write the adventure to its slot; SaveError (and `unsaved` stays true) on failure."""
        return self.keeper.write(self.save_data())

    def save_data(self) -> SaveData:
        settings = {k: v for k, v in self.config.to_dict().items() if k != "app"}
        return SaveData(story=self.story, model=self.keeper.model_name, settings=settings)

    def save_as(self, name: str, *, force: bool = False) -> str:
        """Save under `name` and play on there; another adventure's save is replaced only with force."""
        return self.keeper.write_as(name, self.save_data(), force=force)

    def load(self, name: str) -> list[str]:
        """Switch to a saved adventure, saving this one first; a failed load changes nothing."""
        self.story, self.config, warnings = self.keeper.load(name, self.config, self.save)
        self.turns.forget_window()
        return warnings

    def build_context(self) -> Context:
        """The window the model sees next: what /context and the status bar both show."""
        return self.turns.context(self.story, self.config)

    def edit(self, change: Callable[[Story], T]) -> T:
        """Apply a change (Story's methods check before they change anything), keep it only if
        the story still fits the window, then save."""
        before = self.story.to_dict()
        outcome = change(self.story)
        try:
            self.build_context()
        except AIDungeonError:
            self.story = Story.from_dict(before)
            raise
        self.save()
        return outcome

    def set_value(self, key: str, value: str) -> str:
        """Change one setting for this adventure (saved with it); returns the setting's name."""
        name = normalize_key(key)
        config = self.config.with_value(name, value)
        if config.section_of(name) == "app":
            raise StoryError(f"{name} is chosen when the game starts: use --{name} on the command line")
        if self.turns.budget(config) < MIN_BUDGET:
            raise StoryError("that leaves no room for the story in the window; lower max_new_tokens")
        self.config = config
        self.save()
        return name

    def close(self) -> None:
        """Leave the save slot (the game is over)."""
        self.keeper.close()
