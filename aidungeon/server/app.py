"""The HTTP face: the FastAPI application every route hangs on.

`create_app` wires the state (database, players, games, limits), the game API, the limit on
request bodies, and the one place the game's exceptions become HTTP answers: each is one JSON
object `{"detail": "one line"}` with a fitting status, never a traceback. It plays no game itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aidungeon import __version__
from aidungeon.core.errors import AIDungeonError, ConfigError, ModelError, OutOfMemoryError, SaveError, StoryError
from aidungeon.server import api, web
from aidungeon.server.auth import PlayerError
from aidungeon.server.db import DatabaseError
from aidungeon.server.games import StoryBusy
from aidungeon.server.limits import BodyTooLarge, Overloaded, RateLimited
from aidungeon.server.state import ServerState
from aidungeon.server.store import StoryConflict, StoryNotFound

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[AIDungeonError], int], ...] = (
    (BodyTooLarge, 413),
    (StoryNotFound, 404),
    (StoryConflict, 409),
    (StoryBusy, 409),
    (api.TooManyStories, 403),
    (RateLimited, 429),
    (Overloaded, 503),
    (OutOfMemoryError, 503),
    (DatabaseError, 503),
    (ModelError, 503),
    (PlayerError, 400),
    (ConfigError, 400),
    (StoryError, 400),
    (SaveError, 400),
)


def create_app(state: ServerState, *, routers: tuple[Any, ...] = (), cors_paths: tuple[str, ...] = ()) -> FastAPI:
    """The app for `state`; extra routers (the community protocols) are mounted beside the game API.
    Paths starting with one of `cors_paths` answer browsers of any origin (KoboldAI Lite served
    from elsewhere needs it); the game API's paths never do."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Uvicorn has finished the requests in flight; the pool's turns have ended with them.
        state.queue.draining = True
        state.pool.shutdown(wait=True)

    app = FastAPI(
        title="aidungeon",
        version=__version__,
        description="Play aidungeon stories over HTTP: the same game as the terminal, shared by many players.",
        lifespan=lifespan,
    )
    app.state.server = state
    app.include_router(api.router)
    for router in routers:
        app.include_router(router)
    app.include_router(web.router)  # the web page at /
    app.add_exception_handler(AIDungeonError, _game_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(BodyLimit, max_bytes=state.limits.max_body_bytes)
    if cors_paths:
        from aidungeon.server.protocols.cors import PathCORS

        app.add_middleware(PathCORS, prefixes=cors_paths)  # outermost: its headers reach every answer

    @app.get("/api/health", tags=["server"])
    def health() -> dict[str, object]:
        """Whether the server takes turns, and how many it has admitted."""
        return {
            "status": "draining" if state.queue.draining else "ok",
            "model": state.games.model.name,
            "turns": state.queue.admitted,
            "capacity": state.queue.capacity,
        }

    return app


def status_for(err: AIDungeonError, request: Request) -> tuple[int, dict[str, str]]:
    """The HTTP status of one of the game's errors (400 when nothing more specific fits), and the
    headers that go with it (Retry-After on 429 and 503)."""
    status = next((code for kind, code in _STATUS if isinstance(err, kind)), 400)
    headers = {}
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    elif status == 503:
        headers["Retry-After"] = str(request.app.state.server.limits.retry_after_s)
    return status, headers


async def _game_error(request: Request, err: AIDungeonError) -> JSONResponse:
    status, headers = status_for(err, request)
    return JSONResponse({"detail": str(err)}, status_code=status, headers=headers)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "the server hit an unexpected error; it is logged"}, status_code=500)


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, whether or not they declare a length."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Callable[[], Awaitable[Message]]:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(f"the request body is larger than {self.max_bytes:,} bytes")
            return message

        return counted


async def _too_large(send: Send, max_bytes: int) -> None:
    body = json.dumps({"detail": f"the request body is larger than {max_bytes:,} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
