"""Blind reading of played runs: mix them into files a reader labels without knowing which run a
turn came from, then put the labels back.

    python benchmarks/gold/blind.py mix RUN.jsonl [RUN2.jsonl ...] --out DIR --key KEY.json [--parts 2]
    python benchmarks/gold/blind.py unblind KEY.json LABELS.jsonl [...] --out-dir DIR

`mix` shuffles every turn of the runs (written by `play.py`) together, splits them into `--parts`
files `DIR/turns<k>.txt` and copies the labelling guide (`blind-guide.md`) beside them. Each turn
shows the player's name, the action, the end of the results before it and the result; a turn 1
shows the end of the opening it continues, which the game prints as one text with it. `KEY.json`
maps each blind id back to its run and turn: keep it where the reader cannot look (the readers
so far were helper agents given only DIR and told to open nothing else).

`unblind` reads the readers' label files (one `{"cid": ..., "labels": {...}}` a line, as the
guide asks), writes each run again with its labels (and the reader's file) as `DIR/<run>.jsonl`,
and compares the first run (the control) with each other one on the same adventures: per label,
how many turns have it in only one of the two, and a two-sided sign test. `score_run.py` gives
each labelled run's rates.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

from play import ADVENTURES
from score_run import LABELS

from aidungeon.storage import prompts

GUIDE = Path(__file__).with_name("blind-guide.md")
SHOWN_CHARS = 300  # of each earlier result and of the opening: enough to follow, short to read


def read_run(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def opening(record: dict[str, Any]) -> str:
    """The opening a turn 1 continues, from the setting and the character `play.py` played."""
    settings, _ = prompts.load_settings()
    for setting_name, character_name, name, _seed in ADVENTURES:
        if (setting_name, name) == (record["setting"], record["player_name"]):
            setting = prompts.find_setting(settings, setting_name)
            return prompts.starting_story_parts(setting, setting.character(character_name), name).opening
    return ""


def block(cid: str, record: dict[str, Any]) -> str:
    action = record["action"] or "(opening continues)"
    if record["turn"] == 1 and (start := opening(record)):
        before = f"   opening (the result continues its last sentence): ...{start[-SHOWN_CHARS:]}\n"
    else:
        before = "   recent: " + (" || ".join(t[-SHOWN_CHARS:] for t in record["recent"][-2:]) or "-") + "\n"
    return f"## {cid} [{record['player_name']}] action: {action}\n{before}   TEXT: {record['text']}\n\n"


def mix(runs: list[Path], out: Path, key_path: Path, parts: int, seed: int) -> None:
    turns = [(run.stem, record) for run in runs for record in read_run(run)]
    random.Random(seed).shuffle(turns)
    out.mkdir(parents=True, exist_ok=True)
    key: dict[str, dict[str, str]] = {}
    size = -(-len(turns) // parts)
    for part in range(parts):
        chunk = turns[part * size : (part + 1) * size]
        with (out / f"turns{part + 1}.txt").open("w", encoding="utf-8") as file:
            for index, (run, record) in enumerate(chunk, start=1):
                cid = f"p{part + 1}-{index:03d}"
                key[cid] = {"run": run, "id": record["id"]}
                file.write(block(cid, record))
    shutil.copy(GUIDE, out / GUIDE.name)
    key_path.write_text(json.dumps({"runs": [str(run) for run in runs], "turns": key}, indent=1), encoding="utf-8")
    print(f"{len(turns)} turns in {parts} files under {out}; key in {key_path}")


def sign_test(only_first: int, only_second: int) -> float:
    """Two-sided p of a split at least this uneven, if either run were as likely to have the label."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)


def unblind(key_path: Path, label_files: list[Path], out_dir: Path) -> None:
    key = json.loads(key_path.read_text(encoding="utf-8"))
    labelled: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for path in label_files:
        for row in read_run(path):
            where = key["turns"][row["cid"]]
            labelled[(where["run"], where["id"])] = (row["labels"], path.name)
    missing = len(key["turns"]) - len(labelled)
    if missing:
        raise SystemExit(f"{missing} turns have no labels yet")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = {Path(run).stem: read_run(Path(run)) for run in key["runs"]}
    for name, records in runs.items():
        with (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as file:
            for record in records:
                labels, reader = labelled[(name, record["id"])]
                record |= {"labels": {k: labels.get(k) for k in LABELS}, "reader": reader}
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
    first, *others = runs.items()
    for other in others:
        compare(first, other)


def compare(first: tuple[str, list[dict[str, Any]]], second: tuple[str, list[dict[str, Any]]]) -> None:
    """Per label: turns (same adventure and turn) that have it in only one of the two runs."""
    (a_name, a_records), (b_name, b_records) = first, second
    b_by_id = {r["id"]: r["labels"] for r in b_records}
    pairs = [(r["labels"], b_by_id[r["id"]]) for r in a_records if r["id"] in b_by_id]
    print(f"{len(pairs)} turns in both {a_name} and {b_name}")
    for label in LABELS:
        both = [(a[label], b[label]) for a, b in pairs if a[label] is not None and b[label] is not None]
        only_a = sum(bool(a) and not b for a, b in both)
        only_b = sum(bool(b) and not a for a, b in both)
        p = sign_test(only_a, only_b)
        print(f"  {label}: only in {a_name} {only_a}, only in {b_name} {only_b}, sign test p = {p:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mixing = commands.add_parser("mix")
    mixing.add_argument("runs", type=Path, nargs="+")
    mixing.add_argument("--out", type=Path, required=True)
    mixing.add_argument("--key", type=Path, required=True)
    mixing.add_argument("--parts", type=int, default=2)
    mixing.add_argument("--seed", type=int, default=20261203)
    unblinding = commands.add_parser("unblind")
    unblinding.add_argument("key", type=Path)
    unblinding.add_argument("labels", type=Path, nargs="+")
    unblinding.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "mix":
        mix(args.runs, args.out, args.key, args.parts, args.seed)
    else:
        unblind(args.key, args.labels, args.out_dir)


if __name__ == "__main__":
    main()
