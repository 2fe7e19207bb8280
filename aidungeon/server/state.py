"""What a running server holds: the database, the players, the games, the limits and the pool
that runs turns. Built once by `app.create_app`; routes reach it through `server(request)`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.engine import Engine

from aidungeon.server.auth import Players
from aidungeon.server.games import Games
from aidungeon.server.limits import Limits, RateLimiter, TurnQueue


@dataclass
class ServerState:
    db: Engine
    games: Games
    limits: Limits = field(default_factory=Limits)
    players: Players = field(init=False)
    queue: TurnQueue = field(init=False)
    rate: RateLimiter = field(init=False)
    pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.players = Players(self.db)
        self.queue = TurnQueue(self.limits)
        self.rate = RateLimiter(self.limits.turns_per_minute, self.limits.turn_burst)
        # One worker per running turn: the engine batches whatever these threads submit.
        self.pool = ThreadPoolExecutor(max_workers=self.limits.max_running, thread_name_prefix="turn")


def server(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state
