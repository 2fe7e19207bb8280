"""Player input line -> the action text that enters the story (AI Dungeon 2 semantics).

Three modes, picked from the line itself:

- **do** (default): `look around` -> `You look around.`; first person becomes second person
  (`I draw my sword` -> `You draw your sword.`), outside quotes only. A line that already has
  a subject no command starts with (`a troll sleeps here`, `the door opens`) gets no "You".
- **say**: a line starting with a quote or with `say ` -> `You say "Hello there."`.
- **story**: a line starting with `!` enters verbatim as narration.

A line that is or becomes empty (blank, `!`, `say`) gives an `Action` with empty text: the
caller treats that as "continue the story" rather than as an error.

This module only rewrites text. It does not parse slash-commands (`commands.py` sees them first),
touch the story, or know about the model; it imports only `core.text`'s quote and sentence rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from aidungeon.core.text import QUOTED_RE, SENTENCE_END_BEFORE_RE

MODES = ("do", "say", "story")

_TERMINAL = ".!?…"
# A line starting with one of these already has its subject, so no "You" goes in front. Besides
# the player's own pronouns, these are words no command starts with: `a troll sleeps here` is
# narration ("A troll sleeps here."), not "You a troll sleeps here.".
_SUBJECT_STARTS = frozenset(
    {"you", "your", "yours", "yourself", "we", "our", "ours", "a", "an", "the", "he", "she", "it", "they"}
    | {"there", "this", "that", "these", "those", "his", "its", "their"}
)

# First person -> second person, longest forms first so "I am" wins over "I". Whole words only,
# any case ("i" typed lowercase counts). "we/us/our" are plural and stay as typed.
_FIRST_TO_SECOND: tuple[tuple[str, str], ...] = (
    (r"I\s+am", "you are"),
    (r"I\s+was", "you were"),
    (r"am\s+I", "are you"),
    (r"was\s+I", "were you"),
    (r"I['’]m", "you're"),
    (r"I['’]ve", "you've"),
    (r"I['’]ll", "you'll"),
    (r"I['’]d", "you'd"),
    (r"I", "you"),
    (r"myself", "yourself"),
    # "mine" is also a noun (a gold mine, "mine the rock"): only the pronoun, after a linking word.
    (
        r"(?:(?<=\b(?:is|of|be|or|as) )|(?<=\b(?:was|are|and) )|(?<=['’]s )|(?<=\b(?:were|been|than|like) ))mine",
        "yours",
    ),
    (r"my", "your"),
    (r"me", "you"),
)
_PERSON_RE = re.compile(
    "|".join(rf"(?P<p{i}>\b{pattern}\b)" for i, (pattern, _) in enumerate(_FIRST_TO_SECOND)),
    re.IGNORECASE,
)
_SAY_RE = re.compile(r"say(?:\s*[:,]\s*|\s+|$)(?P<rest>.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Action:
    """What the player did, as it enters the story.

    `text` has no "> " marker: how an action is shown or framed for the model is the business
    of the UI and of `context.py`. Empty `text` means "continue the story".
    """

    mode: str
    text: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"action mode must be one of {', '.join(MODES)}, not {self.mode!r}")


def to_action(line: str) -> Action:
    """Turn one line of player input into an `Action` (see the module docstring for the rules)."""
    stripped = re.sub(r"^>+", "", line.strip()).strip()
    if stripped.startswith("!"):
        # Narration is the player's own prose: keep it exactly as typed.
        return Action("story", stripped[1:].strip())
    text = " ".join(stripped.split())
    if not text:
        return Action("do", "")
    say = _SAY_RE.fullmatch(text)
    if say:
        return Action("say", _say(say.group("rest"), prefix="You say "))
    if text[0] in '"“':
        return Action("say", _say(text, prefix=""))
    return Action("do", _do(text))


def _do(text: str) -> str:
    """`look around` -> `You look around.`: second person, a subject, a full stop."""
    text = second_person(text)
    if not _has_subject(text):
        text = "You " + _lower_first_word(text)
    return _finish(_upper_first(text))


def _say(rest: str, *, prefix: str) -> str:
    """Quote the spoken words; a quote followed by narration (`"Hi," I say`) keeps its narration."""
    rest = rest.replace("“", '"').replace("”", '"').strip()
    if rest.startswith('"'):
        close = rest.find('"', 1)
        tail = rest[close + 1 :].strip() if close != -1 else ""
        if close != -1 and tail.strip(".!?,;: "):
            quoted = '"' + _upper_first(rest[1:close].strip()) + '"'
            return _finish(prefix + second_person(f"{quoted} {tail}"))
        rest = rest[1:close] + tail if close != -1 else rest[1:]
    spoken = _upper_first(rest.strip().rstrip(",;: ").replace('"', "'"))
    if not spoken:
        return ""
    if spoken[-1] not in _TERMINAL:
        spoken += "."
    return f'{prefix or "You say "}"{spoken}"'


def second_person(text: str, *, keep: Sequence[tuple[int, int]] = ()) -> str:
    """Rewrite first person singular to second person outside quotes (`I draw my` -> `you draw your`)
    and outside the `keep` spans (start, end offsets).

    A replacement at the start of a sentence is capitalised; elsewhere it is lowercase, because
    "I" is the only pronoun English capitalises mid-sentence.
    """
    quoted = [m.span() for m in QUOTED_RE.finditer(text)] + list(keep)

    def replace(match: re.Match[str]) -> str:
        start = match.start()
        if any(lo <= start < hi for lo, hi in quoted):
            return match.group(0)
        index = int(match.lastgroup[1:]) if match.lastgroup else 0
        new = _FIRST_TO_SECOND[index][1]
        if "’" in match.group(0):
            new = new.replace("'", "’")
        return _upper_first(new) if SENTENCE_END_BEFORE_RE.search(text[:start]) else new

    return _PERSON_RE.sub(replace, text)


def _has_subject(text: str) -> bool:
    """True when the line already has a subject we must not put "You" in front of."""
    first = re.split(r"[\s,.!?;:'’]", text, maxsplit=1)[0].lower()
    return first in _SUBJECT_STARTS


def _lower_first_word(text: str) -> str:
    """`Look` -> `look` after "You ", but leave acronyms (`NASA`) and single capitals alone."""
    word = text.split(" ", 1)[0]
    if len(word) > 1 and word[0].isupper() and not word[1:].isupper():
        return text[0].lower() + text[1:]
    return text


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _finish(text: str) -> str:
    """End the action with terminal punctuation, inside a final double quote (US style).

    `You shout "I am here"` -> `You shout "I am here."`; an unclosed double quote is closed.
    Single quotes are not treated as quotation marks here because they are also apostrophes
    (`the kings'`), so `'run'` gets its full stop after the quote.
    """
    text = text.rstrip(",;: ")
    straight_open = text.count('"') % 2 == 1
    curly_open = text.count("“") > text.count("”")
    if straight_open or curly_open:
        closer = '"' if straight_open else "”"
        return text + ("" if text[-1:] in _TERMINAL else ".") + closer
    if text[-1:] in '"”':
        body = text[:-1].rstrip(",;: ")
        return body + ("" if body[-1:] in _TERMINAL else ".") + text[-1]
    return text if text[-1:] in _TERMINAL else text + "."
