"""The save-slot port: where one adventure is kept, whether in a file or (later) a database.

A `SaveStore` names and lists the saves; a `SaveSlot` is one of them. The game opens a slot
when it starts playing into it, reads and writes whole `SaveData` documents through it, and
closes it when it leaves; the slot is the one place a save is opened and closed, so a
`FileSlot` holds the save's lock exactly while a game plays in it. `FileStore`/`FileSlot` implement the port on
`saves.py`'s files. This module decides nothing about when to save: the game does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from aidungeon.storage import saves


class SaveSlot(Protocol):
    """One named save."""

    @property
    def name(self) -> str: ...

    def exists(self) -> bool: ...

    def open(self) -> None:
        """Start using the slot (before the first read or write)."""
        ...

    def close(self) -> None: ...

    def read(self) -> tuple[saves.SaveData, list[str]]:
        """The saved document and warnings for the player; SaveError when there is none."""
        ...

    def write(self, data: saves.SaveData) -> str:
        """Save `data`; returns where it went, for the player. SaveError on failure."""
        ...


class SaveStore(Protocol):
    """Every save of one player."""

    def slot(self, name: str) -> SaveSlot:
        """The slot called `name` (made safe); SaveError for a name with nothing usable in it."""
        ...

    def latest(self) -> str | None: ...

    def infos(self) -> list[saves.SaveInfo]: ...


class FileSlot:
    """A save file `<name>.json` in the saves folder."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self._name = saves.sanitize_name(name)
        self._lock: saves.SaveLock | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> Path:
        return saves.save_path(self.folder, self._name)

    def exists(self) -> bool:
        return self.path.exists()

    def open(self) -> None:
        """Lock the save for this game; SaveError when another game has it open."""
        if self._lock is None:
            self._lock = saves.lock_save(self.folder, self._name)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def read(self) -> tuple[saves.SaveData, list[str]]:
        return saves.read_save(self.folder, self._name)

    def write(self, data: saves.SaveData) -> str:
        # A damaged file under this name is set aside (never overwritten): the story in memory
        # is the good version, often just restored from the backup.
        return str(saves.write_save(self.folder, self._name, data, replace_damaged=True))


class FileStore:
    """The saves folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def slot(self, name: str) -> FileSlot:
        return FileSlot(self.folder, name)

    def latest(self) -> str | None:
        return saves.latest_save(self.folder)

    def infos(self) -> list[saves.SaveInfo]:
        return saves.list_saves(self.folder)
