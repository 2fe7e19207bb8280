"""Idempotent turns: a line sent with an `Idempotency-Key`, then sent again with the same key (as a
client does when the stream broke), is answered from what the database recorded, never played
twice. On the scripted engine, in process (SQLite, and PostgreSQL when the test server is up), and
against a real uvicorn server for a turn whose client left mid-stream."""

from __future__ import annotations

import json
import threading
import time

import httpx
import sqlalchemy as sa

from aidungeon.core.cancel import CancelToken
from aidungeon.game.events import Event, EventKind
from aidungeon.server.db import ANONYMOUS, stories
from aidungeon.server.games import GameModel, Games
from tests.server.conftest import GatedEngine, Server, parse_sse


def keyed(server: Server, story_id: str, text: str, key: str) -> list[dict[str, object]]:
    return server.turn(story_id, text, headers={"Idempotency-Key": key})


def results(events: list[dict[str, object]]) -> list[object]:
    return [e["text"] for e in events if e.get("kind") == "result"]


def path(server: Server, story_id: str) -> list[dict[str, str]]:
    body = server.client.get(f"/api/stories/{story_id}").json()
    return list(body["path"])


def end_of(events: list[dict[str, object]]) -> dict[str, object]:
    assert events[-1] == {"end": True}
    return events[-1]


def test_the_same_key_again_is_answered_with_what_the_turn_showed(server: Server) -> None:
    story_id = server.story()
    keyed(server, story_id, "", "first")
    played = keyed(server, story_id, "open the door", "k-1")
    calls, before = len(server.engine.requests), path(server, story_id)
    with server.client.stream(
        "POST", f"/api/stories/{story_id}/turns", json={"text": "open the door"}, headers={"Idempotency-Key": "k-1"}
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    again = parse_sse(body)
    assert len(server.engine.requests) == calls  # nothing was generated
    assert path(server, story_id) == before  # and nothing applied twice
    assert results(again) == results(played) and len(results(again)) == 1
    # What it showed, without the streamed preview, then an end that cost nothing.
    assert [e for e in played if e.get("kind") not in ("piece", "restart")] == again
    end = json.loads(body.rsplit("event: end\ndata: ", 1)[1])
    assert end == {"new_tokens": 0, "prefill_tokens": 0, "replayed": True}
    # A new key is a new line.
    keyed(server, story_id, "open the door", "k-2")
    assert len(path(server, story_id)) == len(before) + 1


def test_a_command_sent_again_is_not_applied_twice(server: Server) -> None:
    story_id = server.story()
    for n, line in enumerate(("", "go north", "go south")):
        keyed(server, story_id, line, f"t{n}")
    assert len(path(server, story_id)) == 3
    first = keyed(server, story_id, "/undo", "undo-1")
    again = keyed(server, story_id, "/undo", "undo-1")
    assert len(path(server, story_id)) == 2  # one undo, not two
    assert again == [e for e in first if e.get("kind") not in ("piece", "restart")]
    # Without a key a line is played as sent, as the web page and older clients send it.
    server.turn(story_id, "/undo")
    assert len(path(server, story_id)) == 1


def test_a_turn_saved_but_never_ended_shows_its_saved_result(server: Server) -> None:
    """The replica died between saving the result and recording the reply."""
    story_id = server.story()
    keyed(server, story_id, "", "first")
    played = keyed(server, story_id, "climb the wall", "k-wall")
    with server.state.db.begin() as conn:
        conn.execute(stories.update().where(stories.c.id == story_id).values(turn_reply=None))
    calls, before = len(server.engine.requests), path(server, story_id)
    again = keyed(server, story_id, "climb the wall", "k-wall")
    assert len(server.engine.requests) == calls and path(server, story_id) == before
    assert results(again) == results(played) == [before[-1]["result"]]
    end_of(again)


def test_a_line_that_changed_nothing_is_played_again(server: Server) -> None:
    story_id = server.story()
    keyed(server, story_id, "", "first")
    shown = keyed(server, story_id, "/print", "k-print")
    assert keyed(server, story_id, "/print", "k-print") == shown
    with server.state.db.connect() as conn:
        assert conn.execute(sa.select(stories.c.turn_key).where(stories.c.id == story_id)).scalar_one() == "first"


def other_replica(server: Server) -> tuple[Games, GatedEngine]:
    """A second game API replica on the server's database, with its own engine."""
    engine = GatedEngine()
    games = server.state.games
    return Games(
        server.state.db, GameModel(engine=engine, name="fake", layout=games.model.layout), games.config
    ), engine


def gated_run(
    games: Games, engine: GatedEngine, story_id: str, line: str, cancel: CancelToken
) -> tuple[threading.Thread, list[Event]]:
    """`line` under the key "k-race" on `games`, in a thread, held at its first piece until `engine.gate` is set."""
    events: list[Event] = []
    engine.gate.clear()
    play = games.play(ANONYMOUS, story_id, line, cancel, key="k-race")
    thread = threading.Thread(target=lambda: events.extend(play), daemon=True)
    thread.start()
    assert engine.started.wait(10), "the run never streamed"
    return thread, events


def shown(events: list[Event]) -> list[str]:
    return [e.text for e in events if e.kind is EventKind.RESULT]


def test_a_line_sent_again_while_its_first_run_still_runs_shows_the_first_runs_saved_result(
    server: Server,
) -> None:
    """Two game API replicas on one database: the first still runs a keyed line whose client lost
    the connection; the resend reaches the second, where nothing of the line is saved yet, so it
    plays the line too. The first saves first, and the second's save conflicts: it shows the saved
    result, not its own, and no "not saved" line."""
    story_id = server.story()
    keyed(server, story_id, "", "first")
    server.engine.script = [*[""] * len(server.engine.requests), "The door opens onto a stair."]  # its next call
    other, other_engine = other_replica(server)
    other_engine.script = ["A draft blows the candles out."]
    first_run, first_events = gated_run(server.state.games, server.engine, story_id, "open the door", CancelToken())
    answer = other.answer(ANONYMOUS, story_id, "open the door", "k-race")
    assert answer.line == "open the door" and answer.replay is None
    other_run, other_events = gated_run(other, other_engine, story_id, answer.line, CancelToken())
    server.engine.gate.set()  # the first run saves its turn first
    first_run.join(10)
    other_engine.gate.set()
    other_run.join(10)
    saved = path(server, story_id)
    assert [t["action"] for t in saved] == ["", "You open the door."]
    assert saved[-1]["result"] == "The door opens onto a stair."
    assert shown(first_events) == shown(other_events) == ["The door opens onto a stair."]
    assert not [e for e in other_events if e.kind is EventKind.ERROR]
    assert results(keyed(server, story_id, "open the door", "k-race")) == ["The door opens onto a stair."]


def test_a_line_sent_again_while_its_first_run_is_stopping_is_saved_from_the_second_run(server: Server) -> None:
    """As above, but the first replica noticed the lost client and stopped the line: it saves the
    action alone. The second run's result is then written onto that action, and shown."""
    story_id = server.story()
    keyed(server, story_id, "", "first")
    other, other_engine = other_replica(server)
    other_engine.script = ["A draft blows the candles out."]
    stop = CancelToken()
    first_run, _ = gated_run(server.state.games, server.engine, story_id, "open the door", stop)
    other_run, other_events = gated_run(other, other_engine, story_id, "open the door", CancelToken())
    stop.set()
    server.engine.gate.set()
    first_run.join(10)
    assert path(server, story_id)[-1] == {"action": "You open the door.", "result": ""}  # the stop kept the action
    other_engine.gate.set()
    other_run.join(10)
    saved = path(server, story_id)
    assert [t["action"] for t in saved] == ["", "You open the door."]
    assert saved[-1]["result"] == "A draft blows the candles out."
    assert shown(other_events) == ["A draft blows the candles out."]
    assert not [e for e in other_events if e.kind is EventKind.ERROR]
    assert results(keyed(server, story_id, "open the door", "k-race")) == ["A draft blows the candles out."]


def test_a_bad_key_is_refused(server: Server) -> None:
    story_id = server.story()
    for bad in ("x" * 65, "two words"):
        response = server.client.post(
            f"/api/stories/{story_id}/turns", json={"text": "look"}, headers={"Idempotency-Key": bad}
        )
        assert response.status_code == 422, response.text


def test_an_action_whose_client_left_mid_stream_is_finished_by_its_key(live: tuple[str, Server]) -> None:
    """The client's connection breaks mid-turn; the server stops the turn and keeps the action
    without its result. The same line sent again with its key draws that result: one turn, with
    the action once and a result."""
    url, made = live
    with httpx.Client(base_url=url, timeout=10) as client:
        story_id = client.post("/api/stories", json={"prompt": "You stand at a gate."}).json()["id"]
        client.post(f"/api/stories/{story_id}/turns", json={"text": ""}, headers={"Idempotency-Key": "a"}).read()
        made.engine.gate.clear()
        headers = {"Idempotency-Key": "b"}
        with client.stream("POST", f"/api/stories/{story_id}/turns", json={"text": "run"}, headers=headers) as r:
            for line in r.iter_lines():
                if '"piece"' in line:
                    break
        deadline = time.monotonic() + 10
        while not made.engine.requests[-1].cancel.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        made.engine.gate.set()
        while made.state.queue.admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped = client.get(f"/api/stories/{story_id}").json()["path"]
        assert stopped[-1] == {"action": "You run.", "result": ""}
        body = client.post(f"/api/stories/{story_id}/turns", json={"text": "run"}, headers=headers).text
        events = parse_sse(body)
        assert len(results(events)) == 1 and events[-1] == {"end": True}
        finished = client.get(f"/api/stories/{story_id}").json()["path"]
        assert len(finished) == len(stopped) and finished[-1]["action"] == "You run."
        assert finished[-1]["result"] == results(events)[0]
        # And once more: now it is answered from what it showed.
        calls = len(made.engine.requests)
        assert results(
            parse_sse(client.post(f"/api/stories/{story_id}/turns", json={"text": "run"}, headers=headers).text)
        ) == results(events)
        assert len(made.engine.requests) == calls
