"""The start menu: pick a setting, a character and a name, write an opening, or load a save.

Command-line flags (--prompt, --setting/--character/--name, --load) skip the questions they
answer. The result is a `StartChoice` holding the story to play; nothing here loads a model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from aidungeon import __version__
from aidungeon.core.errors import SaveError
from aidungeon.core.story import Story
from aidungeon.game.events import Event, EventKind
from aidungeon.storage import prompts, saves
from aidungeon.storage.paths import Paths
from aidungeon.ui.terminal.repl import QUIT_COMMANDS, Terminal


@dataclass
class StartChoice:
    """The adventure to play, and the save it came from (if any)."""

    story: Story
    save_name: str | None = None
    save: saves.SaveData | None = None
    warnings: list[str] = field(default_factory=list)


def choose_start(args: argparse.Namespace, paths: Paths, terminal: Terminal) -> StartChoice:
    if args.load is not None:
        return load_start(paths, args.load)
    if args.prompt:
        return StartChoice(prompts.custom_story(args.prompt))
    settings, warnings = prompts.load_settings(paths.stories_dir)
    for warning in warnings:
        terminal.renderer.show(Event(EventKind.INFO, warning))
    if args.setting:
        setting = prompts.find_setting(settings, args.setting)
        return StartChoice(_from_setting(setting, args.character, args.name, terminal))
    return _menu(settings, paths, terminal)


def load_start(paths: Paths, name: str) -> StartChoice:
    """Resume a save by name, or the most recent one when `name` is empty."""
    name = name or saves.latest_save(paths.saves_dir) or ""
    if not name:
        raise SaveError("there are no saved adventures yet; start a new one with `aidungeon`")
    data, warnings = saves.read_save(paths.saves_dir, name)
    return StartChoice(data.story, save_name=saves.sanitize_name(name), save=data, warnings=warnings)


def _menu(settings: list[prompts.Setting], paths: Paths, terminal: Terminal) -> StartChoice:
    terminal.renderer.console.print(f"[bold]aidungeon {__version__}[/bold]: an AI text adventure. Anything goes.")
    hint = "Type a number or a name (/quit leaves). Inside the game, /help lists the commands."
    terminal.renderer.show(Event(EventKind.INFO, hint))
    options = [(s.id, f"{s.title} - {s.description}") for s in settings]
    options.append(("custom", "Custom - write your own opening"))
    if saves.list_saves(paths.saves_dir):
        options.append(("load", "Load a saved adventure"))
    picked = terminal.choose("Pick a setting", options)
    if picked == "custom":
        return StartChoice(prompts.custom_story(ask_opening(terminal)))
    if picked == "load":
        infos = saves.list_saves(paths.saves_dir)
        name = terminal.choose("Pick a save", [(i.name, f"{i.name} ({i.title}, {i.turns} turns)") for i in infos])
        return load_start(paths, name)
    setting = next(s for s in settings if s.id == picked)
    return StartChoice(_from_setting(setting, None, None, terminal))


def _from_setting(setting: prompts.Setting, character: str | None, name: str | None, terminal: Terminal) -> Story:
    if character:
        chosen = setting.character(character)
    else:
        options = [(c.name, f"{c.name} - {c.description}" if c.description else c.name) for c in setting.characters]
        chosen = setting.character(terminal.choose("Pick a character", options))
    player = name if name is not None else ask_line(terminal, "\nWhat is your character's name? ")
    return prompts.new_story(prompts.starting_story_parts(setting, chosen, player), player)


def ask_opening(terminal: Terminal) -> str:
    hint = "Alt-Enter (or Esc, Enter) to finish" if terminal.interactive else "an empty line to finish"
    terminal.renderer.show(Event(EventKind.INFO, f"Write the opening of your story ({hint}):"))
    while True:
        opening = terminal.ask_multiline("> ").strip()
        if opening.lower() in QUIT_COMMANDS:
            raise EOFError
        if opening:
            return opening
        terminal.renderer.show(Event(EventKind.ERROR, "the opening cannot be empty"))


def ask_line(terminal: Terminal, prompt: str) -> str:
    """One free-text answer; a quit command leaves the menu (EOFError, as Ctrl-D)."""
    answer = terminal.ask(prompt, history=False)
    if answer.strip().lower() in QUIT_COMMANDS:
        raise EOFError
    return answer
