"""How likely a model finds short continuations after a prompt: what the game's ranking asks of
an engine to prefer the candidate that answers the player's action (`game/turn.py`).

`Likelihoods(model)(prompt, continuations)` returns each continuation's summed log-probability
after the prompt. The prompt is run once and its cache kept (a few, least recently used first
out), so a prompt that returns (the narrator's instructions and "You wait.", every turn) costs
nothing after the first time; the continuations then run as one batch over a copy of it.
Plain transformers forward, no sampling, no state beyond those caches; the caller holds the
engine's lock, so it never runs beside a decode step.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from aidungeon.model.sessions import cache_keyword, common_prefix

# Prompts whose cache is kept: the neutral one, and the last few actions'.
KEPT_PROMPTS = 4


class Likelihoods:
    """Summed log-probabilities of continuations, with the prompts' caches kept."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self._cache_arg = cache_keyword(model)
        self._prompts: OrderedDict[tuple[int, ...], tuple[Any, torch.Tensor]] = OrderedDict()

    def __call__(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
        if not prompt or not continuations or not all(continuations):
            raise ValueError("a prompt and non-empty continuations are needed")
        cache, last = self._prompt(tuple(prompt))
        first = torch.log_softmax(last.float(), dim=-1)  # the first token of every continuation
        totals = [float(first[row[0]]) for row in continuations]
        if max(map(len, continuations)) > 1:
            rest = self._rest(cache, len(prompt), continuations)
            totals = [total + extra for total, extra in zip(totals, rest, strict=True)]
        return totals

    def _prompt(self, prompt: tuple[int, ...]) -> tuple[Any, torch.Tensor]:
        """The prompt's cache and its last position's logits, computed once while kept; a new
        prompt starts from the kept one it shares the most with (the narrator's instructions)."""
        if prompt in self._prompts:
            self._prompts.move_to_end(prompt)
            return self._prompts[prompt]
        cache, shared = self._nearest(prompt)
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        fed = torch.tensor([prompt[shared:]], device=self.device)
        out = self.model(input_ids=fed, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
        kept = (cache, out.logits[0, -1])
        self._prompts[prompt] = kept
        if len(self._prompts) > KEPT_PROMPTS:
            self._prompts.popitem(last=False)
        return kept

    def _nearest(self, prompt: tuple[int, ...]) -> tuple[Any, int]:
        """A copy of the kept cache sharing the longest start with `prompt`, cut to that start
        (at least one token is left to feed, for its logits), and the start's length."""
        best: Any = None
        shared = 0
        for kept, (cache, _) in self._prompts.items():
            length = min(common_prefix(kept, prompt), len(prompt) - 1)
            if length > shared:
                best, shared = cache, length
        if best is None:
            return None, 0
        cache = copy.deepcopy(best)
        surplus = cache.get_seq_length() - shared
        try:
            if surplus:
                cache.crop(-surplus)  # transformers 5: a negative count of tokens to drop
        except RuntimeError:  # a sliding window already moved past the cut: start afresh
            return None, 0
        return cache, shared

    def _rest(self, cache: Any, prompt_length: int, continuations: Sequence[Sequence[int]]) -> list[float]:
        """Each continuation's tokens after its first, in one batch over a copy of the prompt's cache."""
        width = max(map(len, continuations)) - 1
        ids = torch.zeros((len(continuations), width + 1), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(continuations), prompt_length + width + 1), dtype=torch.long, device=self.device)
        mask[:, :prompt_length] = 1
        for row, tokens in enumerate(continuations):
            ids[row, : len(tokens)] = torch.tensor(tokens, device=self.device)
            mask[row, prompt_length : prompt_length + len(tokens)] = 1
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(continuations))
        out = self.model(
            input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True, **{self._cache_arg: batch_cache}
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        return [float(logprobs[row, : len(tokens) - 1].sum()) for row, tokens in enumerate(continuations)]
