"""Per-session KV caches: what each story's cache holds, its longest-prefix reuse, and LRU
eviction under a byte budget.

A session's cache holds its tokens in order (`tokens`). After a best-of-n turn it also holds
each candidate's tokens past them (`branches`): in a `Suffix` beside a static cache (the lean
layout) or as the rows of a growing cache (transformers' layout). The next prompt keeps the
candidate it shares most with, and only that one is copied into place.

This module does not run the model, and it is not thread-safe: the engine calls it under its lock.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, StaticCache

from aidungeon.model.cpu.fastpath import Suffix

log = logging.getLogger(__name__)

# Static caches grow by this many tokens at a time (see `capacity`).
CACHE_CHUNK = 256


def cache_keyword(model: Any) -> str:
    """The forward's keyword for a cache: transformers 5.24 renamed `past_key_values=` to
    `cache=`; older 5.x know only the first."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The number of leading tokens `a` and `b` share."""
    limit = min(len(a), len(b))
    for i in range(limit):
        if a[i] != b[i]:
            return i
    return limit


def capacity(needed: int, window: int) -> int:
    """A static cache's length: what is needed, in whole chunks, never past the window.

    Attention reads the whole static cache in transformers' forward, used or not: a 2048-slot
    cache under a 900-token story cost SmolLM2 4 ms of every 28 ms step. Chunks keep the story's
    growth from reallocating it every turn."""
    return min(window, -(-needed // CACHE_CHUNK) * CACHE_CHUNK)


def tensor_bytes(cache: StaticCache | DynamicCache | None) -> int:
    if cache is None:
        return 0
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class SessionCache:
    """One session's cache and the tokens it holds."""

    cache: StaticCache | DynamicCache
    config: Any  # the model's, to build a larger static cache
    tokens: list[int] = field(default_factory=list)
    branches: list[list[int]] = field(default_factory=list)
    suffix: Suffix | None = None

    def __post_init__(self) -> None:
        _record_past(self.cache)

    @property
    def static(self) -> bool:
        return isinstance(self.cache, StaticCache)

    def nbytes(self) -> int:
        return tensor_bytes(self.cache) + (self.suffix.nbytes() if self.suffix is not None else 0)

    def reuse(self, prompt: list[int], *, window: int) -> int:
        """Keep the longest prefix of `prompt` this cache holds, whichever branch holds it; the
        cache is left as one row holding exactly that prefix. Returns its length."""
        shared = common_prefix(self.tokens, prompt)
        if self.branches:
            best, extra = 0, 0
            if shared == len(self.tokens):
                rest = prompt[shared:]
                lengths = [common_prefix(branch, rest) for branch in self.branches]
                best = max(range(len(lengths)), key=lengths.__getitem__)
                extra = lengths[best]
            self._keep_branch(best, extra, window=window)
            shared += extra
        self.truncate(shared)
        return len(self.tokens)  # less than `shared` where a sliding-window cache had to start over

    def _keep_branch(self, best: int, extra: int, *, window: int) -> None:
        """Make branch `best`'s first `extra` tokens part of the cache's single row."""
        start = len(self.tokens)
        if self.suffix is not None:
            if extra:
                self.ensure(start + extra, window=window)
                for index, layer in enumerate(self.cache.layers):
                    keys: Any = layer
                    keys.keys[0, :, start : start + extra] = self.suffix.keys[index][best, :, :extra]
                    keys.values[0, :, start : start + extra] = self.suffix.values[index][best, :, :extra]
        else:
            self.cache.batch_select_indices(torch.tensor([best], device=_device(self.cache)))
        self.tokens = self.tokens + self.branches[best][:extra]
        self.branches, self.suffix = [], None

    def truncate(self, length: int) -> None:
        """Hold only the first `length` tokens (of a cache without branches)."""
        self.tokens = self.tokens[:length]
        self.sync()

    def sync(self) -> None:
        """Make the cache's own length what `tokens` (and the branches) say. A static cache's is set
        outright: the lean step writes at explicit positions and leaves it behind, and transformers'
        forward takes its positions from it. A growing cache is cropped, which also repairs one a
        forward interrupted between layers left uneven."""
        length = len(self.tokens)
        if isinstance(self.cache, StaticCache):
            for layer in self.cache.layers:
                static: Any = layer
                static.cumulative_length.fill_(length)
            return
        if self.branches:
            length += len(self.branches[0])
        surplus = int(self.cache.get_seq_length()) - length
        if surplus > 0 and _cannot_cut(self.cache, surplus):
            self._start_over()
        elif surplus > 0:
            self.cache.crop(-surplus)

    def _start_over(self) -> None:
        """An empty cache in place of one that cannot be cut back: the next prefill reads the
        whole prompt. A sliding-window layer (Gemma 3's) past its window holds only the keys
        recorded since its last cut, so a longer cut (the story's window slid) cannot be undone."""
        self.cache = DynamicCache(config=self.config)
        _record_past(self.cache)
        self.tokens, self.branches = [], []

    def ensure(self, needed: int, *, window: int) -> None:
        """Room for `needed` tokens in a static cache: grow it by a copy, not a prefill."""
        if not isinstance(self.cache, StaticCache) or self.cache.get_max_length() >= needed:
            return
        grown = StaticCache(config=self.config, max_cache_len=capacity(needed, window))
        length = len(self.tokens)
        if length:
            for index, layer in enumerate(self.cache.layers):
                old: Any = layer
                grown.update(old.keys[:, :, :length], old.values[:, :, :length], index)
        self.cache = grown

    def fan_out(self, rows: int, room: int) -> None:
        """`rows` candidates continue from the cache's tokens, each on its own branch."""
        self.branches = [[] for _ in range(rows)]
        if isinstance(self.cache, StaticCache):
            self.suffix = Suffix.like(self.cache, rows, room)
        else:
            self.cache.batch_repeat_interleave(rows)

    def extend(self, tokens: list[int]) -> None:
        """Record one fed token per row (the cache's single row, or each branch)."""
        if self.branches:
            for branch, token in zip(self.branches, tokens, strict=True):
                branch.append(token)
        else:
            self.tokens.append(tokens[0])


def _record_past(cache: StaticCache | DynamicCache) -> None:
    """Sliding-window layers keep every key until the next cut instead of only their window's
    last ones, so the tokens a turn generated and the story did not keep can be cut back."""
    if isinstance(cache, DynamicCache):
        for layer in cache.layers:
            sliding: Any = layer
            if getattr(sliding, "is_sliding", False) and hasattr(sliding, "activate_past_recording"):
                sliding.activate_past_recording()


def _cannot_cut(cache: StaticCache | DynamicCache, surplus: int) -> bool:
    """Whether cutting the last `surplus` tokens needs keys a sliding-window layer no longer holds.

    Past its window such a layer holds the keys recorded since its last cut (which keeps one
    window's worth): enough to cut back what was added since, not further."""
    for layer in cache.layers:
        sliding: Any = layer  # transformers' DynamicSlidingWindowLayer; other layers have no window
        window = getattr(sliding, "sliding_window", None) if getattr(sliding, "is_sliding", False) else None
        length = int(sliding.get_seq_length()) if window is not None else 0
        if window is None or length < window:
            continue
        held = int(sliding.keys.shape[-2])
        if not getattr(sliding, "record_past", False) or held < min(length, surplus + int(window) - 1):
            return True
    return False


def _device(cache: StaticCache | DynamicCache) -> torch.device:
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor):
            return keys.device
    return torch.device("cpu")


class SessionCaches:
    """The idle sessions' caches, least recently used first, kept under a byte budget.

    A session being generated for has its cache taken out (`take`) and put back when the
    generation ends (`put`); only idle caches can be evicted."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"the cache budget must be 0 or more bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.evictions = 0
        self._idle: OrderedDict[str, SessionCache] = OrderedDict()

    def __contains__(self, session: str) -> bool:
        return session in self._idle

    def take(self, session: str) -> SessionCache | None:
        return self._idle.pop(session, None)

    def put(self, session: str, entry: SessionCache, *, in_use_bytes: int) -> None:
        """Keep `entry` as the session's cache (the newest wins), then evict down to the budget."""
        self._idle[session] = entry
        self._idle.move_to_end(session)
        self.evict(in_use_bytes=in_use_bytes)

    def drop(self, session: str) -> None:
        self._idle.pop(session, None)

    def idle_bytes(self) -> int:
        return sum(entry.nbytes() for entry in self._idle.values())

    def evict(self, *, in_use_bytes: int) -> None:
        """Drop the least recently used idle caches until all caches fit the budget."""
        total = in_use_bytes + self.idle_bytes()
        while self._idle and total > self.budget_bytes:
            session, entry = self._idle.popitem(last=False)
            total -= entry.nbytes()
            self.evictions += 1
            log.info("evicted the cache of session %r (%d bytes)", session, entry.nbytes())
