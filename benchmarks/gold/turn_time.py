"""Median turn time with a setting on and off, in one run: the voice steps by default.

    python benchmarks/gold/turn_time.py [--model smollm2-135m] [--turns 10] [--adventures 2]
        [--toggle voice|action_ranking]

Plays each adventure twice on one loaded model, once with the setting on and once off (`voice`:
the narrator- and player-voice steps together),
alternating turn by turn (on, off, on, off, ...) so that a busy moment of a shared machine falls
on both alike. The adventures and actions are the gold set's held-out ones (`play.py`). It prints
each mode's median turn (the whole turn: window, generation, cleanup, ranking, autosave), median
decode time per new token, and median new tokens. Run it under the bench lock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from play import ADVENTURES, mixed_actions

from aidungeon.bench.coherence import SCRIPT, adventure_lines, load_script
from aidungeon.core.config import Config
from aidungeon.game.session import Session
from aidungeon.game.start import start_session
from aidungeon.model.engine import Engine
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.storage import prompts
from aidungeon.storage.paths import default_paths

MODES = {"on": "on", "off": "off"}  # mode -> the settings' value


Adventure = tuple[str, str, str, int]


def open_session(
    loaded: LoadedModel, engine: Engine, config: Config, adventure: Adventure, home: str, name: str
) -> Session:
    setting_name, character_name, player, seed = adventure
    settings, _ = prompts.load_settings()
    setting = prompts.find_setting(settings, setting_name)
    character = setting.character(str(character_name))
    story = prompts.new_story(prompts.starting_story_parts(setting, character, player), player)
    return start_session(
        story,
        engine,
        config.with_value("seed", seed),
        default_paths({"AIDUNGEON_HOME": os.path.join(home, name)}),
        save_name=name,
        model_name=loaded.name,
        layout=loaded.layout,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--adventures", type=int, default=2)
    parser.add_argument("--toggle", choices=["voice", "action_ranking"], default="voice")
    args = parser.parse_args()
    keys = ["narrator_voice", "player_voice"] if args.toggle == "voice" else [args.toggle]
    home = os.environ.get("AIDUNGEON_TEST_MODEL_HOME", str(Path.home() / ".cache" / "aidungeon-tests"))
    loaded = load_model(args.model, default_paths({"AIDUNGEON_HOME": home}), device="cpu")
    base = Config().with_value("context_tokens", 1024)
    scripted = load_script(SCRIPT)["actions"]
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    per_token: dict[str, list[float]] = {mode: [] for mode in MODES}
    tokens: dict[str, list[int]] = {mode: [] for mode in MODES}
    held_out = [(i, a) for i, a in enumerate(ADVENTURES) if i % 2 == 1][: args.adventures]
    engine = Engine.for_model(loaded)  # one engine, as in the game; each session keeps its own cache
    with tempfile.TemporaryDirectory(prefix="aidungeon-turn-time-") as tmp:
        for index, adventure in held_out:
            lines = adventure_lines(mixed_actions(scripted, offset=index * 3), args.turns)
            sessions = {}
            for mode, value in MODES.items():
                config = base
                for key in keys:
                    config = config.with_value(key, value)
                sessions[mode] = open_session(loaded, engine, config, adventure, tmp, f"{mode}-{index}")
            for line in lines:
                for mode, session in sessions.items():
                    start = time.perf_counter()
                    list(session.handle(line))
                    seconds[mode].append(time.perf_counter() - start)
                    stats = session.turns.telemetry.stats
                    if stats is not None and stats.new_tokens > 1:
                        per_token[mode].append(stats.decode_s / (stats.new_tokens - 1) * 1000)
                        tokens[mode].append(stats.new_tokens)
            for session in sessions.values():
                session.close()
    for mode in MODES:
        print(
            f"{args.toggle} {mode}: {len(seconds[mode])} turns, median turn {statistics.median(seconds[mode]):.2f} s, "
            f"median decode {statistics.median(per_token[mode]):.1f} ms per token, "
            f"median new tokens {statistics.median(tokens[mode]):.0f}"
        )


if __name__ == "__main__":
    main()
