"""The wire to an OpenAI-compatible model server: JSON calls, the completion stream, the tokenizer.

`Wire` makes the HTTP calls (httpx, synchronous: the engine protocol is synchronous and handles
are read from worker threads) and turns every way a server can fail (refused, unreachable,
silent, a 4xx or 5xx, a connection dropped mid-stream) into one `BackendError` line.
`RemoteTokenizer` finds the server's tokenizer endpoint (vLLM and the llama.cpp server
`/tokenize`, llama-cpp-python `/extras/tokenize`, koboldcpp `/api/extra/tokencount`) and keeps
what it learns, so a turn makes a few round trips rather than dozens; it counts them.

It does not build requests from the game's settings or run the stop rule (`remote.py` does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from aidungeon.core.errors import BackendError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# A long prompt on a slow server may take this long before its first token; past it, the server
# is taken for gone.
READ_TIMEOUT_S = 120.0
# Texts and id sequences remembered per direction: several windows' worth of parts.
CACHE_ENTRIES = 4096
# The most characters of a server's error body repeated in the line the player sees.
ERROR_BODY_CHARS = 200
# A probe text with a space, punctuation and a multi-byte character, for telling tokenizers apart.
PROBE_TEXT = "Hello, traveller! The café door creaks."


@dataclass
class CallStats:
    """Round trips to the tokenizer endpoints and the time they took (for the benchmark)."""

    calls: int = 0
    seconds: float = 0.0


class Wire:
    """HTTP to one server: `base` is its OpenAI root (".../v1"), `root` the server's own root."""

    def __init__(self, base: str, *, api_key: str | None = None, client: httpx.Client | None = None) -> None:
        self.base = base.rstrip("/")
        self.root = self.base.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        self.client = client or httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self.client.close()

    def get(self, url: str, *, optional: bool = False) -> Any:
        """GET json; None for a missing endpoint when `optional`."""
        return self._call("GET", url, None, optional=optional)

    def post(self, url: str, body: dict[str, Any], *, optional: bool = False) -> Any:
        """POST json; None for a missing or unwilling endpoint when `optional`."""
        return self._call("POST", url, body, optional=optional)

    def _call(self, method: str, url: str, body: dict[str, Any] | None, *, optional: bool) -> Any:
        try:
            response = self.client.request(method, url, json=body)
        except httpx.HTTPError as err:
            raise self.unreachable(err) from None
        if optional and response.status_code in (404, 405, 422, 400, 501):
            return None
        self.check(response)
        try:
            return response.json()
        except ValueError:
            if optional:
                return None
            raise BackendError(f"the model server at {self.base} answered {url} with something not JSON") from None

    @contextmanager
    def stream(self, url: str, body: dict[str, Any]) -> Iterator[EventStream]:
        """The events of a server-sent-event stream. Leaving the block closes the connection,
        which is how a server learns to stop generating."""
        try:
            with self.client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self.check(response)
                events = EventStream(response, self.base)
                try:
                    yield events
                finally:
                    if not events.finished:
                        _drop_connection(response)
        except httpx.HTTPError as err:
            raise self.unreachable(err) from None

    def check(self, response: httpx.Response) -> None:
        """A 4xx or 5xx as one clear line with the server's own words."""
        if response.status_code < 400:
            return
        detail = _short(response.text)
        if response.status_code in (401, 403):
            raise BackendError(
                f"the model server at {self.base} refused the request (HTTP {response.status_code}): {detail}. "
                "Set OPENAI_API_KEY to its key"
            )
        raise BackendError(f"the model server at {self.base} failed (HTTP {response.status_code}): {detail}")

    def unreachable(self, err: httpx.HTTPError) -> BackendError:
        """What went wrong on the wire, for the player."""
        if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
            return BackendError(f"cannot reach the model server at {self.base}: is it running? ({_reason(err)})")
        if isinstance(err, httpx.TimeoutException):
            return BackendError(f"the model server at {self.base} stopped answering ({_reason(err)})")
        if isinstance(err, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return BackendError(f"the model server at {self.base} dropped the connection mid-turn ({_reason(err)})")
        return BackendError(f"the model server at {self.base} failed: {_reason(err)}")


class EventStream:
    """The `data:` events of one completion stream as dicts; `finished` once `[DONE]` came."""

    def __init__(self, response: httpx.Response, base: str) -> None:
        self.response = response
        self.base = base
        self.finished = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self.response.iter_lines():
            if not line.startswith("data:"):
                continue  # comments (": ping"), event names, blank separators
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                self.finished = True
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise BackendError(f"the model server at {self.base} sent a stream event that is not JSON") from None
            if isinstance(event, dict) and "error" in event:
                raise BackendError(f"the model server at {self.base} failed mid-turn: {_short(event['error'])}")
            if isinstance(event, dict):
                yield event


def _drop_connection(response: httpx.Response) -> None:
    """Close the connection of a stream that did not end with `[DONE]` rather than pool it: a
    server that failed inside a stream (llama-cpp-python) resets that connection a moment later,
    and the next request sent on it would fail too."""
    network = response.extensions.get("network_stream")
    if network is not None:
        with contextlib.suppress(Exception):  # already closed: nothing left to do
            network.close()


def _reason(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text[:ERROR_BODY_CHARS] + ("..." if len(text) > ERROR_BODY_CHARS else "")


@dataclass(frozen=True)
class Dialect:
    """One server family's tokenizer endpoints: paths and field names."""

    name: str
    tokenize: str
    detokenize: str
    text_field: str  # the request field that carries the text to tokenize
    ids_field: str  # the response field that carries the ids
    detok_ids_field: str  # the request field that carries the ids to detokenize
    detok_text_fields: tuple[str, ...]  # the response fields that may carry the text
    accepts_ids_prompt: bool  # /v1/completions takes `prompt: [ids]`


DIALECTS = (
    # vLLM and SGLang (`prompt`, `add_special_tokens`) and the llama.cpp server (`content`,
    # `add_special`) share the paths; one body carries both spellings and each ignores the other's.
    Dialect("tokenize", "/tokenize", "/detokenize", "prompt", "tokens", "tokens", ("prompt", "content"), True),
    Dialect(
        "llama-cpp-python", "/extras/tokenize", "/extras/detokenize", "input", "tokens", "tokens", ("text",), False
    ),
    Dialect("koboldcpp", "/api/extra/tokencount", "/api/extra/detokenize", "prompt", "ids", "ids", ("result",), False),
)


class RemoteTokenizer:
    """The server's tokenizer behind caches: text -> ids, ids -> text, and each token's text.

    Decoding the prefixes of a result one by one (what the game does to feed a result back) would
    cost a round trip each; instead each token's own text is learnt once, and a prefix of a
    sequence whose token texts join up to exactly its whole text is decoded by joining them.
    """

    def __init__(self, wire: Wire, dialect: Dialect, model: str | None) -> None:
        self.wire = wire
        self.dialect = dialect
        self.model = model
        self.stats = CallStats()
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._texts: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._pieces: dict[int, str | None] = {}  # a token's own text; None when it is not whole text
        self._joinable: OrderedDict[tuple[int, ...], None] = OrderedDict()
        self.prefix: tuple[int, ...] = ()  # ids the endpoint adds to every text (a BOS)
        self._lock = threading.Lock()  # sessions on several threads share the caches

    @classmethod
    def find(cls, wire: Wire, model: str | None) -> RemoteTokenizer | None:
        """The first dialect whose tokenize endpoint answers the probe, or None."""
        for dialect in DIALECTS:
            tokenizer = cls(wire, dialect, model)
            if tokenizer._remote_encode(PROBE_TEXT, optional=True) is not None:
                tokenizer.prefix = tuple(tokenizer._remote_encode("") or ())
                return tokenizer
        return None

    def encode(self, text: str) -> list[int]:
        with self._lock:
            known = self._ids.get(text)
        if known is None:
            ids = self._remote_encode(text) or []
            known = tuple(ids[len(self.prefix) :] if tuple(ids[: len(self.prefix)]) == self.prefix else ids)
            with self._lock:
                _put(self._ids, text, known)
                _put(self._texts, known, text)
        return list(known)

    def decode(self, ids: list[int]) -> str:
        key = tuple(ids)
        with self._lock:
            known = self._texts.get(key)
            if known is None:
                known = self._joined(key)
        if known is None:
            known = self._remote_decode(list(key)) or ""
            with self._lock:
                _put(self._texts, key, known)
        return known

    def learn_pieces(self, ids: list[int], text: str) -> None:
        """Learn each token's text of `ids`, a tokenization of `text`, so their prefixes decode
        without round trips; kept only when the pieces join up to `text` exactly."""
        for token in set(ids) - self._pieces.keys():
            piece = self._remote_decode([token], optional=True)
            # A token that is part of a character (or that the server cannot decode alone) has
            # no text of its own; a sequence holding one is decoded by the server.
            self._pieces[token] = piece if piece is not None and "\ufffd" not in piece else None
        pieces = [self._pieces[token] for token in ids]
        if all(p is not None for p in pieces) and "".join(p or "" for p in pieces) == text:
            with self._lock:
                _put(self._joinable, tuple(ids), None)

    def _joined(self, key: tuple[int, ...]) -> str | None:
        """A prefix of a sequence known to decode piece by piece, joined locally."""
        for sequence in reversed(self._joinable):
            if len(sequence) >= len(key) and sequence[: len(key)] == key:
                return "".join(self._pieces[token] or "" for token in key)
        return None

    def _remote_encode(self, text: str, *, optional: bool = False) -> list[int] | None:
        dialect = self.dialect
        body: dict[str, Any] = {dialect.text_field: text}
        if dialect.name == "tokenize":
            body.update(content=text, add_special=False, add_special_tokens=False)
        if self.model:
            body["model"] = self.model
        reply = self._timed(self.wire.root + dialect.tokenize, body, optional=optional)
        ids = reply.get(dialect.ids_field) if isinstance(reply, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            if optional:
                return None
            raise BackendError(f"the model server at {self.wire.base} gave no token ids for a text")
        return ids

    def _remote_decode(self, ids: list[int], *, optional: bool = False) -> str | None:
        dialect = self.dialect
        body: dict[str, Any] = {dialect.detok_ids_field: ids}
        if self.model:
            body["model"] = self.model
        reply = self._timed(self.wire.root + dialect.detokenize, body, optional=optional)
        for name in dialect.detok_text_fields:
            if isinstance(reply, dict) and isinstance(reply.get(name), str):
                return str(reply[name])
        if optional:
            return None
        raise BackendError(f"the model server at {self.wire.base} gave no text for token ids")

    def _timed(self, url: str, body: dict[str, Any], *, optional: bool) -> Any:
        start = time.perf_counter()
        try:
            return self.wire.post(url, body, optional=optional)
        except BackendError:
            if optional:
                return None
            raise
        finally:
            self.stats.calls += 1
            self.stats.seconds += time.perf_counter() - start


def _put(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)
