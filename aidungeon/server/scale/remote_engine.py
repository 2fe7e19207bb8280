"""The engine protocol over a Ray Serve deployment handle: what a game API replica plays on.

`RayEngine.submit` streams the request from the Engine deployment (`handle.options(stream=True)`)
and hands its pieces to the turn, which iterates from a worker thread of the server's pool: Ray
runs the handle's router on its own event loop, so blocking iteration from a plain thread is the
supported sync use, and the replica's event loop is never blocked.

Faults: if the replica dies mid-turn, the request is sent again (the router then skips the dead
replica) with the same seed, up to `MAX_TRIES` times. A seeded request gives the same text on any
replica, so the player sees the stream pause and go on: the pieces already shown are not shown
again. Were the new text to differ (rounding can flip a token), the turn's result, which the
game saves before it shows, still replaces the preview. Nothing the player saw is lost.

Cancel: the caller's token is checked at every piece; when set, the remote call is cancelled
(the replica sets its own token and the engine drops the job at its next step) and the result is
a cancelled one. Encoding and decoding use the engine's tokenizer, fetched once, locally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from aidungeon.core.errors import AIDungeonError, ModelError
from aidungeon.model.protocol import Completion, GenerationStats, Request, Result, StopReason
from aidungeon.server.scale.wire import request_to_wire, result_from_wire

log = logging.getLogger(__name__)

# Tries of one request across replicas, and the pause before each retry (the router learns of a
# dead replica from the failed call and from the controller within a second or two).
MAX_TRIES = 4
RETRY_PAUSE_S = 0.5
# Exceptions that mean "that replica is gone", not "this request is wrong".
_REPLICA_LOST: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError)


class RayEngine:
    """EngineProtocol on the Engine deployment; `info` is what its `describe()` returned."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        self._handle = handle.options(stream=True)
        self._tokenizer = info["tokenizer"]
        self._window = int(info["window"])
        self._device_type = str(info["device_type"])
        self.retries = 0  # requests sent again after a replica was lost (for logs and tests)

    @property
    def window(self) -> int:
        return self._window

    @property
    def device_type(self) -> str:
        return self._device_type

    def likelihoods(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float] | None:
        return None  # a served game draws one candidate a turn: nothing to rank

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def submit(self, request: Request) -> RayHandle:
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        return RayHandle(self, request)

    def _call(self, request: Request) -> Any:
        return self._handle.generate.remote(request_to_wire(request))


class RayHandle:
    """One request in flight on the deployment: iterate for pieces, then `result()`."""

    def __init__(self, engine: RayEngine, request: Request) -> None:
        self._engine, self._request = engine, request
        self._result: Result | None = None
        self._shown = ""  # candidate 0's text the player has seen, across retries

    def __iter__(self) -> Iterator[str]:
        for attempt in range(MAX_TRIES):
            if attempt:
                self._engine.retries += 1
                time.sleep(RETRY_PAUSE_S * attempt)
            try:
                yield from self._attempt()
                return
            except _REPLICA_LOST as err:
                log.warning("engine replica lost mid-turn (try %d of %d): %s", attempt + 1, MAX_TRIES, _line(err))
            except RayTaskError as err:
                raise _cause(err) from None
        raise ModelError(f"the engine failed {MAX_TRIES} times in a row; your story is saved, try again shortly")

    def _attempt(self) -> Iterator[str]:
        text = ""
        stream = self._engine._call(self._request)
        for message in stream:
            if self._request.cancel.is_set():
                stream.cancel()
                self._result = self._cancelled(text)
                return
            if "result" in message:
                self._result = result_from_wire(message["result"])
                return
            text += message["piece"]
            if len(text) > len(self._shown):
                piece, self._shown = text[len(self._shown) :], text
                yield piece
        raise ModelError("the engine's stream ended without a result")

    def _cancelled(self, text: str) -> Result:
        completion = Completion(text=text, token_ids=[], mean_logprob=0.0, stop_reason=StopReason.CANCELLED)
        return Result(completions=[completion], stats=GenerationStats(prompt_tokens=len(self._request.prompt_ids)))

    def result(self) -> Result:
        if self._result is None:
            raise RuntimeError("result() before the stream was read to its end")
        return self._result


def _cause(err: RayTaskError) -> BaseException:
    """The replica's own exception: the game's errors keep their class (and HTTP status)."""
    cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else None
    if isinstance(cause, (AIDungeonError, ValueError)):
        return cause
    return ModelError(f"the engine failed: {_line(err)}")


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
