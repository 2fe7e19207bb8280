"""rich output: story text, streamed results, messages, tables and progress.

`Renderer` turns game events into terminal output. On a terminal it streams a result as it
is generated (a live preview that the cleaned final text replaces); when stdout is not a
terminal, or colour is off, it prints plain text with no escape codes and only final results.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from rich.text import Text

from aidungeon.core.progress import ProgressFn
from aidungeon.core.text import is_fragment, split_sentences
from aidungeon.game.session import Event, Table


def split_unfinished(text: str) -> tuple[str, str]:
    """(the finished part, the unfinished last sentence) of a text: an opening that stops
    mid-sentence ("... and the king") is finished by the story's first continuation."""
    if not is_fragment(text):
        return text, ""
    unfinished = split_sentences(text)[-1]
    return text[: text.rstrip().rfind(unfinished)].rstrip(), unfinished


def join_continuation(start: str, continuation: str) -> str:
    """An unfinished sentence and the text that finishes it, with a space unless it starts with punctuation."""
    if not start:
        return continuation
    continuation = continuation.lstrip()
    return start + ("" if continuation[:1] in ",.;:!?'’”\")" else " ") + continuation


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

    def _flush_held(self) -> None:
        self.console.print(Text(self._held, style=STYLES["opening"]))
        self._held = ""

    def stop_stream(self) -> None:
        """End a live preview without a result (the generation was stopped or failed)."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._streamed = ""

    def _opening(self, event: Event) -> None:
        finished, self._held = split_unfinished(event.text)
        if finished:
            self.console.print(Text(finished, style=STYLES["opening"]))

    def _story(self, event: Event) -> None:
        text, self._held = join_continuation(self._held, event.text), ""
        self.console.print(Text(text, style=STYLES["story"]))
        self.console.print()

    def _action(self, event: Event) -> None:
        self.console.print()
        self.console.print(Text(f"> {event.text}", style=STYLES["action"]))

    def _piece(self, event: Event) -> None:
        if not self.interactive:
            return
        if self._live is None:
            self._live = Live(Text(), console=self.console, refresh_per_second=20, transient=True)
            self._live.start()
        self._streamed += event.text
        self._live.update(Text(join_continuation(self._held, self._streamed)))

    def _restart(self, event: Event) -> None:
        """The turn is drawn again: drop what was streamed so far."""
        self.stop_stream()

    def _result(self, event: Event) -> None:
        self.stop_stream()
        if event.data == "retry":
            self._info(Event("info", "(another take)"))
        self._story(event)

    def _info(self, event: Event) -> None:
        self.console.print(Text(event.text, style=STYLES["info"]))

    def _error(self, event: Event) -> None:
        self.stop_stream()
        self.console.print(Text(f"! {event.text}", style=STYLES["error"]))

    def _text(self, event: Event) -> None:
        self.console.print(Text(event.text))

    def _quit(self, event: Event) -> None:
        self._info(event)

    def _table(self, event: Event) -> None:
        table: Table = event.data
        rich_table = RichTable(title=table.title)
        for column in table.columns:
            rich_table.add_column(column, overflow="fold")
        for row in table.rows:
            rich_table.add_row(*(escape(cell) for cell in row))
        self.console.print(rich_table)
        if table.footer:
            self._info(Event("info", table.footer))


@contextmanager
def progress_bar(console: Console) -> Iterator[ProgressFn]:
    """A progress display for model fetch, conversion and loading; yields the callback."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("Starting", total=None)

        def report(message: str, fraction: float | None) -> None:
            if fraction is None:
                progress.update(task, description=message, total=None)
            else:
                progress.update(task, description=message, total=1.0, completed=fraction)
            if not console.is_terminal and fraction in (None, 1.0):
                console.print(message)

        yield report
