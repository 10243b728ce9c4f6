"""The session's light primitives: Inbox keeps FIFO order and wakes its reader; Flag as Event."""

from __future__ import annotations

import asyncio

import pytest

from socket_svc.light import Flag, Inbox


async def test_inbox_is_fifo_across_a_long_backlog() -> None:
    box: Inbox[int] = Inbox()
    for i in range(5000):
        box.put_nowait(i)
    got = [box.get_nowait() for _ in range(3000)]
    for i in range(5000, 6000):  # more arrive while the backlog is read (it is compacted)
        box.put_nowait(i)
    got += [await box.get() for _ in range(3000)]
    assert got == list(range(6000))
    assert box.empty() and box.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()


async def test_inbox_get_waits_for_a_put() -> None:
    box: Inbox[str] = Inbox()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not reader.done()
    box.put_nowait("a")
    box.put_nowait("b")
    assert await asyncio.wait_for(reader, 5) == "a"
    assert box.qsize() == 1
    assert await box.get() == "b"


async def test_inbox_reader_cancelled_while_waiting_leaves_it_usable() -> None:
    box: Inbox[int] = Inbox()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    box.put_nowait(7)
    assert await asyncio.wait_for(box.get(), 5) == 7


async def test_flag_wakes_every_waiter_and_clears() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and not flag.is_set()
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert flag.is_set()
    await flag.wait()  # set: returns at once
    flag.clear()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not late.done()
    flag.set()
    await asyncio.wait_for(late, 5)
