"""Group commit: sends that arrive while a transaction is in flight share the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    """Runs `flush` on batches; the first item flushes at once, later ones wait for the next."""

    def __init__(
        self, flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 512
    ) -> None:
        self._flush = flush
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max]
                del self._pending[: self._max]
                live = [(i, f) for i, f in batch if not f.cancelled()]
                if not live:
                    continue
                try:
                    results = await self._flush([i for i, _ in live])
                except BaseException as e:  # every waiter learns of the failure
                    for _, f in live:
                        if not f.done():
                            f.set_exception(e)
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
                self.batches += 1
                self.items += len(live)
                for (_, f), r in zip(live, results, strict=True):
                    if not f.done():
                        f.set_result(r)
        finally:
            self._task = None
