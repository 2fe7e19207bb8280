"""A cancel token: the one way to stop a turn in progress.

The UI (Ctrl-C) or a server (a client disconnect) sets it from any thread; the engine checks it
between decode steps and stops, and the turn keeps the story as it was before the result. It
does not interrupt anything by itself, and it cannot be cleared: each turn gets a new one.
"""

from __future__ import annotations

import threading


class CancelToken:
    """Set once, read often; safe across threads (a threading.Event underneath)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()
