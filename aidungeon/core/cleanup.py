"""Generated text -> the text shown to the player: small pure `str -> str` steps and their pipeline.

A small model's continuation often runs past the story: it writes the player's next turn, an
end-of-text token and a web page after it, half a sentence where the token budget ran out, or a
sentence it already wrote. Each step below cuts or repairs one of those, and `pipeline` runs them
in a fixed order. Cutters keep what comes before the first bad spot; they never rewrite prose.

Each cutter has a detector (`find_player_turn`, `find_special_token`, `find_junk`,
`repeated_sentences`; `is_fragment` lives with the sentence rules in `core.text`) that the
cutter uses, so a drift scorer can ask "would this be cut, and where?" and get the same answer
the cutter acts on. `similarity` scores near-repeats.

What this module does not do: tokenization, stop criteria during generation (the engine's job),
retrying when nothing usable is left (`pipeline` returns "" and the game decides), and no I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from aidungeon.core.actions import second_person
from aidungeon.core.text import (
    QUOTED_RE,
    WORD_RE,
    Span,
    sentence_ends,
    sentence_spans,
    split_sentences,
)

# The fragment detector is one of this module's detectors (see above); its rule lives in core.text.

# -- sentences (the rules are in core.text) ---------------------------------------------------


def cut_trailing_fragment(text: str) -> str:
    """Keep text up to its last sentence end; "" when no sentence is complete.

    Returning "" (rather than the fragment) lets the caller regenerate or continue: half a
    sentence shown as a finished turn reads as a bug. An ellipsis counts as an end.
    """
    ends = sentence_ends(text.rstrip())
    return text[: ends[-1]] if ends else ""


# -- cutters for drift -------------------------------------------------------------------------


def _first(patterns: Sequence[re.Pattern[str]], text: str) -> int | None:
    """The lowest offset any pattern matches at, or None."""
    starts = [m.start() for p in patterns if (m := p.search(text))]
    return min(starts) if starts else None


def _cut_at(text: str, index: int | None) -> str:
    return text if index is None else text[:index].rstrip()


_SPECIAL_PATTERNS = (
    # Any "<|...|>" token (endoftext, im_end, im_start, eot_id, ...), and a lone "<|" where a
    # stream was stopped half-way through one: story prose never contains "<|".
    re.compile(r"<\|"),
    re.compile(r"</?s>|\[/?INST\]|<<\s*/?SYS\s*>>|<(?:start|end)_of_turn>|<(?:eos|bos|pad|unk)>"),
    # A chat template hallucinated as plain text (special tokens decoded away): a role name on
    # its own line, "User:"-style speaker tags, or Alpaca "### Instruction:" headers.
    re.compile(r"(?im)^[ \t]*(?:user|assistant|system)[ \t]*$"),
    re.compile(r"(?m)^[ \t]*(?:Human|Assistant|User|System|AI)[ \t]*:"),
    re.compile(r"(?im)^[ \t]*#+[ \t]*(?:Instruction|Response|Input)\b"),
)


def find_special_token(text: str) -> int | None:
    """Where an end-of-text/special token or a chat-template marker starts, or None."""
    return _first(_SPECIAL_PATTERNS, text)


def cut_special_tokens(text: str) -> str:
    """Cut at the first special token or chat-template marker: what follows is a new document."""
    return _cut_at(text, find_special_token(text))


_LINE_JUNK = (
    r"Chapter\s+(?:\d+|[IVXLC]+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b",
    r"Comments?\s*(?:\(\d+\)|:)?[ \t]*$",
    r"Posted\s+(?:by|on|in)\b",
    r"Advertisement\b",
    r"Sponsored\b",
    r"Click\s+here\b",
    r"Read\s+more\b",
    r"Share\s+this\b",
    r"Related\s+(?:posts|articles|stories)\b",
    r"Tags\s*:",
    r"Copyright\b",
    r"A/N\b",
    r"Author['’]?s\s+note\b",
    r"#{1,6}(?:[ \t]|$)",
)
_JUNK_PATTERNS = (
    re.compile(r"(?im)^[ \t]*(?:" + "|".join(_LINE_JUNK) + ")"),
    re.compile(r"(?i)\bhttps?://|\bwww\.\w"),
    re.compile(r"```|©"),
    re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>\n]*)?/?>"),
)


def find_junk(text: str) -> int | None:
    """Where text that signals drift into a web page starts (URL, "Chapter 3", HTML, ...), or None.

    Phrases like "Read more" only count at the start of a line: mid-sentence they are prose
    ("you read more of the scroll").
    """
    return _first(_JUNK_PATTERNS, text)


def remove_junk(text: str) -> str:
    """Cut at the first junk line or span, keeping what comes before it."""
    return _cut_at(text, find_junk(text))


_SPEECH_VERBS = "say|ask|reply|respond|answer|shout|yell|scream|whisper|tell|exclaim|mutter|type"
_SPEECH_VERBS_3RD = "says|asks|replies|responds|answers|shouts|yells|screams|whispers|tells|exclaims|mutters"
_PLAYER_TURN_PATTERNS = (
    # The action prompt marker: at a line start, or right after a sentence end.
    re.compile(r"(?m)^[ \t]*>"),
    re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"”'’)]))[ \t]+>"),
    # A fresh line where "You" speaks is the model writing the player's next action. Narration
    # ("\n\nYou see a door.") is second person too, so only speech verbs and "You:" count, and
    # never at the very start: the result may legitimately open with what you say.
    re.compile(rf"(?<=\n)[ \t]*You(?:\s+(?:{_SPEECH_VERBS})\b|[ \t]*:)"),
)


# Verbs that attribute speech, in every tense a narrator uses ("you say", "you said", "you sigh").
_TAG_VERBS = (
    "(?:say|says|said|ask|asks|asked|reply|replies|replied|respond|responds|responded|answer|answers|answered"
    "|shout|shouts|shouted|yell|yells|yelled|scream|screams|screamed|whisper|whispers|whispered"
    "|tell|tells|told|exclaim|exclaims|exclaimed|mutter|mutters|muttered|murmur|murmurs|murmured"
    "|sigh|sighs|sighed|repeat|repeats|repeated|add|adds|added|cry|cries|cried|call|calls|called"
    "|laugh|laughs|laughed|chuckle|chuckles|chuckled|nod|nods|nodded|shrug|shrugs|shrugged"
    "|smile|smiles|smiled|grin|grins|grinned|insist|insists|insisted|continue|continues|continued)"
)
# Up to three words between the verb and the quote ("you say to her, "), none of which starts
# another clause ("you smile and she says, "Hello"" is her speech, not yours).
_TO_QUOTE = r"(?:\s+(?!and\b|but\b|as\b|while\b|when\b|then\b|before\b|after\b|until\b)[\w'’]+){0,3}\s*[,:]?\s*[\"“]"
_NOT_BETWEEN = r"(?:as|while|when|then|but|until|he|she|they|who|which|that)\b"
# Read with the words inside quotes blanked, so "you said" within someone's speech never counts.
_SPEECH_BEFORE_QUOTE = (
    # "You nodded, "Just like I am."", "and you say to him: "Run!""
    re.compile(rf"\b(?i:you)\s+{_TAG_VERBS}\b{_TO_QUOTE}"),
    # "You hold it high and say, "Enough."": lower-case words between, none a new subject
    # ("You step back as Yara smiles and says" is Yara's speech).
    re.compile(rf"\bYou(?:\s+(?!{_NOT_BETWEEN})[a-z][\w'’]*){{1,5}}?\s+and\s+{_TAG_VERBS}\b{_TO_QUOTE}"),
)
# ""It's a gift," you sigh": the quote, then a lowercase "you" that attributes it (after a closing
# full stop a capital "You" starts the player's next sentence, a different matter).
_SPEECH_AFTER_QUOTE = re.compile(rf"(?:\"[^\"]*\"|“[^”]*”)[ \t]*,?[ \t]*you\s+{_TAG_VERBS}\b")


def _blank_quotes(text: str) -> str:
    """`text` with each quote's words replaced by spaces, its opening mark kept (same offsets)."""
    return QUOTED_RE.sub(lambda quote: quote.group(0)[0] + " " * (len(quote.group(0)) - 1), text)


def find_player_speech(text: str) -> int | None:
    """Where the sentence starts in which the narrator puts words in the player's mouth ("You
    nod, "Fine."" or ""Run!" you shout"), or None.

    The first sentence never counts: a result may open by telling back what the player said.
    """
    starts = [_first(_SPEECH_BEFORE_QUOTE, _blank_quotes(text)), _first([_SPEECH_AFTER_QUOTE], text)]
    found = min((start for start in starts if start is not None), default=None)
    if found is None:
        return None
    start = max((span.start for span in sentence_spans(text) if span.start <= found), default=0)
    return start or None


def find_player_turn(text: str, *, player_name: str | None = None) -> int | None:
    """Where the model starts writing the player's turn, or None: a new "> action" or "You say"
    line, or words put in the player's mouth past the first sentence (`find_player_speech`).

    With `player_name`, a line that opens with the player speaking ("Aria:" or "Aria says")
    counts too, including the first line.
    """
    patterns = list(_PLAYER_TURN_PATTERNS)
    name = (player_name or "").strip()
    if name:
        patterns.append(re.compile(rf"(?m)^[ \t]*{re.escape(name)}(?:[ \t]*:|\s+(?:{_SPEECH_VERBS_3RD})\b)"))
    found = [index for index in (_first(patterns, text), find_player_speech(text)) if index is not None]
    return min(found) if found else None


def cut_player_turn(text: str, *, player_name: str | None = None) -> str:
    """Cut where the model plays the player, keeping the narration before it."""
    return _cut_at(text, find_player_turn(text, player_name=player_name))


# -- repeats -----------------------------------------------------------------------------------

_SHORT_SENTENCE_WORDS = 4


def _normalise(sentence: str) -> str:
    """Case-, spacing- and final-punctuation-blind form used to compare sentences."""
    return " ".join(sentence.split()).lower().rstrip(".!?…\"”'’)] ")


def _repeated_spans(text: str, recent: Sequence[str]) -> list[Span]:
    """Spans of `text` whose sentence was already told, in `recent` or earlier in `text`."""
    seen = {_normalise(s) for story_text in recent for s in split_sentences(story_text)}
    repeated = []
    for span in sentence_spans(text):
        sentence = text[span.start : span.end]
        if len(sentence.split()) < _SHORT_SENTENCE_WORDS:
            continue  # "Yes." and "He nods." repeat naturally.
        key = _normalise(sentence)
        if key in seen:
            repeated.append(span)
        seen.add(key)
    return repeated


def repeated_sentences(text: str, recent: Sequence[str]) -> list[str]:
    """The sentences `drop_repeated_sentences` would drop, in order."""
    return [text[span.start : span.end] for span in _repeated_spans(text, recent)]


def drop_repeated_sentences(text: str, recent: Sequence[str]) -> str:
    """Drop sentences already told (verbatim, ignoring case, spacing and final punctuation).

    Small models loop by copying earlier sentences word for word; dropping them keeps the new
    material. Sentences under four words are kept. Paragraph breaks around a dropped sentence
    are kept (the wider of the two gaps survives).
    """
    dropped = set(_repeated_spans(text, recent))
    if not dropped:
        return text
    out: list[str] = []
    gap = ""
    position = 0
    for span in sentence_spans(text):
        before = text[position : span.start]
        position = span.end
        gap = before if before.count("\n") >= gap.count("\n") else gap
        if span in dropped:
            continue
        out.append((gap if out else "") + text[span.start : span.end])
        gap = ""
    return "".join(out)


def similarity(a: str, b: str) -> float:
    """How alike two texts are, 0..1, over lowercased words (punctuation ignored).

    For loop detection: 1.0 means the same words in the same order. Two empty texts are alike.
    """
    words_a = WORD_RE.findall(a.lower())
    words_b = WORD_RE.findall(b.lower())
    return difflib.SequenceMatcher(None, words_a, words_b, autojunk=False).ratio()


# -- repairs -----------------------------------------------------------------------------------


def _balance(text: str, opener: str, closer: str) -> str:
    """Close or drop the last unmatched opening quote (see `balance_quotes`)."""
    # Straight quotes open and close with the same mark, so only parity tells an unmatched one.
    unmatched = text.count(opener) % 2 == 1 if opener == closer else text.count(opener) > text.count(closer)
    if not unmatched:
        return text
    last = text.rfind(opener)
    if opener == closer and last > 0 and not text[last - 1].isspace() and text[last - 1] not in "([{—–-":
        # The last straight quote hugs a word on its left, so it closes something: the unmatched
        # quote is earlier and we cannot tell where its speech should end. Leave it alone.
        return text
    if not text[last + 1 :].strip():
        return text[:last].rstrip()
    return text.rstrip() + closer


def balance_quotes(text: str) -> str:
    """Close an unclosed quote at the end, or drop an opening quote that has nothing after it.

    `He says "Welcome.` -> `He says "Welcome."`; `He says "` -> `He says`. Straight and curly
    double quotes are handled separately. A stray closing quote is left alone: inventing where
    the speech began would put words in a character's mouth.
    """
    text = _balance(text, '"', '"')
    # Curly quotes are counted, not paired by parity, so several can be open: repair each.
    for _ in range(text.count("“")):
        text = _balance(text, "“", "”")
    return text


def normalize_whitespace(text: str) -> str:
    """Tidy spacing: one space between words, at most one blank line, no space before punctuation."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[^\S\n]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r" +([.,!?;:])", r"\1", text)
    return text.strip()


# -- pipeline ----------------------------------------------------------------------------------


def pipeline(text: str, *, recent: Sequence[str] = (), player_name: str | None = None) -> str:
    """Run every step in order; "" when nothing usable is left (the caller retries or continues).

    Cutters run first so later steps never see text past the drift. Repeats are dropped before
    the trailing fragment is cut, so a repeat cannot hide a fragment; quotes are balanced last,
    on the text that will be shown.
    """
    text = cut_special_tokens(text)
    text = remove_junk(text)
    text = cut_player_turn(text, player_name=player_name)
    text = normalize_whitespace(text)
    text = narrate_in_second_person(text)
    text = drop_repeated_sentences(text, recent)
    text = cut_trailing_fragment(text)
    text = balance_quotes(text)
    return normalize_whitespace(text)


_SECOND_PERSON_RE = re.compile(r"\b(?:you|your|yours|yourself)\b", re.IGNORECASE)


def narrate_in_second_person(text: str) -> str:
    """Narration that slipped into first person ("I open the door") back into the game's voice.

    Small chat models drift into narrating as "I" whatever their instructions say. Speech in
    quotes is left alone: a character may well say "I". So is a sentence whose narration already
    says "you": there a narrator or a character is talking to the player, and rewriting its "I"
    gives "You are walking towards you.".
    """
    unquoted = QUOTED_RE.sub(lambda quote: " " * len(quote.group(0)), text)
    addressed = [span for span in sentence_spans(text) if _SECOND_PERSON_RE.search(unquoted, span.start, span.end)]
    return second_person(text, keep=addressed)


def aidungeon2_rules(text: str) -> str:
    """AI Dungeon 2's own cleanup, kept as the coherence benchmark's baseline: cut at the first
    ">" and drop the trailing incomplete sentence; nothing else."""
    marker = text.find(">")
    kept = text if marker < 0 else text[:marker]
    return cut_trailing_fragment(normalize_whitespace(kept))
