"""The terminal's client of `aidungeon serve` (aidungeon.client) against a real uvicorn server on
a loopback port, in this process so the scripted engine can be held mid-turn: Server-Sent Events
back into the game's events, Ctrl-C cancelling the turn on the server, and every failure (busy,
gone, token, story busy, dropped mid-turn) as one clear line with the REPL going on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aidungeon.client.api import LOST, STOPPED, GameAPI, Retry, ServerError
from aidungeon.client.session import ON_A_SERVER, ServerSession
from aidungeon.client.sse import FrameReader, event_from_json, parse_data
from aidungeon.core.cancel import CancelToken
from aidungeon.game.events import Event, EventKind, Table
from tests.server.conftest import Server

pytestmark = pytest.mark.server


def kinds(events: list[Event]) -> list[EventKind]:
    return [e.kind for e in events]


def errors(events: list[Event]) -> list[str]:
    return [e.text for e in events if e.kind is EventKind.ERROR]


@pytest.fixture
def played(live: tuple[str, Server], tmp_path: Path) -> Iterator[tuple[ServerSession, Server]]:
    """A client session on a new custom story whose first result is written."""
    url, made = live
    api = GameAPI(url)
    story_id = api.create({"prompt": "You stand at a gate."})
    session = ServerSession(api, story_id, exports_dir=tmp_path / "exports")
    begun = list(session.begin())
    assert kinds(begun)[0] is EventKind.OPENING and EventKind.RESULT in kinds(begun), begun
    yield session, made
    session.close()


def test_frames_become_the_events_the_server_rendered() -> None:
    reader = FrameReader()
    lines = [
        ": keep-alive",
        'data: {"kind": "piece", "text": "The door "}',
        "",
        'data: {"kind": "table", "text": "", "table": {"title": "Saves", "columns": ["a", "b"],',
        'data:  "rows": [["1", "x"]], "footer": "f"}}',
        "",
        'data: {"kind": "edit", "text": "old", "data": "/alter "}',
        "",
        'data: {"kind": "fireworks", "text": "new"}',
        "",
        "event: end",
        'data: {"new_tokens": 3, "prefill_tokens": 9}',
        "",
    ]
    frames = [f for f in (reader.feed(line) for line in lines) if f is not None]
    assert [f.event for f in frames] == ["message"] * 4 + ["end"]
    events = [event_from_json(parse_data(f)) for f in frames[:4]]
    assert events[0] == Event(EventKind.PIECE, "The door ")
    assert events[1].data == Table("Saves", ("a", "b"), (("1", "x"),), "f")
    assert events[2] == Event(EventKind.EDIT, "old", "/alter ")
    assert events[3] == Event(EventKind.TEXT, "new")  # a newer server's kind is still shown
    assert parse_data(frames[4]) == {"new_tokens": 3, "prefill_tokens": 9}


def test_a_turn_streams_as_the_terminal_would_show_it(played: tuple[ServerSession, Server]) -> None:
    session, _made = played
    events = list(session.handle("look around"))
    assert kinds(events)[0] is EventKind.ACTION and events[0].text == "You look around."
    assert EventKind.PIECE in kinds(events) and kinds(events)[-1] is EventKind.RESULT
    assert session.api.last_turn is not None and session.api.last_turn.new_tokens > 0
    status = session.status_line()
    assert "fake" in status and session.story_id in status and "tokens in" in status
    helped = list(session.handle("/help"))
    assert kinds(helped) == [EventKind.TABLE, EventKind.INFO] and helped[-1].text == ON_A_SERVER
    table = next(e for e in session.handle("/saves") if e.kind is EventKind.TABLE)
    assert isinstance(table.data, Table) and session.story_id in str(table.data.rows)
    story = session.api.story(session.story_id)
    assert story["path"][-1] == {"action": "You look around.", "result": events[-1].text}


def test_ctrl_c_cancels_the_turn_on_the_server(played: tuple[ServerSession, Server]) -> None:
    session, made = played
    before = session.api.story(session.story_id)["path"]
    made.engine.gate.clear()
    cancel = CancelToken()
    seen: list[Event] = []
    started = time.monotonic()
    for event in session.handle("run", cancel):
        seen.append(event)
        if event.kind is EventKind.PIECE:
            cancel.set()  # what the REPL's Ctrl-C does
    assert time.monotonic() - started < 5  # the client did not wait for the held engine
    assert seen[-1] == Event(EventKind.INFO, STOPPED) and not errors(seen)
    deadline = time.monotonic() + 10
    while not made.engine.requests[-1].cancel.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert made.engine.requests[-1].cancel.is_set(), "the server never saw the client leave"
    made.engine.gate.set()
    # The next line may reach the server while it still saves the stopped turn: it waits for it.
    after = list(session.handle("walk"))
    assert not errors(after) and kinds(after)[-1] is EventKind.RESULT
    path = session.api.story(session.story_id)["path"]
    assert path[: len(before)] == before and path[-1]["action"] == "You walk." and path[-1]["result"]


def test_busy_server_is_retried_once_then_one_clear_line(played: tuple[ServerSession, Server]) -> None:
    session, made = played
    made.state.queue.capacity = 1
    made.engine.gate.clear()
    made.engine.started.clear()
    other = GameAPI(session.api.url)
    holder = other.create({"prompt": "A second story."})
    held = threading.Thread(target=lambda: list(other.turn(holder, "", CancelToken())), daemon=True)
    held.start()
    deadline = time.monotonic() + 10
    while not made.engine.started.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    requests_before = len(made.engine.requests)
    started = time.monotonic()
    events = list(session.handle("wait"))
    assert [e.text for e in events if e.kind is EventKind.INFO] == [
        "The server is busy; trying again in 2 s (Ctrl-C stops)."
    ]
    assert errors(events) == ["the server is busy; try again in a moment"]
    assert 2 <= time.monotonic() - started < 8  # Retry-After (2 s) was honoured, once
    assert len(made.engine.requests) == requests_before  # neither attempt reached the engine
    # Freed during the wait, the one retry gets through.
    threading.Timer(0.5, made.engine.gate.set).start()
    events = list(session.handle("wait"))
    assert not errors(events) and kinds(events)[-1] is EventKind.RESULT
    held.join(10)
    other.close()


def test_another_turn_running_on_the_story_is_one_line(played: tuple[ServerSession, Server]) -> None:
    session, made = played
    made.engine.gate.clear()
    made.engine.started.clear()
    other = GameAPI(session.api.url)
    held = threading.Thread(target=lambda: list(other.turn(session.story_id, "sing", CancelToken())), daemon=True)
    held.start()
    deadline = time.monotonic() + 10
    while not made.engine.started.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert errors(list(session.handle("dance"))) == ["a turn of this story is still running; wait for it or stop it"]
    made.engine.gate.set()
    held.join(10)
    other.close()


def test_tokens(live: tuple[str, Server], tmp_path: Path) -> None:
    url, made = live
    token = made.state.players.add("alice")
    with pytest.raises(ServerError, match=r"^the server needs a token: --token T"):
        GameAPI(url).stories()
    with pytest.raises(ServerError, match="refused the token"):
        GameAPI(url, "wrong").stories()
    api = GameAPI(url, token)
    story_id = api.create({"prompt": "A locked room."})
    assert [s["id"] for s in api.stories()] == [story_id]
    api.close()


def test_a_server_that_is_gone_is_one_line_and_the_game_goes_on(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = GameAPI(f"http://127.0.0.1:{port}", retry=Retry(tries=3, first_s=0.2))
    session = ServerSession(api, "abc", exports_dir=tmp_path)
    for line in ("look", "look again"):  # each line tries again
        started = time.monotonic()
        events = list(session.handle(line))
        # Tried 3 times (waiting 0.2 + 0.4 s), with one notice, then one line.
        assert 0.6 <= time.monotonic() - started < 5
        assert [e.kind for e in events] == [EventKind.INFO, EventKind.ERROR]
        assert events[0].text == LOST
        assert (
            events[1].text
            == f"cannot reach the server at http://127.0.0.1:{port}: is it running? (the next line tries again)"
        )


def test_server_urls(live: tuple[str, Server]) -> None:
    url, _made = live
    assert GameAPI(url.removeprefix("http://") + "/").stories() == []  # host:port as typed
    for bad in ("ftp://example.org", "http://[::1"):
        with pytest.raises(ServerError, match="is not a server URL"):
            GameAPI(bad)


def test_a_connection_dropped_mid_turn_is_tried_again_then_one_line(tmp_path: Path) -> None:
    """A peer that sends the headers and one piece, then hangs up and stops listening (as a killed
    server does): the turn is sent again, with the same key, until the tries run out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    sent: list[bytes] = []

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            sent.append(conn.recv(65536))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                b'data: {"kind": "piece", "text": "The ro"}\n\n'
            )
        listener.close()

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    api = GameAPI(f"http://127.0.0.1:{listener.getsockname()[1]}", retry=Retry(tries=2, first_s=0.1))
    session = ServerSession(api, "abc", exports_dir=tmp_path)
    events = list(session.handle("look"))
    thread.join(5)
    # The preview is dropped, the player told once, and the last try's failure is the one line.
    assert kinds(events) == [EventKind.PIECE, EventKind.RESTART, EventKind.INFO, EventKind.ERROR]
    assert events[2].text == LOST
    assert events[-1].text.startswith("cannot reach the server at http://127.0.0.1:")
    assert b"\r\nidempotency-key: " in sent[0].lower()


def test_the_commands_answered_by_the_client(played: tuple[ServerSession, Server], tmp_path: Path) -> None:
    session, _made = played
    first = session.story_id
    second = session.api.create({"prompt": "A ship at sea."})
    table = next(session.handle("/load")).data
    assert isinstance(table, Table) and [row[1] for row in table.rows] == [second, first]
    assert errors(list(session.handle("/load 9"))) == ["no story '9' among yours on the server; /load lists them"]
    switched = list(session.handle("/load 1"))
    assert session.story_id == second and not errors(switched)
    assert kinds(switched)[:2] == [EventKind.INFO, EventKind.OPENING] and EventKind.RESULT in kinds(switched)
    assert session.api.story(second)["path"][0]["result"]  # its first result was written on loading
    list(session.handle(f"/load {first}"))
    assert session.story_id == first
    assert [e.text for e in session.handle("/save")] == [
        f"Saved on the server as {first} (the server saves every turn)."
    ]
    assert "saved under its id" in errors(list(session.handle("/save mine")))[0]
    quit_event = list(session.handle("/q"))
    assert kinds(quit_event) == [EventKind.QUIT] and f"--load {first}" in quit_event[0].text

    # /export: into the local exports folder; elsewhere only by a written-out path
    assert [e.text for e in session.handle("/export html")] == [f"Exported to {tmp_path / 'exports' / first}.html"]
    assert "<html" in (tmp_path / "exports" / f"{first}.html").read_text(encoding="utf-8").lower()
    assert "already exists" in errors(list(session.handle("/export html")))[0]
    assert not errors(list(session.handle("/export html --force")))
    assert not errors(list(session.handle("/export txt tale")))
    assert "gate" in (tmp_path / "exports" / "tale.txt").read_text(encoding="utf-8")
    elsewhere = tmp_path / "out" / "story.md"
    elsewhere.parent.mkdir()
    assert not errors(list(session.handle(f"/export md {elsewhere}")))
    assert elsewhere.read_text(encoding="utf-8").startswith("#")
    assert "not a plain file name" in errors(list(session.handle("/export md ..hidden")))[0]
    assert errors(list(session.handle("/export pdf"))) == ["usage: /export md|txt|html [NAME or PATH] [--force]"]


def test_the_cli_plays_a_server_story_from_a_pipe(live: tuple[str, Server], tmp_path: Path) -> None:
    """`aidungeon --server URL` end to end through the REPL (piped; the pseudo-terminal run is in
    tests/e2e/test_terminal_client.py): no model, a turn, a server command, a client command."""
    url, _made = live
    env = dict(os.environ, AIDUNGEON_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-m", "aidungeon", "--server", url, "--prompt", "You stand at a gate."],
        input="look around\n/remember the gate is red\n/quit\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "You stand at a gate." in done.stdout and "> You look around." in done.stdout
    story_id = httpx.get(f"{url}/api/stories").json()[0]["id"]
    assert f"Resume with: aidungeon --server {url} --load {story_id}" in done.stdout
    story = httpx.get(f"{url}/api/stories/{story_id}").json()
    assert story["memory"] == ["the gate is red"] and story["path"][-1]["action"] == "You look around."
    gone = subprocess.run(
        [sys.executable, "-m", "aidungeon", "--server", "http://127.0.0.1:9", "--load"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 1 and gone.stdout == ""
    assert (
        gone.stderr.strip()
        == "aidungeon: cannot reach the server at http://127.0.0.1:9: is it running? (the next line tries again)"
    )
