"""Measure the Ray Serve app on a local cluster: players held, TTFT and turn time over HTTP, and
what story affinity saves in prefill.

    PYTHONPATH=. python benchmarks/ray/measure.py --model DIR [--players 20] [--seconds 60]
        [--affinity on|off] [--db URL] [--json OUT]

It starts a local Ray cluster (127.0.0.1, token auth off), deploys `aidungeon/server/scale/local.yaml`
with two fixed engine replicas (autoscaling off, so the two runs compare like with like) and the
story-affinity router (`--affinity on`) or Ray's default power-of-two router (`off`), then:
1. `--players` simulated players play turns over HTTP for `--seconds`; TTFT is the time from
   sending a turn to its first streamed piece, turn time to its `end` event;
2. as many stories again play 6 engine calls each straight through the Engine handle, each prompt
   the last one plus its completion plus an action (the shape of game turns), and the prefill
   tokens of calls 2-6 are counted: with affinity they should be the new part only.
It prints one JSON object. Not a test: numbers depend on the machine and on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling
from aidungeon.model.protocol import Request
from aidungeon.server.ray_app import deploy_config
from aidungeon.server.scale.wire import request_to_wire, result_from_wire

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROUTER = "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"
LINES = ("look around", "open the door", "say hello", "walk north", "take the lamp")


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else 0.0)


def _config(tmp: Path, model: str, db: str, affinity: bool) -> Path:
    config = yaml.safe_load((REPO / "aidungeon/server/scale/local.yaml").read_text())
    config["http_options"]["port"] = 18555
    app = config["applications"][0]
    app["args"].update(model=model, db=db)
    engine = next(d for d in app["deployments"] if d["name"] == "Engine")
    engine.pop("autoscaling_config")
    engine["num_replicas"] = 2
    if not affinity:
        engine["request_router_config"] = {"request_router_class": DEFAULT_ROUTER}
    path = tmp / "measure.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _player(url: str, n: int, until: float, ttft: list[float], turn_s: list[float]) -> int:
    turns = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        story = client.post("/api/stories", json={"prompt": f"You are player {n}, lost in a castle."}).json()["id"]
        while time.monotonic() < until:
            start, first = time.monotonic(), None
            with client.stream("POST", f"/api/stories/{story}/turns", json={"text": LINES[turns % 5]}) as r:
                for line in r.iter_lines():
                    if first is None and line.startswith("data:") and '"piece"' in line:
                        first = time.monotonic() - start
            turn_s.append(time.monotonic() - start)
            if first is not None:
                ttft.append(first)
            turns += 1
    return turns


def _story_calls(handle: Any, tokenizer: Any, n: int) -> list[int]:
    """Prefill tokens of calls 2..6 of one story (its prompt grows like a game's)."""
    ids = tokenizer.encode(f"You are explorer {n}. You enter a dark cave and look around carefully.")
    prefills = []
    for call in range(6):
        request = Request(f"bench-{n}", tuple(ids), Sampling(max_new_tokens=24), CancelToken(), seed=n * 10 + call)
        last: dict[str, Any] = {}
        for message in handle.options(stream=True).generate.remote(request_to_wire(request)):
            last = message
        result = result_from_wire(last["result"])
        if call:
            prefills.append(result.stats.prefill_tokens)
        ids = ids + result.completions[0].token_ids + tokenizer.encode(f"\n> You {LINES[call % 5]}.\n")
    return prefills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--players", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--affinity", choices=("on", "off"), default="on")
    parser.add_argument("--db")
    parser.add_argument("--json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="adm", dir="/tmp"))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {"AIDUNGEON_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        log_to_driver=False,
        _temp_dir=str(tmp / "ray"),
    )
    try:
        start = time.monotonic()
        db = args.db or f"sqlite:///{tmp / 'measure.db'}"
        url = deploy_config(_config(tmp, str(Path(args.model).resolve()), db, args.affinity == "on"))
        up_s = time.monotonic() - start
        ttft: list[float] = []
        turn_s: list[float] = []
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=_player, args=(url, n, until, ttft, turn_s)) for n in range(args.players)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        handle = serve.get_deployment_handle("Engine", app_name="aidungeon")
        tokenizer = handle.describe.remote().result()["tokenizer"]
        with ThreadPoolExecutor(args.players) as pool:
            prefills = [
                p for ps in pool.map(lambda n: _story_calls(handle, tokenizer, n), range(args.players)) for p in ps
            ]
        print(
            json.dumps(
                report := {
                    "affinity": args.affinity,
                    "players": args.players,
                    "seconds": args.seconds,
                    "database": db.split(":")[0],
                    "cluster_up_s": round(up_s, 1),
                    "turns": len(turn_s),
                    "turns_per_s": round(len(turn_s) / args.seconds, 2),
                    "ttft_p50_s": round(_p(ttft, 50), 3),
                    "ttft_p95_s": round(_p(ttft, 95), 3),
                    "turn_p50_s": round(_p(turn_s, 50), 3),
                    "turn_p95_s": round(_p(turn_s, 95), 3),
                    "engine_calls_measured": len(prefills),
                    "prefill_tokens_per_call_after_the_first": round(statistics.mean(prefills), 1),
                }
            )
        )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
