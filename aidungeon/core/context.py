"""Story -> the exact token window the model sees next.

The window is built from parts, each tokenized on its own and concatenated, so every count
is exact and the ids the model gets are the ids counted. A result is tokenized apart from its
action, through the caller's `encode`, which may return the very ids the model generated for
that text: then the next turn's prompt matches the engine's cache up to the new action. The
order keeps the cached prefix stable from turn to turn:

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

from aidungeon.core.config import ContextSettings
from aidungeon.core.errors import StoryError
from aidungeon.core.story import Story, Turn, WorldEntry

Encode = Callable[[str], list[int]]

NARRATOR = (
    "You are the narrator of a text adventure game. The user's messages are the player's actions. "
    'Reply with what happens next: two to four vivid sentences in second person ("you"). '
    "Never decide or speak for the player."
)


@dataclass(frozen=True)
class Layout:
    """How the parts read to a model: plain text for base models, chat messages for chat models.

    Every piece starts with its own separator, so each part tokenizes on its own and the
    concatenated ids are exactly what a whole-string tokenization of the window would count.
    In the chat layout each turn closes the previous message and opens its own, which keeps
    the window append-only (and the cache valid) from turn to turn.
    """

    name: str
    header: str  # always first: empty for plain text, the system message's start for chat
    line: str  # before a pinned line after the first (memory, constant lore)
    opening: str  # before the opening
    action: str  # before a turn's action; "{action}" is replaced
    lore: str  # before world info hits and the author's note

    def turn(self, action: str, result: str) -> tuple[str, str]:
        """A turn as (head, body): the player's action, then the result; with no action the
        result runs on. They are tokenized apart, so the body can reuse the model's own ids."""
        if not action:
            return "", " " + result if result else ""
        return self.action.replace("{action}", action), result


PLAIN = Layout(name="plain", header="", line="\n", opening="\n", action="\n> {action}\n", lore="\n")
CHATML = Layout(
    name="chatml",
    header=f"<|im_start|>system\n{NARRATOR}",
    line="\n",
    opening="<|im_end|>\n<|im_start|>assistant\n",
    action="<|im_end|>\n<|im_start|>user\n{action}<|im_end|>\n<|im_start|>assistant\n",
    lore="<|im_end|>\n<|im_start|>system\n",
)


def layout_for(chat_template: str | None) -> Layout:
    """ChatML chat models (SmolLM2, Qwen) read the story as a conversation; others as plain text."""
    return CHATML if chat_template and "<|im_start|>" in chat_template else PLAIN


@dataclass(frozen=True)
class Part:
    """One labelled piece of the window."""

    name: str
    text: str
    ids: tuple[int, ...]
    opens: bool = True  # starts a new message (or line), so a lore block may precede it

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
    layout: Layout = PLAIN,
    start: int = 0,
) -> Context:
    """The window for the story's current branch, within `budget` tokens."""
    turns = story.path()
    pinned = _pinned_parts(story, encode, layout)
    segments = _story_segments(story, turns, encode, layout)
    dynamic = _dynamic_parts(story, turns, encode, settings, layout)
    room = budget - sum(p.tokens for p in pinned) - sum(p.tokens for p in dynamic)
    if room <= 0:
        raise StoryError(_too_big_message(pinned + dynamic, budget))
    chunk = max(1, int(budget * settings.drop_fraction))
    begin = choose_start([s.tokens for s in segments], room=room, chunk=chunk, hint=start)
    # A window must not start with a turn that runs on from a dropped one (in the chat layout
    # it would continue the system message).
    while 0 < begin < len(segments) - 1 and not segments[begin].opens:
        begin += 1
    kept = _fit_first(segments[begin:], room, encode)
    split = _lore_position(kept, settings.note_depth)
    parts = (*pinned, *kept[:split], *dynamic, *kept[split:])
    return Context(parts=parts, budget=budget, start=begin)


def _part(name: str, text: str, encode: Encode, *, opens: bool = True) -> Part:
    return Part(name, text, tuple(encode(text)) if text else (), opens)


def _pinned_parts(story: Story, encode: Encode, layout: Layout) -> list[Part]:
    parts = [_part("instructions", layout.header, encode)] if layout.header else []
    lines = [
        ("memory", "\n".join(m.strip() for m in story.memory if m.strip())),
        ("world info (constant)", "\n".join(e.text.strip() for e in story.world if e.constant and e.text.strip())),
    ]
    for name, text in lines:
        if text:
            parts.append(_part(name, (layout.line if parts else "") + text, encode))
    if story.pin_opening and story.opening.strip():
        parts.append(_part("opening (pinned)", layout.opening + story.opening.strip(), encode))
    return parts


def _story_segments(story: Story, turns: Sequence[Turn], encode: Encode, layout: Layout) -> list[Part]:
    segments: list[Part] = []
    if not story.pin_opening and story.opening.strip():
        segments.append(_part("opening", layout.opening + story.opening.strip(), encode))
    for number, turn in enumerate(turns, start=1):
        head, body = layout.turn(turn.action, turn.result)
        ids = (*(encode(head) if head else ()), *(encode(body) if body else ()))
        segments.append(Part(f"turn {number}", head + body, ids, opens=bool(turn.action)))
    return segments


def _dynamic_parts(
    story: Story, turns: Sequence[Turn], encode: Encode, settings: ContextSettings, layout: Layout
) -> list[Part]:
    """World info hits and the author's note: one block that sits near the end of the window."""
    hits = lore_hits(story, turns, settings.lore_scan_turns)
    parts: list[Part] = []
    if hits:
        text = "\n".join(entry.text.strip() for entry in hits)
        parts.append(_part("world info", layout.lore + text, encode))
    if story.author_note.strip():
        note = f"[Author's note: {story.author_note.strip()}]"
        parts.append(_part("author's note", (layout.line if parts else layout.lore) + note, encode))
    return parts


def _lore_position(kept: Sequence[Part], depth: int) -> int:
    """Where the lore block goes: `depth` segments from the end, at a segment that starts a message.

    It never goes after the newest turn, whose end is where the model continues. In the chat
    layout a turn without an action runs on inside the previous message, so the block (a
    message of its own) must come before a turn that opens one.
    """
    split = max(len(kept) - depth, 0)
    for index in [*range(split, -1, -1), *range(split + 1, len(kept))]:
        if index == len(kept) or kept[index].opens:
            return int(index)
    return int(split)


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


def _fit_first(segments: Sequence[Part], room: int, encode: Encode) -> list[Part]:
    """Drop or cut the oldest kept segments until the rest fit in `room` tokens.

    Only a segment too big for the window on its own is cut: its text loses characters from
    the front (found by bisection) until it fits, and is tokenized again so text and ids agree.
    """
    kept = list(segments)
    while kept and sum(s.tokens for s in kept) > room:
        first = kept[0]
        overflow = sum(s.tokens for s in kept) - room
        if len(kept) > 1 and first.tokens <= overflow:
            kept.pop(0)
            continue
        kept[0] = _cut_head(first, first.tokens - overflow, encode)
        break
    return kept


def _cut_head(part: Part, limit: int, encode: Encode) -> Part:
    """The longest tail of the part's text that encodes to at most `limit` tokens."""
    low, high = 0, len(part.text)
    while low < high:
        middle = (low + high) // 2
        if len(encode(part.text[middle:])) <= limit:
            high = middle
        else:
            low = middle + 1
    text = part.text[low:]
    return Part(part.name + " (cut)", text, tuple(encode(text)) if text else (), part.opens)


def _too_big_message(parts: Sequence[Part], budget: int) -> str:
    biggest = sorted(parts, key=lambda p: p.tokens, reverse=True)
    named = ", ".join(f"{p.name} ({p.tokens} tokens)" for p in biggest if p.tokens)
    return (
        f"the pinned parts leave no room for the story in the {budget}-token budget: {named}. "
        "Shorten them (/memory, /forget, /world, /note) or raise context_tokens"
    )
