"""Slash commands: a decorator registry where each docstring's first line is its /help line.

A command is a function `(game, argument) -> Iterator[Event]`. It changes the game through
the game's and the story's own methods and reports back with events; it never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aidungeon.core.config import Config
from aidungeon.core.errors import AIDungeonError, StoryError
from aidungeon.core.story import WorldEntry
from aidungeon.game.session import Event, Game, Table, numbered
from aidungeon.storage import saves

Handler = Callable[[Game, str], Iterator[Event]]


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


def dispatch(game: Game, line: str) -> Iterator[Event]:
    word, _, argument = line.lstrip("/").partition(" ")
    entry = REGISTRY.get(word.lower())
    if entry is None:
        yield Event("error", f"unknown command /{word}; /help lists the commands")
        return
    yield from entry.handler(game, argument.strip())


# -- help and quitting ---------------------------------------------------------------------


@command("help", "h", "?")
def _help(game: Game, arg: str) -> Iterator[Event]:
    """List the commands."""
    seen: list[Command] = []
    for entry in REGISTRY.values():
        if entry not in seen:
            seen.append(entry)
    rows = tuple((f"/{c.name} {c.usage}".strip(), c.help) for c in seen)
    footer = 'Type an action ("open the door"), "say ..." or a quote to speak, "!" for narration, Enter to continue.'
    yield Event("table", data=Table("Commands", ("command", "what it does"), rows, footer))


@command("quit", "q", "exit")
def _quit(game: Game, arg: str) -> Iterator[Event]:
    """Save and leave the game."""
    game.save_as(game.save_name)
    yield Event("quit", f"Saved as {game.save_name}. Resume with: aidungeon --load {game.save_name}")


# -- story flow ----------------------------------------------------------------------------


@command("retry", "r")
def _retry(game: Game, arg: str) -> Iterator[Event]:
    """Show another continuation of the last turn."""
    yield from game.retry()


@command("undo", "u")
def _undo(game: Game, arg: str) -> Iterator[Event]:
    """Take back the last turn (a new action afterwards starts a new branch)."""
    turn = game.story.undo()
    game.save_as(game.save_name)
    yield Event("info", f"Undone: {turn.action or 'continue'}")


@command("redo")
def _redo(game: Game, arg: str) -> Iterator[Event]:
    """Bring back the turn you last undid."""
    turn = game.story.redo()
    game.save_as(game.save_name)
    if turn.action:
        yield Event("action", turn.action)
    yield Event("story", turn.result)


@command("alter", "edit", usage="[TEXT]")
def _alter(game: Game, arg: str) -> Iterator[Event]:
    """Rewrite the last result (with no text, edit it in place)."""
    turn = game.story.last
    if turn is None:
        raise StoryError("there is no result to alter yet")
    if not arg:
        yield Event("edit", turn.result, data="/alter ")
        return
    game.story.alter(arg)
    game.save_as(game.save_name)
    yield Event("info", "The last result now reads:")
    yield Event("story", arg)


@command("print", "p")
def _print(game: Game, arg: str) -> Iterator[Event]:
    """Print the whole story of the current branch."""
    yield Event("text", game.story.transcript())


# -- memory, lore, notes -------------------------------------------------------------------


@command("remember", usage="TEXT")
def _remember(game: Game, arg: str) -> Iterator[Event]:
    """Pin a fact in memory: the model always sees it."""
    if not arg:
        raise StoryError("usage: /remember TEXT")
    game.story.memory.append(arg)
    game.build_context()
    game.save_as(game.save_name)
    yield Event("info", f"Remembered ({len(game.story.memory)} in memory).")


@command("forget", usage="[N]")
def _forget(game: Game, arg: str) -> Iterator[Event]:
    """Forget memory entry N (default: the last one)."""
    memory = game.story.memory
    if not memory:
        raise StoryError("memory is empty")
    index = _index(arg, len(memory)) if arg else len(memory) - 1
    removed = memory.pop(index)
    game.save_as(game.save_name)
    yield Event("info", f"Forgot: {removed}")


@command("memory", "mem", usage="[N TEXT]")
def _memory(game: Game, arg: str) -> Iterator[Event]:
    """Show memory, or replace entry N with new text."""
    memory = game.story.memory
    if arg:
        number, _, text = arg.partition(" ")
        index = _index(number, len(memory))
        if not text.strip():
            raise StoryError("usage: /memory N TEXT")
        memory[index] = text.strip()
        game.save_as(game.save_name)
    yield Event("table", data=Table("Memory", ("#", "entry"), numbered(memory), "" if memory else "(empty)"))


@command("note", usage="[TEXT|clear]")
def _note(game: Game, arg: str) -> Iterator[Event]:
    """Set the author's note, placed a few turns from the end (clear removes it)."""
    if not arg:
        yield Event("info", f"Author's note: {game.story.author_note or '(none)'}")
        return
    game.story.author_note = "" if arg.lower() == "clear" else arg
    game.save_as(game.save_name)
    yield Event("info", "Author's note cleared." if not game.story.author_note else "Author's note set.")


@command("world", "wi", usage="add|list|edit|remove ...")
def _world(game: Game, arg: str) -> Iterator[Event]:
    """World info: `add KEY, KEY: TEXT` (key * = always in), `edit N ...`, `remove N`, `list`."""
    verb, _, rest = arg.partition(" ")
    verb = verb.lower() or "list"
    world = game.story.world
    if verb == "add":
        world.append(_parse_entry(rest))
        game.save_as(game.save_name)
        yield Event("info", f"World info {len(world)} added.")
    elif verb == "edit":
        number, _, entry = rest.partition(" ")
        world[_index(number, len(world))] = _parse_entry(entry)
        game.save_as(game.save_name)
        yield Event("info", f"World info {number} changed.")
    elif verb in ("remove", "rm", "delete"):
        removed = world.pop(_index(rest, len(world)))
        game.save_as(game.save_name)
        yield Event("info", f"Removed world info for {', '.join(removed.keys) or 'always'}.")
    elif verb == "list":
        rows = tuple(
            (str(i), "always" if e.constant else ", ".join(e.keys), e.text) for i, e in enumerate(world, start=1)
        )
        yield Event("table", data=Table("World info", ("#", "keys", "text"), rows, "" if rows else "(none)"))
    else:
        raise StoryError("usage: /world add KEYS: TEXT | /world edit N KEYS: TEXT | /world remove N | /world list")


def _parse_entry(text: str) -> WorldEntry:
    keys, sep, body = text.partition(":")
    if not sep or not body.strip() or not keys.strip():
        raise StoryError("write world info as KEY, KEY: TEXT (use * as the key to keep it always in)")
    key_list = [k.strip() for k in keys.split(",") if k.strip()]
    constant = key_list == ["*"]
    return WorldEntry(keys=[] if constant else key_list, text=body.strip(), constant=constant)


def _index(text: str, count: int) -> int:
    """A 1-based number typed by the player -> a 0-based index, or a clear error."""
    try:
        number = int(text)
    except ValueError:
        raise StoryError(f"{text!r} is not a number") from None
    if not 1 <= number <= count:
        raise StoryError(f"there is no entry {number} (there are {count})")
    return number - 1


# -- settings and context ------------------------------------------------------------------


@command("set", usage="KEY VALUE")
def _set(game: Game, arg: str) -> Iterator[Event]:
    """Change a setting for this adventure (/settings lists them)."""
    parts = arg.rsplit(" ", 1)
    if len(parts) != 2:
        raise StoryError("usage: /set KEY VALUE, e.g. /set temperature 0.7")
    name = game.set_value(parts[0], parts[1])
    yield Event("info", f"{name} = {game.config.get(name)}")


@command("settings")
def _settings(game: Game, arg: str) -> Iterator[Event]:
    """Show every setting with its value."""
    rows = tuple((key, _show(game.config.get(key)), Config.help_for(key)) for key in Config.setting_names())
    yield Event(
        "table", data=Table("Settings", ("setting", "value", "meaning"), rows, "Change one with /set KEY VALUE")
    )


def _show(value: object) -> str:
    return "none" if value is None else str(value)


def budget_bar(used: int, budget: int, width: int = 30) -> str:
    """`[#########.....]`: how much of the token budget the window uses."""
    filled = min(width, round(width * used / budget)) if budget > 0 else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


@command("context", "ctx")
def _context(game: Game, arg: str) -> Iterator[Event]:
    """Show exactly what the model sees next, with a token count per part."""
    context = game.build_context()
    rows = tuple((part.name, str(part.tokens), part.text) for part in context.parts)
    reply = game.config.sampling.max_new_tokens
    bar = budget_bar(context.tokens, context.budget)
    footer = f"{bar} {context.tokens} of {context.budget} tokens ({reply} kept for the reply)"
    yield Event("table", data=Table("Context", ("part", "tokens", "text"), rows, footer))


# -- saves ---------------------------------------------------------------------------------


@command("save", usage="[NAME]")
def _save(game: Game, arg: str) -> Iterator[Event]:
    """Save the adventure (under a new name if given)."""
    path = game.save_as(arg or game.save_name)
    yield Event("info", f"Saved as {game.save_name} ({path}).")


@command("load", usage="[NAME]")
def _load(game: Game, arg: str) -> Iterator[Event]:
    """Load a saved adventure (default: the most recent one)."""
    name = arg or saves.latest_save(game.paths.saves_dir)
    if not name:
        raise StoryError("there are no saves yet")
    game.save_as(game.save_name)
    for warning in game.load(name):
        yield Event("info", warning)
    yield Event("info", f"Loaded {game.save_name}.")
    yield from game.begin()


@command("saves")
def _saves(game: Game, arg: str) -> Iterator[Event]:
    """List saved adventures."""
    rows = tuple(
        (info.name, info.saved_at.strftime("%Y-%m-%d %H:%M"), str(info.turns), info.model, info.title)
        for info in saves.list_saves(game.paths.saves_dir)
    )
    yield Event("table", data=Table("Saves", ("name", "last played", "turns", "model", "title"), rows))


@command("branches")
def _branches(game: Game, arg: str) -> Iterator[Event]:
    """Show every branch of the story: its last turn's number and first words."""
    story = game.story
    rows = []
    for leaf in story.leaves():
        marker = "*" if story.head is not None and leaf.id in {t.id for t in story.path()} else ""
        words = " ".join((leaf.action or leaf.result).split()[:8])
        rows.append((f"{leaf.id}{marker}", str(story.depth(leaf.id)), words))
    footer = "Switch with /branch ID (* = the branch you are on)"
    yield Event("table", data=Table("Branches", ("id", "turn", "last action"), tuple(rows), footer))


@command("branch", usage="ID")
def _branch(game: Game, arg: str) -> Iterator[Event]:
    """Continue from another branch (IDs from /branches)."""
    if not arg.isdigit():
        raise StoryError("usage: /branch ID (see /branches)")
    game.story.switch_branch(int(arg))
    game.save_as(game.save_name)
    yield Event("info", f"Now on branch {arg}.")
    yield from game.recap()


@command("export", usage="md|txt|html [FILE]")
def _export(game: Game, arg: str) -> Iterator[Event]:
    """Export the story as Markdown, text or a web page."""
    from aidungeon.storage.interop import export_story

    fmt, _, target = arg.partition(" ")
    fmt = (fmt or "md").lower()
    text = export_story(game.story, fmt)
    path = game.export_path(fmt, target.strip())
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise AIDungeonError(f"could not write {path}: {err.strerror}") from None
    yield Event("info", f"Exported to {path}")
