"""The renderer: an opening that stops mid-sentence is finished on the same line by the story."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console

from aidungeon.game.session import Event
from aidungeon.ui.terminal.render import Renderer, join_continuation, split_unfinished


@pytest.mark.parametrize(
    ("text", "finished", "unfinished"),
    [
        ("You are in a cave.", "You are in a cave.", ""),
        ("You walk in. Every head turns, and the king", "You walk in.", "Every head turns, and the king"),
        ("and the king", "", "and the king"),
        ('He says "Go." Then you', 'He says "Go."', "Then you"),
        ("Line one.\nAnd then you", "Line one.", "And then you"),
        ('You shout "Run!"', 'You shout "Run!"', ""),
        ("", "", ""),
    ],
)
def test_split_unfinished(text: str, finished: str, unfinished: str) -> None:
    assert split_unfinished(text) == (finished, unfinished)


@pytest.mark.parametrize(
    ("start", "continuation", "joined"),
    [
        ("and the king", "is here.", "and the king is here."),
        ("and the king", " is here.", "and the king is here."),
        ("and the king", ", smiling, waits.", "and the king, smiling, waits."),
        ("", "The door opens.", "The door opens."),
    ],
)
def test_join_continuation(start: str, continuation: str, joined: str) -> None:
    assert join_continuation(start, continuation) == joined


def render(*events: Event) -> list[str]:
    out = StringIO()
    renderer = Renderer(Console(file=out, width=200, no_color=True))
    for event in events:
        renderer.show(event)
    return [line for line in out.getvalue().splitlines() if line.strip()]


def test_the_first_continuation_finishes_the_openings_sentence_on_its_line() -> None:
    lines = render(
        Event("opening", "The hall falls silent. Every head turns toward you, and the king"),
        Event("result", "rises from his throne."),
        Event("action", "You bow."),
    )
    assert lines == [
        "The hall falls silent.",
        "Every head turns toward you, and the king rises from his throne.",
        "> You bow.",
    ]


def test_an_unfinished_opening_is_shown_whole_when_no_story_follows() -> None:
    lines = render(Event("opening", "You stand at the gate and"), Event("error", "no model"))
    assert lines == ["You stand at the gate and", "! no model"]
