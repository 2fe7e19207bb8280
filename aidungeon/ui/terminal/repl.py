"""The interactive loop: read a line, hand it to the game, render what comes back.

On a terminal, input is a prompt_toolkit session with history kept across sessions, Tab
completion of commands and setting names, Alt-Enter for a new line, and a status bar.
When stdin is not a terminal (a pipe, a test), lines are read plainly so the game is still
playable. Ctrl-C during a generation sets the turn's cancel token, which stops it and leaves
the story as it was; Ctrl-C at the prompt prints a hint; Ctrl-D saves and quits (with exit
code 1 if the adventure could not be saved). The start menu is in `menu.py`.

Every line read is passed through `core.text.clean_text`, and bytes that are not UTF-8 never
raise: the player's text always reaches the game as valid, inert Unicode. Only game lines go
into the history file; the menu's answers do not.
"""

from __future__ import annotations

import io
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import (
    CompleteEvent,
    Completer,
    Completion,
    DummyCompleter,
    NestedCompleter,
    WordCompleter,
)
from prompt_toolkit.document import Document
from prompt_toolkit.filters import is_multiline
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import ColorDepth
from rich.markup import escape

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Config
from aidungeon.core.errors import AIDungeonError
from aidungeon.core.text import clean_text
from aidungeon.game.commands import REGISTRY
from aidungeon.game.events import Event, EventKind
from aidungeon.game.session import Session
from aidungeon.ui.terminal.render import Renderer


class _CommandCompleter(Completer):
    """Commands, then their arguments (/set KEY, /world add, ...).

    The first word is matched whole (WORD=True): a plain word completer sees only "he" in
    "/he", because "/" is not a word character, and so never completes a command.
    """

    def __init__(self) -> None:
        tree: dict[str, object] = {f"/{name}": None for name in REGISTRY}
        tree["/set"] = {key: None for key in Config.setting_names()}
        tree["/world"] = {"add": None, "list": None, "edit": None, "remove": None}
        tree["/export"] = {"md": None, "txt": None, "html": None}
        self._arguments = NestedCompleter.from_nested_dict(tree)
        self._commands = WordCompleter(sorted(tree), WORD=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        if " " in document.text_before_cursor.lstrip():
            return self._arguments.get_completions(document, complete_event)
        return self._commands.get_completions(document, complete_event)


def _bindings() -> KeyBindings:
    bindings = KeyBindings()

    # Only on a one-line prompt: in a multi-line prompt (the opening) Alt-Enter must keep
    # prompt_toolkit's meaning, "finish", or the player could never end the text.
    @bindings.add("escape", "enter", filter=~is_multiline)
    def _newline(event: object) -> None:  # Alt-Enter (Esc then Enter) adds a line
        event.current_buffer.insert_text("\n")  # type: ignore[attr-defined]

    return bindings


# What leaves the start menu, as Ctrl-D does: the game's /quit and its aliases. Bare words only
# where a menu's answers are fixed: a character's name or an opening may well be "quit".
_QUIT = REGISTRY["quit"]
QUIT_COMMANDS = tuple(f"/{name}" for name in (_QUIT.name, *_QUIT.aliases))
QUIT_WORDS = (*QUIT_COMMANDS, "quit", "exit")


class Terminal:
    """Reads player input: prompt_toolkit on a terminal, plain lines otherwise."""

    def __init__(self, renderer: Renderer, *, history: Path | None, interactive: bool, no_color: bool = False) -> None:
        self.renderer = renderer
        self.interactive = interactive
        self.status = ""
        self._session: PromptSession[str] | None = None
        self._menu_session: PromptSession[str] | None = None
        self._completer: Completer = _CommandCompleter()
        if interactive:
            if history is not None:
                history.parent.mkdir(parents=True, exist_ok=True)
            self._session = self._prompt_session(FileHistory(str(history)) if history is not None else None, no_color)
            # The menu's answers ("3", a name, an opening) are not game lines: its prompts keep
            # their history in memory only, so they never reach the history file.
            self._menu_session = self._prompt_session(None, no_color)
        else:
            _tolerate_undecodable_stdin()

    def _prompt_session(self, history: FileHistory | None, no_color: bool) -> PromptSession[str]:
        return PromptSession(
            history=history,
            completer=self._completer,
            complete_while_typing=False,
            key_bindings=_bindings(),
            # The status names the model and the save, which a player or an import may have named.
            bottom_toolbar=lambda: clean_text(self.status),
            # --no-color reaches prompt_toolkit here; it reads NO_COLOR itself.
            color_depth=ColorDepth.DEPTH_1_BIT if no_color else None,
        )

    def ask(self, prompt: str, *, default: str = "", completer: Completer | None = None, history: bool = True) -> str:
        """One line (Alt-Enter for more), cleaned; EOFError on Ctrl-D or end of input.

        `history=False` for a menu's questions: the answer is not kept for the game's Up arrow.
        """
        session = self._session if history else self._menu_session
        if session is not None:
            # prompt() keeps what it is given for later calls, so pass every per-prompt option.
            line = session.prompt(prompt, default=default, multiline=False, completer=completer or self._completer)
            return clean_text(line)
        self.renderer.console.print(prompt, end="", markup=False, highlight=False)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        line = clean_text(line.rstrip("\n"))
        if not sys.stdin.isatty():
            # Piped input is not echoed by a terminal: echo it, so the transcript reads as played.
            self.renderer.console.print(line, markup=False, highlight=False)
        return line

    def ask_multiline(self, prompt: str) -> str:
        """Several lines (the menu's opening, so no history): on a terminal, Esc-Enter (Alt-Enter)
        finishes; piped, an empty line does."""
        if self._menu_session is not None:
            # completer=None would keep the last prompt's completer: an opening completes nothing.
            text = self._menu_session.prompt(
                prompt, multiline=True, prompt_continuation="  ", completer=DummyCompleter()
            )
            return clean_text(text)
        lines: list[str] = []
        while True:
            line = self.ask(prompt if not lines else "", history=False)
            if not line.strip():
                return "\n".join(lines)
            lines.append(line)

    def choose(self, title: str, options: Sequence[tuple[str, str]]) -> str:
        """A numbered menu; returns the chosen key. Accepts a number or a key; /quit raises EOFError."""
        self.renderer.console.print(f"\n[bold]{escape(clean_text(title))}[/bold]")
        for number, (_key, label) in enumerate(options, start=1):
            self.renderer.console.print(f"  {number}. {escape(clean_text(label))}")
        completer = WordCompleter([key for key, _label in options], ignore_case=True)
        while True:
            answer = self.ask("> ", completer=completer, history=False).strip().lower()
            if answer in QUIT_WORDS:
                raise EOFError
            for number, (key, _label) in enumerate(options, start=1):
                if answer in (str(number), key.lower()):
                    return key
            self.renderer.show(Event(EventKind.ERROR, f"choose 1-{len(options)}, or /quit"))


def _tolerate_undecodable_stdin() -> None:
    """Read piped stdin so that bytes that are not UTF-8 become U+FFFD instead of raising.

    Python decodes stdin strictly; one stray byte in a pipe (`printf 'look \\xff'`) would end
    the game with a UnicodeDecodeError. Changing only the error handler keeps the encoding and
    what was already read.
    """
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")


@contextmanager
def _ctrl_c_cancels(cancel: CancelToken) -> Iterator[None]:
    """While a line runs, Ctrl-C sets `cancel` rather than raising KeyboardInterrupt wherever the
    main thread happens to be (usually inside the model). A second Ctrl-C, if the first did not
    stop it, interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_ctrl_c(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            signal.default_int_handler(signum, frame)
        cancel.set()

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_events(renderer: Renderer, events: Iterable[Event], cancel: CancelToken | None = None) -> list[Event]:
    """Render a stream of events to its end; returns the events that need replies.

    Once `cancel` is set (by Ctrl-C, or here when Ctrl-C lands in the renderer) the preview stops
    and the stream is drained: the game ends the turn itself and says so."""
    pending: list[Event] = []
    stopped = False
    for event in events:
        if cancel is not None and cancel.is_set() and not stopped:
            stopped = True
            renderer.stop_stream()
        if stopped and event.kind is EventKind.PIECE:
            continue
        try:
            renderer.show(event)
        except KeyboardInterrupt:
            if cancel is None:
                raise
            cancel.set()
        if event.kind in (EventKind.EDIT, EventKind.QUIT):
            pending.append(event)
    return pending


class Playable(Protocol):
    """What the loop drives besides a local `Session`: a story played elsewhere (a server's, through
    aidungeon.client). The same lines and events; it says its own status and whether it is saved."""

    @property
    def unsaved(self) -> bool: ...

    def begin(self, *, show_recap: bool = True, cancel: CancelToken | None = None) -> Iterator[Event]: ...

    def handle(self, line: str, cancel: CancelToken | None = None) -> Iterator[Event]: ...

    def status_line(self) -> str: ...

    def close(self) -> None: ...


def play(session: Session | Playable, terminal: Terminal, *, recap_shown: bool = False) -> int:
    """The main loop, until /quit or the end of input. Returns the exit code: 1 when the
    adventure has changes that could not be saved even at the end (the error was shown)."""
    ended = _loop_events(session, terminal, partial(session.begin, show_recap=not recap_shown))
    while not ended:
        terminal.status = status_line(session) if isinstance(session, Session) else session.status_line()
        try:
            line = terminal.ask("\n> ")
        except KeyboardInterrupt:
            terminal.renderer.show(Event(EventKind.INFO, "(Ctrl-D or /quit saves and quits)"))
            continue
        except EOFError:
            _loop_events(session, terminal, partial(session.handle, "/quit"))
            break
        ended = _loop_events(session, terminal, partial(session.handle, line))
    session.close()
    unsaved = session.keeper.unsaved if isinstance(session, Session) else session.unsaved
    return 1 if unsaved else 0


def _loop_events(session: Session | Playable, terminal: Terminal, start: Callable[..., Iterator[Event]]) -> bool:
    """Run `start(cancel=...)` with Ctrl-C cancelling it, render its events and answer the ones
    that need the player; True when the game should end."""
    cancel = CancelToken()
    with _ctrl_c_cancels(cancel):
        pending = run_events(terminal.renderer, start(cancel=cancel), cancel)
    for event in pending:
        if event.kind is EventKind.QUIT:
            return True
        try:
            edited = terminal.ask("edit> ", default=event.text)
        except (KeyboardInterrupt, EOFError):
            continue
        if _loop_events(session, terminal, partial(session.handle, str(event.data) + edited)):
            return True
    return False


def status_line(session: Session) -> str:
    """model · device · tokens the next window uses of the budget (as /context counts them) ·
    speed of the last turn · save."""
    stats = session.turns.telemetry.stats
    name = session.keeper.model_name
    # A model given as a folder or file shows its name, not the whole path (it has to fit one line).
    model = Path(name).name if "/" in name or "\\" in name else name
    parts = [model, session.turns.engine.device_type]
    try:
        context = session.build_context()
        parts.append(f"{context.tokens}/{context.budget} tokens")
    except AIDungeonError:
        pass  # the next line the player types gets the same error, in full
    if stats is not None and stats.decode_tok_s:
        parts.append(f"{stats.decode_tok_s:.1f} tok/s")
    parts.append(f"save: {session.save_name}")
    return " · ".join(parts)
