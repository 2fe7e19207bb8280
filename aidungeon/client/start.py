"""The start menu for a server's stories: continue one, or start one from the server's settings
or a custom opening.

The flags answer it as they do the local menu: --load [ID or number] (none: the most recent),
--prompt TEXT, --setting S [--character C] [--name N]. It asks through the terminal's `Terminal`
and returns the story's id; the story is created on the server, nothing is loaded here.
"""

from __future__ import annotations

import argparse
from typing import Any

from aidungeon import __version__
from aidungeon.client.api import GameAPI
from aidungeon.client.session import pick_story
from aidungeon.core.errors import StoryError
from aidungeon.game.events import Event, EventKind
from aidungeon.ui.terminal.menu import ask_line, ask_opening
from aidungeon.ui.terminal.repl import Terminal


def choose_story(args: argparse.Namespace, api: GameAPI, terminal: Terminal) -> str:
    """The id of the story to play: from the flags, else from the menu. EOFError leaves."""
    if args.load is not None:
        return pick_story(api.stories(), args.load)
    if args.prompt:
        return api.create({"prompt": args.prompt})
    settings = api.settings()
    if args.setting:
        return _from_setting(api, _find(settings, args.setting), args.character, args.name, terminal)
    return _menu(api, settings, terminal)


def _menu(api: GameAPI, settings: list[dict[str, Any]], terminal: Terminal) -> str:
    console = terminal.renderer.console
    console.print(f"[bold]aidungeon {__version__}[/bold]: an AI text adventure, played on {api.url}", markup=True)
    hint = "Type a number or a name (/quit leaves). Inside the game, /help lists the commands."
    terminal.renderer.show(Event(EventKind.INFO, hint))
    stories = api.stories()
    options = [(str(s["id"]), f"{s.get('title', s['id'])} - {s.get('description', '')}") for s in settings]
    options.append(("custom", "Custom - write your own opening"))
    if stories:
        options.append(("load", f"Continue one of your stories ({len(stories)} on the server)"))
    picked = terminal.choose("Pick a setting", options)
    if picked == "custom":
        return api.create({"prompt": ask_opening(terminal)})
    if picked == "load":
        choices = [(str(s["id"]), f"{s.get('title', '')} ({s.get('turns', 0)} turns)") for s in stories]
        return terminal.choose("Pick a story", choices)
    return _from_setting(api, next(s for s in settings if str(s["id"]) == picked), None, None, terminal)


def _find(settings: list[dict[str, Any]], wanted: str) -> dict[str, Any]:
    for setting in settings:
        if wanted.strip().lower() in (str(setting.get("id", "")).lower(), str(setting.get("title", "")).lower()):
            return setting
    names = ", ".join(str(s.get("id", "")) for s in settings) or "none"
    raise StoryError(f"the server has no setting {wanted!r}; it has: {names}")


def _from_setting(
    api: GameAPI, setting: dict[str, Any], character: str | None, name: str | None, terminal: Terminal
) -> str:
    characters = [str(c) for c in setting.get("characters", [])]
    if not character:
        character = terminal.choose("Pick a character", [(c, c) for c in characters]) if characters else "1"
    player = name if name is not None else ask_line(terminal, "\nWhat is your character's name? ")
    return api.create({"setting": str(setting["id"]), "character": character, "name": player})
