"""Running the game's synchronous generators for async HTTP handlers.

A turn is a plain iterator of events that blocks on the model. `ThreadStream` starts it in a
worker thread at once (so the turn runs, saves and releases its story even if the client is gone
before the response starts) and hands its items to the event loop as they come. When the HTTP
side stops listening, it sets the turn's cancel token: the turn ends at its next decode step,
saves what it has, and the worker finishes on its own. The generator is never interrupted from
outside.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from aidungeon.core.cancel import CancelToken

T = TypeVar("T")
_END = ("end", None)


class ThreadStream(Generic[T]):
    """The items of `produce()`, made in `pool`; `on_done` runs in the worker when it ends."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        produce: Callable[[], Iterator[T]],
        cancel: CancelToken,
        on_done: Callable[[], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._produce, self._on_done, self.cancel = produce, on_done, cancel
        pool.submit(self._work)

    def _put(self, message: tuple[str, object]) -> None:
        # The loop may be closed when a cancelled turn finishes during shutdown: nobody listens then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, message)

    def _work(self) -> None:
        try:
            for item in self._produce():
                self._put(("item", item))
        except BaseException as err:  # handed to the listener, which raises it in the request
            self._put(("error", err))
        finally:
            self._on_done()
            self._put(_END)

    async def items(self) -> AsyncIterator[T]:
        """The items as they come; sets the cancel token when the listener stops early."""
        try:
            while (message := await self._queue.get())[0] != "end":
                tag, value = message
                if tag == "error":
                    assert isinstance(value, BaseException)
                    raise value
                yield value  # type: ignore[misc]
        finally:
            self.cancel.set()
