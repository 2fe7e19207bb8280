"""An OpenAI-compatible completions server as the game's engine: `--model openai:URL[#MODEL]`.

`RemoteEngine` implements the engine protocol (`protocol.py`) over a server's `/v1/completions`
stream: vLLM, SGLang, the llama.cpp server, llama-cpp-python, koboldcpp or another `aidungeon
serve`. At connect it asks the server which models it serves, its window (vLLM's
`max_model_len`, the llama.cpp server's `/props`, koboldcpp's true context length, else
DEFAULT_WINDOW) and finds its tokenizer endpoint (`remote_http.py`), so the game's token budget
is the server's own count. ChatML is chosen when the tokenizer reads `<|im_start|>` as one token.

The prompt goes as token ids where the server takes them (vLLM, SGLang, the llama.cpp server:
their `/tokenize` lives beside a completions route that accepts `prompt: [ids]`), so the server
sees exactly the window the game counted; elsewhere as the text those ids decode to, which the
server tokenizes again with the same tokenizer (llama-cpp-python's route takes only strings).

The game's stop rule runs here, on the streamed text; when it fires, or the cancel token is set,
the stream is closed, and closing it is what stops the server. Best-of-n asks for `n` at once; a
server that answers fewer choices (llama-cpp-python ignores `n`) gets the rest asked one by one,
each with its own seed; log-probabilities, which rank them, are asked for only then. Servers
do not return the generated ids, so a completion's ids are its text tokenized by the server.
Every failure on the wire is a `BackendError`. It does not build prompts, clean text or choose
between candidates; the game does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aidungeon.core.config import Sampling
from aidungeon.core.context import CHATML, PLAIN, Layout
from aidungeon.core.errors import BackendError, ConfigError
from aidungeon.model.protocol import Completion, GenerationStats, Request, Result, StopReason, StopRule, check_request
from aidungeon.model.remote_http import EventStream, RemoteTokenizer, Wire

log = logging.getLogger(__name__)

SCHEME = "openai:"
# The window when the server does not say: llama-cpp-python's default n_ctx. `/set
# context_tokens` lowers what the game uses.
DEFAULT_WINDOW = 2048
# The key sent as `Authorization: Bearer`, when the server wants one.
API_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class RemoteSpec:
    """`openai:URL[#MODEL]`: the server's OpenAI root (ending in /v1) and the model to ask for."""

    base: str
    model: str | None = None

    @property
    def label(self) -> str:
        return f"{SCHEME}{self.base}" + (f"#{self.model}" if self.model else "")


def is_remote(spec: str | None) -> bool:
    return bool(spec) and str(spec).strip().lower().startswith(SCHEME)


def parse_spec(spec: str) -> RemoteSpec:
    """`openai:http://host:port[/v1][#model]`; a URL without /v1 gets it."""
    rest = spec.strip()[len(SCHEME) :]
    url, _, model = rest.partition("#")
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
        raise ConfigError(f"{spec!r} is not a server: write openai:http://HOST:PORT/v1[#MODEL]")
    if not url.endswith("/v1"):
        url += "/v1"
    return RemoteSpec(base=url, model=model.strip() or None)


class RemoteEngine:
    """Continues token ids on a remote server; many sessions may share one (it keeps no state
    per session: the server's own prefix cache reuses what it can)."""

    def __init__(
        self, spec: RemoteSpec, wire: Wire, tokenizer: RemoteTokenizer, *, model: str, window: int, layout: Layout
    ) -> None:
        self.spec = spec
        self.wire = wire
        self.tokenizer = tokenizer
        self.model = model
        self.server_window = window
        self.layout = layout
        self.ids_prompt = tokenizer.dialect.accepts_ids_prompt
        # Learnt from the server's answers: None until known.
        self.offers_n: bool | None = None
        self.offers_logprobs: bool | None = None

    @classmethod
    def connect(cls, spec: str | RemoteSpec, *, api_key: str | None = None) -> RemoteEngine:
        """Ask the server what it serves, its window and its tokenizer; BackendError if it cannot
        be reached or offers no tokenizer (the game needs one for an exact budget)."""
        parsed = parse_spec(spec) if isinstance(spec, str) else spec
        wire = Wire(parsed.base, api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV))
        try:
            listed = wire.get(parsed.base + "/models")
            entries = [e for e in (listed or {}).get("data", []) if isinstance(e, dict) and e.get("id")]
            model = _choose_model(parsed, entries)
            window = _server_window(wire, entries, model)
            tokenizer = RemoteTokenizer.find(wire, model)
            if tokenizer is None:
                raise BackendError(
                    f"the model server at {parsed.base} offers no tokenizer endpoint (/tokenize, "
                    "/extras/tokenize or /api/extra/tokencount); the game needs one to count its window"
                )
            layout = CHATML if len(tokenizer.encode("<|im_start|>")) == 1 else PLAIN
        except BaseException:
            wire.close()
            raise
        log.info("remote model %s at %s: window %d, tokenizer %s", model, parsed.base, window, tokenizer.dialect.name)
        return cls(parsed, wire, tokenizer, model=model, window=window, layout=layout)

    def close(self) -> None:
        self.wire.close()

    # -- the engine protocol ------------------------------------------------------------------

    @property
    def window(self) -> int:
        # A server that adds a BOS to a text prompt spends a token of the window on it.
        return self.server_window - (0 if self.ids_prompt else len(self.tokenizer.prefix))

    @property
    def device_type(self) -> str:
        return "remote"

    def likelihoods(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float] | None:
        return None  # a completions server samples; scoring would cost a request per candidate

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def submit(self, request: Request) -> RemoteGeneration:
        check_request(request, self.window)
        return RemoteGeneration(self, request)

    # -- what the server is asked -------------------------------------------------------------

    def body(self, request: Request, *, n: int, seed: int | None) -> dict[str, Any]:
        """The /v1/completions request for `n` choices of `request`."""
        prompt: list[int] | str = list(request.prompt_ids) if self.ids_prompt else self.decode(list(request.prompt_ids))
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "n": n, "stream": True}
        body.update(sampling_fields(request.sampling, off_top_k=-1 if self.ids_prompt else 0))
        if seed is not None:
            body["seed"] = seed
        if request.n > 1 and self.offers_logprobs is not False:
            # Only to rank candidates: one candidate needs none, and some servers pay dearly for
            # them (llama-cpp-python sorts the whole vocabulary in Python for every token).
            body["logprobs"] = 1
        return body

    def describe(self) -> list[tuple[str, str]]:
        """What `aidungeon doctor` shows of the server."""
        return [
            ("remote model", self.model),
            ("remote server", self.spec.base),
            ("remote window", f"{self.server_window} tokens"),
            ("remote tokenizer", f"{self.tokenizer.dialect.name} ({self.tokenizer.dialect.tokenize})"),
            ("remote prompt", "token ids" if self.ids_prompt else "text"),
            ("remote layout", self.layout.name),
        ]


def sampling_fields(sampling: Sampling, *, off_top_k: int) -> dict[str, Any]:
    """The game's sampling in the spellings servers read (vLLM's and llama.cpp's both: each
    ignores the other's). A top_k of 0 (off) is -1 for vLLM and the llama.cpp server. The
    narrator- and player-voice steps (`voice.py`) are logits processors the server would have to
    run; no server takes them, so on a remote engine they are skipped. Nor can a server keep its
    repetition penalty to the turn's own tokens (`repetition_scope`): it penalises the prompt too."""
    return {
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k or off_top_k,
        "repetition_penalty": sampling.repetition_penalty,
        "repeat_penalty": sampling.repetition_penalty,
        "repeat_last_n": sampling.repetition_range,
    }


def _choose_model(spec: RemoteSpec, entries: list[dict[str, Any]]) -> str:
    ids = [str(e["id"]) for e in entries]
    if spec.model:
        if ids and spec.model not in ids:
            raise BackendError(f"the model server at {spec.base} serves {', '.join(ids)}; not {spec.model}")
        return spec.model
    if not ids:
        raise BackendError(f"the model server at {spec.base} lists no models; name one: {SCHEME}URL#MODEL")
    return ids[0]


def _server_window(wire: Wire, entries: list[dict[str, Any]], model: str) -> int:
    """The server's context length: vLLM's model entry, the llama.cpp server's /props, koboldcpp's
    true max context; DEFAULT_WINDOW when none says."""
    for entry in entries:
        if entry.get("id") == model and isinstance(entry.get("max_model_len"), int):
            return int(entry["max_model_len"])
    props = wire.get(wire.root + "/props", optional=True)
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        for source in (props, settings if isinstance(settings, dict) else {}):
            if isinstance(source.get("n_ctx"), int) and source["n_ctx"] > 0:
                return int(source["n_ctx"])
    kobold = wire.get(wire.root + "/api/extra/true_max_context_length", optional=True)
    if isinstance(kobold, dict) and isinstance(kobold.get("value"), int):
        return int(kobold["value"])
    return DEFAULT_WINDOW


class _Row:
    """One candidate as it streams in: its text, where the stop rule cut it, its log-probabilities."""

    def __init__(self) -> None:
        self.text = ""
        self.cut: int | None = None
        self.logprob_sum = 0.0
        self.logprob_count = 0
        self.tokens = 0
        self.stop_reason: StopReason | None = None
        self.seen = False
        self.streamed = 0

    @property
    def visible(self) -> str:
        return self.text if self.cut is None else self.text[: self.cut]

    def take(self, choice: dict[str, Any], stop: StopRule | None) -> None:
        """One streamed choice: its text, its tokens' log-probabilities, why it finished."""
        if self.stop_reason is not None:
            return  # cut by the stop rule: the rest of what the server sends is not used
        self.seen = True
        text = choice.get("text") or ""
        logprobs = [p for p in _token_logprobs(choice) if isinstance(p, int | float)]
        self.logprob_sum += sum(logprobs)
        self.logprob_count += len(logprobs)
        self.tokens += len(logprobs) or (1 if text else 0)
        if text:
            self.text += text
            cut = stop(self.text) if stop is not None else None
            if cut is not None:
                self.cut, self.stop_reason = cut, StopReason.STOP
                return
        reason = choice.get("finish_reason")
        if reason:
            # No stop strings are sent, so a server's "stop" is its end of text.
            self.stop_reason = StopReason.LENGTH if reason == "length" else StopReason.EOS

    def piece(self) -> str:
        """New visible text; never half a character (a later stop can still cut what was shown:
        the final result replaces the preview, as with the local engine)."""
        visible = self.visible
        if self.stop_reason is None and visible.endswith("\ufffd"):
            return ""
        piece = visible[self.streamed :]
        self.streamed = len(visible)
        return piece


def _token_logprobs(choice: dict[str, Any]) -> list[Any]:
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("token_logprobs"), list):
        return list(logprobs["token_logprobs"])
    return []


class RemoteGeneration:
    """A request on the server (the engine's `Handle`): iterating streams candidate 0's text
    (and fetches any candidates the server would not give at once); then `result()`."""

    def __init__(self, engine: RemoteEngine, request: Request) -> None:
        self.engine = engine
        self.request = request
        self.rows = [_Row() for _ in range(request.n)]
        self.stats = GenerationStats(prompt_tokens=len(request.prompt_ids))
        self.completions: list[Completion] = []
        self._start = time.perf_counter()
        self._first_token = 0.0
        self._pieces = self._stream()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def result(self) -> Result:
        return Result(completions=self.completions, stats=self.stats)

    def _stream(self) -> Iterator[str]:
        request, engine = self.request, self.engine
        asked = request.n if engine.offers_n is not False else 1
        yield from self._fetch(0, asked, request.seed)
        if asked > 1 and not request.cancel.is_set():
            engine.offers_n = all(row.seen for row in self.rows[:asked])
        for index in range(1, request.n):
            if request.cancel.is_set():
                break
            if not self.rows[index].seen:
                seed = None if request.seed is None else request.seed + index
                yield from self._fetch(index, 1, seed)
        self._finish()

    def _fetch(self, first: int, count: int, seed: int | None) -> Iterator[str]:
        """Stream `count` choices into rows `first`...; row 0's text is yielded as it comes."""
        body = self.engine.body(self.request, n=count, seed=seed)
        try:
            yield from self._read(body, first, count)
        except BackendError:
            # A server without per-token log-probabilities (llama-cpp-python started with
            # logits_all off) refuses them: a 500, a stream ended at once or a reset connection,
            # before any text. Asked again without; a server that is really gone fails again.
            if "logprobs" not in body or any(r.seen for r in self.rows):
                raise
            body.pop("logprobs")
            yield from self._read(body, first, count)
            self.engine.offers_logprobs = False

    def _read(self, body: dict[str, Any], first: int, count: int) -> Iterator[str]:
        rows = self.rows[first : first + count]
        request = self.request
        with self.engine.wire.stream(self.engine.spec.base + "/completions", body) as events:
            for event in events:
                if request.cancel.is_set():
                    return  # leaving the block closes the stream: the server stops
                self._take(event, first, rows)
                if first == 0:
                    piece = self.rows[0].piece()
                    if piece:
                        yield piece
                if all(row.stop_reason is not None for row in rows):
                    return  # every choice stopped (a stop rule fired): close the stream
            self._check_complete(events, rows)

    def _take(self, event: dict[str, Any], first: int, rows: list[_Row]) -> None:
        for choice in event.get("choices") or []:
            index = choice.get("index", 0) if isinstance(choice, dict) else None
            if isinstance(index, int) and 0 <= index < len(rows):
                if not self._first_token and choice.get("text"):
                    self._first_token = time.perf_counter()
                rows[index].take(choice, self.request.stop)

    def _check_complete(self, events: EventStream, rows: list[_Row]) -> None:
        """A stream that ended without `[DONE]` while a choice was unfinished was dropped; one
        that ended without `[DONE]` or any text failed on the server."""
        base = self.engine.spec.base
        if events.finished:
            return
        if not any(row.seen for row in rows):
            raise BackendError(f"the model server at {base} ended the turn without any text (its log says why)")
        if any(row.stop_reason is None for row in rows if row.seen):
            raise BackendError(f"the model server at {base} dropped the connection mid-turn")

    def _finish(self) -> None:
        cancelled = self.request.cancel.is_set()
        for row in self.rows:
            if row.stop_reason is None:
                row.stop_reason = StopReason.CANCELLED if cancelled else StopReason.LENGTH
        now = time.perf_counter()
        stats = self.stats
        stats.new_tokens = self.rows[0].tokens
        stats.total_s = now - self._start
        if self._first_token:
            stats.ttft_s = self._first_token - self._start
            stats.decode_s = now - self._first_token
        self.completions = [self._completion(row, cancelled) for row in self.rows]

    def _completion(self, row: _Row, cancelled: bool) -> Completion:
        text = row.visible
        ids: list[int] = []
        if text and not cancelled:
            # The server's own tokenization of the text; learning its pieces lets the game decode
            # prefixes of it (to feed the result back) without a round trip each.
            ids = self.engine.tokenizer.encode(text)
            self.engine.tokenizer.learn_pieces(ids, text)
        mean = row.logprob_sum / row.logprob_count if row.logprob_count else 0.0
        return Completion(text=text, token_ids=ids, mean_logprob=mean, stop_reason=row.stop_reason or StopReason.LENGTH)
