"""The store's worker threads, for async code: one writer, and readers beside it.

The async stages (explain, score) run many LLM calls on one event loop; their store
calls must not block it. SQLite has a single writer, and queueing writes on one thread
here is far cheaper than letting threads collide in SQLite's busy handler, which
sleeps in steps of milliseconds. Reads go to their own small pool so they never wait
behind a queue of writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gloss.store.api import Store

T = TypeVar("T")


class StoreWorker:
    """Runs store calls off the event loop: writes one at a time, reads beside them."""

    def __init__(self, store: Store, readers: int = 2):
        self.store = store
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gloss-store-w")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="gloss-store-r")

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A write (or anything that must not race a write).

        Once submitted, a write runs even if the caller is cancelled meanwhile: a claim's
        release queued behind the claim itself must not be dropped by a second
        cancellation (Ctrl-C while the task is already unwinding), or the claim would
        outlive the process until its lease expires.
        """
        loop = asyncio.get_running_loop()
        return await asyncio.shield(
            loop.run_in_executor(self._writer, partial(fn, *args, **kwargs))
        )

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
