"""Test helpers: polling for conditions (devtools.waiting) and collecting events from a connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from devtools.waiting import eventually
from natter import domain as d
from natter.sdk import Connection, SyncDone

__all__ = ["collect", "eventually", "gather_events", "next_of", "replay_of"]


async def gather_events(
    conn: Connection,
    want: Callable[[object], bool],
    count: int,
    timeout: float = 10.0,
    what: str = "events",
) -> list[Any]:
    """The next `count` events for which want(event) holds, skipping others; fail at the deadline."""
    out: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < count:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {count} {what} within {timeout} s: {out}")
        try:
            ev = await conn.next_event(left)
        except TimeoutError:
            continue
        if want(ev):
            out.append(ev)
    return out


async def collect(conn: Connection, count: int, timeout: float = 10.0) -> list[d.Message]:
    """The next `count` messages from others (own sends are skipped), or fail at the deadline."""
    return await gather_events(
        conn,
        lambda ev: isinstance(ev, d.Message) and ev.sender_device_id != conn.device_id,
        count,
        timeout,
        "messages",
    )


async def next_of(conn: Connection, kind: type, timeout: float = 10.0) -> object:
    """The next event of a type, skipping others."""
    [ev] = await gather_events(conn, lambda ev: isinstance(ev, kind), 1, timeout, kind.__name__)
    return ev


async def replay_of(conn: Connection, timeout: float = 10.0) -> tuple[list[d.Message], SyncDone]:
    """The messages a connection surfaced up to its SyncDone (it must not have read past it)."""
    out: list[d.Message] = []
    while True:
        ev = await conn.next_event(timeout)
        if isinstance(ev, SyncDone):
            return out, ev
        if isinstance(ev, d.Message):
            out.append(ev)
