"""Judge a saved `aidungeon bench coherence --json` run again with today's detectors.

    python benchmarks/rejudge.py RUN.json [RUN.json ...]

A run keeps every shown turn (`guard_transcripts`, `baseline_transcripts`), so a change to the
detectors or to the verdict's figures can be read off old runs without playing them again. Each
turn is judged against the results shown before it in its adventure (the last RECENT_RESULTS, as
the game's guard compares them); runs saved before the transcripts held `player_name` are judged
without the name. Prints, per run and mode, the verdict's rates as `judge` reports them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aidungeon.bench.coherence import Played, judge
from aidungeon.game.turn import RECENT_RESULTS


def played_turns(transcripts: list[dict[str, Any]]) -> list[Played]:
    """The transcripts as played turns, each with the results shown before it in its adventure."""
    turns: list[Played] = []
    shown: list[str] = []
    for record in transcripts:
        if record["turn"] == 1:  # a new adventure
            shown = []
        text, recent = str(record["text"]), tuple(shown[-RECENT_RESULTS:])
        name = str(record.get("player_name", ""))
        turns.append(Played(record["setting"], name, int(record["turn"]), record["action"], text, recent, None))
        if text:
            shown.append(text)
    return turns


def main() -> None:
    for path in sys.argv[1:]:
        run = json.loads(Path(path).read_text(encoding="utf-8"))
        for mode in ("guard", "baseline"):
            report = judge(played_turns(run[f"{mode}_transcripts"]))
            rates = {key: value for key, value in report.items() if key.startswith(("clean", "action_followed_rate"))}
            print(json.dumps({"run": path, "mode": mode, **rates, "per_100": report["detectors_per_100"]}))


if __name__ == "__main__":
    main()
