"""Gemma 3 in the game: a sliding-window cache past its window cuts back what it recorded since its
last cut and starts over where it cannot, always giving a fresh forward's logits; and the plain
layout starts with the BOS token a Gemma-style tokenizer prepends (GPT-2-style ones get none).

A tiny random Gemma 3 (window 4, built here, nothing downloaded) stands in for the real one.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from aidungeon.core.context import PLAIN
from aidungeon.model.loader import layout_for_tokenizer
from aidungeon.model.scoring import Likelihoods
from aidungeon.model.sessions import SessionCache

WINDOW = 4


@pytest.fixture(scope="module")
def gemma() -> Gemma3ForCausalLM:
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def _feed(model: Gemma3ForCausalLM, entry: SessionCache, tokens: list[int]) -> torch.Tensor:
    """Run `tokens` on the entry's cache, as the engine's prefill does; the last token's logits."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), cache=entry.cache, use_cache=True)
    entry.tokens.extend(tokens)
    return out.logits[0, -1]


def _alone(model: Gemma3ForCausalLM, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0, -1]


def test_a_cache_past_its_window_cuts_back_what_it_recorded(gemma: Gemma3ForCausalLM) -> None:
    entry = SessionCache(DynamicCache(config=gemma.config), gemma.config)
    story = list(range(1, 11))  # 10 tokens: past the window of 4
    _feed(gemma, entry, story)
    prompt = [*story[:8], 20, 21]  # the last two tokens taken back (a turn's unkept ones), two new ones

    kept = entry.reuse(prompt, window=128)

    assert kept == 8 and entry.cache.get_seq_length() == 8
    assert torch.allclose(_feed(gemma, entry, prompt[kept:]), _alone(gemma, prompt), atol=1e-5)


def test_a_cut_past_what_the_window_kept_starts_over_with_the_same_logits(gemma: Gemma3ForCausalLM) -> None:
    entry = SessionCache(DynamicCache(config=gemma.config), gemma.config)
    story = list(range(1, 11))
    _feed(gemma, entry, story)
    entry.reuse([*story[:8], 20, 21], window=128)  # a cut: the window layer now holds 3 keys
    _feed(gemma, entry, [20, 21])
    prompt = [*story[:5], 30]  # back 5 tokens: keys the window layer dropped at the cut

    kept = entry.reuse(prompt, window=128)

    assert kept == 0 and entry.tokens == [] and entry.cache.get_seq_length() == 0
    assert torch.allclose(_feed(gemma, entry, prompt), _alone(gemma, prompt), atol=1e-5)


def test_a_cache_within_its_window_is_cut_back_and_reused(gemma: Gemma3ForCausalLM) -> None:
    entry = SessionCache(DynamicCache(config=gemma.config), gemma.config)
    _feed(gemma, entry, [1, 2, 3])
    prompt = [1, 2, 30, 31]

    kept = entry.reuse(prompt, window=128)

    assert kept == 2 and entry.cache.get_seq_length() == 2
    assert torch.allclose(_feed(gemma, entry, prompt[kept:]), _alone(gemma, prompt), atol=1e-5)


def _tokenizer(*, prepend_bos: bool) -> PreTrainedTokenizerFast:
    vocab = {"<bos>": 0, "<eos>": 1, "a": 2, "b": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if prepend_bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>")


def test_the_plain_layout_starts_with_bos_where_the_tokenizer_prepends_it() -> None:
    layout = layout_for_tokenizer(_tokenizer(prepend_bos=True))

    assert layout.name == "plain" and layout.header == "<bos>"
    assert layout.action == PLAIN.action and layout.opening == PLAIN.opening


def test_the_plain_layout_has_no_header_where_the_tokenizer_prepends_nothing() -> None:
    assert layout_for_tokenizer(_tokenizer(prepend_bos=False)) == PLAIN


def test_turns_with_random_cuts_always_give_a_fresh_forwards_logits(gemma: Gemma3ForCausalLM) -> None:
    """A story played as the engine plays it (prompt, generated tokens, some of them not kept,
    sometimes the start dropped), its cache reused every turn, against no cache at all."""
    rng = torch.Generator().manual_seed(3)
    entry = SessionCache(DynamicCache(config=gemma.config), gemma.config)
    story: list[int] = []
    for _turn in range(25):
        kept = int(torch.randint(0, len(story) + 1, (), generator=rng)) if story else 0
        if int(torch.randint(0, 4, (), generator=rng)):  # most turns cut only the last few tokens
            kept = max(kept, len(story) - 3)
        new = torch.randint(1, 64, (int(torch.randint(1, 6, (), generator=rng)),), generator=rng).tolist()
        story = [*story[:kept], *new][-40:]
        reused = min(entry.reuse(story, window=128), len(story) - 1)
        entry.truncate(reused)
        assert torch.allclose(_feed(gemma, entry, story[reused:]), _alone(gemma, story), atol=1e-4)


def test_candidates_are_scored_as_a_fresh_forward_would_past_the_window(gemma: Gemma3ForCausalLM) -> None:
    # The scorer reuses a kept prompt's cache where it can; a sliding window that already moved
    # past the shared start cannot be cut back, and the prompt then runs afresh.
    scorer = Likelihoods(gemma)
    continuations = [[5, 6, 7, 8, 9, 10], [3, 4], [9, 9, 9, 9, 9]]
    for prompt in (list(range(1, 11)), [*range(1, 8), 30, 31]):  # both past the window of 4
        with torch.no_grad():
            got = scorer(prompt, continuations)
        for score, continuation in zip(got, continuations, strict=True):
            ids = torch.tensor([prompt + continuation])
            with torch.no_grad():
                logits = gemma(input_ids=ids).logits[0].float()
            picked = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1).gather(1, ids[0, len(prompt) :, None])
            assert score == pytest.approx(float(picked.sum()), abs=1e-4)
