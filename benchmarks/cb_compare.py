"""The project's batching engine against transformers' own continuous batching, back to back.

Issue 13, item 4: transformers 5.x ships continuous batching (`ContinuousBatchingManager`, behind
`model.generate_batch` and `model.init_continuous_batching`). This script runs both on the same
loaded model (same weights, same packed layers), the same prompts and the same number of new
tokens, at 1 and 4 sequences at once, alternating which goes first, and prints one JSON object.

The workload:
- prompts: the prompts the speed bench's scripted session sends on its first turns (recorded
  through the real game pipeline), one per sequence;
- greedy decoding, no repetition penalty, end-of-sequence ignored, so every sequence decodes
  exactly `--max-new-tokens` tokens on both engines (and greedy tokens can be compared);
- no cache reuse on either side: each repetition uses fresh sessions in ours and a manager
  without block sharing in transformers', so both prefill the whole prompt.

Per engine and concurrency it reports the wall time from submitting to the last token, the
aggregate decode rate (all new tokens / wall time), the median time to first token, and how
many greedy tokens agree with the other engine's. It measures; it changes nothing in the game.

    AIDUNGEON_HOME=/root/.cache/aidungeon-tests python benchmarks/cb_compare.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

import torch

from aidungeon.core.config import Config, Sampling
from aidungeon.model.engine import Engine
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.model.protocol import Request
from aidungeon.storage.paths import default_paths


class RecordingEngine(Engine):
    """The engine, keeping every prompt the game submits (to replay them on both engines)."""

    prompts: list[list[int]]

    def submit(self, request: Request) -> Any:
        self.prompts.append(list(request.prompt_ids))
        return super().submit(request)


def bench_prompts(loaded: LoadedModel, count: int, context: int) -> list[list[int]]:
    """The prompts of the speed bench's first `count` turns, as the game builds them."""
    from aidungeon.bench.speed import play_session

    engine = RecordingEngine.for_model(loaded)
    assert isinstance(engine, RecordingEngine)
    engine.prompts = []
    config = Config().with_value("context_tokens", min(context, loaded.window)).with_value("seed", 1234)
    play_session(loaded, config.with_value("candidates", 1), count, reuse_cache=True, raw=False, engine=engine)
    return engine.prompts[:count]


def run_ours(engine: Engine, prompts: list[list[int]], new_tokens: int, tag: str) -> dict[str, Any]:
    """All prompts at once through the engine, read in turns by one thread as players would."""
    sampling = Sampling(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=new_tokens)
    start = time.perf_counter()
    handles = [engine.generate(p, sampling, session=f"{tag}-{i}", reuse_cache=False) for i, p in enumerate(prompts)]
    live = [iter(h) for h in handles]
    while live:
        for stream in list(live):
            try:
                next(stream)
            except StopIteration:
                live.remove(stream)
    wall = time.perf_counter() - start
    tokens = [h.candidates[0].token_ids for h in handles]
    return _figures(wall, [h.stats.ttft_s for h in handles], tokens)


def run_transformers(manager: Any, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
    """All prompts at once through transformers' manager (its own background thread)."""
    start = time.perf_counter()
    ids = [manager.add_request(p, max_new_tokens=new_tokens, record_timestamps=True, eos_token_id=-1) for p in prompts]
    results: dict[str, Any] = {}
    while len(results) < len(ids):
        out = manager.get_result(timeout=600)
        if out is None:
            raise RuntimeError("transformers' continuous batching returned nothing for 600 s")
        if out.is_finished():
            if out.error:
                raise RuntimeError(f"transformers' continuous batching failed: {out.error}")
            results[out.request_id] = out
    wall = time.perf_counter() - start
    outs = [results[i] for i in ids]
    # Both clocks are perf_counter: created_time is when add_request made the request.
    ttfts = [o.timestamps[0] - o.created_time for o in outs]
    return _figures(wall, ttfts, [list(o.generated_tokens) for o in outs])


def _figures(wall: float, ttfts: list[float], tokens: list[list[int]]) -> dict[str, Any]:
    new = sum(len(t) for t in tokens)
    return {
        "wall_s": wall,
        "new_tokens": new,
        "aggregate_tok_s": new / wall,
        "median_ttft_s": statistics.median(ttfts),
        "tokens": tokens,
    }


def start_manager(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, concurrency: int) -> Any:
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    generation = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=-1)
    hints = WorkloadHints(
        max_prompt_length=max(len(p) for p in prompts), max_generated_length=new_tokens, num_requests=concurrency
    )
    manager = loaded.model.init_continuous_batching(
        generation_config=generation,
        continuous_batching_config=ContinuousBatchingConfig(allow_block_sharing=False),
        workload_hints=hints,
    )
    manager.start()
    return manager


def compare(loaded: LoadedModel, prompts: list[list[int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """For each concurrency: `reps` pairs, alternating which engine goes first; one untimed
    warm-up run of each first."""
    rows = []
    for concurrency in args.concurrency:
        batch = prompts[:concurrency]
        engine = Engine.for_model(loaded)
        engine.eos_ids = set()  # decode exactly max_new_tokens, as transformers' eos_token_id=-1 does
        manager = start_manager(loaded, batch, args.max_new_tokens, concurrency)
        try:
            run_ours(engine, batch, args.max_new_tokens, "warm")
            run_transformers(manager, batch, args.max_new_tokens)
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "transformers": []}
            for rep in range(args.reps):
                order = ["ours", "transformers"] if rep % 2 == 0 else ["transformers", "ours"]
                for name in order:
                    if name == "ours":
                        runs[name].append(run_ours(engine, batch, args.max_new_tokens, f"r{rep}"))
                    else:
                        runs[name].append(run_transformers(manager, batch, args.max_new_tokens))
        finally:
            manager.stop(block=True)
        rows.append(_row(concurrency, runs))
    return rows


def _row(concurrency: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    ours, theirs = runs["ours"][0]["tokens"], runs["transformers"][0]["tokens"]
    same = sum(a == b for x, y in zip(ours, theirs, strict=True) for a, b in zip(x, y, strict=True))
    return {
        "concurrency": concurrency,
        "ours_aggregate_tok_s": median("ours", "aggregate_tok_s"),
        "transformers_aggregate_tok_s": median("transformers", "aggregate_tok_s"),
        "transformers_to_ours": median("transformers", "aggregate_tok_s") / median("ours", "aggregate_tok_s"),
        "ours_median_ttft_s": median("ours", "median_ttft_s"),
        "transformers_median_ttft_s": median("transformers", "median_ttft_s"),
        "ours_wall_s": [round(r["wall_s"], 3) for r in runs["ours"]],
        "transformers_wall_s": [round(r["wall_s"], 3) for r in runs["transformers"]],
        "greedy_tokens_agreeing": same / sum(len(x) for x in ours),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import os

    loaded = load_model(args.model, default_paths(dict(os.environ)), device="cpu", dtype=args.dtype)
    prompts = bench_prompts(loaded, max(args.concurrency), args.context)
    with torch.inference_mode():
        rows = compare(loaded, prompts, args)
    print(
        json.dumps(
            {
                "model": loaded.name,
                "dtype": str(loaded.dtype),
                "packed_layers": loaded.packed_layers,
                "torch_threads": torch.get_num_threads(),
                "prompt_tokens": [len(p) for p in prompts],
                "max_new_tokens": args.max_new_tokens,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
