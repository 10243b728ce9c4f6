"""SQLite's writes: on the event loop's thread while they are quick, never blocking it on a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from message_svc import sqlstore
from message_svc.sqlstore import SqlStore
from message_svc.store import Appended, NewMessage
from natter.domain import MessageKind, User


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    s = SqlStore(f"sqlite+aiosqlite:///{tmp_path}/natter.db")
    await s.open()
    yield s
    await s.close()


async def _pair(store: SqlStore) -> tuple[User, User, int]:
    users = []
    for name in ("ann", "bob"):
        row = await store.create_user(name, name, None, "x")
        users.append(User(row.user_id, row.username, row.display_name))
    thread = await store.direct_thread(users[0].user_id, users[1].user_id)
    return users[0], users[1], thread


def _message(sender: User, peer: User, thread: int, key: str) -> NewMessage:
    return NewMessage(
        thread, sender, 1, key, MessageKind.TEXT, f"text {key}", notify=True, peer_id=peer.user_id
    )


def _writer_threads(store: SqlStore) -> int:
    assert store._writer is not None
    return len(store._writer._threads)


async def test_quick_writes_run_on_the_event_loops_thread(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every write counts as quick, however busy the machine running this is.
    monkeypatch.setattr(sqlstore, "INLINE_LIMIT_SECONDS", 60.0)
    ann, bob, thread = await _pair(store)
    for i in range(20):
        [stored] = await store.append_messages([_message(ann, bob, thread, f"k{i}")])
        assert isinstance(stored, Appended) and stored.message.seq == i + 1
    assert _writer_threads(store) == 0


async def test_a_write_waiting_for_another_processs_lock_does_not_block_the_loop(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlstore, "INLINE_LIMIT_SECONDS", 60.0)
    ann, bob, thread = await _pair(store)
    path = store.url.database
    assert path is not None
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:  # another program writing the same file, for a while
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(10)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        await asyncio.to_thread(holding.wait, 10)
        send = asyncio.create_task(store.append_messages([_message(ann, bob, thread, "x")]))
        ticks = 0
        for _ in range(20):  # the loop keeps running while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not send.done()
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)
    [stored] = await asyncio.wait_for(send, 10)
    assert isinstance(stored, Appended) and stored.message.text == "text x"
    assert _writer_threads(store) == 1  # it waited on the writer thread


async def test_slow_writes_go_back_to_the_writer_thread(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, bob, thread = await _pair(store)
    monkeypatch.setattr(sqlstore, "INLINE_LIMIT_SECONDS", 0.0)  # every write counts as slow
    for i in range(5):
        await store.append_messages([_message(ann, bob, thread, f"k{i}")])
    assert _writer_threads(store) == 1
    history = await store.get_thread(thread)
    assert history is not None and history.last_seq == 5
