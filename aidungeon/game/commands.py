"""Slash commands: a decorator registry where each docstring's first line is its /help line.

A command is a function `(session, argument) -> Iterator[Event]`. It reads the story freely but
changes it only through the session (`Session.edit`, `set_value`, `save_as`, `load`), which
checks before it keeps a change and saves it; it reports back with events and never prints.
Every numeric argument goes through `number`. `dispatch` is what a session is given to run a
command line; this module imports the session, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aidungeon.core.config import Config
from aidungeon.core.errors import AIDungeonError, SaveError, StoryError
from aidungeon.core.story import Story, WorldEntry
from aidungeon.game.events import Event, EventKind, Table, recap
from aidungeon.game.session import Session
from aidungeon.storage.interop import export_story
from aidungeon.storage.paths import write_new_file

Handler = Callable[[Session, str], Iterator[Event]]
FORCE = "--force"
# Numbers are turn ids and list positions: more digits than this is no number the game has.
MAX_DIGITS = 12
EXPORT_FORMATS = ("md", "txt", "html")


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    usage: str
    handler: Handler

    @property
    def help(self) -> str:
        doc = (self.handler.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


REGISTRY: dict[str, Command] = {}


def command(name: str, *aliases: str, usage: str = "") -> Callable[[Handler], Handler]:
    """Register a handler under `name` and its aliases."""

    def register(handler: Handler) -> Handler:
        entry = Command(name, aliases, usage, handler)
        for key in (name, *aliases):
            REGISTRY[key] = entry
        return handler

    return register


def dispatch(session: Session, line: str) -> Iterator[Event]:
    """Run a command line ("/undo", "/set temperature 0.5") on the session."""
    word, _, argument = line.lstrip("/").partition(" ")
    entry = REGISTRY.get(word.lower())
    if entry is None:
        raise StoryError(f"unknown command /{word}; /help lists the commands")
    yield from entry.handler(session, argument.strip())


def number(text: str, usage: str) -> int:
    """A whole number the player typed, or a clear error naming the command's usage. Only
    decimal digits count ("²" and "1e3" do not), and no number the game has is that long."""
    text = text.strip()
    if not text.isdecimal() or len(text) > MAX_DIGITS:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise StoryError(f"{shown!r} is not a number; usage: {usage}")
    return int(text)


def _index(text: str, count: int, usage: str) -> int:
    """A 1-based position typed by the player -> a 0-based index, or a clear error."""
    position = number(text, usage)
    if not 1 <= position <= count:
        raise StoryError(f"there is no entry {position} (there are {count})")
    return position - 1


def _force(arg: str) -> tuple[str, bool]:
    """The argument without a trailing --force, and whether it was there."""
    words = arg.split()
    if words and words[-1] == FORCE:
        return " ".join(words[:-1]), True
    return arg, False


def numbered(items: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    return tuple((str(i), item) for i, item in enumerate(items, start=1))


# -- help and quitting ---------------------------------------------------------------------


@command("help", "h", "?")
def _help(session: Session, arg: str) -> Iterator[Event]:
    """List the commands."""
    seen: list[Command] = []
    for entry in REGISTRY.values():
        if entry not in seen:
            seen.append(entry)
    rows = tuple((f"/{c.name} {c.usage}".strip(), c.help) for c in seen)
    footer = 'Type an action ("open the door"), "say ..." or a quote to speak, "!" for narration, Enter to continue.'
    yield Event(EventKind.TABLE, data=Table("Commands", ("command", "what it does"), rows, footer))


@command("quit", "q", "exit")
def _quit(session: Session, arg: str) -> Iterator[Event]:
    """Save and leave the game."""
    name = session.save_name
    try:
        session.save()
    except SaveError as err:
        # The game still ends (the player asked): the UI sees `unsaved` and exits with an error code.
        yield Event(EventKind.ERROR, f"the adventure could not be saved, so its last changes are lost: {err}")
        yield Event(EventKind.QUIT, f"The last good save can be resumed with: aidungeon --load {name}")
        return
    yield Event(EventKind.QUIT, f"Saved as {name}. Resume with: aidungeon --load {name}")


# -- story flow ----------------------------------------------------------------------------


@command("retry", "r")
def _retry(session: Session, arg: str) -> Iterator[Event]:
    """Show another continuation of the last turn."""
    yield from session.retry()


@command("undo", "u")
def _undo(session: Session, arg: str) -> Iterator[Event]:
    """Take back the last turn (a new action afterwards starts a new branch)."""
    turn = session.edit(Story.undo)
    yield Event(EventKind.INFO, f"Undone: {turn.action or 'continue'}")


@command("redo")
def _redo(session: Session, arg: str) -> Iterator[Event]:
    """Bring back the turn you last undid."""
    turn = session.edit(Story.redo)
    if turn.action:
        yield Event(EventKind.ACTION, turn.action)
    yield Event(EventKind.STORY, turn.result)


@command("alter", "edit", usage="[TEXT]")
def _alter(session: Session, arg: str) -> Iterator[Event]:
    """Rewrite the last result (with no text, edit it in place)."""
    turn = session.story.last
    if turn is None:
        raise StoryError("there is no result to alter yet")
    if not arg:
        yield Event(EventKind.EDIT, turn.result, data="/alter ")
        return
    session.edit(lambda story: story.alter(arg))
    yield Event(EventKind.INFO, "The last result now reads:")
    yield Event(EventKind.STORY, arg)


@command("print", "p")
def _print(session: Session, arg: str) -> Iterator[Event]:
    """Print the whole story of the current branch."""
    yield Event(EventKind.TEXT, session.story.transcript())


# -- memory, lore, notes -------------------------------------------------------------------


@command("remember", usage="TEXT")
def _remember(session: Session, arg: str) -> Iterator[Event]:
    """Pin a fact in memory: the model always sees it."""
    if not arg:
        raise StoryError("usage: /remember TEXT")
    session.edit(lambda story: story.remember(arg))
    yield Event(EventKind.INFO, f"Remembered ({len(session.story.memory)} in memory).")


@command("forget", usage="[N]")
def _forget(session: Session, arg: str) -> Iterator[Event]:
    """Forget memory entry N (default: the last one)."""
    count = len(session.story.memory)
    if not count:
        raise StoryError("memory is empty")
    index = _index(arg, count, "/forget [N]") if arg else count - 1
    removed = session.edit(lambda story: story.memory.pop(index))
    yield Event(EventKind.INFO, f"Forgot: {removed}")


@command("memory", "mem", usage="[N TEXT]")
def _memory(session: Session, arg: str) -> Iterator[Event]:
    """Show memory, or replace entry N with new text."""
    if arg:
        position, _, text = arg.partition(" ")
        index = _index(position, len(session.story.memory), "/memory N TEXT")
        if not text.strip():
            raise StoryError("usage: /memory N TEXT")
        session.edit(lambda story: story.memory.__setitem__(index, text.strip()))
    memory = session.story.memory
    yield Event(EventKind.TABLE, data=Table("Memory", ("#", "entry"), numbered(memory), "" if memory else "(empty)"))


@command("note", usage="[TEXT|clear]")
def _note(session: Session, arg: str) -> Iterator[Event]:
    """Set the author's note, placed a few turns from the end (clear removes it)."""
    if not arg:
        yield Event(EventKind.INFO, f"Author's note: {session.story.author_note or '(none)'}")
        return
    note = "" if arg.lower() == "clear" else arg
    session.edit(lambda story: story.set_author_note(note))
    yield Event(EventKind.INFO, "Author's note set." if note else "Author's note cleared.")


WORLD_USAGE = "/world add KEYS: TEXT | /world edit N KEYS: TEXT | /world remove N | /world list"


@command("world", "wi", usage="add|list|edit|remove ...")
def _world(session: Session, arg: str) -> Iterator[Event]:
    """World info: `add KEY, KEY: TEXT` (key * = always in), `edit N ...`, `remove N`, `list`."""
    verb, _, rest = arg.partition(" ")
    verb = verb.lower() or "list"
    count = len(session.story.world)
    if verb == "add":
        entry = _parse_entry(rest)
        session.edit(lambda story: story.world.append(entry))
        yield Event(EventKind.INFO, f"World info {count + 1} added.")
    elif verb == "edit":
        position, _, text = rest.partition(" ")
        index, entry = _index(position, count, WORLD_USAGE), _parse_entry(text)
        session.edit(lambda story: story.world.__setitem__(index, entry))
        yield Event(EventKind.INFO, f"World info {index + 1} changed.")
    elif verb in ("remove", "rm", "delete"):
        index = _index(rest, count, WORLD_USAGE)
        removed = session.edit(lambda story: story.world.pop(index))
        yield Event(EventKind.INFO, f"Removed world info for {', '.join(removed.keys) or 'always'}.")
    elif verb == "list":
        rows = tuple(
            (str(i), "always" if e.constant else ", ".join(e.keys), e.text)
            for i, e in enumerate(session.story.world, start=1)
        )
        yield Event(EventKind.TABLE, data=Table("World info", ("#", "keys", "text"), rows, "" if rows else "(none)"))
    else:
        raise StoryError(f"usage: {WORLD_USAGE}")


def _parse_entry(text: str) -> WorldEntry:
    keys, sep, body = text.partition(":")
    if not sep or not body.strip() or not keys.strip():
        raise StoryError("write world info as KEY, KEY: TEXT (use * as the key to keep it always in)")
    key_list = [k.strip() for k in keys.split(",") if k.strip()]
    constant = key_list == ["*"]
    return WorldEntry(keys=[] if constant else key_list, text=body.strip(), constant=constant)


# -- settings and context ------------------------------------------------------------------


@command("set", usage="KEY VALUE")
def _set(session: Session, arg: str) -> Iterator[Event]:
    """Change a setting for this adventure (/settings lists them)."""
    parts = arg.rsplit(" ", 1)
    if len(parts) != 2:
        raise StoryError("usage: /set KEY VALUE, e.g. /set temperature 0.7")
    name = session.set_value(parts[0], parts[1])
    yield Event(EventKind.INFO, f"{name} = {session.config.get(name)}")


@command("settings")
def _settings(session: Session, arg: str) -> Iterator[Event]:
    """Show every setting with its value."""
    rows = tuple((key, _show(session.config.get(key)), Config.help_for(key)) for key in Config.setting_names())
    table = Table("Settings", ("setting", "value", "meaning"), rows, "Change one with /set KEY VALUE")
    yield Event(EventKind.TABLE, data=table)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def budget_bar(used: int, budget: int, width: int = 30) -> str:
    """`[#########.....]`: how much of the token budget the window uses."""
    filled = min(width, round(width * used / budget)) if budget > 0 else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


@command("context", "ctx")
def _context(session: Session, arg: str) -> Iterator[Event]:
    """Show exactly what the model sees next, with a token count per part."""
    context = session.build_context()
    rows = tuple((part.name, str(part.tokens), part.text) for part in context.parts)
    reply = session.config.sampling.max_new_tokens
    bar = budget_bar(context.tokens, context.budget)
    footer = f"{bar} {context.tokens} of {context.budget} tokens ({reply} kept for the reply)"
    yield Event(EventKind.TABLE, data=Table("Context", ("part", "tokens", "text"), rows, footer))


# -- saves ---------------------------------------------------------------------------------


@command("save", usage="[NAME] [--force]")
def _save(session: Session, arg: str) -> Iterator[Event]:
    """Save the adventure (under a new name if given; --force replaces another save of that name)."""
    name, force = _force(arg)
    where = session.save_as(name, force=force) if name else session.save()
    yield Event(EventKind.INFO, f"Saved as {session.save_name} ({where}).")


@command("load", usage="[NAME]")
def _load(session: Session, arg: str) -> Iterator[Event]:
    """Load a saved adventure (default: the most recent one)."""
    name = arg or session.keeper.store.latest()
    if not name:
        raise StoryError("there are no saves yet")
    for warning in session.load(name):
        yield Event(EventKind.INFO, warning)
    yield Event(EventKind.INFO, f"Loaded {session.save_name}.")
    yield from session.begin()


@command("saves")
def _saves(session: Session, arg: str) -> Iterator[Event]:
    """List saved adventures."""
    rows = tuple(
        (info.name, info.saved_at.strftime("%Y-%m-%d %H:%M"), str(info.turns), info.model, info.title)
        for info in session.keeper.store.infos()
    )
    yield Event(EventKind.TABLE, data=Table("Saves", ("name", "last played", "turns", "model", "title"), rows))


@command("branches")
def _branches(session: Session, arg: str) -> Iterator[Event]:
    """Show every branch of the story: its last turn's number and action."""
    story = session.story
    on_path = {t.id for t in story.path()}
    rows = []
    for leaf in story.leaves():
        marker = "*" if leaf.id in on_path else ""
        words = " ".join(leaf.action.split()[:8]) or "(continue)"
        rows.append((f"{leaf.id}{marker}", str(story.depth(leaf.id)), words))
    footer = "Switch with /branch ID (* = the branch you are on)"
    yield Event(EventKind.TABLE, data=Table("Branches", ("id", "turn", "last action"), tuple(rows), footer))


@command("branch", usage="ID")
def _branch(session: Session, arg: str) -> Iterator[Event]:
    """Continue from another branch (IDs from /branches)."""
    turn_id = number(arg, "/branch ID (see /branches)")
    session.edit(lambda story: story.switch_branch(turn_id))
    yield Event(EventKind.INFO, f"Now on branch {turn_id}.")
    yield from recap(session.story)


EXPORT_USAGE = "/export md|txt|html [NAME] [--force]"


@command("export", usage="md|txt|html [NAME] [--force]")
def _export(session: Session, arg: str) -> Iterator[Event]:
    """Export the story as Markdown, text or a web page into the exports folder."""
    fmt, name, force = parse_export(arg, usage=EXPORT_USAGE)
    if session.exports_dir is None:
        raise StoryError("this game has no exports folder; use aidungeon export NAME -o FILE")
    path = session.exports_dir / _export_name(name or session.save_name, fmt)
    yield write_export(path, export_story(session.story, fmt).encode("utf-8"), force=force, folder=session.exports_dir)


def parse_export(arg: str, *, usage: str) -> tuple[str, str, bool]:
    """`/export`'s argument as (format, name or "", --force given); the format defaults to md."""
    rest, force = _force(arg)
    fmt, _, name = rest.partition(" ")
    fmt = (fmt or "md").lower()
    if fmt not in EXPORT_FORMATS:
        raise StoryError(f"usage: {usage}")
    return fmt, name.strip(), force


def write_export(path: Path, data: bytes, *, force: bool, folder: Path) -> Event:
    """Write an export (never over a file without `force`, never through a link), making
    `folder` first when the file goes into it; one clear error line otherwise."""
    try:
        if path.parent == folder:
            folder.mkdir(parents=True, exist_ok=True)
        write_new_file(path, data, force=force)
    except FileExistsError:
        raise StoryError(f"{path} already exists; add --force to replace it") from None
    except (OSError, ValueError) as err:
        raise AIDungeonError(f"could not write {path}: {getattr(err, 'strerror', None) or err}") from None
    return Event(EventKind.INFO, f"Exported to {path}")


def _export_name(name: str, fmt: str) -> str:
    """A plain file name inside the exports folder (the suffix added if missing); a path is refused."""
    if any(c in name for c in "/\\\0") or name.startswith(("~", ".")) or Path(name).is_absolute():
        raise StoryError(
            f"/export writes only into the exports folder; for {name!r} use: aidungeon export SAVE -o FILE"
        )
    return name if name.lower().endswith(f".{fmt}") else f"{name}.{fmt}"
