"""Stories in the database, behind the same save-slot port as save files (storage/slots.py).

A `DbStore` is one player's stories; a `DbSlot` is one of them, named by its id. A write is one
transaction that replaces the whole document, so a crash never leaves half a turn, and it is
refused when someone else wrote the story since this slot last read or wrote it (a second server
replica, a second tab): two writers never silently overwrite each other. A player only ever
reaches rows they own; another player's id looks exactly like a missing one.

Each write also records the key of the line being played (`DbSlot.turn_key`, the client's
Idempotency-Key), in the same transaction as the story, and `keep_reply` adds what the line
showed once it ended: a line sent again after a dropped connection is answered from them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from aidungeon.core.errors import SaveError
from aidungeon.server.db import stories
from aidungeon.storage import saves

MAX_TITLE = 200


class StoryNotFound(SaveError):
    """No story with that id belongs to this player."""


class StoryConflict(SaveError):
    """The story was changed elsewhere since it was read."""


@dataclass(frozen=True)
class StoryRow:
    """A story's listing: everything but its document."""

    id: str
    title: str
    turns: int
    model: str
    version: int
    created_at: datetime
    updated_at: datetime


def new_story_id() -> str:
    """Unguessable (128 random bits): ids are never a way into another player's stories."""
    return secrets.token_hex(16)


class DbSlot:
    """One stored story of one player."""

    def __init__(self, db: Engine, owner_id: int, story_id: str) -> None:
        self.db, self.owner_id, self._id = db, owner_id, story_id
        self.version: int | None = None  # what this slot last read or wrote
        self.turn_key: str | None = None  # the line being played; stored with every write it makes

    @property
    def name(self) -> str:
        return self._id

    def exists(self) -> bool:
        return self._row_version() is not None

    def open(self) -> None:
        """Nothing to lock: writes are checked against the version instead."""

    def close(self) -> None:
        """Nothing to release."""

    def read(self) -> tuple[saves.SaveData, list[str]]:
        with self.db.connect() as conn:
            row = conn.execute(sa.select(stories.c.document, stories.c.version).where(*self._mine())).one_or_none()
        if row is None:
            raise StoryNotFound(f"there is no story {self._id!r}")
        data, warnings = saves.decode_save(row.document.encode("utf-8", "surrogatepass"), f"story {self._id}")
        self.version = row.version
        return data, warnings

    def write(self, data: saves.SaveData) -> str:
        document = saves.encode_save(data).decode("utf-8")
        values = {
            "title": data.story.title[:MAX_TITLE],
            "turns": len(data.story.path()),
            "model": data.model[:500],
            "document": document,
            "updated_at": datetime.now(UTC),
            # The reply is the line's to add once it ends: a write starts with none.
            "turn_key": self.turn_key,
            "turn_reply": None,
        }
        with self.db.begin() as conn:
            if self.version is None:
                self.version = self._insert(conn, values)
            else:
                self.version = self._update(conn, values, self.version)
        return f"story {self._id}"

    def _insert(self, conn: sa.Connection, values: dict[str, object]) -> int:
        if conn.execute(sa.select(stories.c.id).where(stories.c.id == self._id)).first() is not None:
            raise StoryConflict(f"there is already a story {self._id!r}")
        conn.execute(
            stories.insert().values(
                id=self._id, owner_id=self.owner_id, version=1, created_at=values["updated_at"], **values
            )
        )
        return 1

    def _update(self, conn: sa.Connection, values: dict[str, object], version: int) -> int:
        changed = conn.execute(
            stories.update().where(*self._mine(), stories.c.version == version).values(version=version + 1, **values)
        ).rowcount
        if changed != 1:
            if self._row_version(conn) is None:
                raise StoryNotFound(f"the story {self._id!r} was deleted")
            raise StoryConflict("this story was changed elsewhere (another tab or client); reload it to go on")
        return version + 1

    def _row_version(self, conn: sa.Connection | None = None) -> int | None:
        query = sa.select(stories.c.version).where(*self._mine())
        if conn is not None:
            return conn.execute(query).scalar_one_or_none()
        with self.db.connect() as fresh:
            return fresh.execute(query).scalar_one_or_none()

    def _mine(self) -> tuple[sa.ColumnElement[bool], ...]:
        return stories.c.id == self._id, stories.c.owner_id == self.owner_id


@dataclass(frozen=True)
class LastLine:
    """The key of the line that last wrote a story, and what it showed (JSON; None until it ended)."""

    key: str | None
    reply: str | None


class DbStore:
    """One player's stories."""

    def __init__(self, db: Engine, owner_id: int) -> None:
        self.db, self.owner_id = db, owner_id

    def slot(self, name: str) -> DbSlot:
        """An existing story by id. New stories are made through the API, never by a name:
        ids are chosen by the server, so a player cannot aim at one."""
        slot = DbSlot(self.db, self.owner_id, name.strip())
        slot.version = slot._row_version()
        if slot.version is None:
            raise StoryNotFound(f"there is no story {name.strip()!r}; /saves lists yours")
        return slot

    def new_slot(self) -> DbSlot:
        return DbSlot(self.db, self.owner_id, new_story_id())

    def latest(self) -> str | None:
        rows = self.rows(limit=1)
        return rows[0].id if rows else None

    def infos(self) -> list[saves.SaveInfo]:
        return [
            saves.SaveInfo(
                name=r.id, path=Path(r.id), saved_at=r.updated_at, turns=r.turns, model=r.model, title=r.title
            )
            for r in self.rows()
        ]

    def rows(self, *, limit: int | None = None) -> list[StoryRow]:
        """This player's stories, the most recently played first."""
        query = (
            sa.select(*(stories.c[k] for k in StoryRow.__dataclass_fields__))
            .where(stories.c.owner_id == self.owner_id)
            .order_by(stories.c.updated_at.desc(), stories.c.id)
            .limit(limit)
        )
        with self.db.connect() as conn:
            return [StoryRow(**row._mapping) for row in conn.execute(query)]

    def row(self, story_id: str) -> StoryRow:
        query = sa.select(*(stories.c[k] for k in StoryRow.__dataclass_fields__)).where(
            stories.c.id == story_id, stories.c.owner_id == self.owner_id
        )
        with self.db.connect() as conn:
            found = conn.execute(query).one_or_none()
        if found is None:
            raise StoryNotFound(f"there is no story {story_id!r}")
        return StoryRow(**found._mapping)

    def last_line(self, story_id: str) -> LastLine:
        """The key and reply of the line that last wrote the story; StoryNotFound if not this player's."""
        query = sa.select(stories.c.turn_key, stories.c.turn_reply).where(
            stories.c.id == story_id, stories.c.owner_id == self.owner_id
        )
        with self.db.connect() as conn:
            found = conn.execute(query).one_or_none()
        if found is None:
            raise StoryNotFound(f"there is no story {story_id!r}")
        return LastLine(found.turn_key, found.turn_reply)

    def keep_reply(self, story_id: str, key: str, reply: str) -> bool:
        """Record what the line `key` showed, if it is still the line that last wrote the story.
        The story's version stays: the reply is not part of the story. True when recorded."""
        with self.db.begin() as conn:
            changed = conn.execute(
                stories.update()
                .where(stories.c.id == story_id, stories.c.owner_id == self.owner_id, stories.c.turn_key == key)
                .values(turn_reply=reply)
            ).rowcount
        return bool(changed == 1)

    def count(self) -> int:
        with self.db.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(stories).where(stories.c.owner_id == self.owner_id)
            ).scalar_one()

    def delete(self, story_id: str) -> None:
        with self.db.begin() as conn:
            gone = conn.execute(
                stories.delete().where(stories.c.id == story_id, stories.c.owner_id == self.owner_id)
            ).rowcount
        if gone != 1:
            raise StoryNotFound(f"there is no story {story_id!r}")
