"""The batching engine: one scheduler decodes every running request's rows in each step.

It implements `protocol.py`. `submit(Request)` queues a request and returns a `Generation`
handle; iterating a handle drives the scheduler (under the engine's lock, from whichever thread
iterates: there is no engine thread), so several threads may submit and read at once. Each
scheduler step:
1. admits the requests submitted since the last step (continuous batching: a request joins
   between steps and leaves when it stops, is cancelled, is abandoned or hits its length);
2. prefills new requests, in chunks of `prefill_chunk` tokens while others are decoding, so a
   long prompt does not stall their steps;
3. samples one token per row, each request from its own seeded generator;
4. feeds every unfinished row's token through one forward: the batched lean step (`cpu/fastpath.py`)
   where the model has one, else transformers' forward for one request after another.

Each session (a story) keeps its KV cache across turns (`sessions.py`): a new prompt prefills
only what its longest common prefix with the cache leaves, and idle caches are evicted, least
recently used first, under a byte budget. Best-of-n rows share their prompt's cache.

Seeds: a request's seed seeds its own generator, which samples its rows in order; what else is
in the batch never touches it. The same prompt, settings and seed give the same completions
alone or batched, as far as the batched logits equal the lone ones (in fp32 they match to
rounding; a token whose sampling threshold lands within rounding could differ).

Running out of memory in a batched step halves the rows a step may take; the requests left out
wait with their state intact. A request that does not fit alone fails with `OutOfMemoryError`.

It does not build prompts, clean text or choose between candidates; the game does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

import torch
from transformers import DynamicCache, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase, StaticCache

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling
from aidungeon.core.errors import OutOfMemoryError
from aidungeon.model.cpu.fastpath import DecodeStep, Group
from aidungeon.model.protocol import Completion, GenerationStats, Request, Result, StopReason, StopRule, check_request
from aidungeon.model.sampling import build_processors, sample_next
from aidungeon.model.scoring import Likelihoods
from aidungeon.model.sessions import SessionCache, SessionCaches, cache_keyword, capacity

if TYPE_CHECKING:
    from aidungeon.model.loader import LoadedModel

log = logging.getLogger(__name__)

# While other rows decode, a step prefills at most this many prompt tokens: on the 2-core CPU
# about 0.1-0.2 s for the default model, against a ~12 ms decode step.
PREFILL_CHUNK = 128
# The default cache budget: this share of the memory free once the weights are loaded (the rest
# is left for activations, prefills and the rest of the machine).
BUDGET_SHARE = 0.5
FALLBACK_BUDGET = 2 << 30


class _Row:
    """Per-candidate decoding state: generated ids, the text so far, and whether it stopped."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.text = ""
        self.logprob_sum = 0.0
        self.logprobs: list[float] = []
        self.stop_reason: StopReason | None = None
        self.cut: int | None = None
        self.streamed = 0

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    def visible(self) -> str:
        """The text so far, never past a stop found so far, and without a character the last token
        left half-written (byte-level tokens can split one): it shows once the next token completes
        it, and never if the generation ends first, in the stream and the result alike."""
        text = self.text if self.cut is None else self.text[: self.cut]
        return text.rstrip("\ufffd")

    def completion(self) -> Completion:
        text = self.visible()
        mean = self.logprob_sum / len(self.ids) if self.ids else 0.0
        return Completion(
            text=text,
            token_ids=list(self.ids),
            mean_logprob=mean,
            stop_reason=self.stop_reason or StopReason.LENGTH,
            token_logprobs=list(self.logprobs),
        )

    def piece(self) -> str:
        """The row's new visible text (a stop found later can still cut text already streamed; the
        final result replaces the preview)."""
        visible = self.visible()
        piece = visible[self.streamed :]
        self.streamed = len(visible)
        return piece


class _Job:
    """One request's state as the scheduler moves it along: prefill, then sample and feed."""

    def __init__(self, request: Request, processors: LogitsProcessorList, generator: torch.Generator) -> None:
        self.request = request
        self.prompt = list(request.prompt_ids)
        self.sampling = request.sampling
        self.rows = [_Row() for _ in range(request.n)]
        self.processors = processors
        self.generator = generator
        self.stats = GenerationStats(prompt_tokens=len(self.prompt))
        self.start = time.perf_counter()
        self.decode_start = 0.0
        self.pieces: deque[str] = deque()
        self.entry: SessionCache | None = None
        self.prefilled = 0
        self.logits: torch.Tensor | None = None  # to sample the next tokens from
        self.feed: list[int] | None = None  # sampled tokens not yet fed to the model
        self.steps = 0
        self.history: torch.Tensor | None = None
        self.candidates: list[Completion] = []
        self.error: BaseException | None = None
        self.abandoned = False  # the handle was closed unfinished
        self.finished = False

    @property
    def n(self) -> int:
        return len(self.rows)

    def stopped_by_caller(self) -> bool:
        return self.abandoned or self.request.cancel.is_set()


class Generation:
    """A submitted request (the engine's `Handle`): iterate for streamed text of candidate 0, then
    read the results. Iterating drives the engine's scheduler whenever no text is waiting."""

    def __init__(self, engine: Engine, job: _Job) -> None:
        self._engine = engine
        self._job = job
        self._pieces = self._stream()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def candidates(self) -> list[Completion]:
        return self._job.candidates

    @property
    def stats(self) -> GenerationStats:
        return self._job.stats

    def result(self) -> Result:
        return Result(completions=self._job.candidates, stats=self._job.stats)

    def run(self) -> list[Completion]:
        """Consume the stream without showing it, and return the candidates."""
        for _ in self._pieces:
            pass
        return self._job.candidates

    def _stream(self) -> Iterator[str]:
        job = self._job
        try:
            while True:
                while job.pieces:
                    yield job.pieces.popleft()
                if job.finished:
                    # Pieces queued just before the job finished.
                    while job.pieces:
                        yield job.pieces.popleft()
                    break
                self._engine._drive(job)
        finally:
            if not job.finished:
                # Only a flag: this may run in garbage collection, in any thread, even inside a
                # step that holds the engine's lock. The next step stops the job.
                job.abandoned = True
        if job.error is not None:
            raise job.error


class Engine:
    """Continues token ids for many sessions at once on one model."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        window: int,
        step: DecodeStep | None = None,
        cache_budget_bytes: int = FALLBACK_BUDGET,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be at least 1, got {prefill_chunk}")
        self.model = model
        self.tokenizer = tokenizer
        self.window = window
        # The lean batched decode step (cpu/fastpath.py) when the model has one; its caches are
        # static, preallocated for the story, so a step copies nothing.
        self.step = step
        self.prefill_chunk = prefill_chunk
        self.device = next(model.parameters()).device
        self.eos_ids = self._eos_ids()
        self._cache_arg = cache_keyword(model)
        self.sessions = SessionCaches(cache_budget_bytes)
        # After running out of memory, the most rows one step feeds (None: no limit).
        self.max_rows: int | None = None
        self._lock = threading.Lock()
        self._likelihoods = Likelihoods(model)
        self._pending: deque[_Job] = deque()
        self._active: list[_Job] = []

    @classmethod
    def for_model(cls, loaded: LoadedModel, *, cache_budget_bytes: int | None = None) -> Engine:
        """The engine for a loaded model, with its lean decode step when it has one. The cache
        budget defaults to half the memory free next to the loaded weights."""
        if cache_budget_bytes is None:
            from aidungeon.model.loader import available_bytes

            free = available_bytes(loaded.device)
            cache_budget_bytes = int(free * BUDGET_SHARE) if free else FALLBACK_BUDGET
        return cls(
            loaded.model,
            loaded.tokenizer,
            window=loaded.window,
            step=loaded.decoder,
            cache_budget_bytes=cache_budget_bytes,
        )

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

    @property
    def evictions(self) -> int:
        return self.sessions.evictions

    # -- requests in ------------------------------------------------------------------------

    def submit(self, request: Request) -> Generation:
        """Queue a request; it joins the running batch at the next step. Safe from any thread."""
        check_request(request, self.window)
        job = _Job(request, self._processors(request), self._generator(request.seed))
        self._pending.append(job)
        return Generation(self, job)

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
        session: str = "",
    ) -> Generation:
        """`submit` with keywords: `n` candidates for `prompt_ids` in `session`."""
        request = Request(
            session=session,
            prompt_ids=tuple(prompt_ids),
            sampling=sampling,
            cancel=cancel or CancelToken(),
            n=n,
            stop=stop,
            seed=seed,
            reuse_cache=reuse_cache,
        )
        return self.submit(request)

    def likelihoods(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float] | None:
        """Each continuation's summed log-probability after `prompt`, between decode steps
        (None after running out of memory: scoring is a nicety, never worth a turn)."""
        with self._lock, torch.inference_mode():
            try:
                return self._likelihoods(prompt, continuations)
            except torch.OutOfMemoryError as err:
                self._empty_device_cache()
                log.warning("out of memory while scoring candidates: %s", err)
                return None

    def _processors(self, request: Request) -> LogitsProcessorList:
        return build_processors(
            request.sampling,
            prompt_length=len(request.prompt_ids),
            eos_ids=sorted(self.eos_ids),
            vocab_limit=len(self.tokenizer),
            device=self.device,
            tokenizer=self.tokenizer,
        )

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()  # fresh entropy, leaving torch's global generator alone
        else:
            generator.manual_seed(seed)
        return generator

    # -- the scheduler ----------------------------------------------------------------------

    def _drive(self, job: _Job) -> None:
        """Run one scheduler step for `job`'s reader, unless another thread's step already
        gave it something to read. Inference mode covers the step only, never a yield."""
        with self._lock:
            if job.pieces or job.finished:
                return
            with torch.inference_mode():
                self._step()

    def _step(self) -> None:
        while self._pending:
            self._active.append(self._pending.popleft())
        for job in list(self._active):
            if job.stopped_by_caller():
                self._finish(job, cancelled=True)
        prefilling = [j for j in self._active if j.logits is None and j.feed is None]
        decoding = len(prefilling) < len(self._active)
        budget = self.prefill_chunk if decoding else None
        for job in prefilling:
            used = self._prefill(job, budget)
            if budget is not None:
                budget -= used
                if budget <= 0:
                    break
        for job in [j for j in self._active if j.logits is not None]:
            self._sample(job)
        feeding = [j for j in self._active if j.feed is not None]
        if feeding:
            self._forward(feeding)

    # -- prefill ----------------------------------------------------------------------------

    def _claim(self, job: _Job) -> SessionCache:
        """The session's cache, holding the longest prefix of the prompt it can (at most all
        but one token: the model must see one to give the next token's logits)."""
        request, prompt = job.request, job.prompt
        entry = self.sessions.take(request.session) if request.reuse_cache else None
        needed = len(prompt) + (job.sampling.max_new_tokens if job.n == 1 else 0)
        reused = 0
        if entry is None:
            entry = self._new_entry(needed)
        else:
            reused = min(entry.reuse(prompt, window=self.window), len(prompt) - 1)
        entry.truncate(reused)
        entry.ensure(needed, window=self.window)
        job.stats.reused_tokens = job.prefilled = reused
        job.entry = entry
        self.sessions.evict(in_use_bytes=self._in_use_bytes())
        return entry

    def _new_entry(self, needed: int) -> SessionCache:
        config = self.model.config
        if self.step is not None:
            cache: StaticCache | DynamicCache = StaticCache(config=config, max_cache_len=capacity(needed, self.window))
        else:
            cache = DynamicCache(config=config)
        return SessionCache(cache, config)

    def _in_use_bytes(self) -> int:
        return sum(job.entry.nbytes() for job in self._active if job.entry is not None)

    def _prefill(self, job: _Job, budget: int | None) -> int:
        """Prefill the next chunk of `job`'s prompt (all of it when `budget` is None); returns
        how many tokens ran. The last chunk leaves the logits to sample from."""
        try:
            entry = job.entry or self._claim(job)
            end = len(job.prompt) if budget is None else min(len(job.prompt), job.prefilled + budget)
            chunk = job.prompt[job.prefilled : end]
            entry.sync()  # repairs a cache an interrupted forward left uneven
            out = self.model(
                input_ids=torch.tensor([chunk], device=self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: entry.cache},
            )
        except torch.OutOfMemoryError as err:
            self._fail(job, OutOfMemoryError(f"the {self.device.type} ran out of memory while reading the prompt"))
            self._empty_device_cache()
            log.warning("out of memory in a prefill: %s", err)
            return 0
        entry.tokens.extend(chunk)
        job.prefilled = end
        if end == len(job.prompt):
            logits = out.logits[:, -1, :].float()
            if job.n > 1:
                entry.fan_out(job.n, room=job.sampling.max_new_tokens)
                logits = logits.expand(job.n, -1)
            job.logits = logits
        return len(chunk)

    # -- sampling ---------------------------------------------------------------------------

    def _sample(self, job: _Job) -> None:
        """One token per row from the job's logits: stream, stop rows, finish or queue the feed."""
        assert job.logits is not None
        if job.history is None:
            job.history = self._history(job)
        tokens, logprobs = self._draw(job, job.logits)
        job.logits = None
        if job.steps == 0:
            job.stats.ttft_s = time.perf_counter() - job.start
            job.decode_start = time.perf_counter()
        job.steps += 1
        job.stats.new_tokens = job.steps
        try:
            for row, token, logprob in zip(job.rows, tokens, logprobs, strict=True):
                if not row.done:
                    self._advance(row, token, logprob, job.request.stop)
        except BaseException as err:  # a stop rule's error is its request's, not the step's
            self._fail(job, err)
            return
        piece = job.rows[0].piece()
        if piece:
            job.pieces.append(piece)
        if all(row.done for row in job.rows) or job.steps == job.sampling.max_new_tokens:
            self._finish(job)
        else:
            job.feed = tokens

    def _history(self, job: _Job) -> torch.Tensor:
        """Prompt and generated ids per row, preallocated so the repetition penalty's view needs
        no per-step copies."""
        size = len(job.prompt) + job.sampling.max_new_tokens
        history = torch.empty((job.n, size), dtype=torch.long, device=self.device)
        history[:, : len(job.prompt)] = torch.tensor(job.prompt, device=self.device)
        return history

    @staticmethod
    def _draw(job: _Job, logits: torch.Tensor) -> tuple[list[int], list[float]]:
        """One token per row, written into the job's history: (the tokens, their log-probabilities)."""
        assert job.history is not None
        sampling, length = job.sampling, len(job.prompt) + job.steps
        raw = torch.log_softmax(logits, dim=-1)
        scores = job.processors(
            cast(torch.LongTensor, job.history[:, :length]), cast(torch.FloatTensor, logits.clone())
        )
        tokens = sample_next(
            scores,
            greedy=sampling.temperature == 0,
            generator=job.generator,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
        )
        logprobs = raw.gather(1, tokens[:, None]).squeeze(1).tolist()
        job.history[:, length] = tokens
        return tokens.tolist(), logprobs

    def _advance(self, row: _Row, token: int, logprob: float, stop: StopRule | None) -> None:
        if token in self.eos_ids:
            row.stop_reason = StopReason.EOS
            return
        row.ids.append(token)
        row.logprob_sum += logprob
        row.logprobs.append(logprob)
        row.text = self.decode(row.ids)
        if stop is not None:
            cut = stop(row.text)
            if cut is not None:
                row.cut = cut
                row.stop_reason = StopReason.STOP

    # -- decode -----------------------------------------------------------------------------

    def _forward(self, feeding: list[_Job]) -> None:
        """Feed the sampled tokens: the batched lean step for as many rows as a step may take,
        or transformers' forward one request at a time."""
        if self.step is None:
            for job in feeding:
                self._forward_plain(job)
            return
        chosen: list[_Job] = []
        rows = 0
        for job in feeding:
            if chosen and self.max_rows is not None and rows + job.n > self.max_rows:
                continue  # waits, state intact, for a later step
            chosen.append(job)
            rows += job.n
        try:
            logits = self._forward_lean(chosen)
        except torch.OutOfMemoryError as err:
            self._out_of_memory(chosen, rows, err)
            return
        start = 0
        for job in chosen:
            self._fed(job, logits[start : start + job.n])
            start += job.n

    def _forward_lean(self, jobs: list[_Job]) -> torch.Tensor:
        assert self.step is not None
        groups = []
        for job in jobs:
            entry = cast(SessionCache, job.entry)
            cache = cast(StaticCache, entry.cache)
            offset = len(entry.branches[0]) if entry.branches else 0
            groups.append(Group(cache, prefix=len(entry.tokens), suffix=entry.suffix, offset=offset))
        tokens = torch.tensor([t for job in jobs for t in cast(list[int], job.feed)], device=self.device)
        return self.step(tokens, groups).float()

    def _forward_plain(self, job: _Job) -> None:
        entry = cast(SessionCache, job.entry)
        entry.sync()
        tokens = torch.tensor(cast(list[int], job.feed), device=self.device)[:, None]
        try:
            out = self.model(input_ids=tokens, use_cache=True, **{self._cache_arg: entry.cache})
        except torch.OutOfMemoryError as err:
            self._out_of_memory([job], job.n, err)
            return
        self._fed(job, out.logits[:, -1, :].float())

    def _fed(self, job: _Job, logits: torch.Tensor) -> None:
        cast(SessionCache, job.entry).extend(cast(list[int], job.feed))
        job.feed = None
        job.logits = logits

    def _out_of_memory(self, jobs: list[_Job], rows: int, err: BaseException) -> None:
        """A step ran out of memory: take fewer rows from now on; a lone request that does not
        fit fails (the game then draws fewer candidates or a smaller window)."""
        self._empty_device_cache()
        if len(jobs) > 1:
            self.max_rows = max(1, rows // 2)
            log.warning("out of memory with %d rows in a step; at most %d from now on", rows, self.max_rows)
            return
        (job,) = jobs
        log.warning("out of memory decoding %d rows: %s", job.n, err)
        self._fail(job, OutOfMemoryError(f"the {self.device.type} ran out of memory while generating"))

    def _empty_device_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- requests out -----------------------------------------------------------------------

    def _finish(self, job: _Job, *, cancelled: bool = False) -> None:
        for row in job.rows:
            if not row.done:
                row.stop_reason = StopReason.CANCELLED if cancelled else StopReason.LENGTH
        now = time.perf_counter()
        job.stats.decode_s = now - job.decode_start if job.decode_start else 0.0
        job.stats.total_s = now - job.start
        job.candidates = [row.completion() for row in job.rows]
        self._release(job, keep=True)

    def _fail(self, job: _Job, error: BaseException) -> None:
        job.error = error
        job.stats.total_s = time.perf_counter() - job.start
        # Out of memory: the cache may not even hold what it claims; drop it.
        self._release(job, keep=not isinstance(error, OutOfMemoryError))

    def _release(self, job: _Job, *, keep: bool) -> None:
        """The job leaves the batch; its session keeps the cache (the newest finisher's wins)."""
        if job in self._active:
            self._active.remove(job)
        job.finished = True
        if job.entry is not None and keep:
            self.sessions.put(job.request.session, job.entry, in_use_bytes=self._in_use_bytes())
        job.entry = None
