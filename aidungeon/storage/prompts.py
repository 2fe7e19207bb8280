"""Settings, characters and openings: read from the packaged `stories/` and the player's stories folder.

Each `*.toml` file is one setting (format: `stories/README.md`); the file stem is its id. The built-in
files ship inside the package as `aidungeon.stories`; a player's file with the same id replaces the
built-in one. Files are validated on load: a bad file becomes one warning line naming the file and the
problem, never a crash. Every text read is passed through `core.text.clean_text`, so a control
character or a lone surrogate in a player's file never reaches a story. This module also looks
settings and characters up by name or number and fills `{name}` in the texts.

It does not write or create files, build a `Story`, or talk to the terminal or the model.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aidungeon.core.errors import ConfigError
from aidungeon.core.story import Story, WorldEntry
from aidungeon.core.text import clean_text

BUILTIN_PACKAGE = "aidungeon.stories"
NAME_PLACEHOLDER = "{name}"
DEFAULT_PLAYER_NAME = "Alex"
MAX_PLAYER_NAME = 40

_SETTING_KEYS = ("title", "description", "opening", "memory", "pin_opening", "characters", "world")
_CHARACTER_KEYS = ("name", "description", "opening", "memory", "pin_opening")
_WORLD_KEYS = ("keys", "text", "constant")
_TYPE_NAMES = {str: "a string", bool: "true or false", list: "a list", dict: "a table"}

T = TypeVar("T")


@dataclass(frozen=True)
class Character:
    """Who the player is: the opening text, and what stays pinned in the model's context."""

    name: str
    description: str
    opening: str
    memory: str
    pin_opening: bool


@dataclass(frozen=True)
class WorldInfo:
    """A lore entry: `text` enters the context when one of `keys` is mentioned, or always if `constant`."""

    keys: tuple[str, ...]
    text: str
    constant: bool


@dataclass(frozen=True)
class Setting:
    """One stories file: a world and the characters the player can start as."""

    id: str
    title: str
    description: str
    characters: tuple[Character, ...]
    world: tuple[WorldInfo, ...]
    source: Path

    def character(self, name: str) -> Character:
        """The character called `name` (any case, or a unique start of it), or number `name` (1-based)."""
        return _pick(self.characters, name, names=lambda c: (c.name,), label=lambda c: c.name, what="character")


@dataclass(frozen=True)
class Start:
    """What a new story begins with, `{name}` already filled in."""

    title: str
    opening: str
    memory: str
    pin_opening: bool
    world: tuple[WorldInfo, ...]


# -- finding the files ---------------------------------------------------------------------------


def builtin_stories_dir() -> Path:
    """The built-in stories folder: the installed package data, else the checkout's top-level `stories/`."""
    installed = package_dir(BUILTIN_PACKAGE)
    if installed is not None:
        return installed
    return Path(__file__).resolve().parents[2] / "stories"


def package_dir(package: str) -> Path | None:
    """The folder on disk holding `package`'s files, or None when it is not importable or not a folder."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        return None
    if isinstance(root, Path):
        return root if root.is_dir() else None
    # A folder without __init__.py is a namespace package: files() returns a MultiplexedPath, which is
    # no Path itself but lists real paths. (A zipped install lists zipfile paths: no folder on disk.)
    for entry in root.iterdir():
        if isinstance(entry, Path):
            return entry.parent
    return None


# -- loading ---------------------------------------------------------------------------------------


def load_settings(user_dir: Path | None = None, *, builtin_dir: Path | None = None) -> tuple[list[Setting], list[str]]:
    """All settings, sorted by title, and one warning line per file or folder that could not be read.

    `user_dir` is the player's stories folder (`Paths.stories_dir`); None reads the built-in ones only.
    A player's setting replaces the built-in one with the same id (compared ignoring case).
    """
    builtin = builtin_dir if builtin_dir is not None else builtin_stories_dir()
    found: dict[str, Setting] = {}
    warnings: list[str] = []
    for folder, required in ((builtin, True), (user_dir, False)):
        if folder is None:
            continue
        settings, problems = _load_folder(folder, required=required)
        warnings.extend(problems)
        found.update((setting.id.casefold(), setting) for setting in settings)
    ordered = sorted(found.values(), key=lambda s: (s.title.casefold(), s.id.casefold()))
    return ordered, warnings


def _load_folder(folder: Path, *, required: bool) -> tuple[list[Setting], list[str]]:
    if not folder.exists():
        return [], ([f"the built-in stories folder {folder} is missing; reinstall aidungeon"] if required else [])
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
    except OSError as err:
        return [], [f"cannot read the stories folder {folder}: {err.strerror or err}"]
    settings: list[Setting] = []
    warnings: list[str] = []
    for path in paths:
        try:
            settings.append(load_setting(path))
        except ConfigError as err:
            warnings.append(f"skipped {err}")
    return settings, warnings


def load_setting(path: Path) -> Setting:
    """The setting in one stories file; ConfigError (naming the file and the problem) if it is not valid."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    try:
        return _parse_setting(data, path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _parse_setting(data: dict[str, Any], path: Path) -> Setting:
    _check_keys(data, _SETTING_KEYS, "")
    defaults = {
        "opening": _get(data, "opening", str, "", ""),
        "memory": _get(data, "memory", str, "", ""),
        "pin_opening": _get(data, "pin_opening", bool, "", False),
    }
    tables = _get(data, "characters", list, "", None)
    if not tables:
        raise ConfigError("needs at least one [[characters]] entry")
    characters = tuple(_parse_character(table, i, defaults) for i, table in enumerate(tables, start=1))
    _check_unique_names(characters)
    world_tables = _get(data, "world", list, "", [])
    return Setting(
        id=path.stem,
        title=_text(data, "title", ""),
        description=_get(data, "description", str, "", "").strip(),
        characters=characters,
        world=tuple(_parse_world(table, i) for i, table in enumerate(world_tables, start=1)),
        source=path,
    )


def _parse_character(table: Any, index: int, defaults: dict[str, Any]) -> Character:
    where = f"characters[{index}]: "
    _check_table(table, where)
    name = _text(table, "name", where)
    where = f"characters[{index}] ({name}): "
    _check_keys(table, _CHARACTER_KEYS, where)
    if name.isdecimal():
        raise ConfigError(f"{where}a name made of digits would be mistaken for a menu number")
    opening = _get(table, "opening", str, where, defaults["opening"]).strip()
    if not opening:
        raise ConfigError(f"{where}needs a non-empty 'opening' (or one for the whole setting)")
    return Character(
        name=name,
        description=_get(table, "description", str, where, "").strip(),
        opening=opening,
        memory=_get(table, "memory", str, where, defaults["memory"]).strip(),
        pin_opening=_get(table, "pin_opening", bool, where, defaults["pin_opening"]),
    )


def _parse_world(table: Any, index: int) -> WorldInfo:
    where = f"world[{index}]: "
    _check_table(table, where)
    _check_keys(table, _WORLD_KEYS, where)
    keys = _get(table, "keys", list, where, [])
    if not all(isinstance(key, str) and key.strip() for key in keys):
        raise ConfigError(f"{where}'keys' must be a list of non-empty strings")
    constant = _get(table, "constant", bool, where, False)
    if not keys and not constant:
        raise ConfigError(f"{where}needs 'keys' (or constant = true)")
    cleaned = tuple(clean_text(key).strip() for key in keys)
    return WorldInfo(keys=cleaned, text=_text(table, "text", where), constant=constant)


def _check_unique_names(characters: Sequence[Character]) -> None:
    seen: set[str] = set()
    for character in characters:
        folded = character.name.casefold()
        if folded in seen:
            raise ConfigError(f"two characters are named {character.name!r}")
        seen.add(folded)


# -- validation helpers ----------------------------------------------------------------------------


def _check_table(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}must be a table, not {type(value).__name__}")


def _check_keys(table: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = [key for key in table if key not in allowed]
    if unknown:
        listed = ", ".join(repr(key) for key in unknown)
        raise ConfigError(f"{where}unknown key {listed}; allowed: {', '.join(allowed)}")


def _get(table: dict[str, Any], key: str, kind: type[T], where: str, default: T | None) -> T:
    """`table[key]` checked to be a `kind`; `default` when absent, or an error when the default is None."""
    if key not in table:
        if default is None:
            raise ConfigError(f"{where}missing required key {key!r}")
        return default
    value = table[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}{key!r} must be {_TYPE_NAMES.get(kind, kind.__name__)}, not {value!r}")
    if isinstance(value, str):
        return clean_text(value)  # type: ignore[return-value]  # kind is str here
    return value


def _text(table: dict[str, Any], key: str, where: str) -> str:
    value = _get(table, key, str, where, None).strip()
    if not value:
        raise ConfigError(f"{where}{key!r} must not be empty")
    return value


# -- looking up ------------------------------------------------------------------------------------


def find_setting(settings: Sequence[Setting], name: str) -> Setting:
    """The setting with id or title `name` (any case, or a unique start of it), or number `name` (1-based)."""
    return _pick(settings, name, names=lambda s: (s.id, s.title), label=_setting_label, what="setting")


def _setting_label(setting: Setting) -> str:
    same = setting.id.casefold() == setting.title.casefold()
    return setting.title if same else f"{setting.title} [{setting.id}]"


def _pick(
    items: Sequence[T], query: str, *, names: Callable[[T], tuple[str, ...]], label: Callable[[T], str], what: str
) -> T:
    wanted = query.strip().casefold()
    if wanted.isdecimal() and 1 <= int(wanted) <= len(items):
        return items[int(wanted) - 1]
    exact = [item for item in items if wanted in (n.casefold() for n in names(item))]
    if exact:
        return exact[0]
    starts = [item for item in items if wanted and any(n.casefold().startswith(wanted) for n in names(item))]
    if len(starts) == 1:
        return starts[0]
    if not items:
        raise ConfigError(f"there is no {what} to choose from")
    choices = ", ".join(f"{i}. {label(item)}" for i, item in enumerate(items, start=1))
    raise ConfigError(f"no {what} {query!r}; choose one of: {choices}")


# -- filling in ------------------------------------------------------------------------------------


def clean_player_name(name: str) -> str:
    """The name on one line, at most MAX_PLAYER_NAME characters; DEFAULT_PLAYER_NAME when blank."""
    cleaned = " ".join(name.split())[:MAX_PLAYER_NAME].strip()
    return cleaned or DEFAULT_PLAYER_NAME


def fill(template: str, player_name: str) -> str:
    """`template` with every `{name}` replaced by the player's name; other braces are left alone."""
    return template.replace(NAME_PLACEHOLDER, clean_player_name(player_name))


def starting_story_parts(setting: Setting, character: Character, player_name: str) -> Start:
    """The opening, memory and lore a new story starts with, for this character and player name."""
    world = tuple(
        WorldInfo(
            keys=tuple(fill(k, player_name) for k in info.keys),
            text=fill(info.text, player_name),
            constant=info.constant,
        )
        for info in setting.world
    )
    return Start(
        title=f"{setting.title}: {character.name}",
        opening=fill(character.opening, player_name),
        memory=fill(character.memory, player_name),
        pin_opening=character.pin_opening,
        world=world,
    )


def new_story(start: Start, player_name: str) -> Story:
    """A fresh Story from a Start: opening, pinned memory and lore."""
    return Story(
        opening=start.opening,
        title=start.title,
        player_name=clean_player_name(player_name),
        pin_opening=start.pin_opening,
        memory=[start.memory] if start.memory.strip() else [],
        world=[WorldEntry(keys=list(w.keys), text=w.text, constant=w.constant) for w in start.world],
    )


# A custom opening longer than this is not pinned: it would crowd the story out of a small window.
MAX_PINNED_CUSTOM_CHARS = 1200


def custom_story(opening: str) -> Story:
    """A player-written opening, pinned when short, as AI Dungeon's custom prompts were."""
    first_words = " ".join(opening.split()[:6])
    pinned = len(opening.strip()) <= MAX_PINNED_CUSTOM_CHARS
    return Story(opening=opening.strip(), title=f"Custom: {first_words}", pin_opening=pinned)
