"""The previous one-cache engine against the batching engine: one session, one process, turns interleaved.

Both engines run on the same loaded model, each continuing its own story with cache reuse
(the action text, then the model's continuation, appended every turn), with the game's default
sampling, a fixed seed per turn and end-of-sequence ignored so every turn decodes the same
number of tokens. Turns alternate A/B/B/A, so load on a shared machine falls on both alike.
Prints one JSON object: median turn, first token and decode ms/token for each engine, their
ratios, and how many completions were identical. It measures; it changes nothing.

The previous engine is imported from a copy of its package under another name:

    git archive 0f589e5 aidungeon | tar -x -C /tmp/old
    mkdir /tmp/oldpkg && cp -r /tmp/old/aidungeon /tmp/oldpkg/aidungeon_old
    grep -rl 'aidungeon\\.' /tmp/oldpkg/aidungeon_old | xargs sed -i 's/\\baidungeon\\./aidungeon_old./g'
    OLD_PACKAGE=/tmp/oldpkg AIDUNGEON_HOME=... python benchmarks/engine_ab.py --turns 8 --new-tokens 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

from aidungeon.bench.speed import ACTIONS, OPENING
from aidungeon.core.config import Sampling
from aidungeon.model.engine import Engine
from aidungeon.model.loader import load_model
from aidungeon.storage.paths import default_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=40)
    args = parser.parse_args()
    sys.path.insert(0, os.environ["OLD_PACKAGE"])
    from aidungeon_old.core.config import Sampling as OldSampling
    from aidungeon_old.model.cpu.fastpath import lean_decoder
    from aidungeon_old.model.engine import Engine as OldEngine

    loaded = load_model(args.model, default_paths(dict(os.environ)), device="cpu", dtype="auto")
    tokenizer = loaded.tokenizer
    engines: dict[str, Any] = {
        "previous": OldEngine(loaded.model, tokenizer, window=loaded.window, step=lean_decoder(loaded.model)),
        "batching": Engine.for_model(loaded),
    }
    sampling = {
        "previous": OldSampling(max_new_tokens=args.new_tokens),
        "batching": Sampling(max_new_tokens=args.new_tokens),
    }
    for engine in engines.values():
        engine.eos_ids = set()  # every turn decodes exactly --new-tokens tokens
    opening = tokenizer.encode(OPENING)
    stories = {name: list(opening) for name in engines}
    records: dict[str, list[tuple[float, float, float, list[int]]]] = {name: [] for name in engines}

    def turn(name: str, number: int, keep: bool) -> None:
        story = stories[name]
        story += tokenizer.encode("\n> You " + ACTIONS[number % len(ACTIONS)] + ".\n")
        extra = {"session": "ab"} if name == "batching" else {}
        start = time.perf_counter()
        generation = engines[name].generate(list(story), sampling[name], seed=number, reuse_cache=True, **extra)
        for _ in generation:
            pass
        wall = time.perf_counter() - start
        tokens = list(generation.candidates[0].token_ids)
        story += tokens
        stats = generation.stats
        if keep:
            records[name].append((wall, stats.ttft_s, stats.decode_s / max(1, stats.new_tokens - 1) * 1e3, tokens))
        if len(story) + 100 + args.new_tokens > loaded.window:
            stories[name] = list(opening)

    for number in range(2):  # untimed: kernels, allocator and caches settle
        for name in engines:
            turn(name, number, keep=False)
    stories = {name: list(opening) for name in engines}
    for number in range(args.turns):
        for name in ("previous", "batching") if number % 2 == 0 else ("batching", "previous"):
            turn(name, number, keep=True)
    print(json.dumps(_summary(records, loaded.dtype), indent=1))


def _summary(records: dict[str, list[tuple[float, float, float, list[int]]]], dtype: Any) -> dict[str, Any]:
    def median(name: str, index: int) -> float:
        values: list[float] = [r[index] for r in records[name]]  # type: ignore[misc]
        return float(statistics.median(values))

    before, after = records["previous"], records["batching"]
    return {
        "threads": torch.get_num_threads(),
        "dtype": str(dtype),
        "turns": len(after),
        "previous_turn_s": median("previous", 0),
        "batching_turn_s": median("batching", 0),
        "turn_ratio": median("batching", 0) / median("previous", 0),
        "previous_ttft_s": median("previous", 1),
        "batching_ttft_s": median("batching", 1),
        "previous_ms_per_token": median("previous", 2),
        "batching_ms_per_token": median("batching", 2),
        "decode_ratio": median("batching", 2) / median("previous", 2),
        "identical_completions": sum(a[3] == b[3] for a, b in zip(before, after, strict=True)),
        "pair_turn_ratios": sorted(round(b[0] / a[0], 3) for a, b in zip(before, after, strict=True)),
    }


if __name__ == "__main__":
    main()
