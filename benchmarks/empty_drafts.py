"""How many draws a turn throws away because the model opened the player's next turn at once.

    python benchmarks/empty_drafts.py [--model smollm2-135m] [--sessions 6] [--turns 10] [--candidates 3]

A draw whose first line is a ">" turn is cut to nothing by the stop rule; when every candidate
of a draw is empty the game draws again (a RESTART event), and after three such draws the turn
stalls. `PlayerVoice` bans the ">" tokens until the narration has begun. This plays the bench's
scripted adventure with that ban on and off (off: `PlayerVoice.nothing_written` patched to
false, everything else the same), seed for seed, and counts drafts that came back empty, draws
thrown away and stalled turns. Counts only: no timing, so a busy machine does not change them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from aidungeon.bench.speed import ACTIONS, scripted_session
from aidungeon.core.config import Config
from aidungeon.game import turn as turn_module
from aidungeon.game.events import STALLED, EventKind
from aidungeon.model.engine import Engine
from aidungeon.model.loader import load_model
from aidungeon.model.voice import PlayerVoice
from aidungeon.storage.paths import default_paths


@contextmanager
def marker_ban(on: bool) -> Iterator[None]:
    """The ban as shipped, or switched off for the comparison."""
    shipped = PlayerVoice.nothing_written
    if not on:
        PlayerVoice.nothing_written = lambda self, ids: torch.zeros(ids.shape[0], dtype=torch.bool)  # type: ignore[method-assign]
    try:
        yield
    finally:
        PlayerVoice.nothing_written = shipped  # type: ignore[method-assign]


@contextmanager
def counting_drafts(counts: dict[str, int]) -> Iterator[None]:
    """Count every candidate drawn, those blank as drawn, and those the cleanup left empty."""
    shipped = turn_module.TurnPipeline._draw

    def draw(self: Any, *args: Any, **kwargs: Any) -> Any:
        ranked = yield from shipped(self, *args, **kwargs)
        for scored in ranked or []:
            counts["drafts"] += 1
            counts["empty_drafts"] += bool(scored.flags.empty)
            # The stop rule cuts at the turn line, so a draw that opened one comes back blank.
            counts["blank_before_cleanup"] += not scored.raw.strip()
        return ranked

    turn_module.TurnPipeline._draw = draw  # type: ignore[method-assign]
    try:
        yield
    finally:
        turn_module.TurnPipeline._draw = shipped  # type: ignore[method-assign]


def play(loaded: Any, config: Config, turns: int) -> dict[str, int]:
    keys = ("turns", "drafts", "empty_drafts", "blank_before_cleanup", "draws_thrown_away", "stalled")
    counts = dict.fromkeys(keys, 0)
    engine = Engine.for_model(loaded)
    with (
        counting_drafts(counts),
        scripted_session(engine, config, name="empty", model_name=loaded.name, layout=loaded.layout) as session,
    ):
        for number in range(turns):
            events = list(session.handle(ACTIONS[number % len(ACTIONS)]))
            counts["turns"] += 1
            counts["draws_thrown_away"] += sum(e.kind is EventKind.RESTART for e in events)
            counts["stalled"] += any(e.kind is EventKind.ERROR and e.data == STALLED for e in events)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    args = parser.parse_args()
    home = os.environ.get("AIDUNGEON_TEST_MODEL_HOME", str(Path.home() / ".cache" / "aidungeon-tests"))
    loaded = load_model(args.model, default_paths({"AIDUNGEON_HOME": home}), device="cpu")
    totals: dict[str, dict[str, int]] = {"ban on": {}, "ban off": {}}
    for seed in range(args.sessions):
        config = (
            Config()
            .with_value("seed", 1000 + seed)
            .with_value("candidates", args.candidates)
            .with_value("max_new_tokens", args.max_new_tokens)
        )
        for name, on in (("ban on", True), ("ban off", False)):
            with marker_ban(on):
                counts = play(loaded, config, args.turns)
            for key, value in counts.items():
                totals[name][key] = totals[name].get(key, 0) + value
    print(json.dumps({"model": loaded.name, "args": vars(args), "totals": totals}, indent=2))


if __name__ == "__main__":
    main()
