"""Turn records, as `benchmarks/gold/play.py` writes them, from the autosave of an adventure it was still playing.

    python benchmarks/gold/runs/lever-gemma3-salvage.py SAVE.json [SAVE.json ...] >> OUT.jsonl

`play.py` writes an adventure's turns only when all of them are played; on a slow machine the
Gemma 3 run was stopped mid-adventure, so its unfinished adventures were read back from the
game's own autosave (`saves/coherence.json` in the runner's temporary home), which holds every
turn played so far: the action as it entered the story and the chosen result, which is what
was shown. `recent` is rebuilt as the runner builds it (the results before the previous turn,
at most 3). It reads saves only; it labels nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# play.py's held-out adventures, by player name: (setting, seed).
ADVENTURES = {
    "Zara": ("fantasy", 12),
    "Otto": ("mystery", 22),
    "Rin": ("apocalyptic", 32),
    "Kai": ("zombies", 42),
    "Nico": ("cyberpunk", 52),
    "Finn": ("pirates", 62),
}


def _path(story: dict[str, Any]) -> list[dict[str, Any]]:
    """The turns from the first to the head, following parents back."""
    by_id = {turn["id"]: turn for turn in story["turns"]}
    path, node = [], by_id.get(story["head"])
    while node is not None:
        path.append(node)
        node = by_id.get(node["parent"])
    return path[::-1]


def records(save: Path) -> list[dict[str, Any]]:
    story = json.loads(save.read_text(encoding="utf-8"))["story"]
    name = story["player_name"]
    setting, seed = ADVENTURES[name]
    results = [turn["candidates"][turn["chosen"]]["text"] for turn in _path(story)]
    actions = [turn["action"] for turn in _path(story)]
    rows = []
    for number, (action, text) in enumerate(zip(actions, results, strict=True), start=1):
        recent = [r for r in results[: max(number - 2, 0)] if r][-3:]
        rows.append(
            {
                "id": f"{setting}-{seed}-{number}",
                "setting": setting,
                "seed": seed,
                "player_name": name,
                "turn": number,
                "action": action,
                "text": text,
                "recent": recent,
            }
        )
    return rows


def main() -> None:
    for save in sys.argv[1:]:
        for row in records(Path(save)):
            print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
