"""The game API in process, on the scripted engine: stories, turns as SSE, commands, export and
import, and every refusal as one JSON error."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from aidungeon.server.auth import Players
from aidungeon.server.limits import Limits
from aidungeon.storage import saves
from tests.server.conftest import Server, make_server, parse_sse


def kinds(events: list[dict[str, object]]) -> list[object]:
    return [e.get("kind", "END") for e in events]


def test_a_story_is_created_played_and_listed(server: Server) -> None:
    story_id = server.story()
    first = server.turn(story_id, "")
    assert kinds(first)[-2:] == ["result", "END"]
    second = server.turn(story_id, "open the gate")
    assert second[0] == {"kind": "action", "text": "You open the gate."}
    assert "piece" in kinds(second) and "result" in kinds(second)
    listed = server.client.get("/api/stories").json()
    assert [s["id"] for s in listed] == [story_id]
    assert listed[0]["turns"] == 2
    detail = server.client.get(f"/api/stories/{story_id}").json()
    assert detail["path"][1]["action"] == "You open the gate."
    assert detail["path"][1]["result"] == next(e for e in second if e.get("kind") == "result")["text"]


def test_a_story_from_a_setting_uses_the_character_and_name(server: Server) -> None:
    settings = server.client.get("/api/settings").json()
    fantasy = next(s for s in settings if s["id"] == "fantasy")
    story_id = server.story(setting="fantasy", character=fantasy["characters"][0], name="Zorbithrax")
    detail = server.client.get(f"/api/stories/{story_id}").json()
    assert detail["player_name"] == "Zorbithrax"
    assert detail["title"].startswith("Fantasy")


def test_an_unknown_setting_is_one_clear_error(server: Server) -> None:
    response = server.client.post("/api/stories", json={"setting": "nowhere", "character": "x", "name": "A"})
    assert response.status_code == 400
    assert "choose one of" in response.json()["detail"]


def test_commands_run_as_in_the_terminal(server: Server) -> None:
    story_id = server.story()
    server.turn(story_id, "")
    server.turn(story_id, "look around")
    before = server.client.get(f"/api/stories/{story_id}").json()["path"]
    undone = server.turn(story_id, "/undo")
    assert "error" not in kinds(undone)
    assert len(server.client.get(f"/api/stories/{story_id}").json()["path"]) == len(before) - 1
    redone = server.turn(story_id, "/redo")
    assert "error" not in kinds(redone)
    assert server.client.get(f"/api/stories/{story_id}").json()["path"] == before
    retried = server.turn(story_id, "/retry")
    assert "result" in kinds(retried)
    server.turn(story_id, "/remember The gate is made of bone.")
    assert "The gate is made of bone." in server.client.get(f"/api/stories/{story_id}").json()["memory"]
    table = server.turn(story_id, "/settings")
    assert any("table" in e for e in table)
    unknown = server.turn(story_id, "/fly")
    assert unknown[0]["kind"] == "error" and "unknown command" in str(unknown[0]["text"])


def test_commands_that_leave_the_story_are_refused_on_a_server(server: Server) -> None:
    story_id = server.story()
    for line in ("/load x", "/export md", "/quit", "/save elsewhere"):
        events = server.turn(story_id, line)
        assert events[0]["kind"] == "error", line


def test_export_and_import_round_trip_the_save_document(server: Server) -> None:
    story_id = server.story()
    server.turn(story_id, "")
    server.turn(story_id, "sing")
    document = server.client.get(f"/api/stories/{story_id}/export", params={"format": "save"})
    assert document.status_code == 200
    data, _ = saves.decode_save(document.content, "export")
    assert data.story.path()[-1].action == "You sing."
    markdown = server.client.get(f"/api/stories/{story_id}/export", params={"format": "md"})
    assert "You sing." in markdown.text
    imported = server.client.post("/api/stories/import", content=document.content)
    assert imported.status_code == 201
    new_id = imported.json()[0]["id"]
    assert new_id != story_id
    assert server.client.get(f"/api/stories/{new_id}").json()["path"][-1]["action"] == "You sing."


def test_importing_another_games_save(server: Server) -> None:
    aid2 = {"story_start": "You are a knight.", "actions": ["> You ride"], "results": ["You ride north."]}
    response = server.client.post("/api/stories/import", params={"filename": "old.json"}, content=json.dumps(aid2))
    assert response.status_code == 201, response.text
    garbage = server.client.post("/api/stories/import", content=b"\xff not json")
    assert garbage.status_code == 400 and "not JSON" in garbage.json()["detail"]


def test_deleting_a_story(server: Server) -> None:
    story_id = server.story()
    assert server.client.delete(f"/api/stories/{story_id}").status_code == 204
    assert server.client.get(f"/api/stories/{story_id}").status_code == 404
    assert server.client.delete(f"/api/stories/{story_id}").status_code == 404


def test_bad_bodies_are_json_errors(server: Server) -> None:
    story_id = server.story()
    cases = [
        server.client.post("/api/stories", json={}),
        server.client.post("/api/stories", json={"prompt": "x", "setting": "fantasy"}),
        server.client.post("/api/stories", content=b"{not json", headers={"content-type": "application/json"}),
        server.client.post(f"/api/stories/{story_id}/turns", json={"text": "x" * 20_000}),
        server.client.post(f"/api/stories/{story_id}/turns", json={"txt": "x"}),
        server.client.get("/api/stories/../../etc/passwd"),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text
        assert "detail" in response.json()


def test_a_body_over_the_limit_gets_413(tmp_path: Path) -> None:
    made = make_server(tmp_path, Limits(max_body_bytes=1000))
    with made.client:
        response = made.client.post("/api/stories", json={"prompt": "x" * 5000})
        assert response.status_code == 413
        assert "larger than" in response.json()["detail"]


def test_tokens_are_required_once_a_player_exists(server: Server) -> None:
    players = Players(server.state.db)
    alice, bob = players.add("alice"), players.add("bob")
    assert server.client.get("/api/stories").status_code == 401
    assert server.client.get("/api/stories", headers={"Authorization": "Bearer wrong"}).status_code == 401
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}
    story_id = server.story(headers=as_alice)
    server.turn(story_id, "", headers=as_alice)
    # Bob sees nothing of Alice's, by any route, and cannot change it.
    assert server.client.get("/api/stories", headers=as_bob).json() == []
    for method, path in [
        ("GET", f"/api/stories/{story_id}"),
        ("GET", f"/api/stories/{story_id}/export?format=save"),
        ("DELETE", f"/api/stories/{story_id}"),
    ]:
        assert server.client.request(method, path, headers=as_bob).status_code == 404
    stolen = server.client.post(f"/api/stories/{story_id}/turns", json={"text": "/undo"}, headers=as_bob)
    assert stolen.status_code == 404
    assert len(server.client.get(f"/api/stories/{story_id}", headers=as_alice).json()["path"]) == 1
    players.remove("alice")
    assert server.client.get("/api/stories", headers=as_alice).status_code == 401


def test_the_story_limit(tmp_path: Path) -> None:
    made = make_server(tmp_path, Limits(max_stories=2))
    with made.client:
        made.story()
        made.story()
        response = made.client.post("/api/stories", json={"prompt": "one more"})
        assert response.status_code == 403 and "delete one" in response.json()["detail"]


def test_the_rate_limit(tmp_path: Path) -> None:
    made = make_server(tmp_path, Limits(turns_per_minute=1, turn_burst=2))
    with made.client:
        alice = {"Authorization": f"Bearer {Players(made.state.db).add('alice')}"}
        bob = {"Authorization": f"Bearer {Players(made.state.db).add('bob')}"}
        story_id = made.story(headers=alice)
        made.turn(story_id, "", headers=alice)
        made.turn(story_id, "wave", headers=alice)
        refused = made.client.post(f"/api/stories/{story_id}/turns", json={"text": "wave again"}, headers=alice)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        # The rate is each player's own.
        made.turn(made.story(headers=bob), "", headers=bob)


def _start_turn(made: Server, story_id: str, text: str, out: list[list[dict[str, object]]]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(made.turn(story_id, text)))
    thread.start()
    return thread


def test_a_second_turn_of_one_story_gets_409_and_a_full_queue_503(tmp_path: Path) -> None:
    made = make_server(tmp_path, Limits(max_running=1, max_waiting=0))
    with made.client:
        first, other = made.story(), made.story()
        made.engine.gate.clear()
        done: list[list[dict[str, object]]] = []
        thread = _start_turn(made, first, "wait", done)
        assert made.engine.started.wait(10)
        busy = made.client.post(f"/api/stories/{first}/turns", json={"text": "again"})
        assert busy.status_code == 409 and "still running" in busy.json()["detail"]
        full = made.client.post(f"/api/stories/{other}/turns", json={"text": "hello"})
        assert full.status_code == 503 and full.headers["retry-after"]
        made.engine.gate.set()
        thread.join(10)
        assert kinds(done[0])[-1] == "END"
        assert made.client.post(f"/api/stories/{other}/turns", json={"text": "hello"}).status_code == 200


def test_the_sse_frames_use_bare_newlines(server: Server) -> None:
    story_id = server.story()
    with server.client.stream("POST", f"/api/stories/{story_id}/turns", json={"text": ""}) as response:
        body = response.read()
    assert b"\r" not in body
    assert parse_sse(body.decode())[-1] == {"end": True}


def test_two_writers_never_overwrite_each_other(server: Server) -> None:
    story_id = server.story()
    server.turn(story_id, "")
    store = server.state.games.store(0)
    elsewhere = store.slot(story_id)
    data, _ = elsewhere.read()
    data.story.remember("written elsewhere")
    elsewhere.write(data)  # another replica's write
    events = server.turn(story_id, "/remember written here")
    # The cached session saw the new version and reopened, so both memories are kept.
    assert "error" not in kinds(events)
    memory = server.client.get(f"/api/stories/{story_id}").json()["memory"]
    assert "written elsewhere" in memory and "written here" in memory


def test_a_served_story_draws_one_candidate_unless_its_settings_ask(server: Server) -> None:
    """The server's engine is shared: its rows are other players' turns, so a story draws one
    candidate a turn (where the terminal game on a CPU draws three) until it asks for more."""
    assert server.engine.device_type == "cpu"
    story_id = server.story()
    server.turn(story_id, "look around")
    assert server.engine.requests[-1].n == 1
    server.turn(story_id, "/set candidates 3")
    server.turn(story_id, "look again")
    assert server.engine.requests[-1].n == 3


def test_out_of_memory_is_one_error_event_and_the_server_goes_on(server: Server) -> None:
    story_id = server.story()
    server.turn(story_id, "")
    before = server.client.get(f"/api/stories/{story_id}").json()["path"]
    server.engine.oom = lambda request: True
    events = server.turn(story_id, "dig")
    assert any(e.get("kind") == "error" and "memory" in str(e.get("text")) for e in events)
    assert events[-1] == {"end": True}
    server.engine.oom = None
    assert "result" in kinds(server.turn(story_id, "dig again"))
    after = server.client.get(f"/api/stories/{story_id}").json()["path"]
    assert after[: len(before)] == before
