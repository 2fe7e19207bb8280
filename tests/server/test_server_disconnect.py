"""A client that goes away mid-turn, against a real uvicorn server on a loopback port (in this
process, so the engine can be held mid-turn): the turn is cancelled through its cancel token,
and the story stays whole and playable."""

from __future__ import annotations

import json
import time

import httpx

from tests.server.conftest import Server


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
        assert '"kind": "result"' in body
        end = body.rsplit("event: end\ndata: ", 1)[1]
        assert end.endswith("\n\n") and json.loads(end)["new_tokens"] > 0
        assert client.get(f"/api/stories/{story_id}").json()["path"][-1]["action"] == "You walk."
