"""A client that goes away mid-turn, against a real uvicorn server on a loopback port (in this
process, so the engine can be held mid-turn): the turn is cancelled through its cancel token,
and the story stays whole and playable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from aidungeon.server.app import create_app
from tests.server.conftest import Server, make_server


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Server]]:
    made = make_server(tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(made.state), log_level="warning"))
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


def test_a_client_that_goes_away_cancels_its_turn(live: tuple[str, Server]) -> None:
    url, made = live
    with httpx.Client(base_url=url, timeout=10) as client:
        story_id = client.post("/api/stories", json={"prompt": "You stand at a gate."}).json()["id"]
        with client.stream("POST", f"/api/stories/{story_id}/turns", json={"text": ""}) as response:
            response.read()
        made.engine.gate.clear()
        with client.stream("POST", f"/api/stories/{story_id}/turns", json={"text": "run"}) as response:
            for line in response.iter_lines():
                if '"piece"' in line:
                    break
        # The connection is closed; the server notices and sets the turn's cancel token.
        deadline = time.monotonic() + 10
        while not made.engine.requests[-1].cancel.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert made.engine.requests[-1].cancel.is_set()
        made.engine.gate.set()
        while made.state.queue.admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert made.state.queue.admitted == 0
        with client.stream("POST", f"/api/stories/{story_id}/turns", json={"text": "walk"}) as response:
            body = response.read().decode()
        assert '"kind": "result"' in body and body.endswith("event: end\ndata: {}\n\n")
        assert client.get(f"/api/stories/{story_id}").json()["path"][-1]["action"] == "You walk."
