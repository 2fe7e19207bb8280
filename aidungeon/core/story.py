"""The story as plain data: opening, turns in a branching tree, memory, lore and notes.

A `Story` holds every turn ever played. Each turn has a parent, so `/undo` followed by a new
action keeps the old branch; `head` names the last turn of the branch being played. Each turn
keeps all its `Candidate` results (retries, best-of-n) with the seed and sampler settings that
made them. This module does no I/O and imports no model code: saves, the game and a future
server all share it. `to_dict`/`from_dict` give the current save schema; versions and files are
`saves.py`'s business.

Every text that enters a story is passed through `core.text.clean_text`: when a `Candidate`, `Turn`,
`WorldEntry` or `Story` is built (so `from_dict`, imports and story files are covered) and in the
mutators that take text (`append`, `alter`, `remember`, `set_author_note`). `from_dict` checks the
type of every field and the size limits below, so a malformed save fails at load with one reason,
never later in the game (or in every autosave).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aidungeon.core.errors import StoryError
from aidungeon.core.text import clean_text

# Bounds on what a story may hold. A long adventure is a few thousand turns of a few hundred
# characters; these leave a wide margin while keeping a save loadable in about a second.
MAX_TURNS = 50_000
MAX_CANDIDATES = 512  # per turn: retries keep adding
MAX_TEXT_CHARS = 100_000  # per text: an opening, an action, a result, a memory or lore entry
MAX_ENTRIES = 10_000  # memory entries, world info entries, keys of one entry


@dataclass
class Candidate:
    """One generated continuation, with what made it."""

    text: str
    seed: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    score: float | None = None

    def __post_init__(self) -> None:
        self.text = clean_text(self.text)


@dataclass
class Turn:
    """A player action and the story's continuation of it."""

    id: int
    parent: int | None
    action: str
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int = 0

    def __post_init__(self) -> None:
        self.action = clean_text(self.action)

    @property
    def result(self) -> str:
        return self.candidates[self.chosen].text if self.candidates else ""


@dataclass
class WorldEntry:
    """World Info: `text` enters the context when one of `keys` shows up (or always, if constant)."""

    keys: list[str]
    text: str
    constant: bool = False

    def __post_init__(self) -> None:
        self.keys = [clean_text(key) for key in self.keys]
        self.text = clean_text(self.text)

    def matches(self, text: str) -> bool:
        lowered = text.lower()
        return any(key.strip().lower() in lowered for key in self.keys if key.strip())


@dataclass
class Story:
    """An adventure: the opening plus a tree of turns, and what the player pinned."""

    opening: str
    title: str = ""
    player_name: str = ""
    pin_opening: bool = False
    memory: list[str] = field(default_factory=list)
    author_note: str = ""
    world: list[WorldEntry] = field(default_factory=list)
    turns: dict[int, Turn] = field(default_factory=dict)
    head: int | None = None
    redo_stack: list[int] = field(default_factory=list)
    next_id: int = 1

    def __post_init__(self) -> None:
        self.opening = clean_text(self.opening)
        self.title = clean_text(self.title)
        self.player_name = clean_text(self.player_name)
        self.author_note = clean_text(self.author_note)
        self.memory = [clean_text(entry) for entry in self.memory]

    # -- reading -------------------------------------------------------------------------

    def path(self) -> list[Turn]:
        """The turns of the current branch, oldest first."""
        turns: list[Turn] = []
        node = self.head
        while node is not None:
            turn = self.turns[node]
            turns.append(turn)
            node = turn.parent
        turns.reverse()
        return turns

    @property
    def last(self) -> Turn | None:
        return self.turns[self.head] if self.head is not None else None

    def children(self, turn_id: int | None) -> list[Turn]:
        return [t for t in self.turns.values() if t.parent == turn_id]

    def depth(self, turn_id: int) -> int:
        """The turn's number on its branch (1 = the first turn after the opening)."""
        count = 0
        node: int | None = turn_id
        while node is not None:
            count += 1
            node = self.turns[node].parent
        return count

    def leaves(self) -> list[Turn]:
        """The last turn of every branch, in the order they were played."""
        parents = {t.parent for t in self.turns.values()}
        return [t for t in self.turns.values() if t.id not in parents]

    # -- changing ------------------------------------------------------------------------

    def append(self, action: str) -> Turn:
        """Start a new turn after `head`; its result is added later with `add_candidates`."""
        if len(self.turns) >= MAX_TURNS:
            raise StoryError(f"the story has reached {MAX_TURNS} turns; export it and start a new adventure")
        _check_length(action, "the action")
        turn = Turn(id=self.next_id, parent=self.head, action=action)
        self.turns[turn.id] = turn
        self.next_id += 1
        self.head = turn.id
        self.redo_stack.clear()
        return turn

    def add_candidates(self, candidates: list[Candidate], *, choose: int | None = None) -> Turn:
        """Attach results to the last turn and show `choose` (default: the first one added)."""
        turn = self._require_last()
        if not candidates:
            raise ValueError("add_candidates needs at least one candidate")
        if choose is not None and not 0 <= choose < len(candidates):
            raise ValueError(f"choose={choose} is not one of the {len(candidates)} new candidates")
        if len(turn.candidates) + len(candidates) > MAX_CANDIDATES:
            raise StoryError(f"this turn has reached {MAX_CANDIDATES} alternatives; undo it and try another action")
        first_new = len(turn.candidates)
        turn.candidates.extend(candidates)
        turn.chosen = first_new + (choose or 0)
        return turn

    def choose(self, index: int) -> Turn:
        turn = self._require_last()
        if not 0 <= index < len(turn.candidates):
            raise StoryError(f"there is no alternative {index + 1}")
        turn.chosen = index
        return turn

    def alter(self, text: str) -> Turn:
        """Replace the shown result of the last turn with the player's own text."""
        turn = self._require_last()
        _check_length(text, "the text")
        text = clean_text(text)
        if turn.candidates:
            turn.candidates[turn.chosen].text = text
        else:
            turn.candidates.append(Candidate(text=text))
        return turn

    def remember(self, text: str) -> None:
        """Add a memory entry (kept in every prompt)."""
        if len(self.memory) >= MAX_ENTRIES:
            raise StoryError(f"memory holds {MAX_ENTRIES} entries already; /forget some first")
        _check_length(text, "the memory entry")
        self.memory.append(clean_text(text))

    def set_author_note(self, text: str) -> None:
        """Replace the author's note ("" clears it)."""
        _check_length(text, "the author's note")
        self.author_note = clean_text(text)

    def discard_last(self) -> Turn:
        """Remove the last turn entirely (a generation that was stopped or failed)."""
        turn = self._require_last()
        if self.children(turn.id):
            raise StoryError("that turn has later turns and cannot be discarded")
        del self.turns[turn.id]
        self.head = turn.parent
        return turn

    def undo(self) -> Turn:
        """Step back one turn; the turn stays in the tree and `redo` brings it back."""
        turn = self._require_last()
        self.head = turn.parent
        self.redo_stack.append(turn.id)
        return turn

    def redo(self) -> Turn:
        if not self.redo_stack:
            raise StoryError("there is nothing to redo")
        turn = self.turns[self.redo_stack.pop()]
        self.head = turn.id
        return turn

    def switch_branch(self, turn_id: int) -> Turn:
        """Continue from the given turn (usually a leaf listed by /branches)."""
        if turn_id not in self.turns:
            raise StoryError(f"there is no turn {turn_id}; /branches lists them")
        self.head = turn_id
        self.redo_stack.clear()
        return self.turns[turn_id]

    def _require_last(self) -> Turn:
        if self.head is None:
            raise StoryError("the story has no turns yet")
        return self.turns[self.head]

    # -- text ----------------------------------------------------------------------------

    def transcript(self) -> str:
        """The current branch as plain text: opening, then `> action` and result per turn."""
        parts = [self.opening.strip()]
        for turn in self.path():
            if turn.action:
                parts.append(f"> {turn.action}")
            if turn.result:
                parts.append(turn.result)
        return "\n\n".join(p for p in parts if p)

    # -- plain data ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "player_name": self.player_name,
            "opening": self.opening,
            "pin_opening": self.pin_opening,
            "memory": list(self.memory),
            "author_note": self.author_note,
            "world": [asdict(entry) for entry in self.world],
            "turns": [asdict(turn) for turn in sorted(self.turns.values(), key=lambda t: t.id)],
            "head": self.head,
            "redo_stack": list(self.redo_stack),
            "next_id": self.next_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Story:
        """Rebuild from `to_dict` output. Raises ValueError (one short reason) on data of the wrong shape."""
        if not isinstance(data, dict):
            raise ValueError(f"the story must be a table, not {type(data).__name__}")
        raw_turns = _list(data.get("turns", []), "turns", MAX_TURNS)
        turns: dict[int, Turn] = {}
        for raw in raw_turns:
            turn = _turn(raw)
            if turn.id in turns:
                raise ValueError(f"turn {turn.id} appears twice")
            turns[turn.id] = turn
        story = cls(
            opening=_text(data.get("opening"), "the opening"),
            title=_text(data.get("title", ""), "the title"),
            player_name=_text(data.get("player_name", ""), "the player's name"),
            pin_opening=_bool(data.get("pin_opening", False), "pin_opening"),
            memory=[_text(m, "a memory entry") for m in _list(data.get("memory", []), "memory", MAX_ENTRIES)],
            author_note=_text(data.get("author_note", ""), "the author's note"),
            world=[_world_entry(w) for w in _list(data.get("world", []), "world info", MAX_ENTRIES)],
            turns=turns,
            head=_optional_int(data.get("head"), "head"),
            redo_stack=[_int(i, "the redo list") for i in _list(data.get("redo_stack", []), "redo list", MAX_TURNS)],
            next_id=_int(data.get("next_id", max(turns, default=0) + 1), "next_id"),
        )
        story.validate()
        return story

    def validate(self) -> None:
        """Check the tree's links, so a damaged save fails at load rather than mid-game."""
        ids = set(self.turns)
        for turn in self.turns.values():
            if turn.parent is not None and (turn.parent not in ids or turn.parent >= turn.id):
                # Parents are always created first, so a larger id means a broken (or cyclic) tree.
                raise ValueError(f"turn {turn.id} points to a bad parent {turn.parent}")
            if turn.candidates and not 0 <= turn.chosen < len(turn.candidates):
                raise ValueError(f"turn {turn.id} shows a missing alternative")
        if self.head is not None and self.head not in ids:
            raise ValueError("the story's current turn is missing")
        if any(i not in ids for i in self.redo_stack):
            raise ValueError("the redo list names a missing turn")
        if ids and self.next_id <= max(ids):
            raise ValueError("turn numbering is inconsistent")


def _check_length(text: str, what: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise StoryError(f"{what} is too long ({len(text)} characters; at most {MAX_TEXT_CHARS})")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} is too long ({len(value)} characters; at most {MAX_TEXT_CHARS})")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {type(value).__name__}")
    return value


def _optional_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, not {type(value).__name__}")
    return value


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list, not {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{what} holds {len(value)} entries; at most {limit} are allowed")
    return value


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a table, not {type(value).__name__}")
    return value


_FLAT_VALUES = (str, int, float, bool, type(None))


def _sampling(value: Any) -> dict[str, Any]:
    """A candidate's sampler settings: a flat table of numbers, texts, true/false or null.

    Anything nested is refused here: a deeply nested value would load, then break every save.
    """
    table = _table(value if value is not None else {}, "a result's sampling")
    if len(table) > MAX_ENTRIES or not all(isinstance(v, _FLAT_VALUES) for v in table.values()):
        raise ValueError("a result's sampling must be a flat table of numbers, texts or true/false")
    return dict(table)


def _turn(raw: Any) -> Turn:
    raw = _table(raw, "a turn")
    return Turn(
        id=_int(raw.get("id"), "a turn's id"),
        parent=_optional_int(raw.get("parent"), "a turn's parent"),
        action=_text(raw.get("action"), "an action"),
        candidates=[_candidate(c) for c in _list(raw.get("candidates", []), "a turn's results", MAX_CANDIDATES)],
        chosen=_int(raw.get("chosen", 0), "a turn's chosen result"),
    )


def _candidate(raw: Any) -> Candidate:
    raw = _table(raw, "a result")
    score = raw.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ValueError(f"a result's score must be a number, not {type(score).__name__}")
    return Candidate(
        text=_text(raw.get("text"), "a result"),
        seed=_optional_int(raw.get("seed"), "a result's seed"),
        sampling=_sampling(raw.get("sampling")),
        score=None if score is None else float(score),
    )


def _world_entry(raw: Any) -> WorldEntry:
    raw = _table(raw, "a world info entry")
    keys = _list(raw.get("keys", []), "world info keys", MAX_ENTRIES)
    if not all(isinstance(k, str) for k in keys):
        raise ValueError("world info keys must be a list of texts")
    return WorldEntry(
        keys=[_text(k, "a world info key") for k in keys],
        text=_text(raw.get("text"), "world info text"),
        constant=_bool(raw.get("constant", False), "a world info entry's constant"),
    )
