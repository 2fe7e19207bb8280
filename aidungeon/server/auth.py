"""Players and their bearer tokens.

A token is 256 random bits shown once, when the player is added; only its SHA-256 is stored
(a token is random, not a password, so a slow hash would buy nothing). While no player exists the
server is open, for the one person at a loopback address; once one does, every request needs a
token. This module knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from aidungeon.core.errors import AIDungeonError
from aidungeon.server.db import players

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PlayerError(AIDungeonError):
    """A player that cannot be added, found or removed."""


@dataclass(frozen=True)
class Player:
    id: int
    name: str
    created_at: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Players:
    """The players table."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    def add(self, name: str) -> str:
        """Add a player; returns their token (shown once, never stored)."""
        if not _NAME.match(name):
            raise PlayerError("a player name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        token = secrets.token_urlsafe(32)
        try:
            with self.db.begin() as conn:
                conn.execute(
                    players.insert().values(name=name, token_hash=token_hash(token), created_at=datetime.now(UTC))
                )
        except sa.exc.IntegrityError:
            raise PlayerError(f"there is already a player named {name!r}") from None
        return token

    def remove(self, name: str) -> None:
        """Remove a player; their token stops working at once (their stories stay, unreachable)."""
        with self.db.begin() as conn:
            if conn.execute(players.delete().where(players.c.name == name)).rowcount != 1:
                raise PlayerError(f"there is no player named {name!r}")

    def all(self) -> list[Player]:
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(players.c.id, players.c.name, players.c.created_at).order_by(players.c.name))
            return [Player(**row._mapping) for row in rows]

    def any(self) -> bool:
        with self.db.connect() as conn:
            return conn.execute(sa.select(players.c.id).limit(1)).first() is not None

    def by_token(self, token: str) -> Player | None:
        query = sa.select(players.c.id, players.c.name, players.c.created_at).where(
            players.c.token_hash == token_hash(token)
        )
        with self.db.connect() as conn:
            row = conn.execute(query).one_or_none()
        return Player(**row._mapping) if row is not None else None
