"""Light asyncio primitives for per-session state: a flag and a one-reader FIFO."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar


class Flag:
    """asyncio.Event's set/clear/is_set/wait, with no waiter deque until someone waits.

    An Event costs about 860 bytes (its waiters deque is allocated up front); a session
    holds several, mostly never waited on, so this one makes a future only when waited.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


_Item = TypeVar("_Item")


class Inbox(Generic[_Item]):
    """The session writer's FIFO: what asyncio.Queue does here, in about a tenth of the memory.

    An asyncio.Queue allocates three deques and an Event up front (about 3.3 KiB); an idle
    device's queue is empty nearly always, so this one keeps a list and a read index (an
    empty list is 56 bytes) and one waiter future while the writer waits. One reader only.
    """

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._head = 0
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items) - self._head

    def empty(self) -> bool:
        return self._head >= len(self._items)

    def put_nowait(self, item: _Item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> _Item:
        if self._head >= len(self._items):
            raise asyncio.QueueEmpty
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self._items = []  # drained: the list's storage goes with it
            self._head = 0
        elif self._head >= 1024 and self._head * 2 >= len(self._items):
            del self._items[: self._head]  # a long backlog: drop what was read, now and then
            self._head = 0
        return item

    async def get(self) -> _Item:
        while self.empty():
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()
