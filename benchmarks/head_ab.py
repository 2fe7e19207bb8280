"""The bf16 output layer against the 8-bit one (issue 13), A/B in one process on one loaded model.

Two figures, each alternating the two heads call by call (or turn by turn), so load on a shared
machine falls on both alike:
- the lean decode step for 1, 2, 4 and 8 rows, each row a session with its own 300-token cache
  (the step writes its token at the same position every call, so every call is the same work);
- one session's turns through the engine (the game's default sampling, end-of-sequence ignored
  so every turn decodes `--new-tokens` tokens, cache reused, a seed per turn), turns A/B/B/A.

Prints one JSON object: per rows the median and best step in ms for each head and their ratio,
and the median turn, first token and ms/token for each head. It measures; it changes nothing.

    AIDUNGEON_HOME=/root/.cache/aidungeon-tests python benchmarks/head_ab.py --reps 40 --turns 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch
from transformers import StaticCache

from aidungeon.bench.speed import ACTIONS, OPENING
from aidungeon.core.config import Sampling
from aidungeon.model.cpu.fastpath import DecodeStep, Group, LlamaStep
from aidungeon.model.cpu.packing import PrepackedLinear
from aidungeon.model.engine import Engine
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.storage.paths import default_paths

HEADS = ("bf16", "int8")
CONTEXT = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=60)
    args = parser.parse_args()
    loaded = load_model(args.model, default_paths(dict(os.environ)), device="cpu")
    model = loaded.model
    heads: dict[str, Any] = {
        "int8": model.get_output_embeddings(),
        "bf16": PrepackedLinear(model.get_input_embeddings().weight.detach(), None),
    }
    steps: dict[str, DecodeStep] = {}
    for name, head in heads.items():
        model.set_output_embeddings(head)
        steps[name] = LlamaStep(model)
    results = {
        "model": loaded.name,
        "dtype": loaded.dtype,
        "threads": torch.get_num_threads(),
        "heads": {name: type(head).__name__ for name, head in heads.items()},
        "step": step_ab(loaded, steps, args.reps),
        "turn": turn_ab(loaded, heads, steps, args.turns, args.new_tokens),
    }
    print(json.dumps(results, indent=1))


def step_ab(loaded: LoadedModel, steps: dict[str, DecodeStep], reps: int) -> dict[str, Any]:
    """Median and best ms of a decode step per rows and head, calls alternating."""
    model, tokenizer = loaded.model, loaded.tokenizer
    text = " ".join(f"{OPENING} You {action}." for action in ACTIONS)
    ids = tokenizer.encode(text, add_special_tokens=False)
    caches = []
    with torch.inference_mode():
        for session in range(8):
            cache = StaticCache(config=model.config, max_cache_len=512)
            prompt = ids[session * 7 : session * 7 + CONTEXT]
            model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
            caches.append(cache)
    out: dict[str, Any] = {}
    for rows in (1, 2, 4, 8):
        groups = [Group(cache, prefix=CONTEXT) for cache in caches[:rows]]
        tokens = torch.tensor(ids[CONTEXT : CONTEXT + rows])
        times: dict[str, list[float]] = {name: [] for name in steps}
        with torch.inference_mode():
            for name in steps:  # untimed
                steps[name](tokens, groups)
            for rep in range(reps):
                for name in HEADS if rep % 2 == 0 else HEADS[::-1]:
                    start = time.perf_counter()
                    steps[name](tokens, groups)
                    times[name].append((time.perf_counter() - start) * 1e3)
        row: dict[str, float] = {}
        for name in HEADS:
            row[f"{name}_median_ms"] = statistics.median(times[name])
            row[f"{name}_best_ms"] = min(times[name])
        row["median_ratio"] = row["int8_median_ms"] / row["bf16_median_ms"]
        row["best_ratio"] = row["int8_best_ms"] / row["bf16_best_ms"]
        out[str(rows)] = row
    return out


def turn_ab(
    loaded: LoadedModel, heads: dict[str, Any], steps: dict[str, DecodeStep], turns: int, new_tokens: int
) -> dict[str, Any]:
    """One session a head, each continuing its own story; turns alternate A/B/B/A."""
    model, tokenizer = loaded.model, loaded.tokenizer
    engines = {name: Engine(model, tokenizer, window=loaded.window, step=steps[name]) for name in HEADS}
    for engine in engines.values():
        engine.eos_ids = set()  # every turn decodes exactly new_tokens tokens
    sampling = Sampling(max_new_tokens=new_tokens)
    opening = tokenizer.encode(OPENING)
    stories = {name: list(opening) for name in HEADS}
    # Per turn: (wall s, first token s, ms a token) and the tokens.
    records: dict[str, list[tuple[tuple[float, float, float], list[int]]]] = {name: [] for name in HEADS}

    def turn(name: str, number: int, keep: bool) -> None:
        model.set_output_embeddings(heads[name])  # prefill's last position too
        story = stories[name]
        story += tokenizer.encode("\n> You " + ACTIONS[number % len(ACTIONS)] + ".\n")
        start = time.perf_counter()
        generation = engines[name].generate(list(story), sampling, seed=number, session=name)
        generation.run()
        wall = time.perf_counter() - start
        tokens = list(generation.candidates[0].token_ids)
        story += tokens
        stats = generation.stats
        if keep:
            records[name].append(((wall, stats.ttft_s, stats.decode_s / max(1, stats.new_tokens - 1) * 1e3), tokens))
        if len(story) + 100 + new_tokens > loaded.window:
            stories[name] = list(opening)

    for number in range(2):  # untimed
        for name in HEADS:
            turn(name, number, keep=False)
    stories = {name: list(opening) for name in HEADS}
    for number in range(turns):
        for name in HEADS if number % 2 == 0 else HEADS[::-1]:
            turn(name, number, keep=True)
    model.set_output_embeddings(heads["int8"])

    def median(name: str, index: int) -> float:
        return float(statistics.median(timing[index] for timing, _ in records[name]))

    summary: dict[str, Any] = {"turns": turns, "new_tokens": new_tokens}
    for name in HEADS:
        summary[f"{name}_turn_s"] = median(name, 0)
        summary[f"{name}_ttft_s"] = median(name, 1)
        summary[f"{name}_ms_per_token"] = median(name, 2)
    summary["turn_ratio"] = summary["int8_turn_s"] / summary["bf16_turn_s"]
    summary["decode_ratio"] = summary["int8_ms_per_token"] / summary["bf16_ms_per_token"]
    summary["pair_turn_ratios"] = sorted(
        round(b[0][0] / a[0][0], 3) for a, b in zip(records["bf16"], records["int8"], strict=True)
    )
    return summary


if __name__ == "__main__":
    main()
