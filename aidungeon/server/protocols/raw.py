"""Raw-text generation on the server's engine: what the KoboldAI and OpenAI routes share.

A raw request is a prompt text, sampling, stop sequences and a seed, continued by the same
batching engine the stories play on (`state.games.model.engine`). This module turns prompts into
token ids that fit the window (`fit_prompt`), stop sequences into the engine's stop rule, holds
back streamed text that may turn out to be a stop sequence (`StopHold`), admits each generation
through the server's one bounded queue (503 when full) and runs it in the server's pool with a
cancel token that an abort by genkey or a client that goes away sets (`start`).

Sessions: the engine keeps a KV cache per session id and reuses a new prompt's longest common
prefix with it. KoboldAI Lite and SillyTavern resend the whole growing story each time, so the
routes name one session per caller and protocol (see `session_id`); two requests of one session
at once are safe, as the engine hands a session's cache to one request at a time.

It knows no protocol's wire format, and plays no story.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from fastapi import Request as HttpRequest

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling
from aidungeon.model.protocol import EngineProtocol, Request, Result, StopRule
from aidungeon.server.access import Caller
from aidungeon.server.bridge import ThreadStream
from aidungeon.server.protocols.errors import ProtocolError
from aidungeon.server.state import ServerState

log = logging.getLogger(__name__)

# The engine's (and the game's) longest continuation; longer asks are clamped to it.
MAX_NEW_TOKENS = 1024
# How often an answer that does not stream checks that its client is still there.
DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class RawJob:
    """One raw generation, ready for the engine."""

    session: str
    prompt_ids: tuple[int, ...]
    sampling: Sampling
    n: int = 1
    stops: tuple[str, ...] = ()
    keep_stop: bool = False  # the stop sequence stays at the end of the text
    seed: int | None = None


@dataclass
class Finished:
    """The end of a generation: every completion, and candidate 0's text not yet streamed."""

    result: Result
    tail: str


def model_name(state: ServerState) -> str:
    """The model's name as clients see it: a local folder or file by its last part only."""
    name = state.games.model.name
    return PurePath(name).name if PurePath(name).is_absolute() else name


def session_id(protocol: str, who: Caller, client_key: str = "") -> str:
    """One engine session per caller (and per client key, such as OpenAI's `user`), so a client
    that resends its growing prompt prefills only what is new."""
    return f"{protocol}:{who.key}:{client_key}" if client_key else f"{protocol}:{who.key}"


def fit_prompt(
    engine: EngineProtocol, prompt: str, *, memory: str = "", context: int, max_new: int
) -> tuple[tuple[int, ...], int]:
    """The ids of `memory` + `prompt` cut to fit `context` tokens with room for the answer, keeping
    the memory and the end of the prompt (koboldcpp's rule), and the new-token count, clamped to
    leave at least one prompt token. ProtocolError when there is nothing to continue."""
    context = max(2, min(context, engine.window))
    max_new = max(1, min(max_new, MAX_NEW_TOKENS, context - 1))
    budget = context - max_new
    memory_ids = engine.encode(memory) if memory else []
    prompt_ids = engine.encode(prompt) if prompt else []
    memory_ids = memory_ids[len(memory_ids) - budget :] if len(memory_ids) > budget else memory_ids
    room = budget - len(memory_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - room :] if len(prompt_ids) > room else prompt_ids
    ids = tuple(memory_ids + prompt_ids)
    if not ids:
        raise ProtocolError("the prompt is empty; send some text to continue")
    return ids, max_new


def exact_prompt(engine: EngineProtocol, prompt: str, *, max_new: int) -> tuple[int, ...]:
    """The ids of `prompt`, refused (not cut) when it and `max_new` tokens exceed the window, as
    OpenAI-style servers do."""
    ids = tuple(engine.encode(prompt))
    if not ids:
        raise ProtocolError("the prompt is empty; send some text to continue")
    if len(ids) + max_new > engine.window:
        raise ProtocolError(
            f"this model's context is {engine.window} tokens, but the prompt has {len(ids)} and "
            f"max_tokens asks for {max_new}; shorten the prompt or lower max_tokens"
        )
    return ids


def stop_rule(stops: Sequence[str], *, keep: bool) -> StopRule | None:
    """The engine's stop rule for stop sequences: cut at the earliest one found (after it when
    `keep`); None when there are none. Empty strings are ignored (they would stop at once)."""
    wanted = tuple(s for s in stops if s)
    if not wanted:
        return None

    def rule(text: str) -> int | None:
        found = [(at, at + len(s) if keep else at) for s in wanted if (at := text.find(s)) >= 0]
        return min(found)[1] if found else None

    return rule


class StopHold:
    """Streamed text, minus any tail that may be the start of a stop sequence: a client shown
    "\\nYo" cannot take it back when "\\nYou:" turns out to be the stop."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.sent = 0

    def push(self, piece: str) -> str:
        """What of the text so far may be shown now."""
        self.text += piece
        safe = max(self.sent, len(self.text) - self._held())
        out, self.sent = self.text[self.sent : safe], safe
        return out

    def finish(self, final: str) -> str:
        """What is left to show of `final`, the completion as the engine cut it."""
        shown = self.text[: self.sent]
        if not final.startswith(shown):  # the pieces and the final text disagree: show nothing twice
            log.warning("streamed text %r is not a prefix of the completion %r", shown[-40:], final[-40:])
            return ""
        return final[len(shown) :]

    def _held(self) -> int:
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:k]):
                    longest = k
                    break
        return longest


class Generations:
    """The raw generations running now, by caller and genkey: how an abort finds its target.
    Callers are kept apart: one player's abort never reaches another's generation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], CancelToken] = {}

    def add(self, owner: str, genkey: str) -> CancelToken:
        """The new generation's cancel token; ProtocolError when the genkey is taken."""
        with self._lock:
            if (owner, genkey) in self._running:
                raise ProtocolError(f"a generation with genkey {genkey!r} is already running")
            cancel = self._running[(owner, genkey)] = CancelToken()
            return cancel

    def remove(self, owner: str, genkey: str) -> None:
        with self._lock:
            self._running.pop((owner, genkey), None)

    def abort(self, owner: str, genkey: str = "") -> bool:
        """Cancel the caller's generation `genkey`, or all of the caller's without one."""
        with self._lock:
            chosen = [r for (o, k), r in self._running.items() if o == owner and (not genkey or k == genkey)]
        for cancel in chosen:
            cancel.set()
        return bool(chosen)


async def generations(request: HttpRequest) -> Generations:
    """The app's registry (made on first use; async, so only the event loop's thread touches it)."""
    registry = getattr(request.app.state, "raw_generations", None)
    if registry is None:
        registry = request.app.state.raw_generations = Generations()
    assert isinstance(registry, Generations)
    return registry


def start(
    state: ServerState, registry: Generations, who: Caller, job: RawJob, genkey: str
) -> ThreadStream[str | Finished]:
    """Admit `job` to the server's queue (Overloaded, a 503, when it is full) and run it in the
    server's pool: a stream of text pieces (str), then one `Finished`."""
    state.queue.admit()
    try:
        cancel = registry.add(who.key, genkey)
    except BaseException:
        state.queue.done()
        raise
    engine = state.games.model.engine

    def done() -> None:
        registry.remove(who.key, genkey)
        state.queue.done()

    return ThreadStream(state.pool, lambda: generate(engine, job, cancel), cancel, on_done=done)


def generate(engine: EngineProtocol, job: RawJob, cancel: CancelToken) -> Iterator[str | Finished]:
    """Candidate 0's pieces as they may be shown, then `Finished` (blocking; runs in a worker)."""
    request = Request(
        session=job.session,
        prompt_ids=job.prompt_ids,
        sampling=job.sampling,
        cancel=cancel,
        n=job.n,
        stop=stop_rule(job.stops, keep=job.keep_stop),
        seed=job.seed,
    )
    handle = engine.submit(request)
    hold = StopHold(job.stops)
    for piece in handle:
        if shown := hold.push(piece):
            yield shown
    result = handle.result()
    yield Finished(result, hold.finish(result.completions[0].text))


async def collect(stream: ThreadStream[str | Finished], request: HttpRequest) -> Finished:
    """The end of a generation, for answers that do not stream. A client that goes away before it
    (an HTTP client's timeout, a closed tab) cancels the generation, as a streaming one does, so
    it does not hold its place in the queue to the end."""
    reading = asyncio.ensure_future(_last(stream))
    try:
        while not reading.done():
            await asyncio.wait({reading}, timeout=DISCONNECT_POLL_S)
            if not reading.done() and await request.is_disconnected():
                stream.cancel.set()
        return reading.result()
    finally:
        reading.cancel()  # only matters when this handler itself is cancelled


async def _last(stream: ThreadStream[str | Finished]) -> Finished:
    finished = None
    async for item in stream.items():
        if isinstance(item, Finished):
            finished = item
    if finished is None:
        raise RuntimeError("the generation ended without a result")
    return finished
