"""A small real HTTP server that speaks the OpenAI completions stream and a tokenizer endpoint.

It listens on 127.0.0.1 (a free port) in a thread, for tests of the remote engine. The tokenizer
is one id per character (`ord`), so any text round-trips. It speaks one of two dialects:
- "vllm": `/tokenize` and `/detokenize`, `prompt` as token ids, `n` honoured, `max_model_len`
  listed in `/v1/models`;
- "llama-cpp-python": `/extras/tokenize` (which adds a BOS id 0) and `/extras/detokenize`,
  `prompt` as text only, `n` ignored, no window given.
Replies are scripted: choice i of a request writes `script[i % len(script)]`, one word per event
(each with log-probability -0.5 when asked for), ending with finish_reason "stop" (or "length" at max_tokens).
`delay_s` spaces the events; `drop_after` closes the connection mid-body after that many events;
`fail_status` answers completions with that HTTP status; `refuse_logprobs` ends a stream that
asks for log-probabilities at once, as llama-cpp-python without logits_all does. It records each completion request
and whether a client closed a stream before the server had sent it all (`closed_early`).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BOS = 0


@dataclass
class PeerState:
    dialect: str = "vllm"
    model: str = "fake-model"
    window: int = 512
    script: list[str] = field(default_factory=lambda: ["The lantern flickers. A raven cries out in the hall."])
    delay_s: float = 0.0
    drop_after: int | None = None
    fail_status: int | None = None
    refuse_logprobs: bool = False  # as llama-cpp-python with logits_all off: an empty stream
    empty_stream: bool = False  # every stream ends at once, as a server that failed inside it
    requests: list[dict[str, Any]] = field(default_factory=list)
    tokenizer_calls: int = 0
    closed_early: threading.Event = field(default_factory=threading.Event)
    events_sent: int = 0


def words(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the recorded state instead

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/v1/models":
            entry: dict[str, Any] = {"id": state.model, "object": "model"}
            if state.dialect == "vllm":
                entry["max_model_len"] = state.window
            self._json(200, {"object": "list", "data": [entry]})
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        routes = {
            "vllm": {"/tokenize": self._tokenize, "/detokenize": self._detokenize},
            "llama-cpp-python": {"/extras/tokenize": self._tokenize, "/extras/detokenize": self._detokenize},
        }[state.dialect]
        if self.path == "/v1/completions":
            self._complete(body)
        elif self.path in routes:
            state.tokenizer_calls += 1
            routes[self.path](body)
        else:
            self._json(404, {"detail": "Not Found"})

    def _tokenize(self, body: dict[str, Any]) -> None:
        if self.server.state.dialect == "vllm":
            self._json(200, {"tokens": [ord(c) for c in body["prompt"]], "count": len(body["prompt"])})
        else:
            self._json(200, {"tokens": [BOS, *(ord(c) for c in body["input"])]})

    def _detokenize(self, body: dict[str, Any]) -> None:
        text = "".join(chr(i) for i in body["tokens"] if i != BOS)
        self._json(200, {"prompt": text} if self.server.state.dialect == "vllm" else {"text": text})

    def _complete(self, body: dict[str, Any]) -> None:
        state = self.server.state
        state.requests.append(body)
        if state.fail_status is not None:
            self._json(state.fail_status, {"error": {"message": "the model crashed", "type": "server_error"}})
            return
        prompt = body["prompt"]
        if state.dialect == "llama-cpp-python" and not isinstance(prompt, str):
            self._json(422, {"detail": "prompt must be a string"})
            return
        n = int(body.get("n", 1)) if state.dialect == "vllm" else 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = self._events(n, int(body.get("max_tokens", 16)), logprobs=body.get("logprobs") is not None)
        if state.empty_stream or (state.refuse_logprobs and body.get("logprobs") is not None):
            self._chunk("")  # the stream ends at once: no events, no [DONE]
            return
        try:
            for number, event in enumerate(events):
                if state.drop_after is not None and number == state.drop_after:
                    self.wfile.flush()
                    self.connection.shutdown(2)  # mid-body: no closing chunk, as a crashed server
                    self.close_connection = True
                    return
                self._chunk(f"data: {event}\n\n")
                state.events_sent += 1
                time.sleep(state.delay_s)
            self._chunk("data: [DONE]\n\n")
            self._chunk("")
        except (BrokenPipeError, ConnectionResetError):
            state.closed_early.set()
            self.close_connection = True

    def _events(self, n: int, max_tokens: int, *, logprobs: bool) -> list[str]:
        """Each choice's words, interleaved as a server with `n` streams them."""
        script = self.server.state.script
        per_choice = [words(script[i % len(script)])[:max_tokens] for i in range(n)]
        out = []
        for step in range(max(len(w) for w in per_choice)):
            for index, choice_words in enumerate(per_choice):
                if step >= len(choice_words):
                    continue
                last = step == len(choice_words) - 1
                finish = ("length" if len(choice_words) == max_tokens else "stop") if last else None
                choice: dict[str, Any] = {"index": index, "text": choice_words[step], "finish_reason": finish}
                if logprobs:
                    choice["logprobs"] = {"tokens": [choice_words[step]], "token_logprobs": [-0.5]}
                out.append(json.dumps({"object": "text_completion", "choices": [choice]}))
        return out

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: PeerState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def close_connections(self) -> None:
        """Cut every open connection, kept-alive ones too, as a killed server does."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class FakeOpenAIServer:
    """Start with `start()`, stop with `stop()`; `url` is its OpenAI root."""

    def __init__(self, state: PeerState | None = None) -> None:
        self.state = state or PeerState()
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)
