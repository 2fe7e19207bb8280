"""`benchmarks/gold/blind.py`: a blind reader sees every turn once, nothing that names its run, and
a turn 1 with the opening it continues; the labels go back to the right run and turn."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

GOLD_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "gold"


@pytest.fixture
def blind(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(GOLD_DIR))  # the scripts import each other as run from there
    return importlib.import_module("blind")


def record(turn: int, text: str, action: str = "You open the door.") -> dict[str, object]:
    return {
        "id": f"fantasy-111-{turn}",
        "setting": "fantasy",
        "seed": 111,
        "player_name": "Bob",  # play.py's fantasy knight
        "turn": turn,
        "action": "" if turn == 1 else action,
        "text": text,
        "recent": [] if turn == 1 else ["The gate creaks."],
    }


def write_run(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps(record(i + 1, t)) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def test_mix_then_unblind(blind: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    on = write_run(tmp_path / "secret-arm-on.jsonl", ["ride to the forest.", "A dragon roars.", "It flies off."])
    off = write_run(tmp_path / "secret-arm-off.jsonl", ["ride to the forest.", "Nothing happens.", "Rain falls."])
    key = tmp_path / "key.json"
    blind.mix([on, off], tmp_path / "read", key, parts=2, seed=1)

    shown = "".join((tmp_path / "read" / f"turns{k}.txt").read_text(encoding="utf-8") for k in (1, 2))
    assert "secret-arm" not in shown and (tmp_path / "read" / "blind-guide.md").exists()
    for text in ("A dragon roars.", "Nothing happens.", "It flies off.", "Rain falls."):
        assert shown.count(f"TEXT: {text}\n") == 1
    assert shown.count("TEXT: ride to the forest.") == 2
    assert "at dawn you ride to the edge of the forest" in shown.lower()  # the knight's opening, for turn 1

    cids = json.loads(key.read_text(encoding="utf-8"))["turns"]
    labels = tmp_path / "labels.jsonl"
    with labels.open("w", encoding="utf-8") as file:
        for cid, where in cids.items():
            senseless = where["run"] == "secret-arm-on" and where["id"] != "fantasy-111-1"
            flags = dict.fromkeys(blind.LABELS, False) | {"incoherent": senseless}
            file.write(json.dumps({"cid": cid, "labels": flags}) + "\n")
    blind.unblind(key, [labels], tmp_path / "out")

    back = [json.loads(line) for line in (tmp_path / "out" / "secret-arm-on.jsonl").read_text().splitlines()]
    assert [r["labels"]["incoherent"] for r in back] == [False, True, True]
    assert all(r["reader"] == "labels.jsonl" for r in back)
    assert (
        "incoherent: only in secret-arm-on 2, only in secret-arm-off 0, sign test p = 0.5000" in capsys.readouterr().out
    )


def test_unblind_refuses_missing_labels(blind: ModuleType, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.jsonl", ["ride on.", "A dragon roars."])
    key = tmp_path / "key.json"
    blind.mix([run], tmp_path / "read", key, parts=1, seed=1)
    (tmp_path / "labels.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(SystemExit, match="2 turns have no labels yet"):
        blind.unblind(key, [tmp_path / "labels.jsonl"], tmp_path / "out")


@pytest.mark.parametrize(("first", "second", "p"), [(0, 0, 1.0), (2, 0, 0.5), (48, 17, 0.0002)])
def test_sign_test(blind: ModuleType, first: int, second: int, p: float) -> None:
    assert blind.sign_test(first, second) == pytest.approx(p, abs=5e-5)
