"""Each bench detector's precision and recall against a labelled gold file, as a Markdown table.

    python benchmarks/gold/evaluate.py [benchmarks/gold/gold.jsonl]

A detector is validated (counts in the bench's clean-turn rate) at precision >= 0.8 and
recall >= 0.7 on the held-out (`test`) turns; the `dev` turns were read while it was written.
The last lines give the gold set's own clean-turn rate, read from the labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aidungeon.bench.detectors import DETECTORS, evaluate, read_gold


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("gold.jsonl")
    records = read_gold(path)
    held_out = [r for r in records if r["split"] == "test"]
    every = evaluate(records)
    test = evaluate(held_out)
    print(f"{len(records)} labelled turns from {path}, {len(held_out)} held out\n")
    print(
        "| detector | labelled true (held out / all) | precision held out | recall held out "
        "| precision all | recall all | validated |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in test.items():
        a = every[name]
        row = [name, f"{s.labelled} / {a.labelled}", _pct(s.precision), _pct(s.recall)]
        row += [_pct(a.precision), _pct(a.recall)]
        print("| " + " | ".join([*row, "yes" if s.validated else "no"]) + " |")
    clean = [not any(r["labels"].get(k) for k in (*DETECTORS, "incoherent")) for r in records]
    acted = [r for r in records if r["action"]]
    followed = sum(not r["labels"]["ignored_action"] for r in acted)
    print(f"\nclean turns by the labels: {sum(clean)}/{len(records)} = {sum(clean) / len(records):.1%}")
    print(f"actions followed by the labels: {followed}/{len(acted)} = {followed / len(acted):.1%}")


if __name__ == "__main__":
    main()
