"""What one server takes on: its limits, the turn queue, and each token's rate.

The queue is bounded: `max_running` turns run (and batch together in the engine), up to
`max_waiting` more wait, and a turn beyond that is refused at once (503 with Retry-After), never
queued without end. The rate limiter is a token bucket per player. Nothing here knows HTTP.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from aidungeon.core.errors import AIDungeonError


class Overloaded(AIDungeonError):
    """The server has as many turns as it takes."""


class BodyTooLarge(AIDungeonError):
    """A request body over the server's limit."""


class RateLimited(AIDungeonError):
    """A player sent turns faster than their rate."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    """The operator's limits (each a `serve` option)."""

    max_running: int = 16
    max_waiting: int = 64
    max_body_bytes: int = 1 << 20
    max_stories: int = 200
    turns_per_minute: float = 30.0
    turn_burst: int = 10
    retry_after_s: int = 2

    def __post_init__(self) -> None:
        for name in ("max_running", "max_body_bytes", "max_stories", "turn_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_waiting < 0 or self.turns_per_minute <= 0:
            raise ValueError("max_waiting must be 0 or more and turns_per_minute above 0")


class TurnQueue:
    """Counts the turns admitted (running or waiting to run); refuses beyond the bound."""

    def __init__(self, limits: Limits) -> None:
        self.capacity = limits.max_running + limits.max_waiting
        self._admitted = 0
        self._lock = threading.Lock()
        self.draining = False

    def admit(self) -> None:
        with self._lock:
            if self.draining:
                raise Overloaded("the server is shutting down; try again in a moment")
            if self._admitted >= self.capacity:
                raise Overloaded("the server is busy; try again in a moment")
            self._admitted += 1

    def done(self) -> None:
        with self._lock:
            self._admitted -= 1

    @property
    def admitted(self) -> int:
        return self._admitted


@dataclass
class _Bucket:
    tokens: float
    stamp: float = field(default_factory=time.monotonic)


class RateLimiter:
    """A token bucket per key: `burst` turns at once, refilled at `per_minute`."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        with self._lock:
            now = time.monotonic()
            bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / self.rate
                raise RateLimited(f"too many turns; try again in {wait:.0f} s", wait)
            bucket.tokens -= 1.0
