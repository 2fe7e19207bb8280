"""What the narrator- and player-voice steps cost per decode step, against the rest of sampling.

    python benchmarks/gold/voice_cost.py [--model smollm2-135m] [--rows 1 4] [--generated 60]

Times `build_processors`' list with the voice steps and without, on the model's real vocabulary
size and tokenizer, for `rows` rows with `generated` tokens already sampled (the steps' cost
grows with the generated length: they count each row's quotes), median of many calls. It does
not run the model: the decode step's own time is in RESULTS.md (18-60 ms for the default model).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import cast

import torch
from transformers import LogitsProcessorList

from aidungeon.core.config import Sampling
from aidungeon.model.loader import load_model
from aidungeon.model.sampling import build_processors
from aidungeon.model.voice import VoiceVocabulary
from aidungeon.storage.paths import default_paths

REPEATS = 400


def per_call_ms(
    lists: dict[str, LogitsProcessorList], input_ids: torch.Tensor, scores: torch.Tensor
) -> dict[str, float]:
    """Median milliseconds of one call of each processor list, the lists called in turn (so a
    busy moment of the shared machine falls on both alike)."""
    times: dict[str, list[float]] = {name: [] for name in lists}
    with torch.inference_mode():
        for _ in range(REPEATS):
            for name, processors in lists.items():
                start = time.perf_counter()
                processors(cast(torch.LongTensor, input_ids), cast(torch.FloatTensor, scores.clone()))
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--generated", type=int, nargs="+", default=[1, 60])
    args = parser.parse_args()
    home = os.environ.get("AIDUNGEON_TEST_MODEL_HOME", str(Path.home() / ".cache" / "aidungeon-tests"))
    loaded = load_model(args.model, default_paths({"AIDUNGEON_HOME": home}), device="cpu")
    tokenizer, vocab = loaded.tokenizer, int(loaded.model.config.vocab_size)
    start = time.perf_counter()
    VoiceVocabulary.of(tokenizer)
    print(f"tables built once in {time.perf_counter() - start:.2f} s for {len(tokenizer)} tokens")
    prompt = 700
    generator = torch.Generator().manual_seed(0)
    for rows, generated in [(r, g) for r in args.rows for g in args.generated]:
        input_ids = torch.randint(0, len(tokenizer), (rows, prompt + generated), generator=generator)
        scores = torch.randn(rows, vocab, generator=generator)
        lists = {
            name: build_processors(
                sampling, prompt_length=prompt, eos_ids=[0], vocab_limit=len(tokenizer), tokenizer=tokenizer
            )
            for name, sampling in (("off", Sampling(narrator_voice=False, player_voice=False)), ("on", Sampling()))
        }
        timings = per_call_ms(lists, input_ids, scores)
        extra = timings["on"] - timings["off"]
        print(
            f"rows {rows}, {generated} generated: processors {timings['off']:.3f} ms without the voice steps, "
            f"{timings['on']:.3f} ms with them (+{extra:.3f} ms per step)"
        )


if __name__ == "__main__":
    main()
