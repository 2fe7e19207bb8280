"""A lever run's table row: the bench's detectors and, where the turns are labelled, the labels.

    python benchmarks/gold/score_run.py RUN.jsonl [RUN2.jsonl ...] [--before gold.jsonl]

Each run is a file written by `play.py` (turns 1-12 of the held-out adventures for the lever
runs), labelled or not. `--before` takes the gold set and keeps the same adventures and turns
as the first run, so "before" and "after" cover the same 72 turns. For each it prints the
clean-turn rate by the validated detectors (`detectors.VALIDATED`), the unvalidated
action-followed and written-for-the-player rates, and, from the labels: clean turns (no label at
all), clean if "makes no sense" is left out, actions followed, and each glitch's share.
It scores; it does not label (a person does, see README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aidungeon.bench.detectors import VALIDATED, as_shown, detect, read_gold

LABELS = ("first_person", "plays_player", "ignored_action", "identity_drift", "fragment", "repetition", "incoherent")


def _share(hits: int, total: int) -> str:
    return f"{hits / total:.1%} ({hits}/{total})" if total else "-"


def by_detectors(records: list[dict[str, Any]]) -> dict[str, str]:
    verdicts = [detect(as_shown(r)) for r in records]
    acted = [v for r, v in zip(records, verdicts, strict=True) if r["action"]]
    return {
        "clean (validated detectors)": _share(sum(not any(v[k] for k in VALIDATED) for v in verdicts), len(records)),
        "action followed (unvalidated)": _share(sum(not v["ignored_action"] for v in acted), len(acted)),
        "written for the player (unvalidated)": _share(sum(v["plays_player"] for v in verdicts), len(records)),
        "first person (validated)": _share(sum(v["first_person"] for v in verdicts), len(records)),
    }


def by_labels(records: list[dict[str, Any]]) -> dict[str, str]:
    labelled = [r for r in records if "labels" in r]
    if len(labelled) < len(records):
        return {"labels": f"{len(labelled)} of {len(records)} turns labelled"}
    acted = [r for r in labelled if r["action"]]
    row = {
        "clean (labels)": _share(sum(not any(r["labels"].get(k) for k in LABELS) for r in labelled), len(labelled)),
        "clean without incoherent (labels)": _share(
            sum(not any(r["labels"].get(k) for k in LABELS if k != "incoherent") for r in labelled), len(labelled)
        ),
        "action followed (labels)": _share(sum(not r["labels"]["ignored_action"] for r in acted), len(acted)),
    }
    for key in LABELS:
        if key != "ignored_action":
            row[f"{key} (labels)"] = _share(sum(bool(r["labels"].get(key)) for r in labelled), len(labelled))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--before", type=Path, help="the gold set: the same adventures and turns as the first run")
    args = parser.parse_args()
    tables: list[tuple[str, list[dict[str, Any]]]] = [(str(path), read_gold(path)) for path in args.runs]
    if args.before:
        wanted = {r["id"] for r in tables[0][1]}
        tables.insert(0, (f"before: {args.before}", [r for r in read_gold(args.before) if r["id"] in wanted]))
    for name, records in tables:
        print(f"## {name}: {len(records)} turns")
        for key, value in {**by_detectors(records), **by_labels(records)}.items():
            print(f"- {key}: {value}")
        print()


if __name__ == "__main__":
    main()
