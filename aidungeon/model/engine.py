"""Token generation with a KV cache kept across turns, streaming and stop rules.

The engine knows nothing about stories: it implements `protocol.py` (`submit(Request)` returns
a handle that streams text) from prompt token ids, sampling settings, a stop rule and a cancel
token, which it checks between decode steps. Between calls it keeps the KV cache of the tokens it last
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from transformers import DynamicCache, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase, StaticCache
from transformers.cache_utils import StaticLayer

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling
from aidungeon.core.errors import OutOfMemoryError
from aidungeon.model.cpu.fastpath import DecodeStep
from aidungeon.model.protocol import (
    Completion,
    GenerationStats,
    Request,
    Result,
    StopReason,
    StopRule,
)
from aidungeon.model.sampling import build_processors, sample_next

if TYPE_CHECKING:
    from aidungeon.model.loader import LoadedModel

log = logging.getLogger(__name__)

# transformers before 5.2x cannot crop a static cache; there the engine uses a growing one.
STATIC_CACHE_CROPS = hasattr(StaticLayer, "crop")

# Static caches grow by this many tokens at a time (see Engine._capacity).
CACHE_CHUNK = 256


@dataclass
class Generation:
    """A running generation (the engine's `Handle`): iterate for streamed text of candidate 0,
    then read the results."""

    pieces: Iterator[str]
    candidates: list[Completion] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def result(self) -> Result:
        return Result(completions=self.candidates, stats=self.stats)

    def run(self) -> list[Completion]:
        """Consume the stream without showing it, and return the candidates."""
        for _ in self.pieces:
            pass
        return self.candidates


@dataclass
class _Job:
    """One generation's settings and state, as the decode loop needs them."""

    generation: Generation
    prompt_ids: list[int]
    rows: list[_Row]
    sampling: Sampling
    stop: StopRule | None
    seed: int | None
    cancel: CancelToken | None
    start: float

    @property
    def stats(self) -> GenerationStats:
        return self.generation.stats

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


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
        self.stop_reason: StopReason | None = None
        self.cut: int | None = None
        self.streamed = 0

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def completion(self) -> Completion:
        text = self.text if self.cut is None else self.text[: self.cut]
        mean = self.logprob_sum / len(self.ids) if self.ids else 0.0
        return Completion(
            text=text, token_ids=list(self.ids), mean_logprob=mean, stop_reason=self.stop_reason or StopReason.LENGTH
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
        return str(self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    @property
    def device_type(self) -> str:
        return str(self.device.type)

    def reset(self) -> None:
        """Forget the cached tokens (after an error left the cache half-updated)."""
        self._cache = None
        self._cached_rows = []

    def submit(self, request: Request) -> Generation:
        """The engine protocol's entry point. This engine keeps one cache, which the newest
        request owns whatever its session; a batching engine would keep one per session."""
        return self.generate(
            list(request.prompt_ids),
            request.sampling,
            n=request.n,
            stop=request.stop,
            seed=request.seed,
            reuse_cache=request.reuse_cache,
            cancel=request.cancel,
        )

    def generate(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        *,
        n: int = 1,
        stop: StopRule | None = None,
        seed: int | None = None,
        reuse_cache: bool = True,
        cancel: CancelToken | None = None,
    ) -> Generation:
        """Start generating `n` candidates for `prompt_ids`; text streams as the result is iterated.
        A set `cancel` token stops every row before its next decode step."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + sampling.max_new_tokens > self.window:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in a {self.window}-token window")
        generation = Generation(pieces=iter(()))
        job = _Job(generation, prompt_ids, [_Row() for _ in range(n)], sampling, stop, seed, cancel, start=0.0)
        generation.pieces = self._run(job, reuse_cache)
        return generation

    def _run(self, job: _Job, reuse_cache: bool) -> Iterator[str]:
        generation = job.generation
        job.stats.prompt_tokens = len(job.prompt_ids)
        job.start = time.perf_counter()
        # The engine has one cache: the newest generation owns it, and an older one left
        # unfinished must neither use it nor, when it is closed, throw it away.
        self._owner = generation
        try:
            with torch.inference_mode():
                logits = self._prefill(
                    job.prompt_ids, len(job.rows), reuse_cache, job.stats, room=job.sampling.max_new_tokens
                )
            yield from self._decode(job, logits)
        except torch.OutOfMemoryError as err:
            self._release(generation)
            raise OutOfMemoryError(f"the {self.device.type} ran out of memory while generating") from err
        except BaseException:
            # Stopped mid-step (an error): the cache may be half-updated, so drop it.
            self._release(generation)
            raise
        finally:
            job.stats.total_s = time.perf_counter() - job.start
        generation.candidates = [row.completion() for row in job.rows]

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
                keys, values = getattr(layer, "keys"), getattr(layer, "values")  # noqa: B009 (attention layers only)
                grown.update(keys[:, :, :length], values[:, :, :length], index)
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

    def _decode(self, job: _Job, logits: torch.Tensor) -> Iterator[str]:
        """Sample, stream and feed one token per row per step until every row stops, the
        length runs out or the job is cancelled (checked before each step, when the cache and
        its recorded rows agree, so a cancelled generation leaves a reusable cache)."""
        processors = self._processors(job)
        generator = self._generator(job.seed)
        history = self._history(job)
        length = len(job.prompt_ids)
        decode_start = 0.0
        for step in range(job.sampling.max_new_tokens):
            if job.cancelled:
                for row in job.rows:
                    row.stop_reason = row.stop_reason or StopReason.CANCELLED
                break
            token_list, logprobs, tokens = self._sample(job, processors, generator, history, length, logits)
            length += 1
            if step == 0:
                job.stats.ttft_s = time.perf_counter() - job.start
                decode_start = time.perf_counter()
            job.stats.new_tokens = step + 1
            for row, token, logprob in zip(job.rows, token_list, logprobs, strict=True):
                if not row.done:
                    self._advance(row, token, logprob, job.stop)
            piece = self._stream_piece(job.rows[0])
            if piece:
                yield piece
            if all(row.done for row in job.rows) or step == job.sampling.max_new_tokens - 1:
                break
            if self._owner is not job.generation:
                raise RuntimeError("a newer generation took over the engine's cache")
            for cached, token in zip(self._cached_rows, token_list, strict=True):
                cached.append(token)
            with torch.inference_mode():
                logits = self._next_logits(tokens)
        job.stats.decode_s = time.perf_counter() - decode_start if decode_start else 0.0
        for row in job.rows:
            if not row.done:
                row.stop_reason = StopReason.LENGTH

    def _processors(self, job: _Job) -> LogitsProcessorList:
        return build_processors(
            job.sampling,
            prompt_length=len(job.prompt_ids),
            eos_ids=sorted(self.eos_ids),
            vocab_limit=len(self.tokenizer),
            device=self.device,
        )

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()  # fresh entropy, leaving torch's global generator alone
        else:
            generator.manual_seed(seed)
        return generator

    def _history(self, job: _Job) -> torch.Tensor:
        """Prompt and generated ids per row, preallocated so the repetition penalty's view needs
        no per-step copies."""
        size = len(job.prompt_ids) + job.sampling.max_new_tokens
        with torch.inference_mode():
            history = torch.empty((len(job.rows), size), dtype=torch.long, device=self.device)
            history[:, : len(job.prompt_ids)] = torch.tensor(job.prompt_ids, device=self.device)
        return history

    @staticmethod
    def _sample(
        job: _Job,
        processors: LogitsProcessorList,
        generator: torch.Generator,
        history: torch.Tensor,
        length: int,
        logits: torch.Tensor,
    ) -> tuple[list[int], list[float], torch.Tensor]:
        """One token per row, written into `history` at `length`: (the tokens, their
        log-probabilities, the tokens as a tensor). Inference mode covers the tensor work only,
        never a yield: the caller's code between streamed pieces must run with autograd as it expects."""
        sampling = job.sampling
        with torch.inference_mode():
            raw = torch.log_softmax(logits, dim=-1)
            scores = processors(cast(torch.LongTensor, history[:, :length]), cast(torch.FloatTensor, logits.clone()))
            tokens = sample_next(
                scores,
                greedy=sampling.temperature == 0,
                generator=generator,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
            )
            logprobs = raw.gather(1, tokens[:, None]).squeeze(1).tolist()
            history[:, length] = tokens
            return tokens.tolist(), logprobs, tokens

    def _next_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row's new token; return the logits (rows, vocab) after it."""
        if self.step is not None and isinstance(self._cache, StaticCache):
            return self.step(tokens, len(self._cached_rows[0]) - 1, self._cache).float()
        out = self.model(input_ids=tokens[:, None], use_cache=True, **{self._cache_arg: self._cache})
        return out.logits[:, -1, :].float()

    def _advance(self, row: _Row, token: int, logprob: float, stop: StopRule | None) -> None:
        if token in self.eos_ids:
            row.stop_reason = StopReason.EOS
            return
        row.ids.append(token)
        row.logprob_sum += logprob
        row.text = self.decode(row.ids)
        if stop is not None:
            cut = stop(row.text)
            if cut is not None:
                row.cut = cut
                row.stop_reason = StopReason.STOP

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
