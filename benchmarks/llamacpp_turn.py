"""One session's turn against llama.cpp (llama-cpp-python), same process, turns alternating (issue 13).

Both continue the same prompt (the speed bench's opening and an action) by exactly
`--new-tokens` tokens (end-of-sequence ignored), greedy, each reusing its own cache across
turns: llama.cpp through `Llama.generate` with its prefix reuse, the project's engine with its
session cache; the default model's GGUF (Q4_1, 2 threads, 2048 window) against the same model as
the loader gives it (bf16 + 4-bit, 8-bit head). Each turn appends an action to both stories.
Prints one JSON object: median turn s for each and their ratio. It measures; it changes nothing.

    AIDUNGEON_HOME=/root/.cache/aidungeon-tests python benchmarks/llamacpp_turn.py --turns 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from aidungeon.bench.speed import ACTIONS, OPENING
from aidungeon.core.config import Sampling
from aidungeon.model.engine import Engine
from aidungeon.model.loader import load_model
from aidungeon.storage.paths import default_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=60)
    args = parser.parse_args()
    from llama_cpp import Llama

    home = Path(os.environ["AIDUNGEON_HOME"])
    gguf = next(home.rglob("*.gguf"))
    llama = Llama(str(gguf), n_ctx=2048, n_threads=torch.get_num_threads(), verbose=False)
    loaded = load_model("smollm2-135m", default_paths(dict(os.environ)), device="cpu")
    engine = Engine.for_model(loaded)
    engine.eos_ids = set()
    sampling = Sampling(temperature=0.0, max_new_tokens=args.new_tokens)
    tokenizer = loaded.tokenizer
    ours: list[int] = tokenizer.encode(OPENING)
    theirs: list[int] = llama.tokenize(OPENING.encode(), add_bos=False)
    times: dict[str, list[float]] = {"ours": [], "llama.cpp": []}

    def our_turn(action: str, keep: bool) -> None:
        ours.extend(tokenizer.encode(action))
        start = time.perf_counter()
        generation = engine.generate(list(ours), sampling, session="turn")
        generation.run()
        if keep:
            times["ours"].append(time.perf_counter() - start)
        ours.extend(generation.candidates[0].token_ids)

    def their_turn(action: str, keep: bool) -> None:
        theirs.extend(llama.tokenize(action.encode(), add_bos=False))
        start = time.perf_counter()
        new = []
        # reset=True (the default) keeps the longest common prefix of its cache: reuse, as ours.
        for token in llama.generate(theirs, top_k=1):
            new.append(token)
            if len(new) == args.new_tokens:
                break
        if keep:
            times["llama.cpp"].append(time.perf_counter() - start)
        theirs.extend(new)

    for number in range(args.turns + 1):
        action = f"\n> You {ACTIONS[number % len(ACTIONS)]}.\n"
        pair = (our_turn, their_turn) if number % 2 == 0 else (their_turn, our_turn)
        for turn in pair:
            turn(action, keep=number > 0)  # the first turn is untimed
    summary = {name: statistics.median(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "turns": args.turns,
                "new_tokens": args.new_tokens,
                "threads": torch.get_num_threads(),
                "ours_turn_s": summary["ours"],
                "llama_cpp_turn_s": summary["llama.cpp"],
                "ratio": summary["ours"] / summary["llama.cpp"],
                "ours_all_s": [round(t, 3) for t in times["ours"]],
                "llama_cpp_all_s": [round(t, 3) for t in times["llama.cpp"]],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
