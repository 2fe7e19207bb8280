"""A story on a server, played through the terminal's REPL as if it were a local session.

`ServerSession` has what the REPL drives (`begin`, `handle`, `close`, `status_line`, `unsaved`):
every line goes to the server as typed, except the commands that leave the story or touch this
machine's files, which are answered here: `/quit` (the server saved every turn already), `/load`
(your other stories on the server), `/save` (a server story is saved under its id) and `/export`
(downloaded into the local exports folder). Errors come back as one ERROR event, as a local
session's do. It holds no story state beyond the id: the server's copy is the story.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit

from aidungeon.client.api import GameAPI
from aidungeon.core.cancel import CancelToken
from aidungeon.core.errors import AIDungeonError, SaveError, StoryError
from aidungeon.core.text import clean_text
from aidungeon.game.commands import REGISTRY, parse_export, write_export
from aidungeon.game.events import Event, EventKind, Table

RECAP_TURNS = 3
EXPORT_USAGE = "/export md|txt|html [NAME or PATH] [--force]"
ON_A_SERVER = (
    "On a server: /load lists your stories there (/load NUMBER or ID switches), /export downloads into "
    "this machine's exports folder, /save and /quit just confirm: the server saves every turn."
)


class ServerSession:
    """One of the player's stories on `api`'s server; `exports_dir` is where /export writes."""

    unsaved = False  # the server saves every turn before it shows it; nothing is kept here

    def __init__(self, api: GameAPI, story_id: str, *, exports_dir: Path) -> None:
        self.api, self.story_id, self.exports_dir = api, story_id, exports_dir
        self.title, self.model = story_id, ""
        self._local: dict[str, Callable[[str, CancelToken], Iterator[Event]]] = {
            "quit": self._quit,
            "load": self._load,
            "save": self._save,
            "export": self._export,
        }

    def begin(self, *, show_recap: bool = True, cancel: CancelToken | None = None) -> Iterator[Event]:
        """The recap, then the first result of a story that has none, or the result of a turn
        stopped before it had one (as a local session begins)."""
        try:
            detail = self.api.story(self.story_id)
            self.title, self.model = str(detail.get("title") or self.story_id), str(detail.get("model") or "")
            path = _path(detail)
            if show_recap:
                yield from recap(str(detail.get("opening", "")), path)
            if not path:
                yield from self.api.turn(self.story_id, "", cancel or CancelToken())
            elif not path[-1][1]:
                yield from self.api.turn(self.story_id, "/retry", cancel or CancelToken())
        except AIDungeonError as err:
            yield Event(EventKind.ERROR, str(err))

    def handle(self, line: str, cancel: CancelToken | None = None) -> Iterator[Event]:
        """One line as typed: a client-side command here, anything else on the server."""
        line = clean_text(line)
        try:
            local = self._local_command(line)
            if local is not None:
                run, argument = local
                yield from run(argument, cancel or CancelToken())
            else:
                yield from self.api.turn(self.story_id, line, cancel or CancelToken())
                if self._is_help(line):
                    yield Event(EventKind.INFO, ON_A_SERVER)
        except AIDungeonError as err:
            yield Event(EventKind.ERROR, str(err))

    def status_line(self) -> str:
        """model · server · story id · the last turn's new tokens and time."""
        # A model served from a folder shows its name, not the server's path (it has to fit one line).
        model = PurePath(self.model.replace("\\", "/")).name if self.model else "server"
        parts = [model, f"server {urlsplit(self.api.url).netloc}"]
        cost = self.api.last_turn
        if cost is not None and cost.new_tokens:
            parts.append(f"{cost.new_tokens} tokens in {cost.seconds:.1f} s")
        parts.append(f"story: {self.story_id}")
        return " · ".join(parts)

    def close(self) -> None:
        self.api.close()

    # -- the commands answered here ---------------------------------------------------------------

    def _local_command(self, line: str) -> tuple[Callable[[str, CancelToken], Iterator[Event]], str] | None:
        if not line.strip().startswith("/"):
            return None
        word, _, argument = line.strip().lstrip("/").partition(" ")
        entry = REGISTRY.get(word.lower())
        if entry is None or entry.name not in self._local:
            return None
        return self._local[entry.name], argument.strip()

    @staticmethod
    def _is_help(line: str) -> bool:
        word = line.strip().lstrip("/").partition(" ")[0].lower()
        entry = REGISTRY.get(word)
        return line.strip().startswith("/") and entry is not None and entry.name == "help"

    def _quit(self, argument: str, cancel: CancelToken) -> Iterator[Event]:
        resume = f"aidungeon --server {','.join(self.api.urls)} --load {self.story_id}"
        yield Event(EventKind.QUIT, f"Saved on the server as {self.story_id}. Resume with: {resume}")

    def _save(self, argument: str, cancel: CancelToken) -> Iterator[Event]:
        if argument:
            raise StoryError(f"a story on a server is saved under its id, {self.story_id}; /save alone confirms it")
        yield Event(EventKind.INFO, f"Saved on the server as {self.story_id} (the server saves every turn).")

    def _load(self, argument: str, cancel: CancelToken) -> Iterator[Event]:
        stories = self.api.stories()
        if not argument:
            yield Event(EventKind.TABLE, data=stories_table(stories))
            return
        self.story_id = pick_story(stories, argument)
        yield Event(EventKind.INFO, f"Loaded {self.story_id}.")
        yield from self.begin(show_recap=True, cancel=cancel)

    def _export(self, argument: str, cancel: CancelToken) -> Iterator[Event]:
        fmt, name, force = parse_export(argument, usage=EXPORT_USAGE)
        target = self._export_target(name, fmt)
        yield write_export(target, self.api.export(self.story_id, fmt), force=force, folder=self.exports_dir)

    def _export_target(self, name: str, fmt: str) -> Path:
        """A plain name goes into the exports folder; only a path the player wrote out (with a
        folder, `~` or absolute) goes anywhere else."""
        if not name:
            return self.exports_dir / f"{self.story_id}.{fmt}"
        if any(c in name for c in "/\\") or name.startswith("~"):
            return Path(name).expanduser()
        if name.startswith("."):
            raise StoryError(f"{name!r} is not a plain file name; write a path (./{name}) to put it elsewhere")
        return self.exports_dir / (name if name.lower().endswith(f".{fmt}") else f"{name}.{fmt}")


def recap(opening: str, path: list[tuple[str, str]], turns: int = RECAP_TURNS) -> Iterator[Event]:
    """What a local game shows on starting (game.events.recap), from the server's path: the
    opening of a young story, or the last few turns."""
    done = [(action, result) for action, result in path if result]
    if len(done) <= turns:
        yield Event(EventKind.OPENING, opening.strip())
    else:
        yield Event(EventKind.INFO, f"... {len(done) - turns} earlier turns (/print shows the whole story)")
    for action, result in done[-turns:]:
        if action:
            yield Event(EventKind.ACTION, action)
        yield Event(EventKind.STORY, result)


def pick_story(stories: list[dict[str, Any]], ref: str) -> str:
    """A story's id from its number in the list (1 = most recent), its id, or "" for the most
    recent; SaveError when there is none such."""
    if not stories:
        raise SaveError("you have no stories on this server yet; start one with aidungeon --server URL")
    ids = [str(s.get("id", "")) for s in stories]
    if not ref:
        return ids[0]
    if ref in ids:
        return ref
    if ref.isdecimal() and 1 <= int(ref) <= len(ids):
        return ids[int(ref) - 1]
    raise SaveError(f"no story {ref!r} among yours on the server; /load lists them")


def stories_table(stories: list[dict[str, Any]]) -> Table:
    rows = tuple(
        (str(n), str(s.get("id", "")), str(s.get("title", "")), str(s.get("turns", "")), _when(s.get("updated_at")))
        for n, s in enumerate(stories, start=1)
    )
    columns = ("#", "id", "title", "turns", "last played")
    return Table("Your stories on the server", columns, rows, "/load NUMBER or /load ID switches to one")


def _when(value: object) -> str:
    """An ISO timestamp as minutes ("2026-12-03 08:10")."""
    text = str(value or "")
    return text[:16].replace("T", " ")


def _path(detail: dict[str, Any]) -> list[tuple[str, str]]:
    path = detail.get("path")
    if not isinstance(path, list):
        return []
    return [(str(t.get("action", "")), str(t.get("result", ""))) for t in path if isinstance(t, dict)]
