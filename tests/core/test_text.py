"""Text that enters a story is valid and inert."""

from __future__ import annotations

import pytest

from aidungeon.core.text import clean_text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("look \udcff", "look \ufffd"),
        ("a\x00b\x07c\x7fd", "abcd"),
        ("keep\ttabs\nand lines", "keep\ttabs\nand lines"),
        ("dos\r\nmac\rend", "dos\nmac\nend"),
        ("\x1b]0;pwned\x07title", "title"),
        ("\x1b[2J\x1b[Hclear", "clear"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("c1 \x9b2J csi", "c1  csi"),
        ("lone \x1b escape", "lone  escape"),
        ("\x1b]0;unterminated title and the story goes on", "0;unterminated title and the story goes on"),
        ("\x1bPdcs string\x1b\\after", "after"),
        ("ünïcödé “quotes” …", "ünïcödé “quotes” …"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean
    assert clean_text(clean) == clean
    clean.encode("utf-8")  # never raises: no surrogates left
