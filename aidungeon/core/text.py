"""Text rules shared by every room: what text may enter a story, and what may reach a terminal.

`clean_text` is applied at every door a story's text comes through (typed or piped input,
imports, saves, story files), so everything inside a story is valid Unicode without control
characters and can be tokenized, saved and shown. The terminal applies it once more to all it
renders, so no escape sequence from a story or a model reaches the screen.
"""

from __future__ import annotations

import re

# C0 and C1 control characters except tab and newline, DEL, and lone UTF-16 surrogates (which
# `surrogateescape` decoding and some JSON files produce, and which no encoder accepts).
_INVALID_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

# Terminal escape sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-byte
# escapes; the lone ESC and other controls go with _INVALID_RE.
_ESCAPE_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, screen clears
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # CSI in its 8-bit form
)


def clean_text(text: str) -> str:
    """`text` made safe to keep in a story: escape sequences and control characters other than
    newline and tab dropped, lone surrogates replaced with U+FFFD, line endings as newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ESCAPE_RE.sub("", text)
    return _INVALID_RE.sub(lambda m: "\ufffd" if "\ud800" <= m.group() <= "\udfff" else "", text)
