"""A scripted engine that implements `aidungeon.model.protocol.EngineProtocol` without a model.

Each `submit` takes the next entry of the script: a text (every candidate gets it) or a list of
texts (one per candidate, the last repeated). Past the script it writes varied, distinct
sentences, so a long game neither loops nor stalls. The tokenizer is one id per character, so
`decode(encode(text)) == text` for any text. Like the real engine it streams candidate 0 word by
word, cuts every candidate at the request's stop rule, stops when the cancel token is set
(between pieces, reason CANCELLED) and reports stats with the cache reuse a real engine would
have. `oom` makes chosen requests raise `OutOfMemoryError` while streaming, as a GPU would.
`scores`, when given, answers `likelihoods` from the decoded prompt and continuation (each call
kept in `scored`); without it the engine cannot score, as a remote one. Every request is kept in
`requests`, for assertions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from aidungeon.core.errors import OutOfMemoryError
from aidungeon.model.protocol import Completion, GenerationStats, Request, Result, StopReason

THINGS = ("lantern", "raven", "old map", "iron gate", "river", "stranger", "torch", "bell")
DEEDS = ("flickers beside you", "cries out in the hall", "creaks far below", "rushes north", "waits by the fire")
WEATHER = ("Rain falls", "A cold wind blows", "Fog rolls in")
SOUNDS = (
    "while a dog barks",
    "as bells ring far off",
    "and smoke drifts over the roofs",
    "while boots scrape on stone",
    "as a door slams somewhere",
    "and gulls cry overhead",
    "while the fire crackles",
)


def scripted_text(call: int) -> str:
    """Two sentences no other call within twenty shares, and under half alike (cleanup.similarity)
    any of the six before: a game of them never repeats itself, not even as a template."""
    return f"The {THINGS[call % 8]} {DEEDS[call % 5]}. {WEATHER[call % 3]} {SOUNDS[call % 7]}."


@dataclass
class FakeHandle:
    """The handle of one fake request."""

    engine: FakeEngine
    request: Request
    texts: list[str]
    fail: bool
    _result: Result | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __iter__(self) -> Iterator[str]:
        if self.fail:
            raise OutOfMemoryError("the cuda ran out of memory while generating")
        completions = [self._completion(text) for text in self.texts]
        shown = completions[0].text
        streamed = 0
        for number, word in enumerate(re.findall(r"\s*\S+", shown), start=1):
            if self.request.cancel.is_set():
                completions = [self._cut(c, streamed) for c in completions]
                break
            streamed += len(word)
            yield word
            if self.engine.cancel_after_pieces == number:
                self.request.cancel.set()
        self.stats.new_tokens = len(completions[0].token_ids)
        self._result = Result(completions=completions, stats=self.stats)

    def _completion(self, text: str) -> Completion:
        text = text[: self.request.sampling.max_new_tokens * 8]
        reason = StopReason.EOS
        if self.request.stop is not None:
            for end in range(1, len(text) + 1):  # as a real engine sees it: the text so far, step by step
                cut = self.request.stop(text[:end])
                if cut is not None:
                    text, reason = text[:cut], StopReason.STOP
                    break
        return Completion(text=text, token_ids=self.engine.encode(text), mean_logprob=-1.0, stop_reason=reason)

    def _cut(self, completion: Completion, streamed: int) -> Completion:
        text = completion.text[:streamed]
        return Completion(text, self.engine.encode(text), completion.mean_logprob, StopReason.CANCELLED)

    def result(self) -> Result:
        if self._result is None:
            raise RuntimeError("read the result after the stream has ended")
        return self._result


class FakeEngine:
    """Scripted continuations; see the module docstring."""

    def __init__(
        self,
        script: Sequence[str | Sequence[str]] = (),
        *,
        window: int = 1024,
        device_type: str = "cpu",
        oom: Callable[[Request], bool] | None = None,
        cancel_after_pieces: int | None = None,
        scores: Callable[[str, str], float] | None = None,
    ) -> None:
        self.script = list(script)
        self.window = window
        self.device_type = device_type
        self.oom = oom
        self.cancel_after_pieces = cancel_after_pieces
        self.scores = scores  # (prompt, continuation) -> log-probability; None: cannot score
        self.scored: list[tuple[str, list[str]]] = []
        self.requests: list[Request] = []
        self._cached: tuple[int, ...] = ()

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def likelihoods(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float] | None:
        if self.scores is None:
            return None
        text, rows = self.decode(list(prompt)), [self.decode(list(c)) for c in continuations]
        self.scored.append((text, rows))
        return [self.scores(text, row) for row in rows]

    def submit(self, request: Request) -> FakeHandle:
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        if len(request.prompt_ids) + request.sampling.max_new_tokens > self.window:
            raise ValueError(
                f"prompt of {len(request.prompt_ids)} tokens leaves no room in a {self.window}-token window"
            )
        call = len(self.requests)
        self.requests.append(request)
        entry = self.script[call] if call < len(self.script) else scripted_text(call)
        texts = [entry] if isinstance(entry, str) else list(entry)
        texts = [texts[min(k, len(texts) - 1)] for k in range(request.n)]
        fail = self.oom is not None and self.oom(request)
        reused = _common_prefix(self._cached, request.prompt_ids) if request.reuse_cache else 0
        self._cached = request.prompt_ids
        stats = GenerationStats(prompt_tokens=len(request.prompt_ids), reused_tokens=reused)
        return FakeHandle(self, request, texts, fail, stats=stats)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
