"""The story as plain data: opening, turns in a branching tree, memory, lore and notes.

A `Story` holds every turn ever played. Each turn has a parent, so `/undo` followed by a new
action keeps the old branch; `head` names the last turn of the branch being played. Each turn
keeps all its `Candidate` results (retries, best-of-n) with the seed and sampler settings that
made them. This module does no I/O and imports no model code: saves, the game and a future
server all share it. `to_dict`/`from_dict` give the current save schema; versions and files are
`saves.py`'s business.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aidungeon.core.errors import StoryError


@dataclass
class Candidate:
    """One generated continuation, with what made it."""

    text: str
    seed: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    score: float | None = None


@dataclass
class Turn:
    """A player action and the story's continuation of it."""

    id: int
    parent: int | None
    action: str
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int = 0

    @property
    def result(self) -> str:
        return self.candidates[self.chosen].text if self.candidates else ""


@dataclass
class WorldEntry:
    """World Info: `text` enters the context when one of `keys` shows up (or always, if constant)."""

    keys: list[str]
    text: str
    constant: bool = False

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
        if turn.candidates:
            turn.candidates[turn.chosen].text = text
        else:
            turn.candidates.append(Candidate(text=text))
        return turn

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
        """Rebuild from `to_dict` output. Raises KeyError, TypeError, ValueError or AttributeError on bad data."""
        turns: dict[int, Turn] = {}
        for raw in data["turns"]:
            candidates = [_candidate(c) for c in raw.get("candidates", [])]
            turn = Turn(
                id=int(raw["id"]),
                parent=None if raw["parent"] is None else int(raw["parent"]),
                action=_str(raw["action"], "action"),
                candidates=candidates,
                chosen=int(raw.get("chosen", 0)),
            )
            if turn.id in turns:
                raise ValueError(f"turn {turn.id} appears twice")
            turns[turn.id] = turn
        story = cls(
            opening=str(data["opening"]),
            title=str(data.get("title", "")),
            player_name=str(data.get("player_name", "")),
            pin_opening=bool(data.get("pin_opening", False)),
            memory=[str(m) for m in data.get("memory", [])],
            author_note=str(data.get("author_note", "")),
            world=[_world_entry(w) for w in data.get("world", [])],
            turns=turns,
            head=data.get("head"),
            redo_stack=[int(i) for i in data.get("redo_stack", [])],
            next_id=int(data.get("next_id", max(turns, default=0) + 1)),
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


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {type(value).__name__}")
    return value


def _candidate(raw: dict[str, Any]) -> Candidate:
    seed = raw.get("seed")
    score = raw.get("score")
    return Candidate(
        text=_str(raw["text"], "a result"),
        seed=None if seed is None else int(seed),
        sampling=dict(raw.get("sampling") or {}),
        score=None if score is None else float(score),
    )


def _world_entry(raw: dict[str, Any]) -> WorldEntry:
    keys = raw.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("world info keys must be a list of texts")
    return WorldEntry(keys=list(keys), text=_str(raw["text"], "world info text"), constant=bool(raw.get("constant")))
