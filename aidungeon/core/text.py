"""Text rules shared by every room: what text may enter a story, what may reach a terminal, and
the sentence, word and quote rules that cleanup, guard, actions and the renderer agree on.

`clean_text` is applied at every door a story's text comes through (typed or piped input,
imports, saves, story files), so everything inside a story is valid Unicode without control
characters and can be tokenized, saved and shown. The terminal applies it once more to all it
renders, so no escape sequence from a story or a model reaches the screen.

The sentence rules (`sentence_ends`, `sentence_spans`, `split_sentences`, `is_fragment`), the
notion of a word (`WORD_RE`) and of a quoted span (`QUOTED_RE`) live here so that every module
that cuts, scores or shows text splits it the same way. Nothing here cuts or rewrites prose
(`cleanup` does), and nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# C0 and C1 control characters except tab and newline, DEL, and lone UTF-16 surrogates (which
# `surrogateescape` decoding and some JSON files produce, and which no encoder accepts).
_INVALID_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

# Terminal escape sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-byte
# escapes; the lone ESC and other controls go with _INVALID_RE.
_ESCAPE_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, screen clears
    # OSC (window titles, hyperlinks) and DCS, SOS, PM, APC strings only with their terminator:
    # an unterminated one loses just its ESC (below), never the story text after it.
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # CSI in its 8-bit form
)


def clean_text(text: str) -> str:
    """`text` made safe to keep in a story: escape sequences and control characters other than
    newline and tab dropped, lone surrogates replaced with U+FFFD, line endings as newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ESCAPE_RE.sub("", text)
    return _INVALID_RE.sub(lambda m: "\ufffd" if "\ud800" <= m.group() <= "\udfff" else "", text)


# -- sentences ---------------------------------------------------------------------------------

# A sentence ends at . ! ? or an ellipsis, optionally closed by quotes/brackets, before whitespace
# or the end of the text. "3.5" and "e.g." mid-word are not ends because no space follows.
_END_RE = re.compile(r"[.!?…]+[\"”'’)\]]*(?=\s|$)")
# Words whose full stop is not a sentence end. "No." and "etc." are left out: in stories they
# end sentences far more often than they abbreviate.
_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "mt.", "capt.", "sgt.", "lt.", "col.", "gen."}
    | {"vs.", "e.g.", "i.e.", "approx."}
)
# The text before a position ends a sentence (or is empty): what follows starts a new one.
SENTENCE_END_BEFORE_RE = re.compile(r"(?:^|[.!?…][\"”'’)]*)\s*$")


class Span(NamedTuple):
    start: int
    end: int


def sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end (after any closing quotes), abbreviations skipped."""
    ends = []
    for match in _END_RE.finditer(text):
        if match.group(0) == ".":
            # Abbreviations are short, so a small window keeps this linear on long texts.
            word = text[max(0, match.start() - 8) : match.end()].split()[-1].lstrip("\"“'‘([").lower()
            if word in _ABBREVIATIONS:
                continue
        ends.append(match.end())
    return ends


def sentence_spans(text: str) -> list[Span]:
    """Sentences as (start, end) offsets, split at sentence ends and at line breaks.

    Line breaks count as boundaries so that a heading or a dialogue line without a full stop
    does not swallow the paragraph after it. The spans exclude surrounding whitespace.
    """
    cuts = sorted({*sentence_ends(text), *(m.start() for m in re.finditer(r"\n", text)), len(text)})
    spans = []
    start = 0
    for cut in cuts:
        piece = text[start:cut]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append(Span(start + lead, start + len(piece.rstrip())))
        start = cut
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, stripped. A trailing incomplete sentence is included as it is."""
    return [text[span.start : span.end] for span in sentence_spans(text)]


def is_fragment(text: str) -> bool:
    """True when `text` ends mid-sentence. Empty text is not a fragment: there is nothing to cut.

    A closing quote counts as an end only after terminal punctuation (`"Run!"` ends, `"run"` does not).
    """
    text = text.rstrip()
    if not text:
        return False
    ends = sentence_ends(text)
    return not ends or ends[-1] != len(text)


# -- words and quotes --------------------------------------------------------------------------

# A word, lowercased by the caller: letters, digits and apostrophes; punctuation is ignored.
WORD_RE = re.compile(r"[\w'’]+")
# Quoted spans are someone's words and keep their person; an unclosed quote runs to the end.
QUOTED_RE = re.compile(r'"[^"]*"?|“[^”]*”?')


def join_continuation(start: str, continuation: str) -> str:
    """An unfinished sentence and the text that finishes it, with a space unless it starts with punctuation."""
    if not start:
        return continuation
    continuation = continuation.lstrip()
    return start + ("" if continuation[:1] in ",.;:!?'’”\")" else " ") + continuation
