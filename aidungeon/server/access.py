"""Who is asking: the bearer token of each request, checked against the players table.

While the server has no players, everyone is the anonymous local player (the server then only
listens on loopback: `serve` refuses anything else). Once a player exists, a request without a
valid token gets 401. A player's id scopes every story query, so another player's story is
simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request

from aidungeon.server.db import ANONYMOUS
from aidungeon.server.state import server


@dataclass(frozen=True)
class Caller:
    owner_id: int
    key: str  # what the rate limiter counts by


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def caller(request: Request) -> Caller:
    """The FastAPI dependency every API route takes."""
    players = server(request).players
    if not players.any():
        return Caller(ANONYMOUS, "local")
    token = bearer_token(request)
    player = players.by_token(token) if token else None
    if player is None:
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is needed (Authorization: Bearer TOKEN); ask the server's operator for one",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Caller(player.id, f"player:{player.id}")
