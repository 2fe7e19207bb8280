"""The game API of `aidungeon serve`, spoken over HTTP with httpx (sync).

`GameAPI` lists, reads, creates and exports stories, and plays a turn as a stream of the game's
events. Every failure becomes one `ServerError` (an AIDungeonError) whose message is one line for
the player: busy (503, retried once after its Retry-After), gone (refused or dropped), needs a
token (401), busy story (409). A turn's response is read in a worker thread so that the caller's
cancel token can stop it at any moment: the connection is shut, which cancels the turn on the
server. Nothing here renders, loads a model or imports the server's code.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
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


class ServerError(AIDungeonError):
    """The server could not be reached, refused, or answered with an error."""


class ServerGone(ServerError):
    """Connection refused, or dropped before the turn ended."""


class ServerBusy(ServerError):
    """503: the server's turn queue is full (or it is shutting down)."""


class StoryBusy(ServerError):
    """409: a turn of this story is still running (or the story changed meanwhile)."""


@dataclass(frozen=True)
class TurnCost:
    """What the last turn cost, from its `event: end`, and how long it took here."""

    new_tokens: int
    prefill_tokens: int
    seconds: float


class GameAPI:
    """A client of one server's game API, with the player's bearer token (if any)."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 30.0) -> None:
        url = url.strip().rstrip("/")
        self.url = url if "://" in url else f"http://{url}"  # "host:port" as a player would type it
        self.has_token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0))
        except (httpx.InvalidURL, ValueError) as err:
            raise ServerError(f"{url!r} is not a server URL ({err}); give one like http://127.0.0.1:5001") from None
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ServerError(f"{url!r} is not a server URL; give one like http://127.0.0.1:5001")
        self._settling = False
        self.last_turn: TurnCost | None = None

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
        created = self._json("POST", "/api/stories", json=body)
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
        has) and one INFO says so. ServerError for a refused turn or a dropped connection."""
        started = time.monotonic()
        response = yield from self._open_turn(story_id, line, cancel)
        if response is None:
            return
        yield from self._stream(response, cancel, started)

    def _open_turn(
        self, story_id: str, line: str, cancel: CancelToken
    ) -> Generator[Event, None, httpx.Response | None]:
        """The turn's streaming response (status 200), or None when cancelled while waiting."""
        retried = False
        settle_until = time.monotonic() + SETTLE_S if self._settling else 0.0
        while True:
            response = self._send("POST", f"/api/stories/{story_id}/turns", json={"text": line}, stream=True)
            if response.status_code == 200:
                self._settling = False
                if cancel.is_set():
                    response.close()
                    yield Event(EventKind.INFO, STOPPED)
                    return None
                return response
            _read_error_body(response, self.url)
            if response.status_code == 409 and time.monotonic() < settle_until:
                wait = 0.2  # the turn this client stopped is still saving on the server
            elif response.status_code == 503 and not retried and (wait := _retry_after(response)) <= MAX_RETRY_WAIT_S:
                retried = True
                yield Event(EventKind.INFO, f"The server is busy; trying again in {wait:g} s (Ctrl-C stops).")
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

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{self.url} did not answer {path} with JSON; is it an aidungeon server?") from None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A plain request, retried once after a 503's Retry-After; ServerError on failure."""
        response = self._send(method, path, **kwargs)
        if response.status_code == 503 and (wait := _retry_after(response)) <= MAX_RETRY_WAIT_S:
            time.sleep(wait)
            response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _send(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            request = self._http.build_request(method, path, **kwargs)
            return self._http.send(request, stream=stream)
        except httpx.ConnectError:
            raise ServerGone(
                f"cannot reach the server at {self.url}: is it running? (the next line tries again)"
            ) from None
        except httpx.TimeoutException:
            raise ServerGone(f"the server at {self.url} did not answer in time; try again in a moment") from None
        except httpx.HTTPError as err:
            raise ServerGone(
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
    """Read an error answer's (small) body; ServerGone when the connection breaks meanwhile."""
    try:
        response.read()
    except httpx.HTTPError:
        raise ServerGone(f"lost the server at {url}; the next line tries again") from None
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

    return TurnCost(count("new_tokens"), count("prefill_tokens"), seconds)


def _dropped(url: str) -> ServerGone:
    return ServerGone(
        f"lost the server at {url} during the turn; it keeps only what it had saved (the next line tries again)"
    )
