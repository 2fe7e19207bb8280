"""`aidungeon bench serve`: simulated players against a real `aidungeon serve`, batched and not.

Each player creates a story, then plays scripted turns over HTTP with a think time between them,
as a person would. For each number of players it reports the time to first token (p50, p95),
the turn time, the aggregate shown tokens per second, errors and 503s, and the most players the
server held at p95 time to first token <= 1 s. Unless `--url` names a running server, it starts
its own twice on the same model: batching on (`--max-running 64`), and one turn at a time
(`--max-running 1`), which is AI Dungeon 2's one-request-per-replica Cortex design; the ratio of
players held is the headline. It returns results and prints nothing: the CLI shows them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aidungeon.bench.speed import ACTIONS, OPENING, _int_list

TTFT_LIMIT_S = 1.0
MODES = {"batched": 64, "one at a time": 1}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--players", type=_int_list, default=[1, 4, 8, 16], help="serve: players to sweep, e.g. 1,4,8")
    parser.add_argument("--think", type=float, default=3.0, help="serve: mean seconds a player reads and types")
    parser.add_argument("--url", help="serve: a running server to drive instead of starting one")
    parser.add_argument("--token", help="serve: bearer token for --url")


@dataclass
class TurnSample:
    ttft_s: float
    turn_s: float
    new_tokens: int


@dataclass
class PlayerLog:
    turns: list[TurnSample] = field(default_factory=list)
    busy: int = 0  # 503s
    errors: list[str] = field(default_factory=list)


def serve_bench(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """The sweep against `--url`, or against servers this bench starts on `model`."""
    turns = args.turns or 5
    if args.url:
        runs = {"as is": _sweep(args.url, args.token, args.players, turns, args.think)}
    else:
        runs = {mode: _with_server(model, running, args, turns) for mode, running in MODES.items()}
    held = {mode: _held(points) for mode, points in runs.items()}
    result: dict[str, Any] = {"model": model if not args.url else args.url, "turns": turns, "think_s": args.think}
    result.update(runs=runs, held=held)
    if "batched" in held and held["one at a time"]:
        result["held_ratio"] = held["batched"] / held["one at a time"]
    return result


def _with_server(model: str, running: int, args: argparse.Namespace, turns: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="aidungeon-bench-serve-") as folder:
        command = [
            sys.executable, "-m", "aidungeon", "serve", "--model", model, "--port", "0",
            "--db", f"sqlite:///{Path(folder) / 'bench.db'}", "--max-running", str(running),
            "--max-waiting", "1024", "--turns-per-minute", "100000",
        ]  # fmt: skip
        log = Path(folder) / "serve.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            url = _wait_for(process, log)
            return _sweep(url, None, args.players, turns, args.think)
        finally:
            process.terminate()
            process.wait(120)


def _wait_for(process: subprocess.Popen[str], log: Path, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving at (http://\S+?)/ ", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("the server did not start in time")


def _sweep(url: str, token: str | None, players: list[int], turns: int, think: float) -> list[dict[str, Any]]:
    return [_point(url, token, n, turns, think) for n in players]


def _point(url: str, token: str | None, players: int, turns: int, think: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    logs = [PlayerLog() for _ in range(players)]
    started = time.perf_counter()
    threads = [
        threading.Thread(target=_player, args=(url, headers, turns, think, random.Random(n), logs[n]))
        for n in range(players)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    samples = [s for log in logs for s in log.turns]
    ttfts = sorted(s.ttft_s for s in samples)
    return {
        "players": players,
        "turns": len(samples),
        "ttft_p50_s": _quantile(ttfts, 0.5),
        "ttft_p95_s": _quantile(ttfts, 0.95),
        "turn_p50_s": _quantile(sorted(s.turn_s for s in samples), 0.5),
        "tok_s": sum(s.new_tokens for s in samples) / wall if wall > 0 else 0.0,
        "busy_503": sum(log.busy for log in logs),
        "errors": [e for log in logs for e in log.errors][:5],
        "error_count": sum(len(log.errors) for log in logs),
    }


def _player(url: str, headers: dict[str, str], turns: int, think: float, rng: random.Random, log: PlayerLog) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        try:
            response = client.post("/api/stories", json={"prompt": OPENING})
            response.raise_for_status()
            story_id = response.json()["id"]
            lines = ["", *rng.sample(ACTIONS, k=len(ACTIONS))]
            for number in range(turns):
                time.sleep(rng.uniform(0.5, 1.5) * think if number else rng.uniform(0, think))
                _turn(client, story_id, lines[number % len(lines)], log)
        except (httpx.HTTPError, KeyError, ValueError) as err:
            log.errors.append(f"{type(err).__name__}: {err}")


def _turn(client: httpx.Client, story_id: str, line: str, log: PlayerLog) -> None:
    """One turn; a 503 is retried after its Retry-After, as a client should."""
    while True:
        start = time.perf_counter()
        first: float | None = None
        end: dict[str, Any] | None = None
        with client.stream("POST", f"/api/stories/{story_id}/turns", json={"text": line}) as response:
            if response.status_code == 503:
                log.busy += 1
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code != 200:
                log.errors.append(f"HTTP {response.status_code}: {response.read()[:200]!r}")
                return
            kind = ""
            for text in response.iter_lines():
                if text.startswith("event: "):
                    kind = text[7:]
                elif text.startswith("data: "):
                    if kind == "end":
                        end = json.loads(text[6:])
                    elif first is None and '"kind": "piece"' in text:
                        first = time.perf_counter() - start
                    kind = ""
        if end is None:
            log.errors.append("the stream ended without its end event")
        elif first is not None:
            log.turns.append(TurnSample(first, time.perf_counter() - start, int(end.get("new_tokens", 0))))
        return


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _held(points: list[dict[str, Any]]) -> int:
    """The most players whose p95 time to first token stayed within the limit, with no errors."""
    good = [p["players"] for p in points if p["ttft_p95_s"] <= TTFT_LIMIT_S and not p["error_count"] and p["turns"]]
    return max(good, default=0)
