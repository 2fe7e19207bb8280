"""Sampling steps: the range-and-slope repetition penalty on hand-made logits, and the processor list."""

from __future__ import annotations

import math
from typing import cast

import pytest
import torch
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from aidungeon.core.config import Sampling
from aidungeon.model.sampling import (
    MIN_NEW_TOKENS,
    MinNewTokens,
    RangeRepetitionPenalty,
    VocabLimit,
    build_processors,
    nucleus,
    sample_next,
)

VOCAB = 8


def ids(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.long)


def flat(value: float, rows: int = 1) -> torch.Tensor:
    return torch.full((rows, VOCAB), value)


def factors(processor: RangeRepetitionPenalty, input_ids: torch.Tensor) -> list[list[float]]:
    """The divisor each token gets (positive logits of 1.0 come back as 1/factor)."""
    out = processor(input_ids, flat(1.0, input_ids.shape[0]))
    return [[round(1.0 / v, 6) for v in row] for row in out.tolist()]


def test_positive_logits_are_divided_and_negative_multiplied() -> None:
    scores = torch.tensor([[4.0, -1.0, 0.0, 3.0, -2.0, 1.0, 5.0, -6.0]])
    before = scores.clone()
    out = RangeRepetitionPenalty(2.0, window=8)(ids([0, 1, 2]), scores)
    assert out.tolist() == [[2.0, -2.0, 0.0, 3.0, -2.0, 1.0, 5.0, -6.0]]
    assert torch.equal(scores, before), "the input scores are not changed in place"


def test_tokens_outside_the_range_are_untouched() -> None:
    out = RangeRepetitionPenalty(2.0, window=2)(ids([5, 6, 1, 2]), flat(4.0))
    assert out.tolist() == [[4.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]]


def test_flat_slope_penalises_the_whole_range_equally() -> None:
    assert factors(RangeRepetitionPenalty(2.0, window=4, slope=0.0), ids([1, 2, 3, 4])) == [
        [1.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    ]


@pytest.mark.parametrize(
    ("slope", "expected"),
    [
        # w(d) = 1 - slope * d / window; token 4 is newest (d=0), token 1 oldest (d=3)
        (1.0, [1.0, 1.25, 1.5, 1.75, 2.0, 1.0, 1.0, 1.0]),
        (0.5, [1.0, 1.625, 1.75, 1.875, 2.0, 1.0, 1.0, 1.0]),
        (0.0, [1.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]),
    ],
)
def test_slope_fades_the_penalty_with_distance(slope, expected) -> None:
    assert factors(RangeRepetitionPenalty(2.0, window=4, slope=slope), ids([1, 2, 3, 4])) == [expected]


def test_slope_is_relative_to_the_window_not_to_the_history() -> None:
    # two tokens seen, window 10: the older one is at d=1 -> w = 1 - 1/10
    assert factors(RangeRepetitionPenalty(3.0, window=10, slope=1.0), ids([6, 7])) == [
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.8, 3.0]
    ]


def test_exact_values_with_slope() -> None:
    scores = torch.tensor([[3.0, 3.0, -3.0, 3.0, 3.0, 0.5, 0.0, 0.0]])
    out = RangeRepetitionPenalty(2.0, window=4, slope=1.0)(ids([1, 2, 3, 4]), scores)
    expected = [3.0, 3.0 / 1.25, -3.0 * 1.5, 3.0 / 1.75, 1.5, 0.5, 0.0, 0.0]
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_a_repeated_token_gets_its_most_recent_penalty() -> None:
    # token 3 at d=3 (1.25) and d=1 (1.75): the stronger, more recent one wins
    assert factors(RangeRepetitionPenalty(2.0, window=4, slope=1.0), ids([3, 1, 3, 2])) == [
        [1.0, 1.5, 2.0, 1.75, 1.0, 1.0, 1.0, 1.0]
    ]


def test_batch_rows_are_independent() -> None:
    got = factors(RangeRepetitionPenalty(2.0, window=3, slope=1.0), ids([1, 2, 3], [5, 5, 5], [0, 7, 0]))
    assert got == [
        [1.0, 1.333333, 1.666667, 2.0, 1.0, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0],
        [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.666667],
    ]


def test_no_penalty_cases_return_scores_unchanged() -> None:
    scores = torch.tensor([[1.0, -1.0, 2.0, 0.0, 3.0, 4.0, 5.0, 6.0]])
    assert torch.equal(RangeRepetitionPenalty(1.0, window=4)(ids([0, 1]), scores), scores)
    assert torch.equal(RangeRepetitionPenalty(2.0, window=0)(ids([0, 1]), scores), scores)
    empty = torch.empty((1, 0), dtype=torch.long)
    assert torch.equal(RangeRepetitionPenalty(2.0, window=4)(empty, scores), scores)


def test_minus_infinity_stays_minus_infinity() -> None:
    scores = flat(1.0)
    scores[0, 2] = -math.inf
    out = RangeRepetitionPenalty(2.0, window=4)(ids([2, 3]), scores)
    assert out[0, 2].item() == -math.inf
    assert out[0, 3].item() == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"penalty": 0.9, "window": 4}, "penalty must be at least 1, got 0.9"),
        ({"penalty": 1.2, "window": -1}, "window must be 0 or more, got -1"),
        ({"penalty": 1.2, "window": 4, "slope": 1.5}, "slope must be between 0 and 1, got 1.5"),
        ({"penalty": 1.2, "window": 4, "slope": -0.1}, "slope must be between 0 and 1, got -0.1"),
    ],
)
def test_validation(kwargs, message) -> None:
    penalty = kwargs.pop("penalty")
    with pytest.raises(ValueError) as info:
        RangeRepetitionPenalty(penalty, **kwargs)
    assert str(info.value) == message


# -- the processor list ------------------------------------------------------------------------


def kinds(processors) -> list[type]:
    return [type(p) for p in processors]


def test_greedy_has_no_warpers() -> None:
    sampling = Sampling(temperature=0.0, repetition_penalty=1.15, repetition_range=512, repetition_slope=0.7)
    processors = build_processors(sampling, prompt_length=10, eos_ids=[7, 3])
    assert kinds(processors) == [MinNewTokens, RangeRepetitionPenalty]
    min_new, penalty = processors
    assert min_new.prompt_length_to_skip == 10
    assert min_new.min_new_tokens == MIN_NEW_TOKENS == 4
    assert min_new.eos_token_id.tolist() == [7, 3]
    assert (penalty.penalty, penalty.window, penalty.slope) == (1.15, 512, 0.7)


def test_skipped_prompt_tokens_are_never_penalised() -> None:
    # Prompt [1, 2] then the turn's own [3, 2]: 2 counts only as the turn's.
    assert factors(RangeRepetitionPenalty(2.0, window=8, skip=2), ids([1, 2, 3, 2])) == [
        [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    ]
    assert factors(RangeRepetitionPenalty(2.0, window=8, skip=2), ids([1, 2])) == [[1.0] * VOCAB]  # nothing yet
    with pytest.raises(ValueError, match="skip"):
        RangeRepetitionPenalty(2.0, window=8, skip=-1)


@pytest.mark.parametrize(("scope", "skip"), [("story", 0), ("turn", 10)])
def test_the_scope_decides_whether_the_prompt_is_penalised(scope: str, skip: int) -> None:
    processors = build_processors(Sampling(repetition_scope=scope), prompt_length=10, eos_ids=[0])
    assert [p.skip for p in processors if isinstance(p, RangeRepetitionPenalty)] == [skip]


def test_sampling_adds_temperature_last() -> None:
    sampling = Sampling(temperature=0.8, top_k=40, top_p=0.9)
    processors = build_processors(sampling, prompt_length=3, eos_ids=[0])
    assert kinds(processors) == [MinNewTokens, RangeRepetitionPenalty, TemperatureLogitsWarper]
    assert processors[2].temperature == 0.8


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (Sampling(repetition_penalty=1.0), [MinNewTokens, TemperatureLogitsWarper]),
        (Sampling(repetition_range=0, temperature=0), [MinNewTokens]),
    ],
)
def test_steps_that_do_nothing_are_left_out(sampling, expected) -> None:
    assert kinds(build_processors(sampling, prompt_length=3, eos_ids=[0])) == expected


def test_end_token_ids_live_on_the_scores_device() -> None:
    # on a GPU, torch.isin fails when the end ids stay on the CPU
    processors = build_processors(Sampling(), prompt_length=3, eos_ids=[0, 2], device="meta")
    assert processors[0].eos_token_id.device.type == "meta"
    default = build_processors(Sampling(), prompt_length=3, eos_ids=[0, 2])
    assert default[0].eos_token_id.device.type == "cpu"


def test_no_eos_means_no_min_new_tokens_step() -> None:
    assert kinds(build_processors(Sampling(temperature=0), prompt_length=3, eos_ids=[])) == [RangeRepetitionPenalty]


def test_eos_is_suppressed_for_the_first_new_tokens() -> None:
    processors = build_processors(Sampling(temperature=0, repetition_penalty=1.0), prompt_length=3, eos_ids=[2])
    for generated in range(6):
        history = torch.zeros((1, 3 + generated), dtype=torch.long)
        out = processors(history, flat(1.0))
        assert (out[0, 2].item() == -math.inf) == (generated < MIN_NEW_TOKENS), generated
        assert out[0, 1].item() == 1.0


def test_sample_next() -> None:
    scores = torch.tensor([[0.0, 5.0, 1.0], [3.0, -1.0, 2.0]])
    assert sample_next(scores, greedy=True, generator=None).tolist() == [1, 0]
    only = torch.tensor([[-math.inf, -math.inf, 0.0], [0.0, -math.inf, -math.inf]])
    generator = torch.Generator().manual_seed(0)
    assert sample_next(only, greedy=False, generator=generator).tolist() == [2, 0]
    uniform = torch.zeros((4, 50))
    first = sample_next(uniform, greedy=False, generator=torch.Generator().manual_seed(5)).tolist()
    again = sample_next(uniform, greedy=False, generator=torch.Generator().manual_seed(5)).tolist()
    assert first == again


def test_whole_number_temperature_is_accepted() -> None:
    processors = build_processors(Sampling(temperature=1), prompt_length=3, eos_ids=[0])
    assert isinstance(processors[-1], TemperatureLogitsWarper)


def transformers_probs(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """What transformers' own warpers, then a softmax over the vocabulary, would sample from."""
    warped = scores.clone()
    if top_k > 0:
        warped = TopKLogitsWarper(top_k)(ids([0]), warped)
    if top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(ids([0]), warped)
    return torch.softmax(warped, dim=-1)


@pytest.mark.parametrize(
    ("top_k", "top_p"), [(40, 0.9), (0, 0.9), (40, 1.0), (0, 1.0), (5, 0.5), (1, 0.9), (300, 0.99), (40, 0.01)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nucleus_samples_from_the_same_distribution_as_transformers(top_k, top_p, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn((3, 200), generator=generator) * 3
    scores[:, 150:] = -math.inf  # banned ids (vocabulary limit, early end token) stay banned
    probs, chosen = nucleus(scores, top_k=top_k, top_p=top_p)
    ours = torch.zeros_like(scores).scatter(1, chosen, probs)
    torch.testing.assert_close(ours, transformers_probs(scores, top_k, top_p), atol=1e-6, rtol=1e-5)


def test_sample_next_picks_only_inside_the_nucleus() -> None:
    scores = torch.tensor([[4.0, 3.9, 0.0, -1.0, 3.8, -2.0]])
    generator = torch.Generator().manual_seed(0)
    picks = {sample_next(scores, greedy=False, generator=generator, top_k=2, top_p=1.0).item() for _ in range(200)}
    assert picks == {0, 1}


# -- vocabulary limit --------------------------------------------------------------------------


def test_vocab_limit_bans_ids_past_the_tokenizer() -> None:
    out = VocabLimit(5)(ids([1]), flat(1.0))
    assert out.tolist() == [[1.0] * 5 + [-math.inf] * 3]
    same = flat(2.0)
    assert torch.equal(VocabLimit(8)(ids([1]), same), flat(2.0))
    with pytest.raises(ValueError, match="limit must be positive, got 0"):
        VocabLimit(0)


def test_vocab_limit_comes_first_when_asked_for() -> None:
    processors = build_processors(Sampling(temperature=0), prompt_length=3, eos_ids=[0], vocab_limit=5)
    assert kinds(processors) == [VocabLimit, MinNewTokens, RangeRepetitionPenalty]
    assert processors[0].limit == 5


def test_vocab_limit_does_not_change_its_input() -> None:
    scores = flat(1.0)
    VocabLimit(5)(ids([1]), scores)
    assert torch.equal(scores, flat(1.0))


def _full_vocabulary_penalty(
    penalty: RangeRepetitionPenalty, input_ids: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """The penalty as first written: a factor for every vocabulary entry, the largest a token's
    positions give it, then one divide-or-multiply over the whole vocabulary."""
    recent = input_ids[:, -penalty.window :]
    distance = torch.arange(recent.shape[1] - 1, -1, -1, dtype=scores.dtype)
    weight = 1.0 - penalty.slope * distance / penalty.window
    per_position = (1.0 + (penalty.penalty - 1.0) * weight).expand(recent.shape[0], -1)
    factors = torch.ones_like(scores).scatter_reduce(1, recent, per_position, reduce="amax")
    return torch.where(scores < 0, scores * factors, scores / factors)


@pytest.mark.parametrize(("window", "slope"), [(512, 0.7), (16, 0.0), (5, 1.0)])
def test_penalty_on_recent_tokens_only_equals_the_full_vocabulary_table(window: int, slope: float) -> None:
    generator = torch.Generator().manual_seed(window)
    # Few distinct ids, so tokens repeat at several distances; zeros and infinities included.
    input_ids = torch.randint(0, 50, (3, 40), generator=generator)
    scores = torch.randn(3, 300, generator=generator) * 4
    scores[:, 0] = 0.0
    scores[0, 1] = -float("inf")
    penalty = RangeRepetitionPenalty(1.3, window=window, slope=slope)
    before = scores.clone()
    got = penalty(cast(torch.LongTensor, input_ids), cast(torch.FloatTensor, scores))
    assert torch.equal(got, _full_vocabulary_penalty(penalty, input_ids, scores))
    assert torch.equal(scores, before)  # pure: the input is left alone


@pytest.mark.parametrize("generated", [0, 1, 3, 4, 9])
def test_min_new_tokens_masks_as_transformers_does_before_and_after_the_minimum(generated: int) -> None:
    scores = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(generated))
    input_ids = torch.zeros((2, 5 + generated), dtype=torch.long)
    ours = MinNewTokens(5, MIN_NEW_TOKENS, [7, 3])(cast(torch.LongTensor, input_ids), cast(torch.FloatTensor, scores))
    theirs = MinNewTokensLengthLogitsProcessor(5, MIN_NEW_TOKENS, [7, 3])(input_ids, scores.clone())
    assert torch.equal(ours, theirs)
    assert bool(torch.isinf(ours[:, [7, 3]]).all()) == (generated < MIN_NEW_TOKENS)
