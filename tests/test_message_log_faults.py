"""A real `natter serve` on the split store, SIGKILLed between the log append and SQL's step.

The server runs over SQLite with its message log on FerretDB; the fault hook
(`fault_kill_after_log_appends`) makes it kill itself right after its n-th log append and
before the SQL transaction that derives the thread's rows. After a restart the thread
list, unread counts and history agree with the log, and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from natter.sdk import Client, Connection
from tests.conftest import PASSWORD
from tests.helpers import eventually
from tests.procs import NatterServer

FAULT = "NATTER_FAULT_KILL_AFTER_LOG_APPENDS"


@contextlib.asynccontextmanager
async def split_server(data: Path, log_url: str, kill_after: int) -> AsyncIterator[NatterServer]:
    srv = NatterServer(data, {"NATTER_MESSAGE_LOG": log_url, FAULT: str(kill_after)})
    await srv.start()
    try:
        yield srv
    finally:
        srv.kill()


async def account(address: str, name: str, register: bool = True) -> Client:
    c = Client(address, timeout=10.0)
    if register:
        await c.register(name, PASSWORD)
    await c.login(name, PASSWORD, "test")
    return c


def sql_last_seq(data: Path, thread_id: int) -> int:
    with contextlib.closing(sqlite3.connect(data / "natter.db")) as db:
        row = db.execute("SELECT last_seq FROM threads WHERE id = ?", (thread_id,)).fetchone()
        return int(row[0])


async def log_seqs(log_url: str, thread_id: int) -> list[int]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(log_url)
    try:
        coll = client.get_default_database().get_collection("messages")
        return sorted([int(str(d["s"])) async for d in coll.find({"t": thread_id})])
    finally:
        await client.close()


async def killed_on(srv: NatterServer, send: asyncio.Task[object], conn: Connection) -> None:
    """The send whose log append the server dies after: never acknowledged before the kill."""
    await eventually(lambda: not srv.running, timeout=30)
    assert not send.done() or send.exception() is not None
    await conn.close()
    send.cancel()
    with contextlib.suppress(BaseException):
        await send


async def test_a_kill_between_the_log_and_sql_loses_nothing_and_restart_repairs(
    tmp_path: Path, log_url: str
) -> None:
    data = tmp_path / "data"
    sent = 5  # acknowledged before the kill; the 6th append is the one killed after
    async with split_server(data, log_url, kill_after=sent + 1) as srv:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        ca = await Connection(alice).start()
        first = await ca.send("m1", recipient="bob")
        tid = first.thread_id
        acked = [first, *[await ca.send(f"m{i}", thread_id=tid) for i in range(2, sent + 1)]]
        assert [r.seq for r in acked] == list(range(1, sent + 1))
        lost = asyncio.create_task(ca.send("m6", thread_id=tid, client_msg_id="the-sixth"))
        await killed_on(srv, lost, ca)
        # The kill landed between the two writes: the log holds the sixth, SQL does not.
        assert await log_seqs(log_url, tid) == list(range(1, sent + 2))
        assert sql_last_seq(data, tid) == sent
        for c in (alice, bob):
            await c.close()

        srv.env.pop(FAULT)
        await srv.start()
        # Repaired at start, before any retry: the thread row caught up with the log.
        assert sql_last_seq(data, tid) == sent + 1
        bob = await account(srv.grpc_address, "bob", register=False)
        [thread] = await bob.threads()
        assert (thread.last_seq, thread.unread_count) == (sent + 1, sent + 1)
        assert thread.last_message.text == "m6"
        history = [m async for m in bob.all_history(tid)]
        assert [(m.seq, m.text) for m in history] == [(i, f"m{i}") for i in range(1, sent + 2)]
        # Acknowledged before the kill means stored, unchanged, after it.
        for r, m in zip(acked, history, strict=False):
            assert (m.seq, m.msg_id) == (r.seq, r.msg_id)
        # The sender's retry of the unacknowledged send is answered with the stored one.
        alice = await account(srv.grpc_address, "alice", register=False)
        ca = await Connection(alice).start()
        again = await ca.send("m6", thread_id=tid, client_msg_id="the-sixth")
        assert (again.seq, again.msg_id) == (sent + 1, history[-1].msg_id)
        after = await ca.send("m7", thread_id=tid)
        assert after.seq == sent + 2
        assert await log_seqs(log_url, tid) == list(range(1, sent + 3))
        [thread] = await bob.threads()
        assert (thread.last_seq, thread.unread_count) == (sent + 2, sent + 2)
        assert [m.seq async for m in bob.all_history(tid)] == list(range(1, sent + 3))
        await ca.close()
        for c in (alice, bob):
            await c.close()


async def test_a_group_change_killed_after_its_log_append_is_applied_on_restart(
    tmp_path: Path, log_url: str
) -> None:
    data = tmp_path / "data"
    # Appends: the group's creation (1), a message (2), adding carol (3, killed after).
    async with split_server(data, log_url, kill_after=3) as srv:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        carol = await account(srv.grpc_address, "carol")
        group = await alice.create_group("Trip", ["bob"])
        tid = group.thread_id
        ca = await Connection(alice).start()
        await ca.send("before carol", thread_id=tid)
        await ca.close()
        adding = asyncio.create_task(alice.add_members(tid, ["carol"]))
        await eventually(lambda: not srv.running, timeout=30)
        with pytest.raises(Exception):  # noqa: B017 - the call died with the server
            await adding
        assert await log_seqs(log_url, tid) == [1, 2, 3]
        assert sql_last_seq(data, tid) == 2
        for c in (alice, bob, carol):
            await c.close()

        srv.env.pop(FAULT)
        await srv.start()
        carol = await account(srv.grpc_address, "carol", register=False)
        bob = await account(srv.grpc_address, "bob", register=False)
        # carol is in the group from the change's seq: she sees it, not what came before.
        [thread] = await carol.threads()
        assert (thread.thread_id, thread.last_seq, thread.member_count) == (tid, 3, 3)
        assert [m.seq async for m in carol.all_history(tid)] == [3]
        [seen] = await bob.threads()
        assert (seen.last_seq, seen.unread_count, seen.member_count) == (3, 3, 3)
        assert [m.seq async for m in bob.all_history(tid)] == [1, 2, 3]
        for c in (bob, carol):
            await c.close()
