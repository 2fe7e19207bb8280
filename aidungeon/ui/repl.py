"""The interactive loop: read a line, hand it to the game, render what comes back.

On a terminal, input is a prompt_toolkit session with history kept across sessions, Tab
completion of commands and setting names, Alt-Enter for a new line, and a status bar.
When stdin is not a terminal (a pipe, a test), lines are read plainly so the game is still
playable. Ctrl-C during a generation stops it and leaves the story as it was; Ctrl-C at the
prompt prints a hint; Ctrl-D saves and quits. The start menu lives here too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import NestedCompleter
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.markup import escape

from aidungeon.commands import REGISTRY
from aidungeon.config import Config
from aidungeon.game import Event, Game
from aidungeon.ui.render import Renderer

Reader = Callable[[str], str]


def _completer() -> NestedCompleter:
    settings = {key: None for key in Config.setting_names()}
    tree: dict[str, object] = {f"/{name}": None for name in REGISTRY}
    tree["/set"] = settings
    tree["/world"] = {"add": None, "list": None, "edit": None, "remove": None}
    tree["/export"] = {"md": None, "txt": None, "html": None}
    return NestedCompleter.from_nested_dict(tree)


def _bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: object) -> None:  # Alt-Enter (Esc then Enter) adds a line
        event.current_buffer.insert_text("\n")  # type: ignore[attr-defined]

    return bindings


class Terminal:
    """Reads player input: prompt_toolkit on a terminal, plain lines otherwise."""

    def __init__(self, renderer: Renderer, *, history: Path | None, interactive: bool) -> None:
        self.renderer = renderer
        self.interactive = interactive
        self.status = ""
        self._session: PromptSession[str] | None = None
        if interactive:
            if history is not None:
                history.parent.mkdir(parents=True, exist_ok=True)
            self._session = PromptSession(
                history=FileHistory(str(history)) if history is not None else None,
                completer=_completer(),
                complete_while_typing=False,
                key_bindings=_bindings(),
                bottom_toolbar=lambda: self.status,
            )

    def ask(self, prompt: str, *, default: str = "") -> str:
        """One line (Alt-Enter for more); EOFError on Ctrl-D or end of input."""
        if self._session is not None:
            return self._session.prompt(prompt, default=default)
        self.renderer.console.print(prompt, end="")
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def ask_multiline(self, prompt: str) -> str:
        """Several lines: on a terminal, Esc-Enter (Alt-Enter) finishes; piped, an empty line does."""
        if self._session is not None:
            return self._session.prompt(prompt, multiline=True, prompt_continuation="  ")
        lines = []
        while True:
            line = self.ask(prompt if not lines else "")
            if not line.strip():
                return "\n".join(lines)
            lines.append(line)

    def choose(self, title: str, options: Sequence[tuple[str, str]]) -> str:
        """A numbered menu; returns the chosen key. Accepts a number or a key."""
        self.renderer.console.print(f"\n[bold]{title}[/bold]")
        for number, (_key, label) in enumerate(options, start=1):
            self.renderer.console.print(f"  {number}. {escape(label)}")
        while True:
            answer = self.ask("> ").strip().lower()
            for number, (key, _label) in enumerate(options, start=1):
                if answer in (str(number), key.lower()):
                    return key
            self.renderer.show(Event("error", f"choose 1-{len(options)}"))


def run_events(renderer: Renderer, events: Iterator[Event]) -> list[Event]:
    """Render a stream of events; Ctrl-C stops it cleanly. Returns the events that need replies."""
    pending: list[Event] = []
    try:
        for event in events:
            renderer.show(event)
            if event.kind in ("edit", "quit"):
                pending.append(event)
    except KeyboardInterrupt:
        close = getattr(events, "close", None)
        if close is not None:
            close()
        renderer.stop_stream()
        renderer.show(Event("info", "Stopped. Nothing was added to the story; /retry tries again."))
    return pending


def play(game: Game, terminal: Terminal) -> int:
    """The main loop, until /quit or Ctrl-D."""
    if _loop_events(game, terminal, game.begin()):
        return 0
    while True:
        terminal.status = status_line(game)
        try:
            line = terminal.ask("\n> ")
        except KeyboardInterrupt:
            terminal.renderer.show(Event("info", "(Ctrl-D or /quit saves and quits)"))
            continue
        except EOFError:
            _loop_events(game, terminal, game.handle("/quit"))
            return 0
        if _loop_events(game, terminal, game.handle(line)):
            return 0


def _loop_events(game: Game, terminal: Terminal, events: Iterator[Event]) -> bool:
    """Render events and answer the ones that need the player; True when the game should end."""
    for event in run_events(terminal.renderer, events):
        if event.kind == "quit":
            return True
        if event.kind == "edit":
            try:
                edited = terminal.ask("edit> ", default=event.text)
            except (KeyboardInterrupt, EOFError):
                continue
            if _loop_events(game, terminal, game.handle(str(event.data) + edited)):
                return True
    return False


def status_line(game: Game) -> str:
    """model · device · tokens used of the budget · speed of the last turn."""
    stats = game.last
    device = getattr(game.engine.device, "type", str(game.engine.device))
    parts = [game.model_name, device]
    if stats.budget:
        parts.append(f"{stats.tokens_used}/{stats.budget} tokens")
    if stats.tok_s:
        parts.append(f"{stats.tok_s:.1f} tok/s")
    parts.append(f"save: {game.save_name}")
    return " · ".join(parts)
