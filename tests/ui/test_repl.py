"""Reading the player's lines: any bytes are safe, and only game lines reach the history file."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from aidungeon.ui.terminal.render import Renderer
from aidungeon.ui.terminal.repl import Terminal


def piped(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """stdin as Python opens a pipe: UTF-8, strict."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_piped_lines_with_invalid_utf8_and_escapes_arrive_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    piped(monkeypatch, b"look \xff\xfe around\n\x1b]0;title\x07say \x1b[2Jhi\x00\n")
    out = io.StringIO()
    terminal = Terminal(Renderer(Console(file=out, width=100)), history=None, interactive=False)
    assert terminal.ask("> ") == "look \ufffd\ufffd around"
    assert terminal.ask("> ") == "say hi"
    with pytest.raises(EOFError):
        terminal.ask("> ")
    assert "\x1b" not in out.getvalue()  # the echo of a piped line is clean too


@pytest.fixture
def keys() -> Iterator[PipeInput]:
    """prompt_toolkit reading typed keys from a pipe, drawing nowhere."""
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        yield pipe


def test_menu_answers_stay_out_of_the_history_file(keys: PipeInput, tmp_path: Path) -> None:
    history = tmp_path / "history.txt"
    terminal = Terminal(Renderer(Console(file=io.StringIO())), history=history, interactive=True)
    keys.send_text("2\r")
    assert terminal.choose("Pick a setting", [("fantasy", "Fantasy"), ("custom", "Custom")]) == "custom"
    keys.send_text("You wake in a cell.\x1b\r")
    assert terminal.ask_multiline("> ") == "You wake in a cell."
    keys.send_text("look around\r")
    assert terminal.ask("\n> ") == "look around"
    kept = history.read_text(encoding="utf-8")
    assert "+look around" in kept
    assert "+2" not in kept and "cell" not in kept


def test_a_pasted_line_is_cleaned(keys: PipeInput) -> None:
    """A bracketed paste reaches the buffer as it is, control characters and all."""
    terminal = Terminal(Renderer(Console(file=io.StringIO())), history=None, interactive=True)
    keys.send_text("\x1b[200~open\x07 the\x00 door\x1b[201~\r")
    assert terminal.ask("> ") == "open the door"
