"""Each bench detector's precision and recall against a labelled gold file, as a Markdown table.

    python benchmarks/gold/evaluate.py [benchmarks/gold/gold.jsonl]

The split is fixed by adventure (see README.md): `dev` turns (the first seed of each setting)
were read while the detectors were written and their thresholds set; `test` turns (the second
seed) are held out. A detector is validated (counts in the bench's clean-turn rate) at
precision >= 0.8 and recall >= 0.7 over at least 5 labelled glitches on the held-out half.
The next lines give the gold set's own clean-turn and action-followed rates, read from the
labels. Where `action_logprobs.jsonl` (written by `measure.py`) lies beside the gold set, the
last lines report the likelihood experiment: how well the model's gain of the result given the
action over "You wait." tells the labelled ignored actions, alone and with word overlap, at the
threshold set on the development turns.

Then the same scores on turns labelled after the detectors' rules were last changed (`FROZEN_AT`):
the default model's lever runs in `runs/` (`LATER`), with a second reader's labels of two runs
(`REREADS`) as a check on the reader. No rule was written or tuned on them, so they are a second
held-out set, of the turns the game shows today (the voice steps on).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from aidungeon.bench.detectors import DETECTORS, Score, as_shown, detect, evaluate, ignored_action, read_gold

# The detectors' rules were last changed at this commit; the runs below were labelled afterwards.
FROZEN_AT = "d5eb23b"
RUNS = Path(__file__).with_name("runs")
# The default model's labelled lever runs (72 held-out turns each): the voice steps off, on, the
# shipped defaults (best of 3) and those at temperature 0.5. The Gemma run is another model.
LATER = ("lever-processors-off", "lever-processors", "lever-shipped", "lever-temperature-0.5")
# A second reader's labels of some of them (ids and labels only).
REREADS = {"lever-processors": "lever-processors-reread", "lever-shipped": "lever-shipped-reread"}

# Set on the development turns: the gain (nats per token) under which an action counts as
# ignored. At 0.10 "no overlap and a low gain" gave the best precision there (0.80) with the
# most recall (0.57); no threshold reached both 0.8 and 0.7.
GAIN_FLOOR = 0.10
NEUTRAL = "You wait."


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(name: str, dev: Score, test: Score) -> str:
    cells = [name, f"{dev.labelled} / {test.labelled}", _pct(dev.precision), _pct(dev.recall)]
    cells += [_pct(test.precision), _pct(test.recall), "yes" if test.validated else "no"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("gold.jsonl")
    records = read_gold(path)
    dev = evaluate(r for r in records if r["split"] == "dev")
    test = evaluate(r for r in records if r["split"] == "test")
    relabelled = sum("relabel_reason" in r for r in records)
    print(f"{len(records)} labelled turns from {path} ({relabelled} relabelled on rereading)\n")
    print("| detector | labelled true (dev / held out) | P dev | R dev | P held out | R held out | validated |")
    print("|---|---|---|---|---|---|---|")
    for name in DETECTORS:
        print(_row(name, dev[name], test[name]))
    clean = [not any(r["labels"].get(k) for k in (*DETECTORS, "incoherent")) for r in records]
    acted = [r for r in records if r["action"]]
    followed = sum(not r["labels"]["ignored_action"] for r in acted)
    print(f"\nclean turns by the labels: {sum(clean)}/{len(records)} = {sum(clean) / len(records):.1%}")
    print(f"actions followed by the labels: {followed}/{len(acted)} = {followed / len(acted):.1%}")
    for split in ("dev", "test"):
        strict_clean(split, [r for r in records if r["split"] == split])
    measured = path.with_name("action_logprobs.jsonl")
    if measured.exists():
        likelihood_experiment(records, {row["id"]: row for row in read_gold(measured)})
    if all((RUNS / f"{name}.jsonl").exists() for name in (*LATER, *REREADS.values())):
        labelled_later()


def _reread(name: str) -> list[dict[str, Any]]:
    """A run's turns with the second reader's labels where there are any."""
    turns = read_gold(RUNS / f"{name}.jsonl")
    if name not in REREADS:
        return turns
    labels = {r["id"]: r["labels"] for r in read_gold(RUNS / f"{REREADS[name]}.jsonl")}
    return [{**r, "labels": labels[r["id"]]} for r in turns]


def labelled_later() -> None:
    """Each detector on the lever runs labelled after FROZEN_AT, pooled: with each run's labels
    as filed, and again with the second reader's labels for the runs two readers read."""
    filed = [r for name in LATER for r in read_gold(RUNS / f"{name}.jsonl")]
    reread_turns = [r for name in LATER for r in _reread(name)]
    print(f"\nlabelled after the rules froze at {FROZEN_AT} ({', '.join(LATER)}; {len(filed)} turns):\n")
    print("| detector | labelled true (as filed / reread) | P as filed | R as filed | P reread | R reread |")
    print("|---|---|---|---|---|---|")
    one, two = evaluate(filed), evaluate(reread_turns)
    for name in DETECTORS:
        cells = [name, f"{one[name].labelled} / {two[name].labelled}"]
        cells += [_pct(s) for s in (one[name].precision, one[name].recall, two[name].precision, two[name].recall)]
        print("| " + " | ".join(cells) + " |")
    print()
    strict_clean("later, as filed", filed)
    strict_clean("later, reread", reread_turns)


def strict_clean(name: str, turns: list[dict[str, Any]]) -> None:
    """The bench's strict clean rate (no detector fires, validated or not) against the labels'
    clean rate with "makes no sense" left out (no detector looks for it), and how many turns
    both call clean."""
    strict = [not any(detect(as_shown(r)).values()) for r in turns]
    labelled = [not any(r["labels"].get(k) for k in DETECTORS) for r in turns]
    both = sum(a and b for a, b in zip(strict, labelled, strict=True))
    print(
        f"{name}: clean by every detector {sum(strict)}/{len(turns)} = {sum(strict) / len(turns):.1%}; "
        f"by the labels without 'makes no sense' {sum(labelled)}/{len(turns)} = {sum(labelled) / len(turns):.1%}; "
        f"the same turns: {both}"
    )


def _gain(row: dict[str, Any], action: str) -> float:
    """Nats per token by which the action explains the result better than "You wait." does."""
    logprobs = row["logprobs"]
    return (logprobs[action] - logprobs.get(NEUTRAL, logprobs[action])) / max(1, row["tokens"])


def _auc(scores: list[float], labels: list[bool]) -> float | None:
    """The chance that an ignored action scores lower than a followed one (ties count half)."""
    low = [s for s, ignored in zip(scores, labels, strict=True) if ignored]
    high = [s for s, ignored in zip(scores, labels, strict=True) if not ignored]
    if not low or not high:
        return None
    wins = sum((a < b) + 0.5 * (a == b) for a in low for b in high)
    return wins / (len(low) * len(high))


def _pr(flags: list[bool], labels: list[bool]) -> str:
    hit = sum(f and y for f, y in zip(flags, labels, strict=True))
    flagged, wanted = sum(flags), sum(labels)
    return f"P {_pct(hit / flagged if flagged else None)} R {_pct(hit / wanted if wanted else None)}"


def likelihood_experiment(records: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> None:
    """The likelihood gain against the ignored-action labels, per split (turns measured only)."""
    print(f"\nlikelihood experiment (gain over {NEUTRAL!r}, floor {GAIN_FLOOR} set on dev):")
    for split in ("dev", "test"):
        turns = [r for r in records if r["split"] == split and r["id"] in rows and r["action"]]
        if not turns:
            continue
        gains = [_gain(rows[r["id"]], r["action"]) for r in turns]
        labels = [bool(r["labels"]["ignored_action"]) for r in turns]
        overlap = [ignored_action(as_shown(r)) for r in turns]
        alone = [g < GAIN_FLOOR for g in gains]
        both = [o and a for o, a in zip(overlap, alone, strict=True)]
        auc = _auc(gains, labels)
        print(
            f"- {split}: {len(turns)} turns measured; AUC gain {_pct(auc)}, AUC overlap "
            f"{_pct(_auc([0.0 if o else 1.0 for o in overlap], labels))}; gain alone {_pr(alone, labels)}; "
            f"overlap alone {_pr(overlap, labels)}; overlap and gain {_pr(both, labels)}"
        )


if __name__ == "__main__":
    main()
