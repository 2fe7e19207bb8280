"""Rates from a blind read of long play: turns 2-21 against 81-100 of each run, by label.

    python benchmarks/gold/long_read.py KEY.json LABELS.jsonl [LABELS.jsonl ...]

The runs are `aidungeon bench coherence --turns 100` transcripts as `blind.py mix` takes them
(`runs/long-*-turns.jsonl`); the readers' guide (`runs/long-blind-guide.md`) adds an eighth
label, `repeats_story`, that `blind.py unblind` does not keep, so this script reads the labels
with the key itself. A turn is clean when no label is true.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def window(turn_id: str) -> str:
    return "2-21" if int(turn_id.rsplit("-", 1)[1]) <= 21 else "81-100"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("key", type=Path)
    parser.add_argument("labels", type=Path, nargs="+")
    args = parser.parse_args()
    key = json.loads(args.key.read_text())["turns"]
    groups: dict[tuple[str, str], list[dict[str, bool]]] = defaultdict(list)
    for path in args.labels:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            where = key[record["cid"]]
            groups[(where["run"], window(where["id"]))].append(record["labels"])
    for (run, turns), rows in sorted(groups.items()):
        clean = sum(not any(labels.values()) for labels in rows)
        counts = ", ".join(f"{name} {sum(bool(r.get(name)) for r in rows)}" for name in rows[0])
        print(f"{run}, turns {turns}: {len(rows)} turns, clean {clean} ({100 * clean / len(rows):.0f}%); {counts}")


if __name__ == "__main__":
    main()
