"""The server's database: its tables, the connection, and bringing the schema up to date.

SQLite in WAL mode in the data folder by default, PostgreSQL (or any SQLAlchemy URL) when the
operator gives one. The schema is owned by the Alembic migrations in `migrations/`; `open_database`
runs them (under an advisory lock on PostgreSQL, so replicas starting together migrate once).
This module holds no game logic and knows nothing of HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Engine

from aidungeon.core.errors import AIDungeonError

metadata = sa.MetaData()

# Owner id of the stories played while the server has no players (loopback, tokens off).
ANONYMOUS = 0

players = sa.Table(
    "players",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

stories = sa.Table(
    "stories",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner_id", sa.Integer, nullable=False, index=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("turns", sa.Integer, nullable=False),
    sa.Column("model", sa.String(500), nullable=False),
    # The same versioned JSON document as a save file (storage/saves.py), so one format covers both.
    sa.Column("document", sa.Text, nullable=False),
    # Bumped by every write; a writer holding an older version is refused (two writers never merge).
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # The Idempotency-Key of the line that last wrote the story (written in the same transaction),
    # and the events that line showed (JSON, once it ended): a line sent again is answered from them.
    sa.Column("turn_key", sa.String(64), nullable=True),
    sa.Column("turn_reply", sa.Text, nullable=True),
)

MIGRATIONS = Path(__file__).parent / "migrations"
# Any 64-bit number, the same in every replica: the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x41_49_44_75_6E_67_65_6E


class DatabaseError(AIDungeonError):
    """The database cannot be reached, opened or migrated."""


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'server.db'}"


def open_database(url: str) -> Engine:
    """Connect and bring the schema up to date; DatabaseError (one line) when that fails."""
    try:
        engine = sa.create_engine(url, **_engine_options(url))
    except (sa.exc.ArgumentError, ImportError, ValueError) as err:
        raise DatabaseError(f"cannot use the database {_redact(url)}: {err}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    try:
        _migrate(engine)
    except sa.exc.OperationalError as err:
        engine.dispose()
        raise DatabaseError(f"cannot open the database {_redact(url)}: {_first_line(err)}") from None
    return engine


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Turns run in worker threads; each connection is used by one thread at a time.
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers work while a turn commits; FULL sync keeps a committed turn through a crash.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _migrate(engine: Engine) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an unreadable URL)"


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__
