"""In-process fuzzing of `Session.handle` on the scripted fake engine: random lines, every
registered command with random arguments. Nothing may escape `handle`, every error is one line,
and the adventure's save loads afterwards. Seeded, so a failure replays."""

from __future__ import annotations

import random

import pytest
from support.fake_engine import FakeEngine
from support.sessions import make_session

from aidungeon.game.commands import REGISTRY
from aidungeon.game.events import EventKind
from aidungeon.storage import saves
from aidungeon.storage.paths import default_paths

LINES = 1000
ODD = ["\udcff", "\ud800", "\x00", "\x1b[2J", "\x1b]0;t\x07", "\x07", "\r", "\t", "\u202e", "²", "٣", "🐉", "\x9b31m"]
WORDS = ["look", "around", "say", '"hi"', "!", "you", "the door", "--force", "*", ":", ",", "md", "txt", "html", "x"]


def random_text(rng: random.Random, longest: int = 40) -> str:
    parts = []
    for _ in range(rng.randint(0, longest // 4)):
        parts.append(rng.choice(ODD) if rng.random() < 0.3 else rng.choice(WORDS))
    return " ".join(parts)


def random_argument(rng: random.Random) -> str:
    return rng.choice(
        [
            lambda: "",
            lambda: str(rng.randint(-5, 12)),
            lambda: "9" * rng.randint(10, 5000),
            lambda: rng.choice(["²", "٣", "1e3", "0x10", "½", "-0", "0"]),
            lambda: rng.choice(["../../x", "/etc/passwd", "~/x.md", "a\x00b", "sub/dir", "..", "CON", "名前"]),
            lambda: f"{rng.choice(['add', 'edit', 'remove', 'list', 'clear'])} {rng.randint(0, 4)} {random_text(rng)}",
            lambda: f"{rng.choice(['md', 'txt', 'html', 'pdf'])} {random_text(rng, 8)}",
            lambda: (
                f"{rng.choice(['temperature', 'top_k', 'max_new_tokens', 'context_tokens', 'seed'])} "
                f"{rng.choice(['0', '1', '0.5', '-1', '99999', 'hot', '٣', 'none'])}"
            ),
            lambda: random_text(rng),
            lambda: "x" * rng.choice([10, 1_000, 10_001, 100_000]),
        ]
    )()


def random_line(rng: random.Random, names: list[str]) -> str:
    roll = rng.random()
    # Mostly commands: every turn makes the story, and so each later save, a little longer.
    if roll < 0.8:
        return f"/{rng.choice(names)} {random_argument(rng)}".rstrip()
    if roll < 0.85:
        return "x" * 100_000
    return random_text(rng)


def test_random_lines_never_escape_handle_and_the_save_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Durability is saves.py's to test; here fsync would only make a thousand saves slow.
    monkeypatch.setattr("aidungeon.storage.paths.os.fsync", lambda fd: None)
    rng = random.Random(1)
    # /quit ends a game and /load switches saves: both are in the mix; quitting only ends the
    # UI's loop, so the session keeps taking lines as a server's would.
    names = sorted(REGISTRY)
    engine = FakeEngine(script=[rng.choice(["", "The end.", "> You stop.", "\x1b[31mRed\x1b[0m."]) for _ in range(30)])
    session = make_session(engine, save_name="fuzz")
    for number in range(LINES):
        # Every command at least once first, then at random.
        line = f"/{names[number]} {random_argument(rng)}" if number < len(names) else random_line(rng, names)
        for event in session.handle(line):
            assert isinstance(event.kind, EventKind)
            if event.kind is EventKind.ERROR:
                assert event.text and "\n" not in event.text, (number, line, event)
            if event.kind is EventKind.EDIT:  # answer as the UI would
                list(session.handle(str(event.data) + random_text(rng)))
    session.save()
    data, _ = saves.read_save(default_paths().saves_dir, session.save_name)
    assert data.story.to_dict() == session.story.to_dict()
