"""Fixtures for the server tests: an in-process app on the scripted engine (fast, for the API's
behaviour), and helpers to read a turn's Server-Sent Events."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aidungeon.core.config import Config
from aidungeon.core.context import PLAIN
from aidungeon.model.protocol import Request
from aidungeon.server.app import create_app
from aidungeon.server.db import open_database
from aidungeon.server.games import GameModel, Games
from aidungeon.server.limits import Limits
from aidungeon.server.protocols import CORS_PATHS, routers
from aidungeon.server.state import ServerState
from tests.support.fake_engine import FakeEngine, FakeHandle


class GatedEngine(FakeEngine):
    """The scripted engine, but each streamed piece waits for `gate` (set by default)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def submit(self, request: Request) -> FakeHandle:
        handle = super().submit(request)
        engine = self

        class Gated(FakeHandle):
            def __iter__(self) -> Iterator[str]:
                for piece in FakeHandle.__iter__(self):
                    yield piece
                    engine.started.set()
                    engine.gate.wait(timeout=30)

        gated = Gated(handle.engine, handle.request, handle.texts, handle.fail)
        gated.stats = handle.stats
        return gated


@dataclass
class Server:
    client: TestClient
    state: ServerState
    engine: GatedEngine

    def story(self, headers: dict[str, str] | None = None, **body: str) -> str:
        response = self.client.post("/api/stories", json=body or {"prompt": "You stand at a gate."}, headers=headers)
        assert response.status_code == 201, response.text
        story_id: str = response.json()["id"]
        return story_id

    def turn(self, story_id: str, text: str, headers: dict[str, str] | None = None) -> list[dict[str, object]]:
        with self.client.stream("POST", f"/api/stories/{story_id}/turns", json={"text": text}, headers=headers) as r:
            assert r.status_code == 200, r.read()
            return parse_sse("".join(r.iter_text()))


def parse_sse(body: str) -> list[dict[str, object]]:
    """The data of each `data:` event, and {"end": True} for the closing `event: end`."""
    events: list[dict[str, object]] = []
    for frame in body.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append({"end": True} if lines.get("event") == "end" else json.loads(lines["data"]))
    return events


PG_URL = os.environ.get("AIDUNGEON_TEST_PG", "")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL of the test PostgreSQL whose tables land in a fresh schema, dropped afterwards."""
    if not PG_URL:
        pytest.skip("AIDUNGEON_TEST_PG is not set (.ci/run starts a PostgreSQL and sets it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The server database: a SQLite file, and (marked `postgres`) a schema in a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with postgres_schema() as url:
        yield url


def full_app(state: ServerState) -> FastAPI:
    """The app as `aidungeon serve` builds it: the game API with the KoboldAI and OpenAI APIs."""
    return create_app(state, routers=routers(), cors_paths=CORS_PATHS)


def make_server(tmp_path: Path, limits: Limits | None = None, db_url: str | None = None) -> Server:
    db = open_database(db_url or f"sqlite:///{tmp_path / 'server.db'}")
    engine = GatedEngine()
    config = Config().with_value("max_new_tokens", 16).with_value("seed", 7)
    games = Games(db, GameModel(engine=engine, name="fake", layout=PLAIN), config)
    state = ServerState(db=db, games=games, limits=limits or Limits())
    return Server(TestClient(full_app(state)), state, engine)


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[Server]:
    made = make_server(tmp_path, db_url=db_url)
    with made.client:
        yield made
    made.state.db.dispose()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Server]]:
    """A real uvicorn server on a loopback port, in this process (so tests can hold its engine)."""
    made = make_server(tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(full_app(made.state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", made
    made.engine.gate.set()
    server.should_exit = True
    thread.join(10)
    sock.close()
    made.state.db.dispose()
