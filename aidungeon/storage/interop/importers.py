"""Import other games' saves (AI Dungeon 2, Clover Edition, KoboldAI, AI Dungeon web) as `Story` objects.

Imports read one JSON file and return `Story` objects built with `Story.append`/`add_candidates`,
plus notes for the player on anything that could not be mapped. Every piece of story text, memory,
note and lore is kept; what has no place in a `Story` is named in a note, never dropped silently.

- AI Dungeon 2 (`story_start`, `context`, `actions`, `results`, ...): the opening is `context` followed
  by `story_start`, pinned, because AI Dungeon 2 kept `context` in every prompt and our story has one
  opening. `actions[i]`/`results[i]` become turn i (a leading "> " is stripped; an action may be empty).
  `memory` as a list of texts becomes memory; as a number (AI Dungeon 2's turn window) it is noted.
- Clover Edition (`context`, `memory`, `actions`, `results`): as AI Dungeon 2; `context` is the pinned
  opening, the memory list is memory, `savefile`/`filename` give the title.
- KoboldAI and KoboldAI Lite (`prompt`, `memory`, `authorsnote`, `actions`, `worldinfo`): the prompt is the
  (unpinned) opening. `actions` is a list of text chunks, or a dict of index -> text or -> {"Selected Text"},
  or (KoboldAI United) {"actions": {...}}. A chunk that starts with ">" is a player action; the chunk after
  it is its result; any other chunk is a turn with an empty action, since story-mode input and AI output
  cannot be told apart. Alternatives in `actions_metadata` / "Options" become extra candidates. World info
  keeps keys, content and `constant`; secondary keys (which need both keys to match) are noted.
- AI Dungeon web exports (a list of adventures, `{"stories": [...]}` or one adventure): the first
  "story"/"start" action (or `prompt`) is the opening; "do", "say" and "story" actions are player actions,
  "continue" is the AI's result. `memory`, `authorsNote` and `worldInfo`/`storyCards` map directly.

All text passes through `core.text.clean_text` as the `Story` is built (lone surrogates, control
characters). Files over `MAX_IMPORT_BYTES`, and stories over `core.story`'s bounds (turns, characters
per text), are refused with one line before anything large is built.

This module reads files but writes none; exporting is `exporters.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidungeon.core.errors import SaveError
from aidungeon.core.story import MAX_CANDIDATES, MAX_ENTRIES, MAX_TEXT_CHARS, MAX_TURNS, Candidate, Story, WorldEntry

# Another game's save is JSON in memory several times its size; 32 MB is far beyond a real story.
MAX_IMPORT_BYTES = 32 * 2**20

IMPORT_FORMATS = ("aidungeon2", "clover", "koboldai", "aidungeon-web")
_FORMAT_NAMES = {
    "aidungeon2": "an AI Dungeon 2 save",
    "clover": "a Clover Edition save",
    "koboldai": "a KoboldAI save",
    "aidungeon-web": "an AI Dungeon web export",
}

_KOBOLD_MARKERS = ("actions", "gamestarted", "memory", "authorsnote", "authornote", "worldinfo")
_WEB_PLAYER_TYPES = ("do", "say", "story")
_DEFAULT_ANOTE_TEMPLATE = "[Author's note: <|>]"


@dataclass
class _Draft:
    """One turn before it becomes part of a Story: the action and its candidate results."""

    action: str
    results: list[str] = field(default_factory=list)


@dataclass
class _Parts:
    """Everything an importer found for one story."""

    title: str
    opening: str = ""
    pin_opening: bool = False
    memory: list[str] = field(default_factory=list)
    author_note: str = ""
    world: list[WorldEntry] = field(default_factory=list)
    turns: list[_Draft] = field(default_factory=list)


# -- shared helpers ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SaveError(f"{what} should be a list, but it is {type(value).__name__}")
    bounded: list[Any] = _bounded(value, what)
    return bounded


def _bounded(items: Any, what: str) -> Any:
    """Refuse a list far beyond any story (a turn is at most two entries: action and result) before
    a draft is built for each entry."""
    if len(items) > 2 * MAX_TURNS:
        raise SaveError(f"{what} has {len(items)} entries; a story of at most {MAX_TURNS} turns can be imported")
    return items


def _action(text: str) -> str:
    """'\\n> You open the door.\\n' -> 'You open the door.'"""
    text = text.strip()
    return text[1:].lstrip() if text.startswith(">") else text


def _keys(value: Any) -> list[str]:
    items = value if isinstance(value, list) else _text(value).split(",")
    return [k.strip() for k in (_text(i) for i in items) if k.strip()]


def _join(first: str, second: str) -> str:
    if first and second and not first[-1].isspace() and not second[0].isspace():
        return f"{first} {second}"
    return first + second


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _unmapped(data: dict[str, Any], used: set[str], game: str) -> list[str]:
    extra = sorted(k for k, v in data.items() if k not in used and not _is_empty(v))
    return [f"{game} fields not imported: {', '.join(extra)}"] if extra else []


def _pairs(actions: list[Any], results: list[Any], game: str) -> tuple[list[_Draft], list[str]]:
    notes = []
    if len(actions) != len(results):
        notes.append(f"{game}: {len(actions)} actions but {len(results)} results; missing parts were left empty")
    turns = []
    for index in range(max(len(actions), len(results))):
        action = _action(_text(actions[index])) if index < len(actions) else ""
        result = _text(results[index]).strip() if index < len(results) else ""
        turns.append(_Draft(action, [result] if result else []))
    return turns, notes


def _memory(value: Any, game: str) -> tuple[list[str], list[str]]:
    if isinstance(value, list):
        return [m for m in (_text(v).strip() for v in value) if m], []
    if isinstance(value, str):
        return ([value.strip()] if value.strip() else []), []
    if value is None:
        return [], []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [], [f"{game}: memory {value!r} is a number of remembered turns, not text; it was not imported"]
    return [], [f"{game}: memory is not text ({type(value).__name__}); it was not imported"]


def _check_bounds(parts: _Parts) -> None:
    """Refuse a story over the bounds a save can hold, before any of it is built."""
    if len(parts.turns) > MAX_TURNS:
        raise SaveError(f"{parts.title!r} has {len(parts.turns)} turns; at most {MAX_TURNS} can be imported")
    if len(parts.memory) > MAX_ENTRIES or len(parts.world) > MAX_ENTRIES:
        raise SaveError(f"{parts.title!r} has more than {MAX_ENTRIES} memory or world info entries")
    texts = [parts.opening, parts.author_note, *parts.memory, *(entry.text for entry in parts.world)]
    texts += [text for draft in parts.turns for text in (draft.action, *draft.results)]
    longest = max(texts, key=len, default="")
    if len(longest) > MAX_TEXT_CHARS:
        raise SaveError(f"{parts.title!r} holds a text of {len(longest)} characters; at most {MAX_TEXT_CHARS}")
    if any(len(draft.results) > MAX_CANDIDATES for draft in parts.turns):
        raise SaveError(f"{parts.title!r} has a turn with more than {MAX_CANDIDATES} alternatives")


def _build(parts: _Parts) -> Story:
    _check_bounds(parts)
    story = Story(
        opening=parts.opening,
        title=parts.title,
        pin_opening=parts.pin_opening,
        memory=parts.memory,
        author_note=parts.author_note,
        world=parts.world,
    )
    for draft in parts.turns:
        if not draft.action and not draft.results:
            continue
        story.append(draft.action)
        if draft.results:
            story.add_candidates([Candidate(text=text) for text in draft.results])
    story.validate()
    return story


# -- AI Dungeon 2 and Clover Edition -------------------------------------------------------------


def _from_aidungeon2(data: dict[str, Any], title: str) -> tuple[list[_Parts], list[str]]:
    context, start = _text(data.get("context")), _text(data.get("story_start"))
    memory, notes = _memory(data.get("memory"), "AI Dungeon 2")
    turns, pair_notes = _pairs(
        _list(data.get("actions"), "actions"), _list(data.get("results"), "results"), "AI Dungeon 2"
    )
    parts = _Parts(title, _join(context, start), bool(context.strip()), memory, turns=turns)
    used = {"context", "story_start", "memory", "actions", "results"}
    return [parts], notes + pair_notes + _unmapped(data, used, "AI Dungeon 2")


def _from_clover(data: dict[str, Any], title: str) -> tuple[list[_Parts], list[str]]:
    saved_as = _text(data.get("savefile") or data.get("filename")).strip()
    if saved_as:
        title = Path(saved_as).stem or title
    context = _text(data.get("context"))
    memory, notes = _memory(data.get("memory"), "Clover Edition")
    turns, pair_notes = _pairs(_list(data.get("actions"), "actions"), _list(data.get("results"), "results"), "Clover")
    parts = _Parts(title, context, bool(context.strip()), memory, turns=turns)
    used = {"context", "memory", "actions", "results", "savefile", "filename"}
    return [parts], notes + pair_notes + _unmapped(data, used, "Clover Edition")


# -- KoboldAI ------------------------------------------------------------------------------------


def _kobold_chunks(data: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Each chunk's selected text and its alternatives, in story order."""
    actions = data.get("actions")
    if isinstance(actions, dict) and isinstance(actions.get("actions"), dict):
        actions = actions["actions"]  # KoboldAI United: {"action_count": n, "actions": {...}}
    if isinstance(actions, dict):
        _bounded(actions, "actions")
        try:
            items = [(str(key), actions[key]) for key in sorted(actions, key=int)]
        except ValueError:
            raise SaveError("KoboldAI actions should be numbered, but some keys are not numbers") from None
    else:
        items = [(str(index), item) for index, item in enumerate(_list(actions, "actions"))]
    raw_metadata = data.get("actions_metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    chunks = []
    for key, item in items:
        entry = item if isinstance(item, dict) else metadata.get(key, {})
        text = _text(item.get("Selected Text") if isinstance(item, dict) else item)
        others = (entry.get("Alternative Text") or entry.get("Options") or []) if isinstance(entry, dict) else []
        alternatives = [
            _text(o.get("Text", o.get("text")) if isinstance(o, dict) else o)
            for o in (others if isinstance(others, list) else [])
        ]
        chunks.append((text, [a.strip() for a in alternatives if a.strip() and a.strip() != text.strip()]))
    return chunks


def _kobold_turns(chunks: list[tuple[str, list[str]]]) -> tuple[list[_Draft], list[str]]:
    turns: list[_Draft] = []
    dropped = 0
    waiting = False  # the last turn is a player action still without its result
    for text, alternatives in chunks:
        if text.lstrip().startswith(">"):
            first, _, rest = text.lstrip().partition("\n")
            turns.append(_Draft(_action(first), [rest.strip()] if rest.strip() else []))
            waiting = not rest.strip()
            dropped += len(alternatives)
        elif text.strip():
            results = [text.strip(), *alternatives]
            if waiting:
                turns[-1].results = results
            else:
                turns.append(_Draft("", results))
            waiting = False
    notes = [f"KoboldAI: {dropped} alternatives of player actions were not imported"] if dropped else []
    return turns, notes


def _kobold_world(data: dict[str, Any]) -> tuple[list[WorldEntry], list[str]]:
    raw = data.get("worldinfo")
    if raw is None and isinstance(data.get("worldinfo_v2"), dict):
        entries = data["worldinfo_v2"].get("entries", {})
        raw = list(entries.values()) if isinstance(entries, dict) else entries
    world, notes = [], []
    for entry in _list(raw, "worldinfo"):
        if not isinstance(entry, dict):
            continue
        keys, text = _keys(entry.get("key")), _text(entry.get("content") or entry.get("manual_text"))
        if not keys and not text.strip():
            continue  # KoboldAI keeps an empty placeholder entry at the end of the list
        world.append(WorldEntry(keys=keys, text=text, constant=bool(entry.get("constant", False))))
        label = ", ".join(keys) or "(no keys)"
        if _keys(entry.get("keysecondary")):
            secondary = ", ".join(_keys(entry.get("keysecondary")))
            notes.append(f"world info {label!r}: secondary keys ({secondary}) were not imported")
        if _text(entry.get("comment")).strip():
            notes.append(f"world info {label!r}: its comment was not imported")
    return world, notes


def _from_koboldai(data: dict[str, Any], title: str) -> tuple[list[_Parts], list[str]]:
    memory, notes = _memory(data.get("memory"), "KoboldAI")
    turns, turn_notes = _kobold_turns(_kobold_chunks(data))
    world, world_notes = _kobold_world(data)
    note = _text(data.get("authorsnote", data.get("authornote")))
    parts = _Parts(
        _text(data.get("story_name")).strip() or title,
        _text(data.get("prompt")),
        False,
        memory,
        note.strip(),
        world,
        turns,
    )
    template = _text(data.get("anotetemplate"))
    if template and template != _DEFAULT_ANOTE_TEMPLATE:
        notes.append(f"KoboldAI: the author's note template {template!r} was not imported")
    used = {"prompt", "memory", "authorsnote", "authornote", "actions", "actions_metadata", "worldinfo"}
    used |= {"worldinfo_v2", "story_name", "anotetemplate", "gamestarted", "file_version", "wifolders_d"}
    used |= {"wifolders_l"}
    return [parts], notes + turn_notes + world_notes + _unmapped(data, used, "KoboldAI")


# -- AI Dungeon web exports ----------------------------------------------------------------------

_WEB_USED = {"title", "prompt", "actions", "actionWindow", "memory", "authorsNote", "worldInfo", "storyCards"}
# Bookkeeping of the web service, not part of the story.
_WEB_QUIET = {"id", "publicId", "createdAt", "updatedAt", "deletedAt", "userId", "isOwner", "mode"}


def _web_turns(actions: list[Any], parts: _Parts) -> list[str]:
    notes: list[str] = []
    other_types: set[str] = set()
    waiting = False
    for index, item in enumerate(actions):
        if not isinstance(item, dict):
            item = {"text": _text(item), "type": "continue"}
        kind, text = _text(item.get("type")) or "continue", _text(item.get("text"))
        if index == 0 and kind in ("story", "start") and not parts.opening:
            parts.opening = text.strip()
        elif index == 0 and kind in ("story", "start") and text.strip() == parts.opening.strip():
            continue
        elif kind in _WEB_PLAYER_TYPES:
            parts.turns.append(_Draft(_action(text)))
            waiting = True
        elif text.strip():
            if kind != "continue":
                other_types.add(kind)
            if waiting:
                parts.turns[-1].results = [text.strip()]
            else:
                parts.turns.append(_Draft("", [text.strip()]))
            waiting = False
    if other_types:
        notes.append(f"actions of type {', '.join(sorted(other_types))} were imported as story text")
    return notes


def _web_world(entries: list[Any]) -> list[WorldEntry]:
    world = []
    for entry in entries:
        if isinstance(entry, dict):
            text = _text(entry.get("entry", entry.get("value")))
            keys = _keys(entry.get("keys"))
            if keys or text.strip():
                world.append(WorldEntry(keys=keys, text=text))
    return world


def _web_story(data: dict[str, Any], title: str) -> tuple[_Parts, list[str]]:
    parts = _Parts(_text(data.get("title")).strip() or title, _text(data.get("prompt")).strip())
    actions = data.get("actions") if data.get("actions") is not None else data.get("actionWindow")
    notes = _web_turns(_list(actions, "actions"), parts)
    parts.memory, memory_notes = _memory(data.get("memory"), "AI Dungeon")
    parts.author_note = _text(data.get("authorsNote")).strip()
    parts.world = _web_world(_list(data.get("worldInfo"), "worldInfo") + _list(data.get("storyCards"), "storyCards"))
    notes += memory_notes + _unmapped(data, _WEB_USED | _WEB_QUIET, "AI Dungeon")
    return parts, [f"{parts.title!r}: {note}" for note in notes]


def _web_items(data: Any) -> list[Any]:
    if isinstance(data, dict) and "stories" in data:
        return _list(data["stories"], "stories")
    return data if isinstance(data, list) else [data]


def _from_web(data: Any, title: str) -> tuple[list[_Parts], list[str]]:
    found, notes = [], []
    items = _web_items(data)
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not ({"actions", "actionWindow"} & item.keys()):
            notes.append(f"entry {number} is not an adventure and was skipped")
            continue
        parts, story_notes = _web_story(item, title if len(items) == 1 else f"{title} {number}")
        found.append(parts)
        notes += story_notes
    return found, notes


# -- detection and import ------------------------------------------------------------------------

_IMPORTERS: dict[str, Callable[[Any, str], tuple[list[_Parts], list[str]]]] = {
    "aidungeon2": _from_aidungeon2,
    "clover": _from_clover,
    "koboldai": _from_koboldai,
    "aidungeon-web": _from_web,
}


def _is_web_adventure(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    actions = value.get("actions", value.get("actionWindow"))
    return isinstance(actions, list) and all(isinstance(a, dict) for a in actions)


def detect_format(data: Any, *, source: str = "this file") -> str:
    """Which game wrote `data` (parsed JSON): one of IMPORT_FORMATS, or SaveError naming `source`."""
    if isinstance(data, dict):
        if data.get("format") == "aidungeon-save":
            raise SaveError(f"{source} is already an aidungeon save; load it instead of importing it")
        if "story_start" in data:
            return "aidungeon2"
        if "prompt" in data and any(key in data for key in _KOBOLD_MARKERS):
            return "koboldai"
        if "context" in data and "actions" in data and "results" in data:
            return "clover"
        if isinstance(data.get("stories"), list) or _is_web_adventure(data):
            return "aidungeon-web"
        found = ", ".join(sorted(data)[:8]) or "no fields"
        why = f"found {found}"
    elif isinstance(data, list) and data and all(_is_web_adventure(item) for item in data):
        return "aidungeon-web"
    else:
        why = f"it holds a JSON {type(data).__name__}, not a saved story"
    raise SaveError(
        f"{source} is not a save format aidungeon can import ({why}; "
        "it reads AI Dungeon 2, Clover Edition, KoboldAI and AI Dungeon web exports)"
    )


def import_file(path: Path) -> tuple[list[Story], list[str]]:
    """The stories in another game's save file, and notes on what could not be mapped."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_IMPORT_BYTES:
                limit = MAX_IMPORT_BYTES // 2**20
                raise SaveError(f"{path.name} is too large to import ({size / 2**20:.0f} MB; at most {limit} MB)")
            raw = handle.read(MAX_IMPORT_BYTES + 1)
    except IsADirectoryError:
        raise SaveError(f"{path} is a folder, not a save file") from None
    except OSError as err:
        raise SaveError(f"cannot read {path}: {err.strerror or err}") from None
    return import_bytes(raw, path.name)


def import_bytes(raw: bytes, filename: str) -> tuple[list[Story], list[str]]:
    """The stories in the bytes of another game's save file called `filename` (an upload)."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise SaveError(f"{filename} is too large to import (at most {MAX_IMPORT_BYTES // 2**20} MB)")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SaveError(f"{filename} is not JSON, so it is not a save aidungeon can import") from None
    fmt = detect_format(data, source=filename)
    try:
        found, notes = _IMPORTERS[fmt](data, Path(filename).stem)
        stories = [_build(parts) for parts in found]
    except SaveError as err:
        raise SaveError(f"{filename} looks like {_FORMAT_NAMES[fmt]} but cannot be read: {err}") from None
    if not stories:
        raise SaveError(f"{filename} holds no stories")
    return stories, notes
