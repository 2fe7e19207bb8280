"""Story -> the exact token window the model sees next.

The window is built from parts, each tokenized on its own and concatenated, so every count
is exact and the ids the model gets are the ids counted. The order keeps the cached prefix
stable from turn to turn:

    memory | constant world info | pinned opening | older story | world info hits
    | author's note | the last `note_depth` turns

Parts that change often (world info hits, the note) sit near the end. When the story no
longer fits, the oldest turns are dropped in one chunk (`drop_fraction` of the budget) at a
turn boundary, not a few tokens every turn, so most turns keep the whole prefix in the cache.
`start` carries that boundary from one build to the next. This module is pure: it takes an
`encode` function and imports no model code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aidungeon.config import ContextSettings
from aidungeon.errors import StoryError
from aidungeon.story import Story, Turn, WorldEntry

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Part:
    """One labelled piece of the window."""

    name: str
    text: str
    ids: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Context:
    """The window: its parts in order, the ids to feed, and the first story segment kept."""

    parts: tuple[Part, ...]
    budget: int
    start: int

    @property
    def ids(self) -> list[int]:
        return [token for part in self.parts for token in part.ids]

    @property
    def tokens(self) -> int:
        return sum(part.tokens for part in self.parts)


def turn_text(turn: Turn) -> str:
    """How a turn reads to the model: a `> action` line, then the result."""
    head = f"\n> {turn.action}\n" if turn.action else "\n"
    return head + turn.result


def note_text(note: str) -> str:
    return f"\n[Author's note: {note.strip()}]" if note.strip() else ""


def lore_hits(story: Story, turns: Sequence[Turn], scan: int) -> list[WorldEntry]:
    """Non-constant world info whose keys appear in the last `scan` turns (actions included)."""
    recent = "\n".join(f"{t.action}\n{t.result}" for t in turns[-scan:]) if scan else ""
    return [entry for entry in story.world if not entry.constant and entry.matches(recent)]


def build(
    story: Story,
    encode: Encode,
    *,
    budget: int,
    settings: ContextSettings,
    start: int = 0,
) -> Context:
    """The window for the story's current branch, within `budget` tokens."""
    pinned = _pinned_parts(story, encode)
    turns = story.path()
    segments = _story_segments(story, turns, encode)
    dynamic = _dynamic_parts(story, turns, encode, settings)
    used = sum(p.tokens for p in pinned) + sum(p.tokens for p in dynamic)
    room = budget - used
    if room <= 0:
        raise StoryError(_too_big_message(pinned + dynamic, budget))
    chunk = max(1, int(budget * settings.drop_fraction))
    begin = choose_start([s.tokens for s in segments], room=room, chunk=chunk, hint=start)
    kept = _fit_first(segments[begin:], room)
    split = max(len(kept) - settings.note_depth, 0)
    parts = (*pinned, *kept[:split], *dynamic, *kept[split:])
    return Context(parts=parts, budget=budget, start=begin)


def _pinned_parts(story: Story, encode: Encode) -> list[Part]:
    texts = [
        ("memory", "\n".join(m.strip() for m in story.memory if m.strip())),
        ("world info (constant)", "\n".join(e.text.strip() for e in story.world if e.constant and e.text.strip())),
        ("opening (pinned)", story.opening.strip() if story.pin_opening else ""),
    ]
    parts: list[Part] = []
    for name, text in texts:
        if text:
            # Each pinned part begins on its own line, so its tokens never merge with a neighbour.
            piece = text if not parts else "\n" + text
            parts.append(Part(name, piece, tuple(encode(piece))))
    return parts


def _story_segments(story: Story, turns: Sequence[Turn], encode: Encode) -> list[Part]:
    segments: list[Part] = []
    if not story.pin_opening and story.opening.strip():
        segments.append(Part("opening", story.opening.strip(), tuple(encode(story.opening.strip()))))
    for number, turn in enumerate(turns, start=1):
        text = turn_text(turn)
        segments.append(Part(f"turn {number}", text, tuple(encode(text))))
    return segments


def _dynamic_parts(story: Story, turns: Sequence[Turn], encode: Encode, settings: ContextSettings) -> list[Part]:
    parts: list[Part] = []
    hits = lore_hits(story, turns, settings.lore_scan_turns)
    if hits:
        text = "".join(f"\n{entry.text.strip()}" for entry in hits)
        parts.append(Part("world info", text, tuple(encode(text))))
    note = note_text(story.author_note)
    if note:
        parts.append(Part("author's note", note, tuple(encode(note))))
    return parts


def choose_start(sizes: Sequence[int], *, room: int, chunk: int, hint: int) -> int:
    """The first story segment to keep: the previous start while it still fits, else a new one.

    A new start drops whole segments until a `chunk` of room is free, so the next few turns
    fit without moving the start again (and without invalidating the cached prefix).
    """
    if not sizes:
        return 0
    hint = max(0, min(hint, len(sizes) - 1))
    total_from = _suffix_sums(sizes)
    fits = total_from[hint] <= room
    # Far below capacity (after /undo or a branch switch): take older turns back in.
    underfull = hint > 0 and total_from[hint - 1] <= room - 2 * chunk
    if fits and not underfull:
        return hint
    for begin in range(len(sizes)):
        if total_from[begin] <= room - chunk:
            return begin
    for begin in range(len(sizes)):
        if total_from[begin] <= room:
            return begin
    return len(sizes) - 1


def _suffix_sums(sizes: Sequence[int]) -> list[int]:
    sums = [0] * (len(sizes) + 1)
    for i in range(len(sizes) - 1, -1, -1):
        sums[i] = sums[i + 1] + sizes[i]
    return sums


def _fit_first(segments: Sequence[Part], room: int) -> list[Part]:
    """Cut the oldest kept segment's head if even the newest segments alone overflow."""
    kept = list(segments)
    overflow = sum(s.tokens for s in kept) - room
    while overflow > 0 and kept:
        first = kept[0]
        if first.tokens <= overflow and len(kept) > 1:
            kept.pop(0)
            overflow -= first.tokens
            continue
        trimmed = first.ids[overflow:]
        kept[0] = Part(first.name + " (cut)", first.text, trimmed)
        break
    return kept


def _too_big_message(parts: Sequence[Part], budget: int) -> str:
    biggest = sorted(parts, key=lambda p: p.tokens, reverse=True)
    named = ", ".join(f"{p.name} ({p.tokens} tokens)" for p in biggest if p.tokens)
    return (
        f"the pinned parts leave no room for the story in the {budget}-token budget: {named}. "
        "Shorten them (/memory, /forget, /world, /note) or raise context_tokens"
    )
