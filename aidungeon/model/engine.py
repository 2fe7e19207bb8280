"""Token generation with a KV cache kept across turns, streaming and stop rules.

The engine knows nothing about stories: it takes prompt token ids, sampling settings and a
stop rule, and returns text. Between calls it keeps the KV cache of the tokens it last
processed; a new prompt reuses the longest common prefix with them, so a turn that only adds
an action costs a prefill of that action, not of the whole window. It does not build prompts,
clean text or choose between candidates; the game does.

One call draws `n` candidates for one prompt in a single batch (best-of-n); the API takes
token ids so that a server can later batch several players' prompts the same way.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import StaticLayer

from aidungeon.core.config import Sampling
from aidungeon.core.errors import OutOfMemoryError
from aidungeon.model.cpu.fastpath import DecodeStep
from aidungeon.model.sampling import build_processors, sample_next

if TYPE_CHECKING:
    from aidungeon.model.loader import LoadedModel

log = logging.getLogger(__name__)

# transformers before 5.2x cannot crop a static cache; there the engine uses a growing one.
STATIC_CACHE_CROPS = hasattr(StaticLayer, "crop")

# Static caches grow by this many tokens at a time (see Engine._capacity).
CACHE_CHUNK = 256

# Given the text generated so far, where to cut it (a stop rule fired) or None to go on.
StopRule = Callable[[str], "int | None"]


@dataclass
class GenerationStats:
    """What one generation cost, for the status line and the benchmark."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    decode_s: float = 0.0

    @property
    def prefill_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    @property
    def cache_hit(self) -> bool:
        """Most of the prompt came from the cache (a full re-encode is a miss)."""
        return self.prompt_tokens > 0 and self.reused_tokens >= self.prompt_tokens // 2

    @property
    def decode_tok_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


@dataclass
class Candidate:
    """One generated continuation, already cut at its stop rule."""

    text: str
    token_ids: list[int]
    mean_logprob: float
    stop_reason: str  # "eos", "stop", or "length"


@dataclass
class Generation:
    """A running generation: iterate for streamed text of candidate 0, then read the results."""

    pieces: Iterator[str]
    candidates: list[Candidate] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def run(self) -> list[Candidate]:
        """Consume the stream without showing it, and return the candidates."""
        for _ in self.pieces:
            pass
        return self.candidates


def common_prefix(a: list[int], b: list[int]) -> int:
    """The number of leading tokens `a` and `b` share."""
    limit = min(len(a), len(b))
    for i in range(limit):
        if a[i] != b[i]:
            return i
    return limit


class _Row:
    """Per-candidate decoding state: generated ids, the text so far, and whether it stopped."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.text = ""
        self.logprob_sum = 0.0
        self.stop_reason = ""
        self.cut: int | None = None
        self.streamed = 0

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def candidate(self) -> Candidate:
        text = self.text if self.cut is None else self.text[: self.cut]
        mean = self.logprob_sum / len(self.ids) if self.ids else 0.0
        return Candidate(
            text=text, token_ids=list(self.ids), mean_logprob=mean, stop_reason=self.stop_reason or "length"
        )


class Engine:
    """Generates continuations for one model, keeping its KV cache between calls."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        window: int,
        static_cache: bool = True,
        step: DecodeStep | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.window = window
        # A cache preallocated for the whole window spares the per-token copy a growing cache
        # makes of every layer. transformers' static cache cannot fan out into a batch, so
        # best-of-n draws (n > 1) use a growing one.
        self.static_cache = static_cache
        # A lean one-token forward (fastpath.py) for decoding into a static cache, when the model has one.
        self.step = step
        self.device = next(model.parameters()).device
        self.eos_ids = self._eos_ids()
        # transformers 5.24 renamed `past_key_values=` to `cache=`; older 5.x know only the first.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._cache: DynamicCache | StaticCache | None = None
        # Token ids of each row of the cache, so the next prompt can find its longest prefix.
        self._cached_rows: list[list[int]] = []
        self._owner: Generation | None = None

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> Engine:
        """The engine for a loaded model, with its lean decode step when it has one."""
        return cls(loaded.model, loaded.tokenizer, window=loaded.window, step=loaded.decoder)

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(config_eos, int):
            ids.add(config_eos)
        elif isinstance(config_eos, list):
            ids.update(config_eos)
        return ids

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def reset(self) -> None:
        """Forget the cached tokens (for example after a change of model settings)."""
        self._cache = None
        self._cached_rows = []

    def generate(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        *,
        n: int = 1,
        stop: StopRule | None = None,
        seed: int | None = None,
        reuse_cache: bool = True,
    ) -> Generation:
        """Start generating `n` candidates for `prompt_ids`; text streams as the result is iterated."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + sampling.max_new_tokens > self.window:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in a {self.window}-token window")
        generation = Generation(pieces=iter(()))
        generation.pieces = self._run(generation, prompt_ids, sampling, n, stop, seed, reuse_cache)
        return generation

    def _run(
        self,
        generation: Generation,
        prompt_ids: list[int],
        sampling: Sampling,
        n: int,
        stop: StopRule | None,
        seed: int | None,
        reuse_cache: bool,
    ) -> Iterator[str]:
        stats = generation.stats
        stats.prompt_tokens = len(prompt_ids)
        start = time.perf_counter()
        rows = [_Row() for _ in range(n)]
        # The engine has one cache: the newest generation owns it, and an older one left
        # unfinished must neither use it nor, when it is closed, throw it away.
        self._owner = generation
        try:
            with torch.inference_mode():
                logits = self._prefill(prompt_ids, n, reuse_cache, stats, room=sampling.max_new_tokens)
            yield from self._decode(generation, logits, prompt_ids, rows, sampling, stop, seed, stats, start)
        except torch.OutOfMemoryError as err:
            self._release(generation)
            raise OutOfMemoryError(f"the {self.device.type} ran out of memory while generating") from err
        except BaseException:
            # Stopped mid-step (Ctrl-C, an error): the cache may be half-updated, so drop it.
            self._release(generation)
            raise
        finally:
            stats.total_s = time.perf_counter() - start
        generation.candidates = [row.candidate() for row in rows]

    def _release(self, generation: Generation) -> None:
        if self._owner is generation:
            self.reset()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _prefill(
        self, prompt_ids: list[int], n: int, reuse_cache: bool, stats: GenerationStats, *, room: int
    ) -> torch.Tensor:
        """Run the part of the prompt the cache does not hold; return the last position's logits.
        `room` is how many tokens the cache must take after the prompt."""
        fan_out = n > 1 and isinstance(self._cache, StaticCache)
        reused = self._reuse(prompt_ids) if reuse_cache and not fan_out else 0
        capacity = self._capacity(len(prompt_ids) + room)
        if reused == 0:
            self._cache = self._new_cache(n, capacity)
        # The model must see at least one token to give the next token's logits.
        reused = min(reused, len(prompt_ids) - 1)
        assert self._cache is not None
        surplus = int(self._cache.get_seq_length()) - reused
        if surplus > 0:
            self._cache.crop(-surplus)
        if isinstance(self._cache, StaticCache) and self._cache.get_max_length() < capacity:
            self._cache = self._grown(self._cache, capacity)
        stats.reused_tokens = reused
        new = torch.tensor([prompt_ids[reused:]], device=self.device)
        out = self.model(input_ids=new, use_cache=True, logits_to_keep=1, **{self._cache_arg: self._cache})
        logits = out.logits[:, -1, :].float()
        if n > 1:
            self._cache.batch_repeat_interleave(n)
            logits = logits.expand(n, -1)
        self._cached_rows = [list(prompt_ids) for _ in range(n)]
        return logits

    def _capacity(self, needed: int) -> int:
        """A static cache's length: what the prompt and its new tokens need, in whole chunks.

        Attention reads the whole static cache every step, used or not: a 2048-slot cache under
        a 900-token story cost SmolLM2 4 ms of every 28 ms decode step. Chunks keep the story's
        growth from reallocating it every turn."""
        return min(self.window, -(-needed // CACHE_CHUNK) * CACHE_CHUNK)

    def _new_cache(self, n: int, capacity: int) -> DynamicCache | StaticCache:
        if self.static_cache and n == 1 and STATIC_CACHE_CROPS:
            return StaticCache(config=self.model.config, max_cache_len=capacity)
        return DynamicCache(config=self.model.config)

    def _grown(self, cache: StaticCache, capacity: int) -> StaticCache:
        """A longer static cache holding what `cache` holds, so growth costs a copy, not a prefill."""
        grown = StaticCache(config=self.model.config, max_cache_len=capacity)
        length = int(cache.get_seq_length())
        if length:
            for index, layer in enumerate(cache.layers):
                grown.update(layer.keys[:, :, :length], layer.values[:, :, :length], index)
        return grown

    def _reuse(self, prompt_ids: list[int]) -> int:
        """Keep the cached row sharing the longest prefix with the prompt; return that length."""
        if self._cache is None or not self._cached_rows:
            return 0
        lengths = [common_prefix(row, prompt_ids) for row in self._cached_rows]
        best = max(range(len(lengths)), key=lengths.__getitem__)
        if len(self._cached_rows) > 1:
            self._cache.batch_select_indices(torch.tensor([best], device=self.device))
        self._cached_rows = [self._cached_rows[best]]
        return lengths[best]

    def _decode(
        self,
        generation: Generation,
        logits: torch.Tensor,
        prompt_ids: list[int],
        rows: list[_Row],
        sampling: Sampling,
        stop: StopRule | None,
        seed: int | None,
        stats: GenerationStats,
        start: float,
    ) -> Iterator[str]:
        n = len(rows)
        processors = build_processors(
            sampling,
            prompt_length=len(prompt_ids),
            eos_ids=sorted(self.eos_ids),
            vocab_limit=len(self.tokenizer),
            device=self.device,
        )
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()  # fresh entropy, leaving torch's global generator alone
        else:
            generator.manual_seed(seed)
        with torch.inference_mode():
            # A preallocated history keeps the repetition penalty's view free of per-step copies.
            history = torch.empty((n, len(prompt_ids) + sampling.max_new_tokens), dtype=torch.long, device=self.device)
            history[:, : len(prompt_ids)] = torch.tensor(prompt_ids, device=self.device)
        length = len(prompt_ids)
        decode_start = 0.0
        for step in range(sampling.max_new_tokens):
            # Inference mode covers the tensor work only, never a yield: the caller's code
            # between streamed pieces must run with autograd as it expects.
            with torch.inference_mode():
                raw = torch.log_softmax(logits, dim=-1)
                scores = processors(history[:, :length], logits.clone())
                tokens = sample_next(
                    scores,
                    greedy=sampling.temperature == 0,
                    generator=generator,
                    top_k=sampling.top_k,
                    top_p=sampling.top_p,
                )
                chosen_logprobs = raw.gather(1, tokens[:, None]).squeeze(1).tolist()
                token_list = tokens.tolist()
                history[:, length] = tokens
            length += 1
            if step == 0:
                stats.ttft_s = time.perf_counter() - start
                decode_start = time.perf_counter()
            stats.new_tokens = step + 1
            for row, token, logprob in zip(rows, token_list, chosen_logprobs, strict=True):
                if not row.done:
                    self._advance(row, token, logprob, stop)
            piece = self._stream_piece(rows[0])
            if piece:
                yield piece
            if all(row.done for row in rows) or step == sampling.max_new_tokens - 1:
                break
            if self._owner is not generation:
                raise RuntimeError("a newer generation took over the engine's cache")
            for cached, token in zip(self._cached_rows, token_list, strict=True):
                cached.append(token)
            with torch.inference_mode():
                logits = self._next_logits(tokens)
        stats.decode_s = time.perf_counter() - decode_start if decode_start else 0.0
        for row in rows:
            if not row.done:
                row.stop_reason = "length"

    def _next_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row's new token; return the logits (rows, vocab) after it."""
        if self.step is not None and isinstance(self._cache, StaticCache):
            return self.step(tokens, len(self._cached_rows[0]) - 1, self._cache).float()
        out = self.model(input_ids=tokens[:, None], use_cache=True, **{self._cache_arg: self._cache})
        return out.logits[:, -1, :].float()

    def _advance(self, row: _Row, token: int, logprob: float, stop: StopRule | None) -> None:
        if token in self.eos_ids:
            row.stop_reason = "eos"
            return
        row.ids.append(token)
        row.logprob_sum += logprob
        row.text = self.decode(row.ids)
        if stop is not None:
            cut = stop(row.text)
            if cut is not None:
                row.cut = cut
                row.stop_reason = "stop"

    @staticmethod
    def _stream_piece(row: _Row) -> str:
        """The row's new text: never past a stop found so far, never half a character (a stop found
        later can still cut text already streamed; the final result replaces the preview)."""
        visible = row.text if row.cut is None else row.text[: row.cut]
        if not row.done and visible.endswith("\ufffd"):
            return ""
        piece = visible[row.streamed :]
        row.streamed = len(visible)
        return piece
