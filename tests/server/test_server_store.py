"""Stories in the database behind the save-slot port: versions, two writers, ownership, and the
schema made by the migrations, on SQLite and (when AIDUNGEON_TEST_PG is set) a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from aidungeon.core.story import Story
from aidungeon.server.auth import PlayerError, Players
from aidungeon.server.db import DatabaseError, open_database
from aidungeon.server.store import DbStore, StoryConflict, StoryNotFound
from aidungeon.storage.saves import SaveData


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


def _data(text: str = "You wake.") -> SaveData:
    return SaveData(story=Story(opening=text, title="t"), model="m", settings={})


def test_a_story_round_trips_and_lists(db: Engine) -> None:
    store = DbStore(db, 1)
    slot = store.new_slot()
    slot.write(_data())
    data, warnings = store.slot(slot.name).read()
    assert data.story.opening == "You wake." and warnings == []
    assert [row.id for row in store.rows()] == [slot.name]
    assert store.count() == 1


def test_a_second_writer_with_an_old_version_is_refused(db: Engine) -> None:
    store = DbStore(db, 1)
    first = store.new_slot()
    first.write(_data())
    one, other = store.slot(first.name), store.slot(first.name)
    one.write(_data("one"))
    with pytest.raises(StoryConflict):
        other.write(_data("other"))
    assert store.slot(first.name).read()[0].story.opening == "one"


def test_another_players_story_is_not_found(db: Engine) -> None:
    mine = DbStore(db, 1).new_slot()
    mine.write(_data())
    theirs = DbStore(db, 2)
    with pytest.raises(StoryNotFound):
        theirs.slot(mine.name)
    with pytest.raises(StoryNotFound):
        theirs.delete(mine.name)
    assert theirs.rows() == []
    assert DbStore(db, 1).slot(mine.name).exists()


def test_players_and_tokens(db: Engine) -> None:
    players = Players(db)
    assert not players.any()
    token = players.add("alice")
    assert players.by_token(token) is not None and players.by_token(token + "x") is None
    with pytest.raises(PlayerError):
        players.add("alice")
    with pytest.raises(PlayerError):
        players.add("no spaces please")
    # Only the token's hash is stored.
    with db.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM players")).scalar_one()
    assert token not in stored
    players.remove("alice")
    assert players.by_token(token) is None


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'server.db'}")
    with db.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
    db.dispose()


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    DbStore(first := open_database(url), 1).new_slot().write(_data())
    first.dispose()
    again = open_database(url)
    assert DbStore(again, 1).count() == 1
    again.dispose()


def test_an_unusable_database_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="cannot"):
        open_database("nosuchdb://x")
    with pytest.raises(DatabaseError, match="cannot open"):
        open_database(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
    with pytest.raises(DatabaseError, match="cannot open") as err:
        open_database("postgresql+psycopg://user:secret@127.0.0.1:1/none")
    assert "secret" not in str(err.value)
