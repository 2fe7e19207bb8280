"""One long guard adventure of the coherence script, through the bench's own runner.

    python benchmarks/gold/runs/longplay.py OUT.json ADVENTURE_INDEX [TURNS]

Writes the adventure, `coherence.judge`'s verdict (clean-turn rate overall, at turns 1-20 and
81-100) and every shown turn as JSON. The verdict reflects `detectors.VALIDATED` at the time it
runs; `judge` can score the saved turns again later.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aidungeon.bench.coherence import SCRIPT, judge, load_script, play_adventure
from aidungeon.core.config import Config
from aidungeon.game.rules import RuleSet
from aidungeon.model.loader import load_model
from aidungeon.storage.paths import default_paths


def main() -> None:
    out, index = Path(sys.argv[1]), int(sys.argv[2])
    turns = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    home = Path.home() / ".cache" / "aidungeon-tests"
    loaded = load_model("smollm2-135m", default_paths({"AIDUNGEON_HOME": str(home)}), device="cpu")
    script = load_script(SCRIPT)
    adventure = script["adventures"][index]
    config = Config().with_value("max_new_tokens", 60).with_value("context_tokens", 1024)
    played = play_adventure(loaded, config, adventure, actions=script["actions"], turns=turns, rules=RuleSet.GUARD)
    shown = [{"turn": t.number, "action": t.action, "text": t.text, "recent": list(t.recent[-3:])} for t in played]
    out.write_text(json.dumps({"adventure": adventure, "report": judge(played), "turns": shown}, indent=1))


if __name__ == "__main__":
    main()
