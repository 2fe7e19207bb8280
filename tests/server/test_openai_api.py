"""OpenAI completions on `aidungeon serve`, driven by the official `openai` client.

The first group runs a real uvicorn server on a loopback port over the tiny real model (a random
GPT-2 with a trained tokenizer), so token ids, seeds and log-probabilities are the engine's own;
the log-probabilities are checked against a plain forward pass of the model. The second group
runs the app in-process on the scripted engine (the client takes the test client as its HTTP
client) for the shapes that need a controlled text: n > 1 streams, best_of, echo, errors, tokens.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient

from aidungeon.core.config import Config, Sampling
from aidungeon.model.engine import Engine
from aidungeon.server.app import create_app
from aidungeon.server.db import open_database
from aidungeon.server.games import GameModel, Games
from aidungeon.server.limits import Limits
from aidungeon.server.protocols import CORS_PATHS, routers
from aidungeon.server.protocols.openai_schemas import CompletionBody
from aidungeon.server.state import ServerState
from tests.server.conftest import Server, make_server
from tests.support.fake_engine import scripted_text

PROMPT = "You stand at the mouth of a dark cave. A cold wind blows."
# Many requests in a row from one caller: the game's turn rate is not what these tests check.
UNLIMITED = Limits(turns_per_minute=100_000, turn_burst=10_000)


@dataclass
class Live:
    url: str
    state: ServerState
    engine: Engine

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="any", max_retries=0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def live(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from aidungeon.model.loader import load_model
    from aidungeon.storage.paths import default_paths

    home = tmp_path_factory.mktemp("openai-home")
    loaded = load_model(
        str(tiny_model_dir), default_paths({"AIDUNGEON_HOME": str(home)}), device="cpu", dtype="float32"
    )
    engine = Engine.for_model(loaded, cache_budget_bytes=64 << 20)
    db = open_database(f"sqlite:///{home / 'server.db'}")
    games = Games(db, GameModel(engine=engine, name="tiny", layout=loaded.layout), Config())
    state = ServerState(db=db, games=games, limits=UNLIMITED)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(state, routers=routers(), cors_paths=CORS_PATHS), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", state, engine)
    server.should_exit = True
    thread.join(10)
    sock.close()
    db.dispose()


@pytest.mark.slow  # the tiny real model behind a real server
def test_the_client_lists_the_one_model(live: Live) -> None:
    (model,) = live.client().models.list().data
    assert model.id == "tiny" and model.object == "model"


@pytest.mark.slow  # the tiny real model behind a real server
def test_a_seed_reproduces_the_choices_and_n_draws_several(live: Live) -> None:
    client = live.client()
    ask = {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0.9, "n": 3}
    first = client.completions.create(**ask, seed=11)  # type: ignore[call-overload]
    again = client.completions.create(**ask, seed=11)  # type: ignore[call-overload]
    other = client.completions.create(**ask, seed=12)  # type: ignore[call-overload]
    texts = [c.text for c in first.choices]
    assert len(texts) == 3 and [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]
    assert texts != [c.text for c in other.choices]
    assert len(set(texts)) > 1  # each candidate samples its own tokens
    assert first.usage is not None and first.usage.prompt_tokens == len(live.engine.encode(PROMPT))
    assert first.object == "text_completion" and first.model == "tiny"


@pytest.mark.slow  # the tiny real model behind a real server
def test_logprobs_are_the_models_own_for_each_token(live: Live) -> None:
    import torch

    engine = live.engine
    answer = live.client().completions.create(
        model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1, user="logprob-check"
    )
    (choice,) = answer.choices
    logprobs = choice.logprobs
    assert logprobs is not None and choice.finish_reason in ("stop", "length")
    tokens, values, offsets = logprobs.tokens or [], logprobs.token_logprobs or [], logprobs.text_offset or []
    assert tokens and len(tokens) == len(values) == len(offsets)
    # The same greedy continuation, straight from the engine, gives the token ids.
    prompt_ids = engine.encode(PROMPT)
    greedy = Sampling(temperature=0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=8)
    (direct,) = engine.generate(prompt_ids, greedy, session="direct").run()
    assert direct.text == choice.text
    ids = direct.token_ids[: len(tokens)]
    assert tokens == [engine.decode([i]) for i in ids]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    # Each token's log-probability under a plain forward pass of the whole sequence.
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([prompt_ids + ids])).logits[0].float()
    scores = torch.log_softmax(logits, dim=-1)
    expected = [scores[len(prompt_ids) - 1 + k, token].item() for k, token in enumerate(ids)]
    assert values == pytest.approx(expected, abs=2e-3)
    # Only the sampled token is listed: the engine keeps no ranking of the alternatives.
    assert logprobs.top_logprobs == [{t: v} for t, v in zip(tokens, values, strict=True)]


@pytest.mark.slow  # the tiny real model behind a real server
def test_a_stop_sequence_cuts_the_text_where_it_starts(live: Live) -> None:
    client = live.client()
    ask = {"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "user": "stops"}
    full = client.completions.create(**ask).choices[0].text  # type: ignore[call-overload]
    assert len(full) > 8
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = client.completions.create(**ask, stop=[stop, "never appears"]).choices[0]  # type: ignore[call-overload]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    kept = client.completions.create(**ask, stop=stop, extra_body={"include_stop_str_in_output": True})  # type: ignore[call-overload]
    assert kept.choices[0].text == full[: full.find(stop) + len(stop)]


@pytest.mark.slow  # the tiny real model behind a real server
def test_streaming_gives_the_same_text_piece_by_piece(live: Live) -> None:
    client = live.client()
    ask = {"model": "tiny", "prompt": PROMPT, "max_tokens": 16, "temperature": 0.8, "seed": 3}
    whole = client.completions.create(**ask).choices[0]  # type: ignore[call-overload]
    chunks = list(client.completions.create(**ask, stream=True, stream_options={"include_usage": True}))  # type: ignore[call-overload]
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert len(pieces) > 2 and "".join(pieces) == whole.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.slow  # the tiny real model behind a real server
def test_a_prompt_longer_than_the_window_is_refused_in_openais_shape(live: Live) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        live.client().completions.create(model="tiny", prompt="the cave " * 2000, max_tokens=16)
    body = refused.value.body
    assert isinstance(body, dict) and body["message"].startswith("this model's context is 1024 tokens")
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", None, None)


# -- the scripted engine, in-process ----------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[openai.OpenAI, Server]]:
    made = make_server(tmp_path, UNLIMITED)
    with TestClient(create_app(made.state, routers=routers(), cors_paths=CORS_PATHS)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0), made
    made.state.db.dispose()


def test_n_choices_stream_candidate_zero_then_the_others_whole(fake: tuple[openai.OpenAI, Server]) -> None:
    client, made = fake
    made.engine.script = [["The door opens.", "A bell rings.", "Rain falls."]]
    chunks = list(client.completions.create(model="x", prompt="Go.", n=3, stream=True, max_tokens=40))
    by_index: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + choice.text
    assert by_index == {0: "The door opens.", 1: "A bell rings.", 2: "Rain falls."}
    assert made.engine.requests[0].n == 3


def test_best_of_keeps_the_likeliest_and_echo_prepends_the_prompt(fake: tuple[openai.OpenAI, Server]) -> None:
    client, made = fake
    answer = client.completions.create(model="x", prompt="Go. ", n=1, best_of=2, echo=True, max_tokens=40)
    (choice,) = answer.choices
    assert choice.text == "Go. " + scripted_text(0) and made.engine.requests[0].n == 2
    assert answer.usage is not None and answer.usage.prompt_tokens == 4
    with pytest.raises(openai.BadRequestError, match="best_of cannot stream"):
        client.completions.create(model="x", prompt="Go.", best_of=2, stream=True)


def test_bad_values_and_token_prompts_are_refused_clearly(fake: tuple[openai.OpenAI, Server]) -> None:
    client, made = fake
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.completions.create(model="x", prompt="Go.", temperature=7)
    with pytest.raises(openai.BadRequestError, match="prompt must be one text"):
        client.completions.create(model="x", prompt=[1, 2, 3])
    with pytest.raises(openai.UnprocessableEntityError, match="repetition_penalty"):
        client.completions.create(model="x", prompt="Go.", extra_body={"repetition_penalty": 0.5})
    assert made.engine.requests == []
    assert made.state.queue.admitted == 0


def test_a_full_queue_is_a_503_and_a_player_needs_their_token(fake: tuple[openai.OpenAI, Server]) -> None:
    client, made = fake
    for _ in range(made.state.queue.capacity):
        made.state.queue.admit()
    with pytest.raises(openai.InternalServerError) as busy:
        client.completions.create(model="x", prompt="Go.")
    assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "2"
    assert json.loads(busy.value.response.text)["error"]["code"] == "server_overloaded"
    for _ in range(made.state.queue.capacity):
        made.state.queue.done()
    token = made.state.players.add("ann")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    mine = client.with_options(api_key=token)
    assert mine.completions.create(model="x", prompt="Go.", max_tokens=4, user="u1").choices[0].text
    assert made.engine.requests[-1].session.endswith(":u1")  # the `user` field keeps its own cache


def test_the_penalty_covers_the_whole_prompt_as_openai_servers_do() -> None:
    sampling = CompletionBody(prompt="Go.", repetition_penalty=1.2).sampling(max_new=16, window=2048)
    assert (sampling.repetition_penalty, sampling.repetition_range, sampling.repetition_slope) == (1.2, 2048, 0.0)
    assert sampling.repetition_scope == "story"  # not the game's turn-only scope, whatever its default
