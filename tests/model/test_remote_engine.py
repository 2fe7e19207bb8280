"""The remote engine against a small real HTTP server on 127.0.0.1 (tests/support/fake_openai_server.py).

It covers connecting (window, tokenizer, model), streaming, the stop rule, best-of-n with and
without the server's `n`, cancel closing the stream, and a server that is unreachable, fails or
drops mid-turn: one clear BackendError, and a game whose story is as it was before the line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aidungeon.cli.app import main
from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling
from aidungeon.core.errors import BackendError, ConfigError
from aidungeon.game.events import EventKind
from aidungeon.model.protocol import Request, StopReason
from aidungeon.model.remote import DEFAULT_WINDOW, RemoteEngine, parse_spec
from tests.support.fake_openai_server import FakeOpenAIServer, PeerState, words
from tests.support.sessions import make_session, only, run, saved_story

REPO = Path(__file__).resolve().parents[2]
TEXT = "The lantern flickers. A raven cries out in the hall."


@pytest.fixture
def peer() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def engine(peer: FakeOpenAIServer) -> Iterator[RemoteEngine]:
    engine = RemoteEngine.connect(f"openai:{peer.url}")
    yield engine
    engine.close()


def request(engine: RemoteEngine, prompt: str = "You enter the cave.", **fields: object) -> Request:
    values: dict[str, object] = {
        "session": "s",
        "prompt_ids": tuple(engine.encode(prompt)),
        "sampling": Sampling(max_new_tokens=40),
        "cancel": CancelToken(),
    }
    values.update(fields)
    return Request(**values)  # type: ignore[arg-type]


def first_sentence(text: str) -> int | None:
    end = text.find(".")
    return end + 1 if end >= 0 else None


# -- the spec and connecting ------------------------------------------------------------------


def test_a_spec_names_the_server_and_optionally_the_model() -> None:
    assert parse_spec("openai:http://127.0.0.1:8080/v1#smollm2").base == "http://127.0.0.1:8080/v1"
    assert parse_spec("openai:http://127.0.0.1:8080/v1#smollm2").model == "smollm2"
    assert parse_spec("openai:http://host:1/").base == "http://host:1/v1"
    assert parse_spec("openai:http://host:1").model is None
    with pytest.raises(ConfigError, match="not a server"):
        parse_spec("openai:localhost:8080")


def test_connect_reads_the_window_model_and_tokenizer(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    assert (engine.model, engine.window, engine.device_type) == ("fake-model", 512, "remote")
    assert engine.tokenizer.dialect.name == "tokenize" and engine.ids_prompt
    assert engine.encode("a café") == [ord(c) for c in "a café"]
    assert engine.decode(engine.encode("a café")) == "a café"
    assert engine.layout.name == "plain"  # "<|im_start|>" is not one token in this tokenizer


def test_a_model_the_server_does_not_serve_is_refused_clearly(peer: FakeOpenAIServer) -> None:
    with pytest.raises(BackendError, match="serves fake-model; not other"):
        RemoteEngine.connect(f"openai:{peer.url}#other")


def test_tokenizations_are_cached(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    before = peer.state.tokenizer_calls
    for _ in range(3):
        ids = engine.encode("The same part of the window")
        engine.decode(ids)
    assert peer.state.tokenizer_calls == before + 1  # one tokenize; its decode is known from it


# -- generating -------------------------------------------------------------------------------


def test_streams_the_text_and_sends_ids_and_sampling(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    sampling = Sampling(temperature=0.7, top_p=0.8, top_k=0, repetition_penalty=1.2, max_new_tokens=40)
    req = request(engine, sampling=sampling, seed=11)
    handle = engine.submit(req)
    pieces = list(handle)
    (completion,) = handle.result().completions
    assert "".join(pieces) == completion.text == TEXT
    assert len(pieces) == len(words(TEXT))  # streamed as it came, not all at the end
    assert completion.stop_reason is StopReason.EOS
    assert completion.mean_logprob == 0.0  # one candidate: nothing to rank, so none asked for
    assert "logprobs" not in peer.state.requests[0]
    assert completion.token_ids == engine.encode(TEXT)
    (body,) = peer.state.requests
    assert body["prompt"] == list(req.prompt_ids) and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["n"]) == (40, 0.7, 0.8, 11, 1)
    assert body["top_k"] == -1  # off, in vLLM's spelling
    assert body["repetition_penalty"] == body["repeat_penalty"] == 1.2
    stats = handle.result().stats
    assert stats.prompt_tokens == len(req.prompt_ids) and stats.new_tokens == len(words(TEXT))
    assert 0 < stats.ttft_s <= stats.total_s


def test_the_length_limit_is_the_servers_finish_reason(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    handle = engine.submit(request(engine, sampling=Sampling(max_new_tokens=3)))
    list(handle)
    (completion,) = handle.result().completions
    assert completion.text == "".join(words(TEXT)[:3])
    assert completion.stop_reason is StopReason.LENGTH


def test_the_stop_rule_cuts_the_text_and_closes_the_stream(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.delay_s = 0.02
    peer.state.script = [TEXT + " More words follow here" * 10]
    handle = engine.submit(request(engine, stop=first_sentence))
    shown = "".join(handle)
    (completion,) = handle.result().completions
    assert shown == completion.text == "The lantern flickers."
    assert completion.stop_reason is StopReason.STOP
    assert peer.state.closed_early.wait(5), "the server kept streaming after the stop rule fired"
    assert peer.state.events_sent < len(words(peer.state.script[0]))


def test_best_of_n_asks_the_server_for_n_choices_at_once(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.script = ["First one.", "Second one here.", "Third."]
    handle = engine.submit(request(engine, n=3, seed=5))
    assert "".join(handle) == "First one."  # only candidate 0 streams
    assert [c.text for c in handle.result().completions] == peer.state.script
    assert [c.mean_logprob for c in handle.result().completions] == [-0.5] * 3  # to rank them
    assert len(peer.state.requests) == 1 and peer.state.requests[0]["n"] == 3
    assert engine.offers_n is True


def test_a_server_that_ignores_n_gets_the_rest_asked_one_by_one() -> None:
    server = FakeOpenAIServer(PeerState(dialect="llama-cpp-python")).start()
    engine = RemoteEngine.connect(f"openai:{server.url}")
    try:
        assert engine.window == DEFAULT_WINDOW - 1  # its BOS takes a token of the default window
        assert engine.encode("ab") == [ord("a"), ord("b")]  # the BOS is not part of a text's ids
        handle = engine.submit(request(engine, "You wait.", n=3, seed=5))
        assert "".join(handle) == TEXT
        assert [c.text for c in handle.result().completions] == [TEXT] * 3
        assert [r["seed"] for r in server.state.requests] == [5, 6, 7]  # each candidate its own seed
        assert all(r["prompt"] == "You wait." for r in server.state.requests)  # text: ids are not taken
        assert engine.offers_n is False
        list(engine.submit(request(engine, n=2)))
        assert server.state.requests[-1]["n"] == 1  # learnt: no more asking for n
    finally:
        engine.close()
        server.stop()


def test_a_server_without_logprobs_is_asked_again_without(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.refuse_logprobs = True
    handle = engine.submit(request(engine, n=2))
    assert "".join(handle) == TEXT
    assert [c.mean_logprob for c in handle.result().completions] == [0.0, 0.0]
    assert ["logprobs" in r for r in peer.state.requests] == [True, False]
    assert engine.offers_logprobs is False


def test_a_stream_without_any_text_is_one_clear_line(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.empty_stream = True
    with pytest.raises(BackendError, match="ended the turn without any text"):
        list(engine.submit(request(engine)))


def test_cancel_closes_the_stream(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.delay_s = 0.05
    peer.state.script = ["word " * 40]
    cancel = CancelToken()
    handle = engine.submit(request(engine, cancel=cancel))
    for _piece in handle:
        cancel.set()
    result = handle.result()
    assert result.cancelled and result.completions[0].text == "word"
    assert peer.state.closed_early.wait(5), "the stream stayed open after the cancel"
    assert peer.state.events_sent < 40


def test_prefixes_of_a_result_decode_without_round_trips(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    handle = engine.submit(request(engine))
    list(handle)
    ids = handle.result().completions[0].token_ids
    before = peer.state.tokenizer_calls
    prefixes = [engine.decode(ids[:end]) for end in range(len(ids), 0, -1)]
    assert prefixes == [TEXT[:end] for end in range(len(ids), 0, -1)]
    assert peer.state.tokenizer_calls == before


# -- failures ---------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_clear_line(peer: FakeOpenAIServer) -> None:
    url = peer.url
    peer.stop()
    with pytest.raises(BackendError, match=r"cannot reach the model server at .*: is it running\?") as caught:
        RemoteEngine.connect(f"openai:{url}")
    assert "\n" not in str(caught.value)


def test_a_5xx_is_one_clear_line(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.fail_status = 500
    with pytest.raises(BackendError, match=r"failed \(HTTP 500\): .*the model crashed"):
        list(engine.submit(request(engine)))


def test_a_drop_mid_stream_is_one_clear_line(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.drop_after = 3
    with pytest.raises(BackendError, match="dropped the connection mid-turn"):
        list(engine.submit(request(engine)))


@pytest.mark.parametrize("failure", ["gone", "drop", "500"])
def test_a_failing_server_leaves_the_story_as_it_was(
    peer: FakeOpenAIServer, engine: RemoteEngine, failure: str
) -> None:
    session = make_session(engine, model_name=f"openai:{peer.url}")
    assert only(run(session, "look around"), EventKind.RESULT).text
    story, saved = session.story.to_dict(), saved_story(session)
    if failure == "gone":
        peer.stop()
    elif failure == "drop":
        peer.state.drop_after = 2
    else:
        peer.state.fail_status = 503
    events = run(session, "open the door")
    error = only(events, EventKind.ERROR).text
    assert re.search(r"model server at http://127\.0\.0\.1:\d+/v1", error) and "\n" not in error
    assert EventKind.RESULT not in [e.kind for e in events]
    assert session.story.to_dict() == story
    assert saved_story(session) == saved


def test_a_session_plays_turns_on_the_remote_engine(peer: FakeOpenAIServer, engine: RemoteEngine) -> None:
    peer.state.script = ["You find a narrow stair. It winds down into the dark."]
    session = make_session(engine, model_name=f"openai:{peer.url}")
    run(session, "look around")
    peer.state.script = ["The stair ends at an iron gate. Beyond it, water drips."]
    run(session, "go down the stair")
    results = [t.result for t in session.story.path() if t.result]
    assert results[-2:] == [
        "You find a narrow stair. It winds down into the dark.",
        "The stair ends at an iron gate. Beyond it, water drips.",
    ]
    # The second window holds the first result: the game fed it back as the server's own ids.
    second_prompt = "".join(chr(i) for i in peer.state.requests[-1]["prompt"])
    assert "You find a narrow stair." in second_prompt and "go down the stair" in second_prompt
    assert len(peer.state.requests) == 2  # one candidate a turn by default on a remote server


# -- the command line -------------------------------------------------------------------------


def test_doctor_and_models_show_the_remote_model(peer: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", f"openai:{peer.url}", "doctor"]) == 0
    out = capsys.readouterr().out
    assert "fake-model" in out and peer.url in out and "512 tokens" in out
    assert main(["--model", f"openai:{peer.url}", "models"]) == 0
    assert "fake-model" in capsys.readouterr().out


def test_doctor_says_when_the_remote_model_is_unreachable(
    peer: FakeOpenAIServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: the message is not wrapped
    url = peer.url
    peer.stop()
    time.sleep(0.05)
    assert main(["--model", f"openai:{url}", "doctor"]) == 0
    assert f"cannot reach the model server at {url}: is it running?" in capsys.readouterr().out


def play_piped(url: str) -> subprocess.CompletedProcess[str]:
    """`aidungeon --model openai:URL` through a pipe, as a player runs it: one action, then /quit."""
    return subprocess.run(
        [sys.executable, "-m", "aidungeon", "--model", f"openai:{url}", "--prompt", "You stand in a cave."],
        input="look around\n/quit\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"},
        cwd=REPO,
    )


def test_the_terminal_game_plays_on_a_remote_server(peer: FakeOpenAIServer) -> None:
    """`aidungeon --model openai:URL` through a pipe, as a player runs it: a turn, then /quit."""
    peer.state.script = ["A cold wind blows through the cave. Somewhere, water drips."]
    played = play_piped(peer.url)
    assert played.returncode == 0, played.stdout + played.stderr
    assert "A cold wind blows through the cave." in played.stdout
    assert "Traceback" not in played.stdout + played.stderr
    *_, last = peer.state.requests  # the opening's continuation first, then the action's turn
    assert "You look around." in "".join(chr(i) for i in last["prompt"])


def test_the_terminal_game_says_when_the_server_is_not_there(peer: FakeOpenAIServer) -> None:
    url = peer.url
    peer.stop()
    played = play_piped(url)
    assert played.returncode == 1
    assert played.stderr.strip() == f"aidungeon: cannot reach the model server at {url}: is it running? " + (
        "([Errno 111] Connection refused)"
    )
