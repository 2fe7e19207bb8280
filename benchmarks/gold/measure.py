"""An experiment: does the model's own likelihood tell an ignored action better than word overlap?

    python benchmarks/gold/measure.py [--split dev|test|all] [--out OUT.jsonl] [--append]

For every gold turn with an action it writes the result's token count and its summed
log-probability after the action and after the neutral action "You wait." (SmolLM2-135M-Instruct,
fp32 on the CPU, transformers' plain forward; the prompt is the narrator's instructions and the
action, in the game's chat layout). `evaluate.py` reads the file (`action_logprobs.jsonl` beside
the gold set) and reports how well the gain

    gain = (log P(result | action) - log P(result | "You wait.")) / tokens

tells the labelled ignored actions, alone and with the word-overlap detector. Labels play no
part here: it reads actions and texts only. It is not part of the bench: on the development
turns it did not beat word overlap (benchmarks/RESULTS.md, issue #14).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from aidungeon.bench.detectors import read_gold
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.storage.paths import default_paths

MODEL = "smollm2-135m"
NEUTRAL = "You wait."


def text_logprob(loaded: LoadedModel, prompt: str, text: str) -> tuple[float, int]:
    """The summed log-probability of `text`'s tokens after `prompt` (tokenized apart), and their count."""
    tokenizer: Any = loaded.tokenizer
    prefix = tokenizer(prompt)["input_ids"]
    target = tokenizer(text)["input_ids"]
    ids = torch.tensor([prefix + target])
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids, use_cache=False).logits[0, len(prefix) - 1 : -1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prefix) :, None])
    return float(picked.sum()), len(target)


def measure(loaded: LoadedModel, action: str, text: str) -> tuple[int, dict[str, float]]:
    """The text's token count and its log-likelihood after `action` and after the neutral action."""
    layout = loaded.layout
    logprobs: dict[str, float] = {}
    tokens = 0
    for each in dict.fromkeys((action, NEUTRAL)):
        prompt = layout.header + layout.action.replace("{action}", each)
        logprobs[each], tokens = text_logprob(loaded, prompt, text)
    return tokens, logprobs


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", type=Path, default=here / "gold.jsonl")
    parser.add_argument("--out", type=Path, default=here / "action_logprobs.jsonl")
    parser.add_argument("--split", choices=["dev", "test", "all"], default="all")
    parser.add_argument("--append", action="store_true", help="add to OUT instead of replacing it")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the project's machine has 2 shared cores
    home = os.environ.get("AIDUNGEON_TEST_MODEL_HOME", str(Path.home() / ".cache" / "aidungeon-tests"))
    loaded = load_model(MODEL, default_paths({"AIDUNGEON_HOME": home}), device="cpu", dtype="float32", pack=False)
    records = read_gold(args.gold)
    ordered = [r for r in records if r["split"] == "dev"] + [r for r in records if r["split"] != "dev"]
    with args.out.open("a" if args.append else "w", encoding="utf-8") as lines:
        for record in ordered:
            if not record["action"] or not record["text"] or args.split not in ("all", record["split"]):
                continue
            tokens, logprobs = measure(loaded, record["action"], record["text"])
            row = {"id": record["id"], "model": loaded.name, "tokens": tokens, "logprobs": logprobs}
            lines.write(json.dumps(row, ensure_ascii=False) + "\n")
            lines.flush()


if __name__ == "__main__":
    main()
