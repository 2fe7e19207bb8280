"""The terminal's client (aidungeon.client) surviving a server killed mid-turn, against real
`aidungeon serve` processes on the tiny trained model, all on one database (a SQLite file, and a
real PostgreSQL when the test server is up), as game API replicas share one:

- two servers, the client given both URLs: the first is SIGKILLed while a turn streams, and the
  turn finishes on the second;
- one server, SIGKILLed just after it saved and showed a turn's result, then restarted on the same
  port: the turn is answered again from what it saved (its Idempotency-Key), not played twice.

Each time the player is told once, every turn ends, and the story in the database holds exactly
the results the player was shown, in order."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aidungeon.client.api import LOST, GameAPI, Retry
from aidungeon.core.cancel import CancelToken
from aidungeon.game.events import STALLED, Event, EventKind
from tests.server.serve_process import ServeProcess, start_serve

pytestmark = [pytest.mark.server, pytest.mark.slow]

# Long enough for a killed server to be replaced by a fresh process on its port (a few seconds here).
PATIENT = Retry(tries=12, first_s=0.25, most_s=2.0)


class Player:
    """One story played through the client; what the player was shown, turn by turn."""

    def __init__(self, api: GameAPI, prompt: str) -> None:
        self.api = api
        self.story = api.create({"prompt": prompt})
        self.shown: list[str] = []
        self.notices: list[str] = []

    def play(self, line: str, on_event: Callable[[Event], None] | None = None) -> list[Event]:
        events: list[Event] = []
        for event in self.api.turn(self.story, line, CancelToken()):
            events.append(event)
            if on_event is not None:
                on_event(event)
        results = [e.text for e in events if e.kind is EventKind.RESULT]
        failures = [e for e in events if e.kind is EventKind.ERROR and e.data != STALLED]
        assert not failures and len(results) <= 1, events
        assert results or any(e.data == STALLED for e in events), f"the turn neither ended nor stalled: {events}"
        self.shown.extend(results)
        self.notices.extend(e.text for e in events if e.kind is EventKind.INFO)
        return events

    def stored(self) -> list[str]:
        return [turn["result"] for turn in self.api.story(self.story)["path"]]


class Servers(list[ServeProcess]):
    """The servers a test starts, and the threads still starting more."""

    def __init__(self) -> None:
        super().__init__()
        self.starting: list[threading.Thread] = []


@pytest.fixture
def servers() -> Iterator[Servers]:
    """The servers a test starts; each is stopped at the end, whatever happened (a restart still
    under way when a test fails is waited for first, so its process is stopped too)."""
    started = Servers()
    yield started
    for thread in started.starting:
        thread.join(120)
    for server in started:
        server.stop(signal.SIGKILL)


def test_a_turn_on_a_server_killed_mid_stream_finishes_on_the_other(
    tmp_path: Path, trained_model_dir: Path, db_url: str, servers: Servers
) -> None:
    servers.append(first := start_serve(tmp_path / "a", trained_model_dir, db=db_url))
    servers.append(second := start_serve(tmp_path / "b", trained_model_dir, db=db_url))
    player = Player(GameAPI(f"{first.url},{second.url}", retry=PATIENT), "You stand in a dark cave.")
    player.play("")
    killed: list[int] = []

    def kill_on_first_piece(event: Event) -> None:
        if event.kind is EventKind.PIECE and not killed:
            killed.append(first.stop(signal.SIGKILL))

    for line in ("light a torch", "open the door", "look around"):
        events = player.play(line, kill_on_first_piece)
        if killed:
            break  # else the tiny model stalled (3 tries, no usable text, nothing streamed): another line
    assert killed == [-signal.SIGKILL], "the turn streamed no piece: the kill tested nothing"
    assert player.api.url == second.url
    assert player.notices == [LOST]  # one notice, and the turn ended without an error
    # The lost preview is dropped before the second server's own preview or its saved result.
    assert [e.kind for e in events].count(EventKind.RESTART) >= 1
    for line in ("walk north", "look around"):
        player.play(line)
    assert player.stored() == player.shown
    assert len(player.shown) >= 3


class KillOnResult:
    """SIGKILLs the newest server as the player is shown a result (saved before it was shown;
    the server dies before its `end`), and starts a fresh one on the same port and database."""

    def __init__(self, servers: Servers, home: Path, model: Path, db: str) -> None:
        self.servers, self.home, self.model, self.db = servers, home, model, db
        self.port = str(urlsplit(servers[-1].url).port)
        self.restart: threading.Thread | None = None

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.RESULT and self.restart is None:
            self.servers[-1].stop(signal.SIGKILL)
            self.restart = threading.Thread(target=self._start)
            self.servers.starting.append(self.restart)
            self.restart.start()

    def _start(self) -> None:
        self.servers.append(start_serve(self.home, self.model, "--port", self.port, db=self.db))

    def join(self) -> bool:
        """Wait for the fresh server; True when this turn's server was killed."""
        if self.restart is None:
            return False
        self.restart.join(120)
        return True


def test_a_server_killed_after_showing_a_result_answers_it_again_once_restarted(
    tmp_path: Path, trained_model_dir: Path, db_url: str, servers: Servers
) -> None:
    home = tmp_path / "home"
    servers.append(start_serve(home, trained_model_dir, db=db_url))
    player = Player(GameAPI(servers[0].url, retry=PATIENT), "You are on a ship at sea.")
    player.play("")
    replayed = 0
    # The kill lands between the result and the end unless the end was already on its way (rare):
    # the first line almost always tests it; the next lines try again if not.
    for line in ("climb the mast", "look at the sea", "call the captain"):
        kill = KillOnResult(servers, home, trained_model_dir, db_url)
        before = len(player.shown)
        player.play(line, kill)
        cost = player.api.last_turn
        if kill.join() and cost is not None and cost.replayed:
            replayed += 1
            # Shown once: the saved answer repeated what the player had seen, so nothing more was shown.
            assert len(player.shown) == before + 1
        assert player.stored() == player.shown
        if replayed:
            break
    assert replayed == 1, "no turn was answered from what was saved"
    assert player.notices == [LOST]
    player.play("go below deck")
    assert player.stored() == player.shown
