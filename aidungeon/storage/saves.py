"""Save files you can trust: versioned JSON, atomic writes, one backup, ordered migrations.

A save is one JSON file `<name>.json` in the saves folder::

    {"format": "aidungeon-save", "schema_version": 1, "saved_at": "<ISO-8601 UTC>", "app_version": "0.1.0",
     "model": "smollm2-135m", "settings": {"sampling": {...}, "context": {...}}, "story": <Story.to_dict()>}

The `summary` (title, turns, model) comes right after the header, so `list_saves` reads only the head of
each file; it is a copy for listing, and loading ignores it.

What this module guarantees:

- A write never leaves a half-written file, and a failed write (a full disk) changes nothing: the new
  save is written whole to a temp file and fsynced first; only then is the old save kept as
  `<name>.json.bak` (a hard link, so no space is needed) and the temp renamed into place.
- Reading falls back to the backup, with a warning, when the main file is damaged or missing. Damage
  includes every malformed field (`Story.from_dict` checks each type), settings that do not validate,
  a file over `MAX_SAVE_BYTES`, and an upgrade that would drop content.
- A file that is not a readable save (damaged, foreign JSON, or made by a newer aidungeon) is never
  overwritten: `write_save` refuses with a `SaveError`, unless the caller asks for `replace_damaged`,
  which renames the file aside (`<name>.json.damaged`) instead of destroying it.
- Reading never changes anything on disk. Every failure is a `SaveError` with one clear line.
- Older schemas are upgraded in memory by `MIGRATIONS` (a list: entry N takes schema N to N+1). An
  upgrade whose result lacks any word of what it was given is refused as damage (a flipped schema
  number must not turn a whole story into an empty one).
- `lock_save` takes an advisory lock (`<name>.json.lock`) while a game has a save open, so a second game
  gets a clear error instead of silently overwriting the first one's turns; `autosave_name` reserves the
  name it returns, so two games started together never pick the same one.

What it does not do: it does not decide *when* to save (the game autosaves after each turn), does not
apply the saved settings (the caller merges `SaveData.settings` into its `Config`), and does not read
other games' files (`interop` imports those).
"""

from __future__ import annotations

import difflib
import errno
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from aidungeon import __version__
from aidungeon.core.config import Config
from aidungeon.core.errors import AIDungeonError, SaveError
from aidungeon.core.story import Story
from aidungeon.storage.paths import keep_copy, move_into_place, write_temp

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: locks fall back to a lock file created exclusively
    fcntl = None

log = logging.getLogger(__name__)

FORMAT = "aidungeon-save"
SCHEMA_VERSION = 1
SUFFIX = ".json"
BACKUP_SUFFIX = ".json.bak"
DAMAGED_SUFFIX = ".json.damaged"
LOCK_SUFFIX = ".json.lock"
# A save this large takes seconds to load; a real adventure is a few megabytes.
MAX_SAVE_BYTES = 64 * 2**20
# `list_saves` reads this much of each file: the header and the summary fit easily.
HEAD_BYTES = 16 * 1024
MAX_SUMMARY_TITLE = 200
MAX_NAME_CHARS = 64
# File names are limited to 255 bytes; leave room for ".json.bak" and atomic_write's temp-file affixes.
MAX_NAME_BYTES = 180
# Leftover temp files of a killed writer are removed once they are clearly abandoned.
STALE_TEMP_SECONDS = 600.0

# Windows refuses these stems whatever the extension; a save called "con" would be unwritable there.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


@dataclass
class SaveData:
    """What a save holds: the story, the model it was played with, and the non-app settings."""

    story: Story
    model: str
    settings: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class SaveInfo:
    """One line of the saves list."""

    name: str
    path: Path
    saved_at: datetime
    turns: int
    model: str
    title: str


@dataclass
class _Loaded:
    data: SaveData
    saved_at: datetime | None
    warnings: list[str]
    schema: int = SCHEMA_VERSION


class _NewerSchemaError(SaveError):
    """The file is a good save from a newer aidungeon: never fall back from it, never overwrite it."""


# -- names ---------------------------------------------------------------------------------------


def sanitize_name(name: str) -> str:
    """A safe file stem for `name`: letters and digits of any script, '-' and '_'; nothing else.

    Separators, dots and other punctuation become '-', so no name can leave the saves folder
    ("../x" -> "x", "/etc/passwd" -> "etc-passwd"). The result is lower case (so that "Knight" and
    "knight" are one save on every file system), at most 64 characters (180 bytes), and never a name Windows
    reserves ("con" -> "con_"). Raises SaveError when nothing usable is left.
    """
    text = name
    for _ in range(3):  # NFKC can make capitals ("𝛢" -> "Α") and lower() can unnormalise; settle both
        text = unicodedata.normalize("NFKC", text).lower()
    chars = [c if unicodedata.category(c)[0] in "LNM" or c == "_" else "-" for c in text]
    stem = "-".join(part for part in "".join(chars).split("-") if part)
    stem = stem[:MAX_NAME_CHARS]
    while len(stem.encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    stem = stem.strip("-")
    if not stem or not any(c.isalnum() for c in stem):
        raise SaveError(f"{name!r} is not a usable save name; use letters or digits")
    if stem in _RESERVED:
        stem += "_"
    return stem


def save_path(folder: Path, name: str) -> Path:
    """Where the save called `name` lives: `folder / "<sanitized name>.json"`."""
    return folder / f"{sanitize_name(name)}{SUFFIX}"


def _backup_of(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def autosave_name(folder: Path, story: Story) -> str:
    """A name for a new adventure's autosave: its title made safe, unused in `folder`, and reserved.

    The name is reserved by creating its lock file exclusively (`O_EXCL`), so two games started at
    once with the same opening get two names ("fantasy-knight", "fantasy-knight-2"). Call it once
    when an adventure starts, keep the name, and open it with `lock_save`, which takes the
    reservation over. A reservation never taken over is reclaimed after `STALE_TEMP_SECONDS`.
    """
    try:
        base = sanitize_name(story.title)
    except SaveError:
        base = "adventure"
    folder.mkdir(parents=True, exist_ok=True)
    name, number = base, 1
    while not _reserve(folder, name):
        number += 1
        name = sanitize_name(f"{base[: MAX_NAME_CHARS - 8]}-{number}")
    return name


def _reserve(folder: Path, name: str) -> bool:
    if (folder / f"{name}{SUFFIX}").exists() or (folder / f"{name}{BACKUP_SUFFIX}").exists():
        return False
    lock_path = folder / f"{name}{LOCK_SUFFIX}"
    for _ in range(2):
        try:
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        except FileExistsError:
            if not _reclaim_stale_reservation(lock_path):
                return False
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return True
    return False


def _reclaim_stale_reservation(lock_path: Path) -> bool:
    """Remove a lock file that is old and held by nobody (a game that quit before its first save)."""
    try:
        if time.time() - lock_path.stat().st_mtime < STALE_TEMP_SECONDS or fcntl is None:
            return False
        fd = os.open(lock_path, os.O_RDWR | _NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # a game holds it: the name is in use
    # Renaming first means that of two games reclaiming it at once, only one removes it.
    aside = lock_path.with_name(f".{lock_path.name}.{os.getpid()}.tmp")
    try:
        os.rename(lock_path, aside)
        aside.unlink()
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


# -- locks ---------------------------------------------------------------------------------------

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class SaveLock:
    """An advisory lock on one save, held while a game has it open; `release()` or use it in `with`.

    With `fcntl` it is an `flock` on `<name>.json.lock`, which the system drops when the process dies
    (even by `kill -9`). Without it the lock file itself, created exclusively, is the lock.
    """

    def __init__(self, name: str, path: Path, fd: int | None) -> None:
        self.name = name
        self.path = path
        self._fd = fd
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Give the save back (idempotent). The lock file is removed while still locked, so no one
        can lock a file that is about to disappear (`lock_save` checks it locked the current file)."""
        if not self._held:
            return
        self._held = False
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)

    def __enter__(self) -> SaveLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


def lock_save(folder: Path, name: str) -> SaveLock:
    """Lock the save `name` for this game, or SaveError when another game has it open.

    With the lock held no other process writes this save, so every temp file it left behind is
    stale: they are removed here.
    """
    stem = sanitize_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / f"{stem}{LOCK_SUFFIX}"
    fd: int | None = None
    try:
        if fcntl is not None:
            fd = _flock(lock_path, stem)
        else:
            _exclusive_lock(lock_path, stem)
    except OSError as err:
        raise SaveError(f"cannot lock the save {stem!r} ({lock_path}): {err.strerror or err}") from None
    _remove_temps(folder / f"{stem}{SUFFIX}", older_than=None)
    return SaveLock(stem, lock_path, fd)


def _in_use(stem: str, holder: str = "") -> SaveError:
    return SaveError(
        f"the save {stem!r} is open in another game{holder}; play it there, or after that game ends "
        f"load it (--load {stem}) and use /save NEWNAME to keep a copy under another name"
    )


def _flock(lock_path: Path, stem: str) -> int:
    assert fcntl is not None
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use(stem, _holder(lock_path)) from None
            raise
        # The game before us may have removed the file between our open and our lock; then this
        # lock is on a file nobody else can see, so open the current one and try again.
        try:
            current = os.stat(lock_path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _exclusive_lock(lock_path: Path, stem: str) -> None:
    # No flock here: the lock file is the lock. A reservation by `autosave_name` (this process's
    # own pid in it) is taken over; any other file means another game, or one that crashed.
    try:
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    except FileExistsError:
        if _holder_pid(lock_path) != os.getpid():
            raise _in_use(stem, f"{_holder(lock_path)} (if no game is running, delete {lock_path})") from None
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()}\n")


def _holder_pid(lock_path: Path) -> int | None:
    try:
        text = lock_path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() else None


def _holder(lock_path: Path) -> str:
    pid = _holder_pid(lock_path)
    return f" (process {pid})" if pid is not None else ""


# -- migrations ----------------------------------------------------------------------------------


def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 (the first draft) kept one linear story and no tree.

    Its story was ``{"title", "opening", "memory": "<one text, one entry per line>", "author_note",
    "world": [{"keys": "a, b", "text"}], "actions": [...], "results": [...]}`` with `actions[i]`
    answered by `results[i]`. It becomes a tree with one branch; every result is one candidate.
    """
    old = doc["story"]
    actions = [str(a) for a in old.get("actions", [])]
    results = [str(r) for r in old.get("results", [])]
    turns = []
    for index in range(max(len(actions), len(results))):
        result = results[index] if index < len(results) else None
        turns.append(
            {
                "id": index + 1,
                "parent": index or None,
                "action": actions[index] if index < len(actions) else "",
                "candidates": [] if result is None else [{"text": result}],
                "chosen": 0,
            }
        )
    memory = old.get("memory", "")
    world = [
        {"keys": [k.strip() for k in str(entry.get("keys", "")).split(",") if k.strip()], "text": str(entry["text"])}
        for entry in old.get("world", [])
    ]
    story = {
        "title": str(old.get("title", "")),
        "opening": str(old["opening"]),
        "pin_opening": False,
        "memory": [line for line in str(memory).splitlines() if line.strip()],
        "author_note": str(old.get("author_note", "")),
        "world": world,
        "turns": turns,
        "head": len(turns) or None,
        "redo_stack": [],
        "next_id": len(turns) + 1,
    }
    return {**doc, "schema_version": 1, "story": story}


MIGRATIONS: list[Callable[[dict[str, Any]], dict[str, Any]]] = [_v0_to_v1]


# -- reading -------------------------------------------------------------------------------------


def _parse(raw: bytes, label: str) -> Any:
    """Bytes -> JSON value, or a SaveError that says how the file is damaged."""
    if not raw.strip():
        raise SaveError(f"{label} is empty (nothing was saved in it)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if err.end >= len(raw) and "unexpected end" in str(err.reason):
            raise SaveError(f"{label} is damaged: it was cut short") from None
        raise SaveError(f"{label} is damaged: it is not text (bad byte at position {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if _looks_cut(text, err):
            raise SaveError(f"{label} is damaged: it was cut short") from None
        raise SaveError(f"{label} is damaged: it is not valid JSON ({err.msg}, line {err.lineno})") from None
    except RecursionError:
        raise SaveError(f"{label} is damaged: its JSON is nested too deeply") from None


def _looks_cut(text: str, err: json.JSONDecodeError) -> bool:
    """A save is one JSON object: if it breaks off at its very end (or inside a string), it was truncated."""
    body = text.rstrip()
    near_end = len(body) - err.pos <= 8 or err.msg.startswith("Unterminated string")
    return body.lstrip().startswith("{") and near_end


def _schema_of(doc: Any, label: str) -> int:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SaveError(f"{label} is not an aidungeon save (it is JSON, but not in aidungeon's save format)")
    version = doc.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise SaveError(f"{label} is damaged: its schema_version is missing or not a whole number")
    if version > SCHEMA_VERSION:
        raise _NewerSchemaError(
            f"{label} was made by a newer aidungeon (schema {version}); update aidungeon to load it"
        )
    return version


def _why(err: Exception) -> str:
    """A short reason for a rejected document: "no 'opening'" rather than "KeyError('opening')"."""
    if isinstance(err, KeyError):
        return f"no {err.args[0]!r}" if err.args else "a field is missing"
    return str(err) or type(err).__name__


_WORD_RE = re.compile(r"[^\s,]+")


def _words(value: Any) -> set[str]:
    """Every word in the texts of a JSON value: what a migration must carry over. (No recursion,
    so a deeply nested file cannot crash it.)"""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.update(_WORD_RE.findall(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _migrate(doc: dict[str, Any], version: int, label: str) -> dict[str, Any]:
    for step in range(version, SCHEMA_VERSION):
        try:
            upgraded = MIGRATIONS[step](doc)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SaveError(f"{label} is damaged: it could not be upgraded from schema {step} ({_why(err)})") from None
        lost = _words(doc) - _words(upgraded)
        if lost:
            # A migration never drops content: a file that loses words on the way is not what its
            # schema number says (a flipped bit, a hand edit), so it is refused and left as it is.
            example = sorted(lost, key=len, reverse=True)[0][:40]
            raise SaveError(
                f"{label} is damaged: it says schema {step}, but upgrading it would lose {len(lost)} "
                f"words of its content (such as {example!r}), so it was not loaded"
            )
        doc = upgraded
    return doc


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _decode(raw: bytes, label: str) -> _Loaded:
    """Bytes of a save file -> its data; SaveError (one line) for anything unusable."""
    doc = _parse(raw, label)
    version = _schema_of(doc, label)
    warnings: list[str] = []
    if version < SCHEMA_VERSION:
        doc = _migrate(doc, version, label)
        warnings.append(f"{label} was made by an older aidungeon (schema {version}); it was upgraded")
    if not isinstance(doc.get("story"), dict):
        raise SaveError(f"{label} is damaged: it holds no story")
    try:
        story = Story.from_dict(doc["story"])
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as err:
        raise SaveError(f"{label} is damaged: its story is invalid ({_why(err)})") from None
    model = doc.get("model", "")
    if not isinstance(model, str):
        raise SaveError(f"{label} is damaged: its model name is {type(model).__name__}, not text")
    settings = _settings(doc.get("settings", {}), label)
    data = SaveData(story=story, model=model, settings=settings)
    return _Loaded(data, _parse_time(doc.get("saved_at")), warnings, version)


def decode_save(raw: bytes, label: str) -> tuple[SaveData, list[str]]:
    """A save document's bytes (from a file or a database) -> its data and warnings; SaveError
    (one line, naming `label`) for anything unusable."""
    return _unpack(_decode(raw, label))


def _settings(settings: Any, label: str) -> dict[str, dict[str, Any]]:
    """The saved settings, checked as the game will apply them: bad settings are damage of the file."""
    if not (isinstance(settings, dict) and all(isinstance(v, dict) for v in settings.values())):
        raise SaveError(f"{label} is damaged: its settings are not tables of values")
    try:
        Config.from_dict(settings)
    except AIDungeonError as err:
        raise SaveError(f"{label} is damaged: its settings are invalid ({err})") from None
    return settings


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_SAVE_BYTES:
                raise SaveError(
                    f"{path.name} is too large to load ({size / 2**20:.0f} MB; at most {MAX_SAVE_BYTES // 2**20} MB)"
                )
            return handle.read(MAX_SAVE_BYTES + 1)
    except IsADirectoryError:
        raise SaveError(f"{path} is a folder, not a save file") from None
    except OSError as err:
        raise SaveError(f"cannot read {path}: {err.strerror or err}") from None


def _describe_time(stamp: datetime | None, path: Path) -> str:
    if stamp is None:
        try:
            stamp = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        except OSError:
            return "an unknown time"
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _load(path: Path) -> _Loaded:
    """Load `path`, falling back to its backup when the main file is damaged or missing."""
    backup = _backup_of(path)
    if not path.exists() and not backup.exists():
        raise SaveError(f"{path} does not exist")
    try:
        if not path.exists():
            raise SaveError(f"{path.name} is missing")
        return _decode(_read_bytes(path), path.name)
    except _NewerSchemaError:
        raise
    except SaveError as main_error:
        if not backup.is_file():
            raise
        try:
            loaded = _decode(_read_bytes(backup), backup.name)
        except SaveError as backup_error:
            raise SaveError(f"{main_error}; the backup is unusable too ({backup_error})") from None
        reason = str(main_error).removeprefix(f"{path.name} ")
        when = _describe_time(loaded.saved_at, backup)
        loaded.warnings.insert(0, f"{path.name} {reason}; loaded the backup from {when}")
        return loaded


def read_save(location: Path, name: str | None = None) -> tuple[SaveData, list[str]]:
    """Load a save: `read_save(folder, name)` by name from the saves folder, `read_save(path)` from a file.

    Returns the data and warnings for the player (a backup was used, the file was upgraded, ...).
    Raises SaveError when there is nothing loadable; nothing on disk is changed either way.
    """
    if name is None:
        return _unpack(_load(location))
    path = save_path(location, name)
    if not path.exists() and not _backup_of(path).exists():
        raise SaveError(_missing_message(location, name))
    return _unpack(_load(path))


def _unpack(loaded: _Loaded) -> tuple[SaveData, list[str]]:
    return loaded.data, loaded.warnings


def _missing_message(folder: Path, name: str) -> str:
    names = _save_names(folder)
    if not names:
        return f"there is no save named {name!r}; {folder} has no saves yet"
    close = difflib.get_close_matches(sanitize_name(name), names, n=3, cutoff=0.6)
    if close:
        return f"there is no save named {name!r}; did you mean {' or '.join(repr(c) for c in close)}?"
    return f"there is no save named {name!r} in {folder}"


def _save_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")
    )


# -- writing -------------------------------------------------------------------------------------


def encode_save(data: SaveData) -> bytes:
    """The versioned document of a save, as bytes: what a save file holds and a server stores."""
    try:
        data.story.validate()
    except ValueError as err:
        raise SaveError(f"the story is inconsistent ({err}), so it was not saved") from None
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": {
            "title": data.story.title[:MAX_SUMMARY_TITLE],
            "turns": len(data.story.path()),
            "model": data.model,
        },
        "app_version": __version__,
        "model": data.model,
        "settings": data.settings,
        "story": data.story.to_dict(),
    }
    try:
        text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    except (TypeError, ValueError) as err:
        raise SaveError(f"the story holds data that cannot be saved ({err})") from None
    # A lone surrogate cannot be UTF-8 (a story never holds one, but sampling keys might); written as
    # its JSON escape (\udXXX) it loads back unchanged.
    raw = text.encode("utf-8", errors="backslashreplace")
    if len(raw) > MAX_SAVE_BYTES:
        raise SaveError(
            f"the story is too large to save ({len(raw) / 2**20:.0f} MB; at most {MAX_SAVE_BYTES // 2**20} MB): "
            "export it and start a new adventure"
        )
    return raw


def _same_content(old: SaveData, new: SaveData) -> bool:
    return old.model == new.model and old.settings == new.settings and old.story.to_dict() == new.story.to_dict()


def _set_aside(path: Path) -> Path:
    target = path.with_name(path.name.removesuffix(SUFFIX) + DAMAGED_SUFFIX)
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name.removesuffix(SUFFIX)}{DAMAGED_SUFFIX}-{number}")
    os.replace(path, target)
    return target


def _keep_old(path: Path, new: SaveData, *, replace_damaged: bool) -> None:
    """Before `path` is replaced: back up a good save; refuse (or set aside) anything else."""
    if not path.exists():
        return
    raw = _read_bytes(path)
    try:
        old = _decode(raw, path.name)
    except _NewerSchemaError as err:
        raise SaveError(f"{err}; it was not overwritten, so save under another name") from None
    except SaveError as err:
        if not replace_damaged:
            raise SaveError(
                f"{err}; it was left untouched at {path} (the data may be recoverable by hand): "
                "move it away or save under another name"
            ) from None
        log.warning("%s; keeping it as %s", err, _set_aside(path).name)
        return
    # An unchanged story (a save after /settings) keeps the older backup; an upgraded file keeps its original.
    if old.schema < SCHEMA_VERSION or not _same_content(old.data, new):
        keep_copy(path, _backup_of(path), raw)


def _remove_temps(path: Path, *, older_than: float | None) -> None:
    """Remove the temp files of this save and its backup: all of them (`older_than=None`, with the
    save locked), or those untouched for `older_than` seconds (a killed writer's leftovers)."""
    cutoff = None if older_than is None else time.time() - older_than
    for name in (path.name, _backup_of(path).name):
        for temp in path.parent.glob(f".{name}.*.tmp"):
            try:
                if cutoff is None or temp.stat().st_mtime < cutoff:
                    temp.unlink()
            except OSError:
                log.debug("could not remove the stale temp file %s", temp)


def write_save(folder: Path, name: str, data: SaveData, *, replace_damaged: bool = False) -> Path:
    """Save `data` as `name` in `folder` atomically and return the file's path.

    The new save is written whole to a temp file first; if that fails (a full disk), SaveError and
    the main file and its backup are as they were. The save it replaces is kept as `<name>.json.bak`
    when its content differs. A main file that is not a readable save is never overwritten: SaveError,
    or with `replace_damaged=True` (for example after `read_save` fell back to the backup) it is
    renamed to `<name>.json.damaged` first.
    """
    path = save_path(folder, name)
    payload = encode_save(data)
    try:
        temp = write_temp(path, payload)
    except OSError as err:
        raise SaveError(f"could not write {path}: {err.strerror or err}; the save on disk was left as it was") from None
    try:
        _keep_old(path, data, replace_damaged=replace_damaged)
        move_into_place(temp, path)
    except OSError as err:
        raise SaveError(f"could not write {path}: {err.strerror or err}; the save on disk was left as it was") from None
    finally:
        temp.unlink(missing_ok=True)
    _remove_temps(path, older_than=STALE_TEMP_SECONDS)
    return path


# -- the saves folder ----------------------------------------------------------------------------


def list_saves(folder: Path) -> list[SaveInfo]:
    """Every loadable save in `folder`, newest first; files that cannot be read are skipped.

    A save with a summary is listed from the first `HEAD_BYTES` of its file, without parsing its
    story; older saves (and files whose head is damaged) are loaded in full, within `MAX_SAVE_BYTES`.
    """
    infos = []
    for name in _save_names(folder):
        path = folder / f"{name}{SUFFIX}"
        info = _info_from_head(name, path)
        if info is None:
            try:
                loaded = _load(path)
            except SaveError as err:
                log.info("skipping %s: %s", path.name, err)
                continue
            saved_at = loaded.saved_at or datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
            story = loaded.data.story
            info = SaveInfo(name, path, saved_at, len(story.path()), loaded.data.model, story.title)
        infos.append(info)
    # Saves written within one second tie on saved_at; the file's own clock breaks the tie.
    infos.sort(key=lambda info: (info.saved_at, _mtime_ns(info.path)), reverse=True)
    return infos


def _info_from_head(name: str, path: Path) -> SaveInfo | None:
    """The list line from a save's header and summary, or None when they cannot be trusted."""
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except OSError:
        return None
    # A file cut short keeps its head; its end shows it (the whole document ends with its closing brace).
    if not tail.rstrip().endswith(b"}") or size > MAX_SAVE_BYTES:
        return None
    fields = _head_fields(head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace"))
    summary = fields.get("summary")
    current = fields.get("format") == FORMAT and fields.get("schema_version") == SCHEMA_VERSION
    if not current or not isinstance(summary, dict):
        return None
    title, turns, model = summary.get("title"), summary.get("turns"), summary.get("model")
    saved_at = _parse_time(fields.get("saved_at"))
    if not (isinstance(title, str) and isinstance(turns, int) and isinstance(model, str)) or saved_at is None:
        return None
    return SaveInfo(name, path, saved_at, turns, model, title)


def _head_fields(head: str) -> dict[str, Any]:
    """The leading top-level fields of a JSON object, up to and including "summary", from its first bytes."""
    decoder = json.JSONDecoder()
    fields: dict[str, Any] = {}
    pos = _skip_space(head, 0)
    if not head.startswith("{", pos):
        return fields
    pos += 1
    while "summary" not in fields:
        try:
            key, pos = decoder.raw_decode(head, _skip_space(head, pos))
            pos = _skip_space(head, pos)
            if not isinstance(key, str) or not head.startswith(":", pos):
                break
            value, pos = decoder.raw_decode(head, _skip_space(head, pos + 1))
        except (json.JSONDecodeError, RecursionError):
            break  # the head ends inside this value (or it is damaged): stop here
        fields[key] = value
        pos = _skip_space(head, pos)
        if not head.startswith(",", pos):
            break
        pos += 1
    return fields


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def latest_save(folder: Path) -> str | None:
    """The name of the newest loadable save, or None when there is none."""
    saves = list_saves(folder)
    return saves[0].name if saves else None


def delete_save(folder: Path, name: str) -> None:
    """Remove the save and its backup; SaveError when there is no such save or a game has it open."""
    path = save_path(folder, name)
    files = [p for p in (path, _backup_of(path)) if p.exists()]
    if not files:
        raise SaveError(_missing_message(folder, name))
    with lock_save(folder, name):
        try:
            for file in files:
                file.unlink()
        except OSError as err:
            raise SaveError(f"could not delete {path}: {err.strerror or err}") from None
