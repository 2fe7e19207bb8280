"""rich output: story text, streamed results, messages, tables and progress.

`Renderer` turns game events into terminal output. On a terminal it streams a result as it
is generated (a live preview that the cleaned final text replaces); when stdout is not a
terminal, or colour is off, it prints plain text with no escape codes and only final results.
Every text it draws goes through `core.text.clean_text` first: a story from an import or a
model may hold escape sequences, and rich's `Text` escapes markup, not those.

`progress_bar` is the one progress display for fetching, converting and loading a model. This
module reads no input (`repl.py` does) and knows nothing of the game's rules.
"""

from __future__ import annotations

import io
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from rich.text import Text

from aidungeon.core.progress import ProgressFn
from aidungeon.core.text import clean_text, is_fragment, join_continuation, split_sentences
from aidungeon.game.events import Event, EventKind, Table


def split_unfinished(text: str) -> tuple[str, str]:
    """(the finished part, the unfinished last sentence) of a text: an opening that stops
    mid-sentence ("... and the king") is finished by the story's first continuation."""
    if not is_fragment(text):
        return text, ""
    unfinished = split_sentences(text)[-1]
    return text[: text.rstrip().rfind(unfinished)].rstrip(), unfinished


STYLES = {
    "story": "",
    "opening": "",
    "action": "bold cyan",
    "info": "dim italic",
    "error": "bold red",
}


def make_console(*, no_color: bool = False, file: IO[str] | None = None) -> Console:
    """A console that honours --no-color and NO_COLOR, and is plain when not on a terminal."""
    no_color = no_color or bool(os.environ.get("NO_COLOR"))
    console = Console(file=file, no_color=no_color, highlight=False, emoji=False, soft_wrap=False)
    # Text wraps to a terminal's width; a pipe or a file has none, so lines stay whole there.
    console.soft_wrap = not console.is_terminal
    return console


class Renderer:
    """Draws events; keeps the live preview of a result while it streams."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interactive = console.is_terminal
        self._live: Live | None = None
        self._streamed = ""
        # The opening's unfinished last sentence, shown with the text that finishes it.
        self._held = ""

    def show(self, event: Event) -> None:
        if self._held and event.kind not in ("piece", "restart", "result", "story"):
            self._flush_held()
        handler = getattr(self, f"_{event.kind}", None)
        if handler is not None:
            handler(event)

    def _print(self, text: str, style: str = "") -> None:
        self.console.print(Text(clean_text(text), style=style))

    def _flush_held(self) -> None:
        self._print(self._held, STYLES["opening"])
        self._held = ""

    def stop_stream(self) -> None:
        """End a live preview without a result (the generation was stopped or failed)."""
        live, self._live = self._live, None
        self._streamed = ""
        if live is not None:
            with _interrupt_deferred():
                live.stop()

    def _opening(self, event: Event) -> None:
        finished, self._held = split_unfinished(event.text)
        if finished:
            self._print(finished, STYLES["opening"])

    def _story(self, event: Event) -> None:
        text, self._held = join_continuation(self._held, event.text), ""
        self._print(text, STYLES["story"])
        self.console.print()

    def _action(self, event: Event) -> None:
        self.console.print()
        self._print(f"> {event.text}", STYLES["action"])

    def _piece(self, event: Event) -> None:
        if not self.interactive:
            return
        live = self._live or self._start_live()
        self._streamed += event.text
        # Cleaned as a whole: an escape sequence may be split across two pieces.
        live.update(Text(clean_text(join_continuation(self._held, self._streamed))))

    def _start_live(self) -> Live:
        """Start the live preview. Ctrl-C is held while rich starts it: an interrupt half-way
        would leave the console with a live display but no render hook, and stopping it would
        then fail. The preview is recorded before it starts, so whatever ends a start early
        leaves it for `stop_stream`."""
        with _interrupt_deferred():
            live = self._live = Live(Text(), console=self.console, refresh_per_second=20, transient=True)
            live.start()
        return live

    def _restart(self, event: Event) -> None:
        """The turn is drawn again: drop what was streamed so far."""
        self.stop_stream()

    def _result(self, event: Event) -> None:
        self.stop_stream()
        if event.data == "retry":
            self._info(Event(EventKind.INFO, "(another take)"))
        self._story(event)

    def _info(self, event: Event) -> None:
        self._print(event.text, STYLES["info"])

    def _error(self, event: Event) -> None:
        self.stop_stream()
        self._print(f"! {event.text}", STYLES["error"])

    def _text(self, event: Event) -> None:
        self._print(event.text)

    def _quit(self, event: Event) -> None:
        self._info(event)

    def _table(self, event: Event) -> None:
        if isinstance(event.data, Table):
            print_table(self.console, event.data)


def print_table(console: Console, table: Table) -> None:
    """A table of the game's or the command line's (saves, settings, doctor), cleaned like all text."""
    rich_table = RichTable(title=Text(clean_text(table.title)))
    for index, column in enumerate(table.columns):
        # Never cut short with an ellipsis: the first column is what players type back (a save's
        # name, a setting), the others fold so paths stay whole.
        rich_table.add_column(Text(clean_text(column)), overflow="fold", no_wrap=index == 0)
    for row in table.rows:
        rich_table.add_row(*(Text(clean_text(cell)) for cell in row))
    console.print(rich_table)
    if table.footer:
        console.print(Text(clean_text(table.footer), style=STYLES["info"]))


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold SIGINT during the block, then replay it to whatever handler was in place.

    Replaying (rather than raising KeyboardInterrupt) keeps a caller's own Ctrl-C handling,
    such as a cancel token, working. Handlers can only be set in the main thread; elsewhere
    no Ctrl-C is delivered anyway, so the block just runs.
    """
    # getsignal is None when the handler was set outside Python: it could not be put back.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        signal.raise_signal(signal.SIGINT)


# A tqdm status line: "Converting ...:  45%|####5     | 123/272 [00:01<00:02, 99.1it/s]".
_TQDM_RE = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")


class _StderrToProgress(io.TextIOBase):
    """Stands in for stderr while a model loads: libraries' tqdm bars (transformers' GGUF
    reader has one that cannot be switched off) become steps of our progress display instead
    of one printed line per refresh; any other text is printed as it is."""

    def __init__(self, console: Console, step: ProgressFn, message: list[str]) -> None:
        self._console = console
        self._step = step
        self._message = message  # the display's current message, shared with `report`

    def write(self, text: str) -> int:
        for segment in re.split(r"[\r\n]", text):
            bar = _TQDM_RE.search(segment)
            if bar is not None:
                done, total = int(bar.group(1)), int(bar.group(2))
                self._step(self._message[0], done / total if total else None)
            elif segment.strip():
                self._console.print(clean_text(segment), markup=False, highlight=False)
        return len(text)

    def writable(self) -> bool:
        return True


@contextmanager
def progress_bar(console: Console) -> Iterator[ProgressFn]:
    """One progress display for model fetch, conversion and loading; yields the callback.

    On a terminal it is a single line updated in place and gone when done. Elsewhere (a pipe,
    a log) each new stage's message is printed once, and the steps within a stage are not.
    """
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    progress = Progress(*columns, console=console, transient=True, redirect_stderr=False)
    task = progress.add_task("Starting", total=None)
    message = ["Starting"]
    printed: list[str] = []

    def report(text: str, fraction: float | None) -> None:
        text = clean_text(text)
        message[0] = text
        if fraction is None:
            progress.update(task, description=text, total=None)
        else:
            progress.update(task, description=text, total=1.0, completed=fraction)
        if not console.is_terminal and printed[-1:] != [text]:
            printed.append(text)
            console.print(text, markup=False, highlight=False)

    with progress, redirect_stderr(_StderrToProgress(console, report, message)):
        yield report
