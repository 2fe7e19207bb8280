"""Play the gold set's adventures on a model and write every shown turn as unlabelled JSONL.

    python benchmarks/gold/play.py OUT.jsonl [--model smollm2-135m] [--turns 36] [--voice off] [--candidates N]
        [--temperature T] [--with-candidates] [--action-ranking on|off] [--seed-offset K]
        [--set KEY=VALUE ...]

Six settings, two seeds each, 18 turns per adventure by default: the opening's continuation,
then the coherence bench's scripted actions interleaved with open-ended ones a new player types
(odd requests, questions to characters, speech). It runs the game's own session through the
coherence bench's runner with the guard, as a player plays. Labels are added by a person
reading each turn (see README.md here); nothing in this script labels. `--voice off` turns the
narrator- and player-voice logits processors off (they are on by default, as in the game), to
replay the adventures as they were before them. `--candidates N` draws N continuations a turn
for the guard to rank; the default, 0, is the game's own choice (on the CPU, `CPU_CANDIDATES`),
and `--candidates 1` replays the lever runs made before the CPU drew three. `--temperature T`
samples at T instead of the game's default. `--with-candidates` adds every candidate the guard
ranked, best (the shown one) first, to each record. `--action-ranking on` shows, of equally
clean candidates, the one the action explains best (off, as in the game, by default).
`--seed-offset K` adds K to every adventure's seed: the same settings and characters, stories no
one has read yet. `--set KEY=VALUE` sets any other game setting, as `/set` does
(`--set repetition_penalty=1.05`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from aidungeon.bench.coherence import SCRIPT, load_script, play_adventure
from aidungeon.core.config import Config
from aidungeon.game.rules import RuleSet
from aidungeon.model.loader import load_model
from aidungeon.storage.paths import default_paths

# What a new player types besides the scripted actions: odd requests, questions, speech, names.
OPEN_ENDED = [
    "eat the moon",
    "ask the stranger her name",
    'say "Tell me what happened here."',
    "dance on the table",
    "give the old man a coin",
    "write my name on the wall",
    'say "I am not afraid of you."',
    "throw a rock at the window",
    "sing a song about the sea",
    "ask for directions to the nearest town",
    "pet the dog",
    "steal the lantern",
]

ADVENTURES = [
    ("fantasy", "knight", "Bob", 11),
    ("fantasy", "rogue", "Zara", 12),
    ("mystery", "1", "Mara", 21),
    ("mystery", "2", "Otto", 22),
    ("apocalyptic", "1", "Jonah", 31),
    ("apocalyptic", "3", "Rin", 32),
    ("zombies", "1", "Lee", 41),
    ("zombies", "2", "Kai", 42),
    ("cyberpunk", "1", "Vex", 51),
    ("cyberpunk", "3", "Nico", 52),
    ("pirates", "captain", "Anne", 61),
    ("pirates", "stowaway", "Finn", 62),
]


def mixed_actions(scripted: list[str], offset: int) -> list[str]:
    """Scripted and open-ended actions taking turns, each list entered at `offset`."""
    mixed = []
    for i in range(max(len(scripted), len(OPEN_ENDED))):
        mixed += [scripted[(i + offset) % len(scripted)], OPEN_ENDED[(i + offset) % len(OPEN_ENDED)]]
    return mixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--turns", type=int, default=18)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--adventures", type=int, default=len(ADVENTURES))
    parser.add_argument(
        "--split", choices=["all", "dev", "test"], default="all", help="dev: a setting's first seed; test: its second"
    )
    parser.add_argument("--skip", type=int, default=0, help="adventures already played (the file is appended to)")
    parser.add_argument("--voice", choices=["on", "off"], default="on", help="the narrator- and player-voice steps")
    parser.add_argument(
        "--candidates", type=int, default=0, help="continuations per turn (0 = the game's default by device)"
    )
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the game's)")
    parser.add_argument("--with-candidates", action="store_true", help="record every ranked candidate")
    parser.add_argument("--action-ranking", choices=["on", "off"], default="off", help="the answering candidate first")
    parser.add_argument("--seed-offset", type=int, default=0, help="added to every adventure's seed (new stories)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any game setting, as /set")
    args = parser.parse_args()
    home = os.environ.get("AIDUNGEON_TEST_MODEL_HOME", str(Path.home() / ".cache" / "aidungeon-tests"))
    loaded = load_model(args.model, default_paths({"AIDUNGEON_HOME": home}), device="cpu")
    config = Config().with_value("max_new_tokens", args.max_new_tokens).with_value("context_tokens", 1024)
    config = config.with_value("narrator_voice", args.voice).with_value("player_voice", args.voice)
    config = config.with_value("candidates", args.candidates).with_value("action_ranking", args.action_ranking)
    if args.temperature is not None:
        config = config.with_value("temperature", args.temperature)
    for setting in args.set:
        key, _, value = setting.partition("=")
        config = config.with_value(key.strip(), value.strip())
    scripted = load_script(SCRIPT)["actions"]
    with args.out.open("a" if args.skip else "w", encoding="utf-8") as out:
        for index, (setting, character, name, first_seed) in enumerate(ADVENTURES[: args.adventures]):
            seed = first_seed + args.seed_offset
            if index < args.skip or (args.split != "all" and index % 2 != (args.split == "test")):
                continue
            adventure = {"setting": setting, "character": character, "name": name, "seed": seed}
            actions = mixed_actions(scripted, offset=index * 3)
            for turn in play_adventure(
                loaded, config, adventure, actions=actions, turns=args.turns, rules=RuleSet.GUARD
            ):
                record = {
                    "id": f"{setting}-{seed}-{turn.number}",
                    "setting": setting,
                    "seed": seed,
                    "player_name": turn.player_name,
                    "turn": turn.number,
                    "action": turn.action,
                    "text": turn.text,
                    "recent": list(turn.recent[-3:]),
                }
                if args.with_candidates:
                    record["candidates"] = list(turn.candidates)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
