"""A study: would ranking a turn's candidates by how much the action explains them pick better ones?

    python benchmarks/gold/rerank.py RUN.jsonl OUT.jsonl

RUN is written by `play.py --with-candidates` (the guard's ranking, best first). For every turn
with an action and two or more candidates, it measures each candidate's gain, as `measure.py`
does for the gold set:

    gain = (log P(text | action) - log P(text | "You wait.")) / tokens

and picks, among the candidates the guard finds no more flawed than its own choice (the same
or a smaller penalty for the flags it sees on the shown text), the one with the highest gain.
OUT holds, per turn, the guard's choice, the gain pick and every gain. It changes nothing in the
game; whether the gain pick reads better is for a person to judge (blind, see RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from measure import MODEL, NEUTRAL, measure

from aidungeon.bench.detectors import read_gold
from aidungeon.core import guard
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.storage.paths import default_paths


def penalty(text: str, record: dict[str, Any]) -> float:
    """The guard's penalty for the flags it can see on a shown text (its raw text is not kept)."""
    flags = guard.assess(text, text, recent=record["recent"], player_name=record["player_name"] or None)
    return -guard.score(flags, 0.0)


def gain(loaded: LoadedModel, action: str, text: str) -> float:
    """Nats per token by which the action explains the text better than "You wait." does."""
    tokens, logprobs = measure(loaded, action, text)
    return (logprobs[action] - logprobs.get(NEUTRAL, logprobs[action])) / max(1, tokens)


def rerank(loaded: LoadedModel, record: dict[str, Any]) -> dict[str, Any]:
    """One turn: the guard's choice, the gain pick (among candidates no more flawed) and the gains."""
    candidates = record["candidates"]
    gains = [gain(loaded, record["action"], text) for text in candidates]
    bar = penalty(candidates[0], record)
    allowed = [i for i, text in enumerate(candidates) if penalty(text, record) <= bar]
    pick = max(allowed, key=lambda i: gains[i])
    row = {"id": record["id"], "action": record["action"], "recent": record["recent"]}
    row |= {"player_name": record["player_name"], "guard": candidates[0], "gain_pick": candidates[pick]}
    return row | {"pick": pick, "gains": gains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the project's machine has 2 shared cores
    home = os.environ.get("AIDUNGEON_TEST_MODEL_HOME", str(Path.home() / ".cache" / "aidungeon-tests"))
    loaded = load_model(MODEL, default_paths({"AIDUNGEON_HOME": home}), device="cpu", dtype="float32", pack=False)
    with args.out.open("w", encoding="utf-8") as out:
        for record in read_gold(args.run):
            if record["action"] and len(record.get("candidates", [])) >= 2:
                out.write(json.dumps(rerank(loaded, record), ensure_ascii=False) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
