"""The damaged-file table of benchmarks/RESULTS.md: each kind of damage, what the player sees, and
whether the files were left untouched and the backup used.

As a test it checks every row: one line, never a traceback, nothing on disk changed. As a script
(`python tests/storage/test_damage_table.py`) it prints the table in Markdown.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aidungeon.core.errors import SaveError
from aidungeon.core.story import Candidate, Story
from aidungeon.storage.saves import SaveData, read_save, write_save

NAME = "knight"


def _story(turns: int) -> Story:
    story = Story(opening="You are a knight.", title="Knight")
    for i in range(turns):
        story.append(f"You take step {i}.")
        story.add_candidates([Candidate(f"Result {i}.", sampling={"temperature": 0.8})])
    return story


def _good(folder: Path, *, backup: bool) -> Path:
    """A save of two turns; with `backup`, its .bak holds the one-turn version before it."""
    for turns in (1, 2) if backup else (2,):
        path = write_save(folder, NAME, SaveData(_story(turns), "tiny", {"sampling": {"temperature": 0.8}}))
    return path


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def _deep(doc: dict) -> None:
    value: object = 1
    for _ in range(600):
        value = {"x": value}
    doc["story"]["turns"][0]["candidates"][0]["sampling"] = value


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


CASES: dict[str, tuple[bool, Callable[[Path], None]]] = {
    # kind: (a good .bak beside it, the damage done to the main file)
    "truncated file": (False, lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
    "zero bytes": (False, _bytes(b"")),
    "invalid JSON": (False, lambda p: p.write_bytes(p.read_bytes().replace(b'"story":', b'"story"', 1))),
    "wrong types": (False, lambda p: _edit(p, lambda d: d["story"].update(memory="not a list"))),
    "deep nesting (600 levels in sampling)": (False, lambda p: _edit(p, _deep)),
    "schema flip 1 -> 0": (False, lambda p: _edit(p, lambda d: d.update(schema_version=0))),
    "future schema": (False, lambda p: _edit(p, lambda d: d.update(schema_version=7))),
    "bad settings": (False, lambda p: _edit(p, lambda d: d.update(settings={"sampling": {"temperature": 9}}))),
    "invalid UTF-8 bytes": (False, lambda p: p.write_bytes(p.read_bytes().replace(b"knight", b"kn\xffght", 1))),
    "missing main, good .bak": (True, lambda p: p.unlink()),
    "damaged main, good .bak": (True, lambda p: p.write_bytes(p.read_bytes()[:100])),
    "damaged main and .bak": (True, lambda p: (p.write_bytes(b"{"), p.with_name(p.name + ".bak").write_bytes(b"x"))),
}


def measure(kind: str) -> tuple[str, bool, bool]:
    """(what the player sees, the files left untouched, the .bak used) for one kind of damage."""
    backup, damage = CASES[kind]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        damage(_good(folder, backup=backup))
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        try:
            _data, warnings = read_save(folder, NAME)
            seen = "; ".join(warnings) or "(loads)"
        except SaveError as err:
            seen = f"aidungeon: {err}"
        untouched = before == {p.name: p.read_bytes() for p in folder.iterdir()}
    return seen, untouched, "loaded the backup" in seen


def test_every_kind_of_damage_is_one_line_and_changes_nothing() -> None:
    for kind in CASES:
        seen, untouched, used = measure(kind)
        assert "\n" not in seen and "Traceback" not in seen, kind
        assert untouched, kind
        assert used == kind.endswith("good .bak"), (kind, seen)


def table() -> str:
    rows = ["| damage | what the player sees | files untouched | .bak used |", "|---|---|---|---|"]
    for kind in CASES:
        seen, untouched, used = measure(kind)
        marks = f"{'yes' if untouched else 'NO'} | {'yes' if used else 'no'}"
        rows.append(f"| {kind} | {seen.replace('|', '/')} | {marks} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
