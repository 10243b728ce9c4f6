"""Test helpers: polling for conditions and collecting events from a connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from natter import domain as d
from natter.sdk import Connection


async def eventually(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll until predicate() is truthy; fail with a clear message at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def collect(conn: Connection, count: int, timeout: float = 10.0) -> list[d.Message]:
    """The next `count` messages from others (own sends are skipped), or fail at the deadline."""
    out: list[d.Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < count:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {count} messages within {timeout} s")
        try:
            ev = await conn.next_event(left)
        except TimeoutError:
            continue
        if isinstance(ev, d.Message) and ev.sender_device_id != conn.device_id:
            out.append(ev)
    return out


async def next_of(conn: Connection, kind: type, timeout: float = 10.0) -> object:
    """The next event of a type, skipping others."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} within {timeout} s")
        try:
            ev = await conn.next_event(left)
        except TimeoutError:
            continue
        if isinstance(ev, kind):
            return ev
