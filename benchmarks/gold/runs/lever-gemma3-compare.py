"""A labelled lever run against the same adventures and turns of the gold set, by labels and detectors.

    python benchmarks/gold/runs/lever-gemma3-compare.py [benchmarks/gold/runs/lever-gemma3.jsonl]

The lever run must be labelled like the gold set (`benchmarks/gold/README.md`): its turns are
matched to the gold set's by adventure (setting, seed) and turn number, so both columns cover the
same openings, actions and turns. It prints one Markdown table: the share of turns with each
label, the clean-turn rate by the labels, and the bench's detector figures (the validated
clean-turn rate and the unvalidated action-followed and written-for-the-player rates). It reads
files only; it labels nothing and plays nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aidungeon.bench.detectors import DETECTORS, VALIDATED, as_shown, detect, read_gold

GOLD = Path(__file__).parents[1] / "gold.jsonl"
LABELS = ("first_person", "plays_player", "ignored_action", "identity_drift", "fragment", "repetition", "incoherent")

Row = dict[str, Any]


def _share(rows: Sequence[Row], test: Callable[[Row], bool]) -> str:
    hits = sum(test(row) for row in rows)
    return f"{hits}/{len(rows)} = {hits / len(rows):.1%}" if rows else "-"


def _clean(row: Row) -> bool:
    return not any(row["labels"].get(name) for name in (*DETECTORS, "incoherent"))


def _figures(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(name, value) for one column of the table."""
    acted = [row for row in rows if row["action"]]
    verdicts = {row["id"]: detect(as_shown(row)) for row in rows}
    figures = [("clean turns (labels)", _share(rows, _clean))]
    figures.append(
        (
            "clean if 'incoherent' is left out (labels)",
            _share(rows, lambda r: not any(r["labels"].get(name) for name in DETECTORS)),
        )
    )
    figures.append(("actions followed (labels)", _share(acted, lambda r: not r["labels"]["ignored_action"])))
    for name in LABELS:
        pool = acted if name == "ignored_action" else rows
        figures.append((f"label {name}", _share(pool, lambda r, n=name: bool(r["labels"].get(n)))))
    figures.append(
        (
            "clean-turn rate, validated detectors",
            _share(rows, lambda r: not any(verdicts[r["id"]][name] for name in VALIDATED)),
        )
    )
    figures.append(
        ("actions followed, detector (unvalidated)", _share(acted, lambda r: not verdicts[r["id"]]["ignored_action"]))
    )
    figures.append(
        ("written for the player, detector (unvalidated)", _share(rows, lambda r: verdicts[r["id"]]["plays_player"]))
    )
    return figures


def main() -> None:
    lever_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("lever-gemma3.jsonl")
    lever = read_gold(lever_path)
    keys = {(row["setting"], row["seed"], row["turn"]) for row in lever}
    gold = [row for row in read_gold(GOLD) if (row["setting"], row["seed"], row["turn"]) in keys]
    if len(gold) != len(lever):
        raise SystemExit(f"{lever_path} has {len(lever)} turns but the gold set matches {len(gold)} of them")
    print(
        f"{len(lever)} turns, {len({k[:2] for k in keys})} adventures, matched to the gold set by adventure and turn\n"
    )
    print(f"| figure | gold set (SmolLM2-135M) | {lever_path.stem} |")
    print("|---|---|---|")
    for (name, before), (_, after) in zip(_figures(gold), _figures(lever), strict=True):
        print(f"| {name} | {before} | {after} |")


if __name__ == "__main__":
    main()
