"""Group commit: sends that arrive while a transaction is in flight share the next one."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from natter.metrics import NO_METRICS, Metrics

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    """Runs `flush` on batches; the first item flushes at once, later ones wait for the next.

    Order is kept: `flush` gets items in the order they were submitted, and a batch starts
    only after the one before it finished. A run submitted together (`submit_many`) is never
    split between two batches, so it commits or fails as one.
    """

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        max_batch: int = 512,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._flush = flush
        self._max = max_batch
        self._metrics = metrics
        # Each run with its future and when it was submitted.
        self._pending: deque[tuple[Sequence[T], asyncio.Future[list[R]], float]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        [result] = await self.submit_many([item])
        return result

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Results in the order of `items`, all from one transaction."""
        if not items:
            return []
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((items, fut, time.perf_counter()))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        try:
            while self._pending:
                batch: list[tuple[Sequence[T], asyncio.Future[list[R]], float]] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max):
                    run = self._pending.popleft()
                    batch.append(run)
                    size += len(run[0])
                live = [(items, f, at) for items, f, at in batch if not f.cancelled()]
                if not live:
                    continue
                items_ = [i for items, _, _ in live for i in items]
                started = time.perf_counter()
                try:
                    results = await self._flush(items_)
                except BaseException as e:  # every waiter learns of the failure
                    for _, f, _ in live:
                        if not f.done():
                            f.set_exception(e)
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
                self.batches += 1
                took = time.perf_counter() - started
                self._metrics.commit_batch.observe(len(items_))
                self._metrics.commit_seconds.observe(took)
                if self._metrics.enabled:
                    queue, commit = self._metrics.hops["commit_queue"], self._metrics.hops["commit"]
                    for items, _, submitted in live:
                        for _ in items:
                            queue.observe(started - submitted)
                            commit.observe(took)
                at = 0
                for items, f, _ in live:
                    part = list(results[at : at + len(items)])
                    at += len(items)
                    self.items += len(items)
                    if not f.done():
                        f.set_result(part)
                # Whoever this batch answered may submit again at once (a device's next run
                # waits for its previous one): one turn of the loop lets that join the next
                # batch, instead of every other one.
                await asyncio.sleep(0)
        finally:
            self._task = None
