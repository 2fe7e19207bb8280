"""Logits processors for story sampling, following transformers' LogitsProcessor contract.

Each step validates its settings in `__init__` and is a pure `__call__(input_ids, scores) ->
scores` on tensors: no hidden state, no Python loops over the vocabulary. Temperature comes
from transformers itself; this module adds the range-and-slope repetition penalty that story
players know from KoboldAI, and `build_processors` which assembles the list, with the narrator-
and player-voice steps of `voice.py` when it is given the tokenizer.

Top-k and top-p are applied by `sample_next` on the k best tokens only. transformers' top-p
warper sorts the whole vocabulary every step, which cost 3 ms of a 25 ms SmolLM2 decode step
on the CPU; the distribution sampled from is the same (tests/test_sampling.py checks it).
"""

from __future__ import annotations

from typing import cast

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
)

from aidungeon.core.config import Sampling
from aidungeon.model.voice import NarratorVoice, PlayerVoice, VoiceVocabulary


class RangeRepetitionPenalty(LogitsProcessor):
    """Penalise tokens seen in the last `window` tokens, recent ones the most.

    The penalty for a token at distance d (0 = the newest) is `1 + (penalty - 1) * w(d)` with
    `w(d) = 1 - slope * d / window`: slope 0 is a flat penalty, slope 1 fades it to nothing at
    the far end of the range. A token seen several times gets its strongest (most recent)
    penalty. The first `skip` tokens (the prompt, for `repetition_scope = "turn"`) are never
    penalised. It is sign-aware: positive logits are divided by the penalty, negative logits are
    multiplied, so the penalty always makes a token less likely (the CTRL rule).
    """

    def __init__(self, penalty: float, *, window: int, slope: float = 0.0, skip: int = 0) -> None:
        if penalty < 1.0:
            raise ValueError(f"penalty must be at least 1, got {penalty}")
        if window < 0:
            raise ValueError(f"window must be 0 or more, got {window}")
        if not 0.0 <= slope <= 1.0:
            raise ValueError(f"slope must be between 0 and 1, got {slope}")
        if skip < 0:
            raise ValueError(f"skip must be 0 or more, got {skip}")
        self.penalty = penalty
        self.window = window
        self.slope = slope
        self.skip = skip

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.penalty == 1.0 or self.window == 0 or input_ids.shape[1] <= self.skip:
            return scores
        recent = input_ids[:, max(self.skip, input_ids.shape[1] - self.window) :]
        length = recent.shape[1]
        # Distance 0 is the newest token (the last column).
        distance = torch.arange(length - 1, -1, -1, device=scores.device, dtype=scores.dtype)
        weight = 1.0 - self.slope * distance / self.window
        per_position = (1.0 + (self.penalty - 1.0) * weight).expand(recent.shape[0], -1)
        # Only the recent tokens' scores change: penalise them where they sit, and let a token
        # seen several times keep its lowest result, which is its strongest penalty (a factor
        # of 1 or more never raises a score). This touches `window` scores, not the vocabulary:
        # the full-vocabulary factor table cost SmolLM2 0.25 ms of every sampled row.
        seen = scores.gather(1, recent)
        penalised = torch.where(seen < 0, seen * per_position, seen / per_position)
        return cast(torch.FloatTensor, scores.clone().scatter_reduce_(1, recent, penalised, reduce="amin"))


# An end token in the first few steps would give an empty result that has to be regenerated.
MIN_NEW_TOKENS = 4


class MinNewTokens(MinNewTokensLengthLogitsProcessor):
    """transformers' minimum-length step, without its cost after the minimum: the library's
    builds a vocabulary-sized mask with `torch.isin` on every call, 0.5 ms of every sampled
    row of SmolLM2's vocabulary on one CPU thread (more than the rest of sampling), even once it no longer masks."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] - self.prompt_length_to_skip >= self.min_new_tokens:
            return scores
        masked = scores.clone()
        masked[:, self.eos_token_id] = -float("inf")
        return cast(torch.FloatTensor, masked)


class VocabLimit(LogitsProcessor):
    """Never sample ids the tokenizer cannot decode (models often pad their vocabulary)."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = limit

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] <= self.limit:
            return scores
        limited = scores.clone()
        limited[:, self.limit :] = -float("inf")
        return cast(torch.FloatTensor, limited)


def build_processors(
    sampling: Sampling,
    *,
    prompt_length: int,
    eos_ids: list[int],
    vocab_limit: int | None = None,
    device: torch.device | str = "cpu",
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> LogitsProcessorList:
    """The processors for one generation, in the order KoboldAI and transformers apply them.
    The voice steps (`model/voice.py`) need the `tokenizer`'s vocabulary; without one they are
    left out."""
    processors = LogitsProcessorList()
    if vocab_limit is not None:
        processors.append(VocabLimit(vocab_limit))
    processors.extend(_voice_steps(sampling, tokenizer, prompt_length=prompt_length, device=device))
    if eos_ids:
        processors.append(MinNewTokens(prompt_length, MIN_NEW_TOKENS, eos_ids, device=str(device)))
    if sampling.repetition_penalty > 1.0 and sampling.repetition_range > 0:
        processors.append(
            RangeRepetitionPenalty(
                sampling.repetition_penalty,
                window=sampling.repetition_range,
                slope=sampling.repetition_slope,
                skip=prompt_length if sampling.repetition_scope == "turn" else 0,
            )
        )
    if sampling.temperature > 0:
        processors.append(TemperatureLogitsWarper(float(sampling.temperature)))
    return processors


def _voice_steps(
    sampling: Sampling, tokenizer: PreTrainedTokenizerBase | None, *, prompt_length: int, device: torch.device | str
) -> list[LogitsProcessor]:
    """The narrator- and player-voice steps the settings ask for (none without a tokenizer)."""
    if tokenizer is None or not (sampling.narrator_voice or sampling.player_voice):
        return []
    vocabulary = VoiceVocabulary.of(tokenizer, device=device)
    steps: list[LogitsProcessor] = []
    if sampling.narrator_voice:
        steps.append(NarratorVoice(vocabulary, prompt_length=prompt_length))
    if sampling.player_voice:
        steps.append(PlayerVoice(vocabulary, prompt_length=prompt_length))
    return steps


def nucleus(scores: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens sampling may pick and their probabilities, best first: the `top_k` best (0:
    all), then the fewest of those whose probabilities add up to `top_p`, renormalized."""
    k = top_k if 0 < top_k < scores.shape[-1] else scores.shape[-1]
    values, ids = torch.topk(scores, k, dim=-1)
    probs = torch.softmax(values, dim=-1)
    if top_p < 1.0:
        # Keep a token while the ones before it add up to less than top_p (the best always stays).
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs, ids


def sample_next(
    scores: torch.Tensor, *, greedy: bool, generator: torch.Generator | None, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Pick one token per row from processed scores: argmax when greedy, else sample from the
    nucleus (see `nucleus`)."""
    if greedy:
        return scores.argmax(dim=-1)
    probs, ids = nucleus(scores, top_k=top_k, top_p=top_p)
    choice = torch.multinomial(probs, num_samples=1, generator=generator)
    return ids.gather(-1, choice).squeeze(1)
