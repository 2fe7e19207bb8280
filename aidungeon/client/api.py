"""The game API of `aidungeon serve`, spoken over HTTP with httpx (sync).

`GameAPI` lists, reads, creates and exports stories, and plays a turn as a stream of the game's
events. Every failure becomes one `ServerError` (an AIDungeonError) whose message is one line for
the player: busy (503 with Retry-After, retried once after it), gone (refused or dropped), needs a
token (401), busy story (409). A turn's response is read in a worker thread so that the caller's
cancel token can stop it at any moment: the connection is shut, which cancels the turn on the
server. Nothing here renders, loads a model or imports the server's code.

A server (or one replica behind a proxy) that dies is survived: a refused or dropped connection,
or a 500/502/504 or a 503 without Retry-After (a proxy's answer, not the game's), is tried again
a bounded number of times with growing waits, through the next of the given URLs (a comma-separated
list; one URL behind a proxy that routes to a live replica is enough). Each turn is sent with its
own `Idempotency-Key`, so sending it again never plays it twice: the server answers a turn it had
saved with what it showed. The player sees one notice line for the turn, and the events already
shown are not shown again.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from aidungeon.client.sse import END, FrameReader, StreamError, event_from_json, parse_data
from aidungeon.core.cancel import CancelToken
from aidungeon.core.errors import AIDungeonError
from aidungeon.game.events import Event, EventKind

# The longest Retry-After honoured by waiting: beyond it the player is told to come back instead.
MAX_RETRY_WAIT_S = 10.0
# How long a new turn waits for the server to finish a turn this client has just stopped (the
# server notices the closed connection at its next decode step, then saves).
SETTLE_S = 10.0
POLL_S = 0.05
STOPPED = "Stopped. The server ends the turn without a result; /retry generates again, or type another action."
LOST = "Lost the connection to the server; trying again (Ctrl-C stops)."
# Answers that mean "not this replica, not now" rather than "no": a proxy's, or a dying server's.
LOST_STATUSES = frozenset({500, 502, 503, 504})
# Streamed previews: a retried turn streams its own, so these are never compared or kept.
_PREVIEW = (EventKind.PIECE, EventKind.RESTART)


class ServerError(AIDungeonError):
    """The server could not be reached, refused, or answered with an error."""


class ServerGone(ServerError):
    """Connection refused, or dropped before the turn ended."""


class ServerLost(ServerGone):
    """Worth sending again: the connection was refused or dropped, or a proxy answered 5xx.
    `unsent` when the request surely never reached the game (refused before it was sent)."""

    def __init__(self, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent


class ServerBusy(ServerError):
    """503: the server's turn queue is full (or it is shutting down)."""


class StoryBusy(ServerError):
    """409: a turn of this story is still running (or the story changed meanwhile)."""


@dataclass(frozen=True)
class Retry:
    """How a lost server is tried again: `tries` sends in all, the waits between them doubling from
    `first_s` up to `most_s` (the defaults wait 0.5 + 1 + 2 + 4 s: long enough for a proxy to stop
    routing to a dead replica, or for a restarted server to listen again)."""

    tries: int = 5
    first_s: float = 0.5
    most_s: float = 4.0

    def waits(self) -> Iterator[float]:
        """The waits before each send after the first."""
        wait = self.first_s
        for _ in range(self.tries - 1):
            yield wait
            wait = min(wait * 2, self.most_s)


@dataclass
class _Turn:
    """One turn across its sends: its key, what the player was shown, and whether they were told."""

    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    shown: list[Event] = field(default_factory=list)
    noticed: bool = False
    previewing: bool = False  # pieces are on screen that no result has replaced yet


@dataclass(frozen=True)
class TurnCost:
    """What the last turn cost, from its `event: end`, and how long it took here."""

    new_tokens: int
    prefill_tokens: int
    seconds: float
    replayed: bool = False  # answered from what the server had saved (the line was sent again)


class GameAPI:
    """A client of a server's game API, with the player's bearer token (if any). `url` may list
    several servers (or proxies) of one database, comma-separated: a lost one hands over to the next."""

    def __init__(
        self, url: str, token: str | None = None, *, timeout_s: float = 30.0, retry: Retry | None = None
    ) -> None:
        self.urls = [_server_url(one) for one in url.split(",") if one.strip()] or [_server_url(url)]
        self._at = 0
        self.has_token = bool(token)
        self.retry = retry or Retry()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0))
        self._settling = False
        self.last_turn: TurnCost | None = None

    @property
    def url(self) -> str:
        """The server this client talks to now."""
        return self.urls[self._at]

    def _hand_over(self) -> None:
        """After losing the current server: the next one of the list (the same one when alone)."""
        self._at = (self._at + 1) % len(self.urls)

    def close(self) -> None:
        self._http.close()

    # -- stories --------------------------------------------------------------------------------

    def stories(self) -> list[dict[str, Any]]:
        """Your stories on the server, the most recently played first."""
        body = self._json("GET", "/api/stories")
        return [s for s in body if isinstance(s, dict)] if isinstance(body, list) else []

    def story(self, story_id: str) -> dict[str, Any]:
        """One story: its title, model, opening and current path of {action, result}."""
        body = self._json("GET", f"/api/stories/{story_id}")
        if not isinstance(body, dict):
            raise ServerError(f"the server's answer for story {story_id} is not a story")
        return body

    def settings(self) -> list[dict[str, Any]]:
        """The settings a new story can start from: {id, title, description, characters}."""
        body = self._json("GET", "/api/settings")
        return [s for s in body if isinstance(s, dict)] if isinstance(body, list) else []

    def create(self, body: dict[str, str]) -> str:
        """A new story from {setting, character, name} or {prompt}; returns its id."""
        # Not idempotent: sent again only when the first send surely never arrived.
        created = self._json("POST", "/api/stories", idempotent=False, json=body)
        if not isinstance(created, dict) or not isinstance(created.get("id"), str):
            raise ServerError("the server did not say the new story's id")
        return str(created["id"])

    def export(self, story_id: str, fmt: str) -> bytes:
        """The story as md, txt or html (or `save`, the save document)."""
        response = self._request("GET", f"/api/stories/{story_id}/export", params={"format": fmt})
        return response.content

    # -- a turn ---------------------------------------------------------------------------------

    def turn(self, story_id: str, line: str, cancel: CancelToken) -> Iterator[Event]:
        """Play one line as typed; yields the turn's events as the server streams them.

        Once `cancel` is set the connection is shut (the server cancels the turn, saves what it
        has) and one INFO says so. A lost server is tried again under the turn's key (one INFO
        notice; what was shown is not shown twice). ServerError for a refused turn, or a server
        still lost after the last try."""
        turn = _Turn()
        waits = self.retry.waits()
        while True:
            try:
                yield from self._send_turn(story_id, line, cancel, turn)
                return
            except ServerLost as lost:
                wait = next(waits, None)
                if wait is None:
                    raise ServerGone(str(lost)) from None
                # The turn may still be ending where it was (a dropped proxy, a live server): wait for it.
                self._settling = True
                self._hand_over()
                if turn.previewing:
                    turn.previewing = False
                    yield Event(EventKind.RESTART)  # the lost stream's preview is dropped; the next one starts over
                if not turn.noticed:
                    turn.noticed = True
                    yield Event(EventKind.INFO, LOST)
                if not _sleep(wait, cancel):
                    yield Event(EventKind.INFO, "Stopped.")
                    return

    def _send_turn(self, story_id: str, line: str, cancel: CancelToken, turn: _Turn) -> Iterator[Event]:
        """One send of the turn. Its answer starts with what an earlier send showed (the action,
        a saved result): those are passed over, so the player sees each once."""
        started = time.monotonic()
        response = yield from self._open_turn(story_id, line, cancel, turn)
        if response is None:
            return
        repeated = list(turn.shown)
        for event in self._stream(response, cancel, started):
            turn.previewing = event.kind is EventKind.PIECE or (turn.previewing and event.kind is not EventKind.RESULT)
            if event.kind not in _PREVIEW:
                if event in repeated:
                    # Shown already, in this order: a saved answer may leave out some of what came before.
                    del repeated[: repeated.index(event) + 1]
                    continue
                repeated.clear()
                turn.shown.append(event)
            yield event

    def _open_turn(
        self, story_id: str, line: str, cancel: CancelToken, turn: _Turn
    ) -> Generator[Event, None, httpx.Response | None]:
        """The turn's streaming response (status 200), or None when cancelled while waiting.
        ServerLost for an answer worth sending again."""
        retried = False
        settle_until = time.monotonic() + SETTLE_S if self._settling else 0.0
        headers = {"Idempotency-Key": turn.key}
        while True:
            path = f"/api/stories/{story_id}/turns"
            response = self._send("POST", path, json={"text": line}, headers=headers, stream=True)
            if response.status_code == 200:
                self._settling = False
                if cancel.is_set():
                    response.close()
                    yield Event(EventKind.INFO, STOPPED)
                    return None
                return response
            _read_error_body(response, self.url)
            if response.status_code == 409 and time.monotonic() < settle_until:
                wait = 0.2  # the turn this client stopped, or lost, is still saving on the server
            elif _busy(response) and not retried and (wait := _retry_after(response)) <= MAX_RETRY_WAIT_S:
                retried = True
                if not turn.noticed:
                    turn.noticed = True
                    yield Event(EventKind.INFO, f"The server is busy; trying again in {wait:g} s (Ctrl-C stops).")
            elif response.status_code in LOST_STATUSES and not _busy(response):
                raise _lost_answer(self.url, response)
            else:
                self._settling = False
                raise self._error(response)
            if not _sleep(wait, cancel):
                yield Event(EventKind.INFO, "Stopped.")
                return None

    def _stream(self, response: httpx.Response, cancel: CancelToken, started: float) -> Iterator[Event]:
        lines: queue.Queue[tuple[str, object]] = queue.Queue()
        worker = threading.Thread(target=_pump, args=(response, lines), name="server-turn", daemon=True)
        worker.start()
        frames, ended = FrameReader(), False
        try:
            while True:
                if cancel.is_set() and not ended:
                    _shut(response)
                    self._settling = True
                    yield Event(EventKind.INFO, STOPPED)
                    return
                try:
                    tag, value = lines.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if tag == "done":
                    break
                if tag == "error":
                    if ended:
                        break  # the connection broke after the turn ended: nothing was lost
                    raise _dropped(self.url)
                frame = frames.feed(str(value))
                if frame is None:
                    continue
                if frame.event == END:
                    ended = True
                    self.last_turn = _cost(parse_data(frame), time.monotonic() - started)
                elif frame.event == "message":
                    yield event_from_json(parse_data(frame))
        except StreamError as err:
            _shut(response)
            raise ServerGone(f"{err}; the turn was abandoned, and the next line tries again") from None
        finally:
            if worker.is_alive():
                _shut(response)
        if not ended:
            raise _dropped(self.url)

    # -- requests and errors ----------------------------------------------------------------------

    def _json(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> Any:
        response = self._request(method, path, idempotent=idempotent, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{self.url} did not answer {path} with JSON; is it an aidungeon server?") from None

    def _request(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> httpx.Response:
        """A plain request: retried once after a busy 503's Retry-After, and, when the server is
        lost, as `retry` says (a request that is not idempotent only if it never left); ServerError
        on failure."""
        waits, retried = self.retry.waits(), False
        while True:
            try:
                response = self._send(method, path, **kwargs)
                if _busy(response) and not retried and (wait := _retry_after(response)) <= MAX_RETRY_WAIT_S:
                    retried = True
                    time.sleep(wait)
                    continue
                if response.status_code in LOST_STATUSES and not _busy(response):
                    raise _lost_answer(self.url, response)
                if response.status_code >= 400:
                    raise self._error(response)
                return response
            except ServerLost as lost:
                pause = next(waits, None) if idempotent or lost.unsent else None
                if pause is None:
                    raise ServerGone(str(lost)) from None
                self._hand_over()
                time.sleep(pause)

    def _send(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange with the current server; ServerLost when it is not reached or drops."""
        try:
            request = self._http.build_request(method, self.url + path, **kwargs)
        except (httpx.InvalidURL, ValueError) as err:
            raise ServerError(f"{self.url!r} is not a server URL ({err})") from None
        try:
            return self._http.send(request, stream=stream)
        except httpx.ConnectError:
            raise ServerLost(
                f"cannot reach the server at {self.url}: is it running? (the next line tries again)", unsent=True
            ) from None
        except httpx.TimeoutException:
            raise ServerLost(f"the server at {self.url} did not answer in time; try again in a moment") from None
        except httpx.HTTPError as err:
            raise ServerLost(
                f"lost the server at {self.url} ({type(err).__name__}); the next line tries again"
            ) from None

    def _error(self, response: httpx.Response) -> ServerError:
        """The one line for an error answer."""
        detail = _detail(response)
        status = response.status_code
        if status == 401:
            if self.has_token:
                return ServerError("the server refused the token; check --token (or AIDUNGEON_TOKEN)")
            return ServerError("the server needs a token: --token T (or AIDUNGEON_TOKEN=T)")
        if status == 503:
            busy = "the server is busy; try again in a moment"
            return ServerBusy(busy if detail in ("", busy) else f"{busy} ({detail})")
        if status == 409:
            return StoryBusy(detail or "the story is busy on the server; try again in a moment")
        if status == 404:
            return ServerError(detail or "not found on the server")
        return ServerError(f"the server refused: {detail}" if detail else f"the server answered {status}")


def _server_url(url: str) -> str:
    """A server's base URL as given ("host:port" as a player would type it); ServerError if it is none."""
    url = url.strip().rstrip("/")
    full = url if "://" in url else f"http://{url}"
    try:
        parts = urlsplit(full)
        httpx.URL(full)
    except (httpx.InvalidURL, ValueError) as err:
        raise ServerError(f"{url!r} is not a server URL ({err}); give one like http://127.0.0.1:5001") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServerError(f"{url!r} is not a server URL; give one like http://127.0.0.1:5001")
    return full


def _busy(response: httpx.Response) -> bool:
    """The game's own "busy" (503 with Retry-After), which a proxy's 503 never carries."""
    return response.status_code == 503 and "Retry-After" in response.headers


def _lost_answer(url: str, response: httpx.Response) -> ServerLost:
    return ServerLost(f"the server at {url} answered {response.status_code}; try again in a moment")


def _pump(response: httpx.Response, lines: queue.Queue[tuple[str, object]]) -> None:
    """In the worker thread: the response's lines, then "done" (after an "error" if it broke)."""
    try:
        for line in response.iter_lines():
            lines.put(("line", line))
    except (httpx.HTTPError, OSError) as err:
        lines.put(("error", err))
    finally:
        response.close()
        lines.put(("done", None))


def _read_error_body(response: httpx.Response, url: str) -> None:
    """Read an error answer's (small) body; ServerLost when the connection breaks meanwhile."""
    try:
        response.read()
    except httpx.HTTPError:
        raise ServerLost(f"lost the server at {url}; the next line tries again") from None
    finally:
        response.close()


def _shut(response: httpx.Response) -> None:
    """Shut the turn's connection from this thread: the worker's blocked read returns at once,
    and the server sees the client leave, which cancels the turn there."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    else:  # a transport without a socket (none in use today): closing is the next best thing
        response.close()


def _sleep(seconds: float, cancel: CancelToken) -> bool:
    """Wait, unless cancelled first; True when the wait ran out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancel.is_set():
            return False
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    return not cancel.is_set()


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (1 when absent or given as a date)."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdecimal() else 1.0


def _detail(response: httpx.Response) -> str:
    """The server's one-line reason: `detail` of its JSON error, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:120]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # a validation error: the first problem is enough
        detail = detail[0].get("msg") if detail and isinstance(detail[0], dict) else None
    return str(detail) if detail else ""


def _cost(body: dict[str, Any], seconds: float) -> TurnCost:
    def count(key: str) -> int:
        value = body.get(key)
        return value if isinstance(value, int) else 0

    return TurnCost(count("new_tokens"), count("prefill_tokens"), seconds, body.get("replayed") is True)


def _dropped(url: str) -> ServerLost:
    return ServerLost(
        f"lost the server at {url} during the turn; it keeps only what it had saved (the next line tries again)"
    )
