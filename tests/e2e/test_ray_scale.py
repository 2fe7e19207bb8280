"""The Ray Serve application on a real local Ray cluster: 2 game API replicas and an autoscaled
engine deployment (2 to 3 replicas) on the tiny trained model, a shared database (a real
PostgreSQL when AIDUNGEON_TEST_PG is set, else one SQLite file: the replicas share this machine),
and simulated players over HTTP.

It checks story affinity (a story's calls land on one replica and reuse its cache), that every
player's turn completes under load, that the engine scales up under load and back down after,
that SIGKILL of an engine replica mid-load loses no turn a player was shown, and that players on
the terminal's client code survive `ray.kill` of a game API replica mid-load: their broken turns
are sent again (Idempotency-Key) through the proxy, none lost and none applied twice. The cluster
is deployed as `aidungeon serve --ray` deploys it (`deploy_config`: Ray's public `serve.run`). The cluster is
local and listens on 127.0.0.1 for HTTP (Ray's own ports bind all interfaces; see the README).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

pytest.importorskip("ray.serve", reason='ray[serve] is not installed (pip install "aidungeon[scale]")')

import ray
import yaml
from ray import serve

from aidungeon.core.config import Sampling
from aidungeon.server.scale.wire import request_to_wire, result_from_wire

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = REPO / "aidungeon" / "server" / "scale" / "local.yaml"
PG_URL = os.environ.get("AIDUNGEON_TEST_PG", "")
# 20 players as the issue asks; the 2-core machine holds them (turns on the tiny model are short).
PLAYERS = 20
MIN_TURNS = 3
# Players on the client code while a game API replica is killed: enough that both replicas have turns in flight.
CLIENT_PLAYERS = 8
# Kills of a busy engine replica until one lands mid-call (the first almost always does).
KILLS = 3
LINES = ("look around", "open the door", "say hello", "walk north", "take the lamp")


@dataclass
class Cluster:
    url: str
    database: str  # "postgresql" or "sqlite": which one this run used
    logs: Path  # the Ray session's logs, where replicas' warnings land


@dataclass
class Player:
    story: str = ""
    shown: list[str] = field(default_factory=list)  # each turn's result, as the player saw it
    turns: int = 0
    stalled: int = 0  # turns the game itself gave up on (the tiny model wrote nothing usable)
    failures: list[str] = field(default_factory=list)  # turns that did not end, or ended in an error
    streaming: threading.Event = field(default_factory=threading.Event)  # set by each streamed piece
    setup: tuple[str, ...] = ()  # lines sent once after the story is made (not turns), e.g. "/set ..."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _database(tmp: Path) -> Iterator[tuple[str, str]]:
    """A fresh schema on the test PostgreSQL, or an SQLite file; dropped afterwards."""
    if not PG_URL:
        yield f"sqlite:///{tmp / 'ray.db'}", "sqlite"
        return
    schema = f"ray_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False), "postgresql"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _config(tmp: Path, model: Path, db: str, port: int) -> Path:
    """The shipped local config with this run's model, database and port."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"].update(model=str(model), db=db)
    path = tmp / "ray.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def cluster(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from aidungeon.server.ray_app import deploy_config

    tmp = tmp_path_factory.mktemp("ray")
    # Ray's own folder, short: its Unix socket paths must stay under 107 characters.
    ray_dir = Path(tempfile.mkdtemp(prefix="adr", dir="/tmp"))
    home = tmp / "home"
    home.mkdir()
    saved_env = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE",)}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60 turns token auth on by default
    databases = _database(tmp)
    db, kind = next(databases)
    env = {
        "AIDUNGEON_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # Logical CPUs, not cores: replicas ask for fractions, and the 2 real cores are shared anyway.
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        log_to_driver=False,
        _temp_dir=str(ray_dir),
    )
    try:
        url = deploy_config(_config(tmp, trained_model_dir, db, _free_port()), wait_s=300)
        print(f"ray cluster up at {url}; database: {kind}")
        yield Cluster(url=url, database=kind, logs=ray_dir / "session_latest" / "logs")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        next(databases, None)


def _engine_replicas(*states: str) -> int:
    """Engine replicas in these states (default: every state but stopping)."""
    counts = serve.status().applications["aidungeon"].deployments["Engine"].replica_states
    by_name = {getattr(state, "value", str(state)): int(n) for state, n in counts.items()}
    wanted = states or ("STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION")
    return sum(by_name.get(state, 0) for state in wanted)


def _engine_replica_ids() -> list[str]:
    """The unique ids of the live engine replicas (Serve names them SERVE_REPLICA::APP#Engine#ID)."""
    prefix = "SERVE_REPLICA::aidungeon#Engine#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return [name.removeprefix(prefix) for name in names if name.startswith(prefix)]


def _retried_turns(logs: Path) -> int:
    """Engine calls a game API replica sent again after losing an engine replica (RayEngine's warning)."""
    return sum(path.read_text(errors="replace").count("engine replica lost mid-turn") for path in logs.glob("worker-*"))


def _wait_for(condition: Any, timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start


def _generate(handle: Any, session: str, ids: list[int]) -> dict[str, Any]:
    """One engine call from the driver, as a game API replica makes it; the final message."""
    from aidungeon.core.cancel import CancelToken
    from aidungeon.model.protocol import Request

    request = Request(session, tuple(ids), Sampling(max_new_tokens=8), CancelToken(), seed=1)
    last: dict[str, Any] = {}
    for message in handle.options(stream=True).generate.remote(request_to_wire(request)):
        last = message
    return last


def test_a_request_crosses_the_wire_with_its_stop_rule_and_comes_back_as_a_result() -> None:
    from aidungeon.core.cancel import CancelToken
    from aidungeon.game.rules import GuardRules
    from aidungeon.model.protocol import Completion, GenerationStats, Request, Result, StopReason
    from aidungeon.server.scale.wire import request_from_wire, result_to_wire

    rule = GuardRules().stop_rule("Ada")
    sent = Request("s1", (5, 6, 7), Sampling(temperature=0.5), CancelToken(), n=2, stop=rule, seed=9)
    wire = pickle.loads(pickle.dumps(request_to_wire(sent)))  # plain data: it survives any pickler
    cancel = CancelToken()
    got = request_from_wire(wire, cancel)
    assert (got.session, got.prompt_ids, got.sampling, got.n, got.seed) == ("s1", (5, 6, 7), sent.sampling, 2, 9)
    assert got.cancel is cancel and got.stop is not None
    text = "The door opens.\n> You walk in."
    assert got.stop(text) == rule(text) is not None  # the rebuilt rule cuts where the game's does
    assert got.stop("The door opens.") is None
    result = Result([Completion("a", [1, 2], -0.5, StopReason.STOP)], GenerationStats(prompt_tokens=3, reused_tokens=2))
    assert result_from_wire(pickle.loads(pickle.dumps(result_to_wire(result)))) == result


@dataclass(frozen=True)
class _Id:
    unique_id: str


@dataclass(frozen=True)
class _Replica:
    """What `home_order` reads of a Ray `RunningReplica`."""

    replica_id: _Id


def _home(session: str, replica_ids: list[str]) -> str:
    """The replica id the story-affinity router makes this story's home."""
    from aidungeon.server.scale.routing import home_order

    replicas = [_Replica(_Id(unique_id)) for unique_id in replica_ids]
    return home_order(session, replicas)[0].replica_id.unique_id  # type: ignore[arg-type]


def test_a_new_replica_takes_over_only_the_stories_it_becomes_home_to() -> None:
    from aidungeon.server.scale.routing import home_order

    two = [_Replica(_Id("aaaa")), _Replica(_Id("bbbb"))]
    three = [*two, _Replica(_Id("cccc"))]
    stories = [f"story-{n}" for n in range(300)]
    before = {s: home_order(s, two)[0] for s in stories}  # type: ignore[arg-type]
    after = {s: home_order(s, three)[0] for s in stories}  # type: ignore[arg-type]
    moved = [s for s in stories if before[s] != after[s]]
    assert all(after[s] == three[2] for s in moved)  # nothing moves between the old replicas
    assert 60 < len(moved) < 140  # about a third move to the new one
    assert sum(after[s] == two[0] for s in stories) > 60  # and the rest stay spread
    backwards = list(reversed(two))
    assert before == {s: home_order(s, backwards)[0] for s in stories}  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_storys_engine_calls_stay_on_one_replica_and_reuse_its_cache(cluster: Cluster) -> None:
    handle = serve.get_deployment_handle("Engine", app_name="aidungeon")
    info = handle.describe.remote().result()
    tokenizer = info["tokenizer"]
    # Replica ids are random, so pick stories the router homes 4 on each of the 2 replicas: 8 drawn
    # at random all homed on one replica 1 run in 128.
    engines = _engine_replica_ids()
    assert len(engines) == 2, engines
    homes = {f"affinity-{n}": _home(f"affinity-{n}", engines) for n in range(64)}
    sessions = [s for engine in engines for s in [s for s, home in homes.items() if home == engine][:4]]
    assert len(sessions) == 8, homes
    for n, session in enumerate(sessions):
        first = tokenizer.encode(f"You are explorer {n}. You enter a dark cave and look around.")
        one = _generate(handle, session, first)
        grown = first + result_from_wire(one["result"]).completions[0].token_ids + tokenizer.encode(" > You go on.")
        two = _generate(handle, session, grown)
        assert one["replica"] == homes[session], f"{session} went to {one['replica']}, not its home {homes[session]}"
        assert two["replica"] == one["replica"], f"{session} moved from {one['replica']} to {two['replica']}"
        stats = result_from_wire(two["result"]).stats
        assert stats.reused_tokens >= len(first), stats  # its second turn prefilled only the new part


@pytest.mark.slow
def test_the_kobold_and_openai_apis_answer_through_the_cluster(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        assert client.get("/api/v1/model").json()["result"]
        answer = client.post("/v1/completions", json={"prompt": "You enter the cave.", "max_tokens": 8, "stop": ["\n"]})
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json()["choices"][0]["text"], str)


def _events(body: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for frame in body.split("\n\n"):
        if frame.strip():
            lines = dict(line.split(": ", 1) for line in frame.split("\n"))
            events.append({"end": True} if lines.get("event") == "end" else json.loads(lines["data"]))
    return events


def _turn(
    client: httpx.Client, story: str, line: str, streaming: threading.Event | None = None
) -> list[dict[str, Any]]:
    """One turn; a refused or dropped request (a game API replica gone, 503) is sent again.
    `streaming` is set whenever a piece arrives: the engine is generating this turn right then."""
    for attempt in range(5):
        try:
            with client.stream("POST", f"/api/stories/{story}/turns", json={"text": line}) as response:
                if response.status_code in (502, 503):
                    time.sleep(0.5 * (attempt + 1))
                    continue
                response.raise_for_status()
                chunks = []
                for chunk in response.iter_text():
                    chunks.append(chunk)
                    if streaming is not None and '"kind": "piece"' in chunk:
                        streaming.set()
                return _events("".join(chunks))
        except httpx.TransportError:
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError(f"turn on {story} refused 5 times")


def _play(url: str, player: Player, number: int, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        created = client.post("/api/stories", json={"prompt": f"You are player {number}, lost in a castle."})
        player.story = created.json()["id"]
        for line in player.setup:
            _turn(client, player.story, line)
        while not stop.is_set() or player.turns < MIN_TURNS:
            events = _turn(client, player.story, LINES[player.turns % len(LINES)], player.streaming)
            player.turns += 1
            results = [e["text"] for e in events if e.get("kind") == "result"]
            errors = [e for e in events if e.get("kind") == "error"]
            if events[-1] == {"end": True} and not results and [e.get("data") for e in errors] == ["stalled"]:
                player.stalled += 1  # a game outcome: the turn is taken out of the story, as in the terminal
            elif events[-1] != {"end": True} or len(results) != 1 or errors:
                player.failures.append(f"turn {player.turns}: {events[-3:]}")
            player.shown.extend(results)


def _kill_mid_turn(handle: Any, players: list[Player]) -> None:
    """SIGKILL the replica the first player's story lives on while its turn streams from it, with
    every player mid-game; then wait until play goes on."""
    victim = _generate(handle, players[0].story or "victim", [1, 2, 3])["pid"]
    turns_before = sum(p.turns for p in players)
    players[0].streaming.clear()
    assert players[0].streaming.wait(60), "the first player's turns stopped streaming"
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: sum(p.turns for p in players) >= turns_before + 2 * len(players), 120, "play went on")


@pytest.mark.slow
def test_players_under_load_scale_up_survive_a_killed_engine_and_scale_down(cluster: Cluster) -> None:
    handle = serve.get_deployment_handle("Engine", app_name="aidungeon")
    assert _engine_replicas("RUNNING") == _engine_replicas() == 2
    # The first player's turns are long, so a kill timed by one of its streamed pieces lands while
    # its call is still generating on the victim (a short turn could end between the piece and the kill).
    players = [Player(setup=("/set max_new_tokens 400",))] + [Player() for _ in range(PLAYERS - 1)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_play, args=(cluster.url, p, n, stop), daemon=True) for n, p in enumerate(players)
    ]
    for thread in threads:
        thread.start()
    try:
        decided_s = _wait_for(lambda: _engine_replicas() >= 3, 120, "the engine decided to scale up under load")
        up_s = _wait_for(lambda: _engine_replicas("RUNNING") >= 3, 180, "the third engine replica started")
        for _ in range(KILLS):
            _kill_mid_turn(handle, players)
            # Still under load, the engine is back at 3 (a replacement), so scaling down below is real.
            _wait_for(lambda: _engine_replicas("RUNNING") >= 3, 180, "the engine replaced the killed replica")
            if _retried_turns(cluster.logs) >= 1:
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(180)
    down_s = _wait_for(lambda: _engine_replicas() == 2, 120, "the engine scaled back down after the load")
    turns, stalled = sum(p.turns for p in players), sum(p.stalled for p in players)
    print(
        f"{PLAYERS} players, {turns} turns ({stalled} stalled by the game) on {cluster.database}; "
        f"scale-up decided in {decided_s:.1f} s and running {up_s:.1f} s later; back to 2 replicas {down_s:.1f} s "
        f"after the load; {_retried_turns(cluster.logs)} engine calls retried after the kill"
    )

    assert not any(t.is_alive() for t in threads)
    # Every turn ended, with its result or the game's own "stalled"; none in an error (a lost
    # engine replica is retried without a word to the player).
    assert [f for p in players for f in p.failures] == []
    assert stalled <= turns // 4, "most turns should give text even on the tiny model"
    assert _retried_turns(cluster.logs) >= 1, "the killed replica had no call in flight: the kill tested nothing"
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        for player in players:
            assert player.turns >= MIN_TURNS
            stored = client.get(f"/api/stories/{player.story}").json()["path"]
            # Every result a player was shown is in the database, in order; nothing else is.
            assert [t["result"] for t in stored] == player.shown


@dataclass
class ClientPlayer:
    """A player on the terminal's client code (aidungeon.client.api), as `aidungeon --server` plays."""

    story: str = ""
    shown: list[str] = field(default_factory=list)
    turns: int = 0
    notices: int = 0  # "lost the connection; trying again" lines this player saw
    replayed: int = 0  # turns answered from what the database had saved
    failures: list[str] = field(default_factory=list)


def _client_play(url: str, player: ClientPlayer, number: int, stop: threading.Event) -> None:
    from aidungeon.client.api import LOST, GameAPI, Retry
    from aidungeon.core.cancel import CancelToken
    from aidungeon.game.events import STALLED, EventKind

    # Patient enough for Ray to stop routing to a dead replica; every send of a turn has its key.
    api = GameAPI(url, retry=Retry(tries=8, first_s=0.5, most_s=4), timeout_s=120)
    try:
        player.story = api.create({"prompt": f"You are player {number}, lost in a castle."})
        while not stop.is_set() or player.turns < MIN_TURNS:
            line = LINES[player.turns % len(LINES)]
            try:
                events = list(api.turn(player.story, line, CancelToken()))
            except Exception as err:  # a failure to report, not to hide in a thread
                player.failures.append(f"turn {player.turns + 1}: {err}")
                return
            player.turns += 1
            results = [e.text for e in events if e.kind is EventKind.RESULT]
            errors = [e for e in events if e.kind is EventKind.ERROR and e.data != STALLED]
            player.notices += sum(e.text == LOST for e in events)
            player.replayed += bool(api.last_turn and api.last_turn.replayed)
            if errors or len(results) > 1 or not (results or any(e.data == STALLED for e in events)):
                player.failures.append(f"turn {player.turns}: {events[-3:]}")
            player.shown.extend(results)
    finally:
        api.close()


def _replicas(deployment: str, *states: str) -> int:
    counts = serve.status().applications["aidungeon"].deployments[deployment].replica_states
    by_name = {getattr(state, "value", str(state)): int(n) for state, n in counts.items()}
    return sum(by_name.get(state, 0) for state in states)


def _game_api_replicas() -> list[str]:
    """The actor names of the live game API replicas (Serve names them SERVE_REPLICA::APP#GameAPI#ID)."""
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::aidungeon#GameAPI#")
    ]


@pytest.mark.slow
def test_client_players_survive_a_killed_game_api_replica(cluster: Cluster) -> None:
    """A game API replica dies mid-load: its streams break, the client sends each broken turn again
    (same Idempotency-Key) and Ray's proxy routes it to the other replica; no turn is lost or
    applied twice, and each story in the database is what its player was shown."""
    _wait_for(lambda: _replicas("GameAPI", "RUNNING") == 2, 60, "two game API replicas")
    players = [ClientPlayer() for _ in range(CLIENT_PLAYERS)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client_play, args=(cluster.url, p, n, stop), daemon=True)
        for n, p in enumerate(players)
    ]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: all(p.turns >= 2 for p in players), 120, "every player played two turns")
        turns_before = sum(p.turns for p in players)
        victim, *_others = _game_api_replicas()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        _wait_for(lambda: sum(p.turns for p in players) >= turns_before + 3 * CLIENT_PLAYERS, 180, "play went on")
        _wait_for(
            lambda: victim not in (names := _game_api_replicas()) and len(names) == 2,
            120,
            "Ray replaced the killed replica",
        )
        replaced_s = time.monotonic() - killed_at
    finally:
        stop.set()
        for thread in threads:
            thread.join(180)
    turns = sum(p.turns for p in players)
    notices, replayed = sum(p.notices for p in players), sum(p.replayed for p in players)
    print(
        f"{CLIENT_PLAYERS} client players, {turns} turns on {cluster.database}; after ray.kill of a game API "
        f"replica: {notices} turns sent again ({replayed} answered from what was saved); replica back "
        f"{replaced_s:.1f} s after the kill"
    )
    assert not any(t.is_alive() for t in threads)
    assert [f for p in players for f in p.failures] == []
    assert notices >= 1, "no turn was in flight on the killed replica: the kill tested nothing"
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        for player in players:
            stored = client.get(f"/api/stories/{player.story}").json()["path"]
            # Every result shown is in the database, in order, once; nothing else is.
            assert [t["result"] for t in stored] == player.shown
