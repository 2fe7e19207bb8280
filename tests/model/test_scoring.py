"""The engine scores continuations after a prompt as a plain forward pass of the whole text would:
one row at a time or in a batch of different lengths, with the prompt's cache reused."""

from __future__ import annotations

import pytest
import torch

from aidungeon.model.engine import Engine
from aidungeon.model.loader import load_model
from aidungeon.storage.paths import default_paths


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory) -> Engine:
    paths = default_paths({"AIDUNGEON_HOME": str(tmp_path_factory.mktemp("scoring-home"))})
    return Engine.for_model(load_model(str(tiny_model_dir), paths, device="cpu", dtype="float32"))


def whole_text_logprob(engine: Engine, prompt: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([prompt + continuation])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0].float()
    picked = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1).gather(1, ids[0, len(prompt) :, None])
    return float(picked.sum())


def test_a_batch_of_continuations_scores_as_each_whole_text_does(engine: Engine) -> None:
    prompt = engine.encode("You are a knight in a ruined castle.\n> You open the door.\n")
    continuations = [engine.encode(t) for t in ("The door creaks open.", "A bat", "You wait and the hall is quiet.")]
    got = engine.likelihoods(prompt, continuations)
    assert got is not None
    want = [whole_text_logprob(engine, prompt, c) for c in continuations]
    assert got == pytest.approx(want, abs=1e-3)
    assert engine.likelihoods(prompt, continuations) == pytest.approx(got, abs=1e-5)  # from the kept cache
    alone = engine.likelihoods(prompt, continuations[1:2])
    assert alone == pytest.approx(got[1:2], abs=1e-3)  # a row's score does not depend on its batch


def test_a_prompt_that_starts_like_a_kept_one_scores_as_if_fresh(engine: Engine) -> None:
    # The second prompt is run from the first one's cache, cut back to where they part.
    text = [engine.encode("The door creaks open.")]
    opened_prompt, waited_prompt = engine.encode("> You open the door.\n"), engine.encode("> You wait.\n")
    opened = engine.likelihoods(opened_prompt, text)
    waited = engine.likelihoods(waited_prompt, text)
    assert opened is not None and waited is not None and opened != waited
    assert waited == pytest.approx([whole_text_logprob(engine, waited_prompt, text[0])], abs=1e-3)
    assert opened == pytest.approx([whole_text_logprob(engine, opened_prompt, text[0])], abs=1e-3)


def test_empty_input_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.likelihoods([], [[1]])
    with pytest.raises(ValueError):
        engine.likelihoods([1, 2], [[]])
