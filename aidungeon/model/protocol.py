"""The engine protocol: what a game needs from a model, modelled on vLLM's engine client.

A caller `submit`s a `Request` (token ids, sampling, how many candidates, a stop rule, a seed and
a cancel token) and gets a `Handle`: iterating it streams candidate 0's text, then `result()`
gives every candidate with its token ids, mean log-probability and stop reason, and what the
generation cost. Setting the request's cancel token stops it between decode steps.

This module imports no torch, so the game, tests and a server can depend on it alone. It does
not build prompts, clean text or choose between candidates.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling

# Given the text generated so far, where to cut it (a stop rule fired) or None to go on.
StopRule = Callable[[str], "int | None"]


class StopReason(enum.StrEnum):
    EOS = "eos"
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass
class GenerationStats:
    """What one generation cost, for the status line and the benchmark."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    decode_s: float = 0.0

    @property
    def prefill_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    @property
    def cache_hit(self) -> bool:
        """Most of the prompt came from the cache (a full re-encode is a miss)."""
        return self.prompt_tokens > 0 and self.reused_tokens >= self.prompt_tokens // 2

    @property
    def decode_tok_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


@dataclass
class Completion:
    """One generated continuation, already cut at its stop rule. `token_logprobs` holds each of
    `token_ids`' log-probability under the model (before sampling's warping), where the engine
    reports them; the ids may run past a stop's cut."""

    text: str
    token_ids: list[int]
    mean_logprob: float
    stop_reason: StopReason
    token_logprobs: list[float] = field(default_factory=list)


@dataclass
class Result:
    """A finished request: its completions (candidate 0 is the one that streamed) and its cost."""

    completions: list[Completion] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)

    @property
    def cancelled(self) -> bool:
        return any(c.stop_reason is StopReason.CANCELLED for c in self.completions)


@dataclass(frozen=True)
class Request:
    """One prompt to continue. `session` names whose cache it may reuse; `reuse_cache=False`
    re-encodes the whole prompt (the benchmark's naive mode)."""

    session: str
    prompt_ids: tuple[int, ...]
    sampling: Sampling
    cancel: CancelToken
    n: int = 1
    stop: StopRule | None = None
    seed: int | None = None
    reuse_cache: bool = True


def check_request(request: Request, window: int) -> None:
    """ValueError for a request no engine can run: empty, no candidates, or too long for `window`."""
    if not request.prompt_ids:
        raise ValueError("the prompt is empty")
    if request.n < 1:
        raise ValueError(f"n must be at least 1, got {request.n}")
    if len(request.prompt_ids) + request.sampling.max_new_tokens > window:
        raise ValueError(f"prompt of {len(request.prompt_ids)} tokens leaves no room in a {window}-token window")


class Handle(Protocol):
    """A submitted request: iterate for the streamed pieces, then read the result."""

    def __iter__(self) -> Iterator[str]: ...

    def result(self) -> Result:
        """The completions and stats; only once the stream is exhausted."""
        ...


class EngineProtocol(Protocol):
    """A model that continues token ids: the real engine, a remote one, or a scripted fake."""

    @property
    def window(self) -> int: ...

    @property
    def device_type(self) -> str:
        """ "cpu", "cuda", "mps": how many candidates a turn draws by default depends on it."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def submit(self, request: Request) -> Handle: ...

    def likelihoods(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float] | None:
        """Each continuation's summed log-probability after `prompt`, or None where the engine
        cannot tell (a remote server): the game then ranks its candidates without it."""
        ...
