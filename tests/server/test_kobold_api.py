"""The KoboldAI API on `aidungeon serve`, as KoboldAI Lite, SillyTavern and Agnaistic use it.

Most tests run the app in-process on the scripted engine (its tokenizer is one id per
character, so prompt cutting can be checked exactly). The stream is read with KoboldAI Lite's
own parsing rule (SERVING.md). Abort and disconnect run against a real uvicorn server on a
loopback port, with the engine held mid-generation.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error

from aidungeon.server.app import create_app
from aidungeon.server.limits import Limits
from aidungeon.server.protocols import CORS_PATHS, routers
from aidungeon.server.protocols.raw import StopHold, fit_prompt, stop_rule
from aidungeon.server.state import ServerState
from tests.server.conftest import Server, make_server
from tests.support.fake_engine import FakeEngine, scripted_text

# KoboldAI Lite's parser for /api/extra/generate/stream (klite.embd), in Python's re.M.
LITE_SSE = re.compile(r"^event: (.*)\ndata: (.*)\n\n", re.M)


def kobold_app(made: Server) -> TestClient:
    return TestClient(create_app(made.state, routers=routers(), cors_paths=CORS_PATHS))


@pytest.fixture
def kobold(tmp_path: Path) -> Iterator[tuple[TestClient, Server]]:
    made = make_server(tmp_path)
    with kobold_app(made) as client:
        yield client, made
    made.state.db.dispose()


def lite_events(body: str) -> list[dict[str, str]]:
    """The stream as Lite sees it: every event it can parse, in order."""
    events = []
    for name, data in LITE_SSE.findall(body):
        assert name == "message"
        events.append(json.loads(data))
    return events


# -- what the clients ask first ---------------------------------------------------------------


def test_the_info_endpoints_answer_as_koboldcpp_does(kobold: tuple[TestClient, Server]) -> None:
    client, _made = kobold
    assert client.get("/api/v1/model").json() == {"result": "fake"}
    assert client.get("/api/v1/info/version").json() == {"result": "1.2.5"}
    # Lite and Agnaistic stream over SSE only for this exact name at version >= 1.40.
    assert client.get("/api/extra/version").json() == {"result": "KoboldCpp", "version": "1.76"}
    assert client.get("/api/v1/config/max_context_length").json() == {"value": 1024}
    assert client.get("/api/extra/true_max_context_length").json() == {"value": 1024}
    assert client.get("/api/v1/config/max_length").json() == {"value": 180}


# -- generate ---------------------------------------------------------------------------------


def test_generate_continues_the_prompt_with_koboldcpp_fields(kobold: tuple[TestClient, Server]) -> None:
    client, made = kobold
    body = {
        "prompt": "You enter the cave.",
        "max_length": 40,
        "temperature": 0.5,
        "top_p": 0,  # koboldcpp: off
        "top_k": 20,
        "rep_pen": 1.1,
        "repetition_penalty": 1.3,  # the largest of the three aliases wins
        "rep_pen_range": 64,
        "rep_pen_slope": 0.5,
        "sampler_seed": 42,
        "mirostat": 2,  # unknown to this server: ignored, not refused
        "sampler_order": [6, 0, 1],
    }
    response = client.post("/api/v1/generate", json=body)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["text"] == scripted_text(0)[: 40 * 8]
    assert result["finish_reason"] == "stop"
    (request,) = made.engine.requests
    assert made.engine.decode(list(request.prompt_ids)) == "You enter the cave."
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.5, 1.0, 20)
    assert (sampling.repetition_penalty, sampling.repetition_range, sampling.repetition_slope) == (1.3, 64, 0.5)
    assert sampling.repetition_scope == "story"  # KoboldAI's penalty covers the context, whatever the game's default
    assert sampling.max_new_tokens == 40 and request.seed == 42 and request.n == 1
    assert request.session == "kobold:local"  # one cache per caller: a resent story reuses it


def test_out_of_range_values_are_clamped_and_a_seed_of_minus_one_is_random(kobold: tuple[TestClient, Server]) -> None:
    client, made = kobold
    body = {"prompt": "Go.", "temperature": 9, "rep_pen": 0.5, "top_k": -3, "sampler_seed": -1, "max_length": 5000}
    assert client.post("/api/v1/generate", json=body).status_code == 200
    request = made.engine.requests[-1]
    assert (request.sampling.temperature, request.sampling.repetition_penalty, request.sampling.top_k) == (5.0, 1.0, 0)
    assert request.seed is None
    # As long as the 1024-token window allows with at least one prompt token kept.
    assert request.sampling.max_new_tokens == 1023 and len(request.prompt_ids) == 1


def test_stop_sequences_end_the_text_kept_or_trimmed(kobold: tuple[TestClient, Server]) -> None:
    client, made = kobold
    made.engine.script = ["The door opens. You: wait here."] * 2
    kept = client.post("/api/v1/generate", json={"prompt": "Hi.", "stop_sequence": ["zzz", "You:"]}).json()
    body = {"prompt": "Hi.", "stop_sequence": "You:", "trim_stop": True}
    trimmed = client.post("/api/latest/generate", json=body).json()
    # koboldcpp keeps the stop sequence unless trim_stop is set.
    assert kept == {"results": [{"text": "The door opens. You:", "finish_reason": "stop"}]}
    assert trimmed == {"results": [{"text": "The door opens. ", "finish_reason": "stop"}]}


def test_the_prompt_start_is_cut_to_fit_and_memory_is_kept(kobold: tuple[TestClient, Server]) -> None:
    client, made = kobold
    memory, prompt = "[Memory.]", "".join(chr(ord("a") + i % 26) for i in range(300))
    body = {"prompt": prompt, "memory": memory, "max_context_length": 100, "max_length": 30}
    assert client.post("/api/v1/generate", json=body).status_code == 200
    sent = made.engine.decode(list(made.engine.requests[-1].prompt_ids))
    assert sent == memory + prompt[-(100 - 30 - len(memory)) :]


def test_a_body_without_json_content_type_is_read_and_an_empty_prompt_is_refused(
    kobold: tuple[TestClient, Server],
) -> None:
    client, _made = kobold
    form_typed = client.post(
        "/api/v1/generate",
        content=json.dumps({"prompt": "Hello", "max_length": 8}),
        headers={"content-type": "application/x-www-form-urlencoded"},  # what curl -d sends
    )
    assert form_typed.status_code == 200 and form_typed.json()["results"][0]["text"]
    empty = client.post("/api/v1/generate", json={"prompt": ""})
    assert empty.status_code == 400
    assert empty.json() == {"detail": {"msg": "the prompt is empty; send some text to continue", "type": "bad_input"}}
    broken = client.post("/api/v1/generate", content=b"{not json")
    assert broken.status_code == 422 and broken.json()["detail"]["type"] == "bad_input"


# -- streaming --------------------------------------------------------------------------------


def test_lite_parses_every_event_of_the_stream(kobold: tuple[TestClient, Server]) -> None:
    client, _made = kobold
    whole = client.post("/api/v1/generate", json={"prompt": "A cave.", "sampler_seed": 1}).json()
    with client.stream("POST", "/api/extra/generate/stream", json={"prompt": "A cave.", "sampler_seed": 1}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    assert "\r" not in body and "[DONE]" not in body
    events = lite_events(body)
    # Every frame the server sent is one Lite parses.
    assert len(events) == body.count("event: message") > 3
    assert [e["finish_reason"] for e in events[:-1]] == ["null"] * (len(events) - 1)
    assert events[-1]["finish_reason"] == "stop"
    # The scripted engine writes the next script entry: the stream is the second generation.
    assert whole["results"][0]["text"] == scripted_text(0)
    assert "".join(e["token"] for e in events) == scripted_text(1)


def test_the_stream_never_shows_text_a_stop_sequence_takes_back() -> None:
    hold = StopHold(["\nYou:"])
    shown = [hold.push(p) for p in ("The door", " opens.\n", "Yo", "u wait")]
    assert shown == ["The door", " opens.", "", "\nYou wait"]
    hold = StopHold(["\nYou:"])
    shown = [hold.push(p) for p in ("It ends.", "\nYo")]
    assert shown == ["It ends.", ""] and hold.finish("It ends.") == ""
    assert StopHold([]).push("\nYo") == "\nYo"


def test_the_stop_rule_cuts_at_the_earliest_stop() -> None:
    rule = stop_rule(["beta", "al", ""], keep=False)
    assert rule is not None and rule("x alpha beta") == 2 and rule("nothing") is None
    kept = stop_rule(["beta"], keep=True)
    assert kept is not None and kept("alpha beta gamma") == len("alpha beta")
    assert stop_rule(["", ""], keep=True) is None


def test_fit_prompt_cuts_the_memory_last() -> None:
    engine = FakeEngine(window=64)
    ids, max_new = fit_prompt(engine, "p" * 100, memory="m" * 100, context=500, max_new=2000)
    assert max_new == 63 and engine.decode(list(ids)) == "m"  # the window is the limit
    ids, max_new = fit_prompt(engine, "abcdef", memory="MM", context=10, max_new=6)
    assert max_new == 6 and engine.decode(list(ids)) == "MMef"


# -- abort, disconnect, the queue, tokens -----------------------------------------------------


def _wait(condition: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


def test_abort_by_genkey_ends_the_stream_with_the_text_so_far(live: tuple[str, Server]) -> None:
    url, made = live
    made.engine.gate.clear()
    with httpx.Client(base_url=url, timeout=10) as client:
        body = {"prompt": "A cave.", "genkey": "KCPP1234"}
        with client.stream("POST", "/api/extra/generate/stream", json=body) as response:
            chunks = response.iter_text()
            received = ""
            while "\n\n" not in received:
                received += next(chunks)
            assert lite_events(received)[0]["finish_reason"] == "null"
            assert client.post("/api/extra/abort", json={"genkey": "other"}).json()["success"] == "false"
            aborted = client.post("/api/extra/abort", json={"genkey": "KCPP1234"}).json()
            assert aborted == {"success": "true", "done": "true"}
            made.engine.gate.set()
            received += "".join(chunks)
    events = lite_events(received)
    assert events[-1]["finish_reason"] == "stop"
    text = "".join(e["token"] for e in events)
    assert text and scripted_text(0).startswith(text) and len(text) < len(scripted_text(0))
    assert made.engine.requests[-1].cancel.is_set()
    assert _wait(lambda: made.state.queue.admitted == 0)


def test_abort_ends_a_generate_that_does_not_stream(live: tuple[str, Server]) -> None:
    url, made = live
    made.engine.gate.clear()
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        worker = threading.Thread(
            target=lambda: answers.append(client.post("/api/v1/generate", json={"prompt": "Go.", "genkey": "g1"}))
        )
        worker.start()
        assert made.engine.started.wait(10)
        assert client.post("/api/extra/abort", json={"genkey": "g1"}).json()["success"] == "true"
        made.engine.gate.set()
        worker.join(10)
    (result,) = answers[0].json()["results"]
    assert result["text"] and len(result["text"]) < len(scripted_text(0))


def test_a_stream_whose_client_goes_away_is_aborted(live: tuple[str, Server]) -> None:
    url, made = live
    made.engine.gate.clear()
    body = {"prompt": "A cave."}
    with (
        httpx.Client(base_url=url, timeout=10) as client,
        client.stream("POST", "/api/extra/generate/stream", json=body) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    # The connection is closed: the server sets the generation's cancel token.
    assert _wait(lambda: made.engine.requests[-1].cancel.is_set())
    made.engine.gate.set()
    assert _wait(lambda: made.state.queue.admitted == 0)


def test_a_generate_whose_client_times_out_is_aborted(live: tuple[str, Server]) -> None:
    url, made = live
    made.engine.gate.clear()
    with httpx.Client(base_url=url, timeout=1) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/api/v1/generate", json={"prompt": "A cave."})
    # Not streaming, yet the server notices the closed connection and cancels the generation.
    assert _wait(lambda: made.engine.requests[-1].cancel.is_set())
    made.engine.gate.set()
    assert _wait(lambda: made.state.queue.admitted == 0)


def test_a_full_queue_answers_503_in_koboldcpps_shape(tmp_path: Path) -> None:
    made = make_server(tmp_path, Limits(max_running=1, max_waiting=1))
    with kobold_app(made) as client:
        made.state.queue.admit()
        made.state.queue.admit()  # as if two generations ran and waited
        busy = client.post("/api/v1/generate", json={"prompt": "Hello"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert busy.json() == {
            "detail": {"msg": "Server is busy; please try again later.", "type": "service_unavailable"}
        }
        assert client.post("/api/extra/generate/stream", json={"prompt": "Hello"}).status_code == 503
        made.state.queue.done()
        assert client.post("/api/v1/generate", json={"prompt": "Hello"}).status_code == 200
        assert made.state.queue.admitted == 1
    made.state.db.dispose()


def test_tokencount_counts_with_the_models_tokenizer(kobold: tuple[TestClient, Server]) -> None:
    client, _made = kobold
    assert client.post("/api/extra/tokencount", json={"prompt": "héllo"}).json() == {
        "value": 5,
        "ids": [ord(c) for c in "héllo"],
    }


def test_once_a_player_exists_generating_needs_their_token(kobold: tuple[TestClient, Server]) -> None:
    client, made = kobold
    token = made.state.players.add("ann")
    refused = client.post("/api/v1/generate", json={"prompt": "Hello"})
    assert refused.status_code == 401 and refused.json()["detail"]["type"] == "unauthorized"
    assert client.post("/api/extra/tokencount", json={"prompt": "x"}).status_code == 401
    assert client.get("/api/v1/model").status_code == 200  # what Lite asks to connect stays open
    mine = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/generate", json={"prompt": "Hello"}, headers=mine).status_code == 200
    assert made.engine.requests[-1].session.startswith("kobold:player:")


def test_cors_answers_any_origin_on_these_paths_only(kobold: tuple[TestClient, Server]) -> None:
    client, _made = kobold
    preflight = {
        "Origin": "http://lite.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization,genkey",
    }
    answer = client.options("/api/extra/generate/stream", headers=preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    assert "genkey" in answer.headers["access-control-allow-headers"]
    assert client.options("/api/v1/generate").status_code == 200  # koboldcpp answers any OPTIONS
    simple = client.get("/api/v1/model", headers={"Origin": "http://lite.example"})
    assert simple.headers["access-control-allow-origin"] == "*"
    # The game API is not opened to other origins: a page elsewhere cannot drive your stories.
    game = client.options("/api/stories", headers=preflight)
    assert "access-control-allow-origin" not in game.headers


# -- every protocol endpoint fuzzed from its schema -------------------------------------------

_FUZZED = make_server(Path(tempfile.mkdtemp(prefix="aidungeon-protocol-fuzz-")))
_FUZZ_APP = create_app(_FUZZED.state, routers=routers(), cors_paths=CORS_PATHS)
# schemathesis runs the app's lifespan around each call, and its end drains the state it closes
# over; the routes read `app.state.server`, so they get a twin that stays open.
_FUZZ_APP.state.server = ServerState(db=_FUZZED.state.db, games=_FUZZED.state.games)
_SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _FUZZ_APP).include(path_regex="^/(v1|api/(v1|extra))/")


@pytest.mark.slow
@_SCHEMA.parametrize()
@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_protocol_endpoint_answers_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert "Traceback" not in response.text
