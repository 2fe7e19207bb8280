"""Out-of-memory paths, tested by injecting the exception: the story is never lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.fake_engine import FakeEngine
from support.sessions import make_session

from aidungeon.core.errors import OutOfMemoryError
from aidungeon.core.story import Story
from aidungeon.game.session import Session
from aidungeon.model import loader
from aidungeon.model.protocol import Request
from aidungeon.storage import saves
from aidungeon.storage.paths import default_paths


class OomEngine(FakeEngine):
    """Runs out of memory while the batch or the window is above a limit."""

    def __init__(self, *, max_batch: int, max_prompt: int) -> None:
        super().__init__(device_type="cuda", oom=self._too_big)
        self.max_batch = max_batch
        self.max_prompt = max_prompt

    def _too_big(self, request: Request) -> bool:
        return request.n > self.max_batch or len(request.prompt_ids) > self.max_prompt

    @property
    def calls(self) -> list[tuple[int, int]]:
        return [(r.n, len(r.prompt_ids)) for r in self.requests]


def make_game(engine: OomEngine, opening_chars: int = 600) -> Session:
    story = Story(opening=("The hall is long and dark. " * 40)[:opening_chars], title="oom")
    return make_session(engine, story=story, seed=1, save_name="oom", max_new_tokens=60)


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


def test_oom_shrinks_the_batch_first_and_the_turn_still_plays() -> None:
    engine = OomEngine(max_batch=1, max_prompt=10_000)
    game = make_game(engine)
    events = list(game.handle("look around"))
    assert "result" in kinds(events)
    assert engine.calls[0][0] == 4 and engine.calls[-1][0] == 1
    assert game.config.sampling.candidates == 1
    assert game.story.last is not None and game.story.last.result


def test_oom_then_shrinks_the_window() -> None:
    engine = OomEngine(max_batch=1, max_prompt=300)
    game = make_game(engine)
    events = list(game.handle("look around"))
    assert "result" in kinds(events), events
    assert game.config.context.context_tokens in (512, 256)
    assert engine.calls[-1][1] <= 300


def test_oom_that_cannot_be_fixed_is_one_message_and_the_story_is_kept() -> None:
    engine = OomEngine(max_batch=0, max_prompt=0)
    game = make_game(engine)
    list(game.handle("look around"))
    events = list(game.handle("open the door"))
    errors = [e.text for e in events if e.kind == "error"]
    assert len(errors) == 1 and "--device cpu" in errors[0]
    saved, _ = saves.read_save(default_paths().saves_dir, "oom")
    assert [t.action for t in saved.story.path()] == ["You open the door."]
    assert saved.story.opening == game.story.opening


def test_a_model_that_cannot_fit_is_refused_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text('{"dtype": "float32"}')
    (folder / "model.safetensors").write_bytes(b"\0" * (8 << 20))
    monkeypatch.setattr(loader, "available_bytes", lambda device: 4 << 20)
    with pytest.raises(OutOfMemoryError) as err:
        loader.check_fits(folder, "big", "cpu", "float32")
    message = str(err.value)
    assert "--dtype bfloat16" in message and "smaller model" in message


def test_the_estimate_scales_with_the_dtype(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"dtype": "float16"}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    assert loader.estimate_bytes(tmp_path, "float32") == 2000
    assert loader.estimate_bytes(tmp_path, "bfloat16") == 1000
