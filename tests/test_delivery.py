"""Nothing lost, nothing twice: idempotent sends, durable results, device cursors and sync,
receipts, and one user on several devices — against a real embedded server."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import AlreadyExists, Unavailable
from natter.sdk import Client, Connection
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import types_pb2 as tpb
from socket_svc.ports import MessageApi
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import collect, eventually, replay_of
from tests.procs import RawStream

# The split store's end-to-end subset: these run on sqlite+mongodb too (tests/conftest.py).
pytestmark = pytest.mark.message_log


async def wait_for(
    conn: Connection, match: Callable[[object], bool], timeout: float = 10.0
) -> list[object]:
    """Events up to and including the first one that matches."""
    seen: list[object] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no matching event within {timeout} s; saw {seen[-5:]}")
        try:
            ev = await conn.next_event(left)
        except TimeoutError:
            continue
        seen.append(ev)
        if match(ev):
            return seen


def messages_in(events: list[object]) -> list[d.Message]:
    return [e for e in events if isinstance(e, d.Message)]


# -- idempotent sends ----------------------------------------------------------------------


async def test_a_retry_returns_the_original_send_result(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    first = await ca.send("hello", recipient="bob", client_msg_id="k-1")
    again = await ca.send("hello", recipient="bob", client_msg_id="k-1")
    assert again == first
    # A retry after a reconnect (a new stream), naming the thread instead of the person.
    ca2 = await connect(alice)
    assert await ca2.send("hello", thread_id=first.thread_id, client_msg_id="k-1") == first
    nxt = await ca2.send("next", recipient="bob")
    assert nxt.seq == first.seq + 1
    rows, _ = await bob.history(first.thread_id)
    assert [(m.seq, m.text, m.client_msg_id) for m in rows] == [
        (1, "hello", "k-1"),
        (2, "next", nxt.client_msg_id),
    ]


async def test_concurrent_retries_over_several_devices_store_one_message(
    user: UserFactory, connect: ConnFactory
) -> None:
    devices = [await user("alice", device=f"dev{i}") for i in range(3)]
    bob = await user("bob")
    streams = [RawStream(c) for c in devices]
    for s in streams:
        await s.hello()
    send = spb.ClientFrame(send=spb.Send(client_msg_id="same", recipient="bob", text="once"))

    async def hammer(s: RawStream) -> list[spb.SendResult]:
        for _ in range(20):
            await s.write(send)
        return [(await s.until("send_result")).send_result for _ in range(20)]

    results = [r for rs in await asyncio.gather(*(hammer(s) for s in streams)) for r in rs]
    assert len(results) == 60
    assert {(r.msg_id, r.thread_id, r.seq) for r in results} == {
        (results[0].msg_id, results[0].thread_id, 1)
    }
    for s in streams:
        assert not s.of("error")
        s.cancel()
    # The SDK's own retries share one pending send as well.
    ca = await connect(devices[0])
    again = await asyncio.gather(
        *(ca.send("once", recipient="bob", client_msg_id="same") for _ in range(10))
    )
    assert {(r.msg_id, r.seq) for r in again} == {(results[0].msg_id, 1)}
    rows, _ = await bob.history(results[0].thread_id)
    assert [(m.seq, m.text) for m in rows] == [(1, "once")]
    cb = await connect(bob)
    await ca.send("after", recipient="bob")
    got = await collect(cb, 2)
    assert [(m.seq, m.text) for m in got] == [(1, "once"), (2, "after")]


async def test_a_reused_client_msg_id_with_other_text_is_refused_and_the_original_kept(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, alice2 = await user("alice", device="phone"), await user("alice", device="laptop")
    bob = await user("bob")
    await user("carol")
    ca, ca2 = await connect(alice), await connect(alice2)
    original = await ca.send("original", recipient="bob", client_msg_id="k")
    attempts = [
        (ca, dict(text="different", recipient="bob")),
        (ca2, dict(text="from my other device", recipient="bob")),
        (ca, dict(text="original", recipient="carol")),  # same text, another thread
    ]
    for conn, kwargs in attempts:
        with pytest.raises(AlreadyExists) as info:
            await conn.send(client_msg_id="k", timeout=5, **kwargs)  # type: ignore[arg-type]
        assert info.value.reason == "CLIENT_MSG_ID_REUSED"
    # Two different texts under one new key in the same instant: one wins, one is refused.
    # A device of its own, so this stream and ca's never displace each other.
    raw = RawStream(await user("alice", device="tablet"))
    await raw.hello()
    for text in ("left", "right"):
        await raw.write(
            spb.ClientFrame(send=spb.Send(client_msg_id="k2", recipient="bob", text=text))
        )
    won = (await raw.until("send_result")).send_result
    refused = (await raw.until("error")).error
    assert refused.client_msg_id == "k2" and refused.reason == "CLIENT_MSG_ID_REUSED"
    raw.cancel()
    rows, _ = await bob.history(original.thread_id)
    assert [(m.seq, m.text, m.client_msg_id) for m in rows] == [
        (1, "original", "k"),
        (2, rows[1].text, "k2"),
    ]
    assert rows[1].text in ("left", "right") and rows[1].msg_id == won.msg_id and won.seq == 2
    assert await ca.send("original", recipient="bob", client_msg_id="k") == original


# -- durability ----------------------------------------------------------------------------


@pytest.mark.sqlite_only
@pytest.mark.sqlite_only
async def test_send_results_follow_a_durable_commit(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer, settings: Settings
) -> None:
    engine = server.store.engine
    assert engine is not None
    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one() == 2  # FULL
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one() == "wal"
    alice = await user("alice")
    await user("bob")
    ca = await connect(alice)
    # Another process's view of the file: committed rows only, read the moment a result lands.
    path = settings.data_dir / "natter.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        results = await asyncio.gather(*(ca.send(f"m{i}", recipient="bob") for i in range(50)))
        for r in results:
            row = db.execute(
                "SELECT text, seq FROM messages WHERE msg_id = ?", (r.msg_id,)
            ).fetchone()
            assert row is not None and row[1] == r.seq
        one = await ca.send("single", recipient="bob")
        assert db.execute(
            "SELECT text FROM messages WHERE msg_id = ?", (one.msg_id,)
        ).fetchone() == ("single",)


# -- device cursors and sync ---------------------------------------------------------------


async def test_each_device_has_its_own_cursor_and_replay_starts_after_it(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice = await user("alice")
    phone, laptop = await user("bob", device="phone"), await user("bob", device="laptop")
    ca = await connect(alice)
    first = await ca.send("m1", recipient="bob")
    tid = first.thread_id
    for i in range(2, 6):
        await ca.send(f"m{i}", thread_id=tid)
    cp = Connection(phone)
    await cp.start(wait_synced=False)
    got, done = await replay_of(cp)
    assert [m.seq for m in got] == [1, 2, 3, 4, 5] and done.replayed == 5

    def stored(device_id: int, seq: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await server.store.device_cursors(device_id) == {tid: seq}

        return check

    await eventually(stored(phone.device_id, 5))
    await cp.close()
    for i in range(6, 9):
        await ca.send(f"m{i}", thread_id=tid)
    # A fresh connection without cursors of its own: the server's stored cursor for this device.
    cp2 = Connection(phone)
    await cp2.start(wait_synced=False)
    got, done = await replay_of(cp2)
    assert [m.seq for m in got] == [6, 7, 8] and done.replayed == 3
    # The laptop never acknowledged anything: it gets everything.
    cl = Connection(laptop)
    await cl.start(wait_synced=False)
    got, done = await replay_of(cl)
    assert [m.seq for m in got] == list(range(1, 9)) and done.replayed == 8
    await eventually(stored(laptop.device_id, 8))
    await eventually(stored(phone.device_id, 8))
    for c in (cp2, cl):
        await c.close()


async def test_only_what_the_application_took_is_acked_the_rest_is_replayed(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    first = await ca.send("m1", recipient="bob")
    tid = first.thread_id
    for i in range(2, 5):
        await ca.send(f"m{i}", thread_id=tid)

    def stored(cursors: dict[int, int]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await server.store.device_cursors(bob.device_id) == cursors

        return check

    cb = Connection(bob)
    await cb.start()  # synced: all four arrived and wait in cb.events
    [taken] = await collect(cb, 1)
    assert taken.seq == 1 and cb.cursors == {tid: 1}
    await cb.close()  # the application never took the other three
    await eventually(stored({tid: 1}))
    rows, _ = await alice.history(tid)
    assert [m.state for m in rows] == [d.MessageState.DELIVERED] + [d.MessageState.SENT] * 3
    # The next connect replays what the device never showed, with its cursors or without.
    for cursors in (cb.cursors, None):
        again = Connection(bob, cursors=cursors, auto_ack=False)
        await again.start(wait_synced=False)
        got, done = await replay_of(again)
        await again.close()
        assert [m.seq for m in got] == [2, 3, 4] and done.replayed == 3
    # Taking them acks them, here through messages().
    last = Connection(bob)
    await last.start()
    seqs = []
    async for m in last.messages():
        seqs.append(m.seq)
        if m.seq == 4:
            break
    await last.close()
    assert seqs == [2, 3, 4] and last.cursors == {tid: 4}
    await eventually(stored({tid: 4}))


class _AckFailsOnce:
    """message_svc as the hub sees it, except that the next ack flush fails once."""

    def __init__(self, api: MessageApi) -> None:
        self.api = api
        self.failures = 1

    async def ack(self, acks: Sequence[d.DeviceAck]) -> None:
        if self.failures:
            self.failures -= 1
            raise Unavailable("message_svc went away mid-flush", "UNAVAILABLE")
        await self.api.ack(acks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)


async def test_a_failed_ack_flush_gives_every_device_back_exactly_its_own_cursors(
    settings: Settings,
) -> None:
    # Flushed only when the test says so.
    async with EmbeddedServer(settings.replace(ack_flush_seconds=3600)) as srv:
        alice = Client(srv.grpc_address)
        await alice.register("alice", PASSWORD)
        await alice.login("alice", PASSWORD)
        devices: list[Client] = []
        for i in range(10):
            c = Client(srv.grpc_address)
            if i == 0:
                await c.register("bob", PASSWORD)
            await c.login("bob", PASSWORD, f"device{i}")
            devices.append(c)
        ca = await Connection(alice).start()
        tid = (await ca.send("m1", recipient="bob")).thread_id
        for i in range(2, 11):
            await ca.send(f"m{i}", thread_id=tid)
        streams = [RawStream(c) for c in devices]
        for raw in streams:
            await raw.hello()
        # Half the devices ack (each a different cursor); the other half are pending with
        # nothing to ack.
        acked = {c.device_id: 2 + i for i, c in enumerate(devices[:5])}
        for c, raw in zip(devices[:5], streams, strict=False):
            await raw.write(
                spb.ClientFrame(
                    ack=spb.Ack(cursors=[tpb.Cursor(thread_id=tid, seq=acked[c.device_id])])
                )
            )
        sessions = [srv.hub.by_device[c.device_id] for c in devices]

        def taken_in() -> bool:
            return all(s.ack_dirty == {tid: acked[s.device_id]} for s in sessions[:5])

        await eventually(taken_in)
        for session in sessions[5:]:
            srv.hub.ack_pending(session)
        real = srv.hub.api
        srv.hub.api = _AckFailsOnce(real)
        await srv.hub.flush_acks()  # fails: every session keeps its acks for the next flush
        for c in devices:
            assert await srv.store.device_cursors(c.device_id) == {}
        await srv.hub.flush_acks()
        for c in devices:
            want = {tid: acked[c.device_id]} if c.device_id in acked else {}
            assert await srv.store.device_cursors(c.device_id) == want, c.device_id
        bob = devices[0].user
        assert bob is not None
        member = await srv.store.get_member(tid, bob.user_id)
        assert member is not None and member.delivered_seq == max(acked.values())
        srv.hub.api = real
        for raw in streams:
            raw.cancel()
        await ca.close()
        for c in (alice, *devices):
            await c.close()


async def test_hello_cursors_and_skip_replay_choose_where_replay_starts(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    first = await ca.send("m1", recipient="bob")
    tid = first.thread_id
    for i in range(2, 11):
        await ca.send(f"m{i}", thread_id=tid)
    # skip_replay: nothing old is replayed; the next live message is the first one shown.
    quiet = Connection(bob, skip_replay=True)
    await quiet.start(wait_synced=False)
    got, done = await replay_of(quiet)
    assert got == [] and done.replayed == 0
    await ca.send("m11", thread_id=tid)
    [live] = await collect(quiet, 1)
    assert live.seq == 11 and quiet.stats.gaps_filled == 0
    # ...and it pages back through history on demand.
    rows = [m.seq async for m in bob.all_history(tid, page=4)]
    assert rows == list(range(1, 12))
    await quiet.close()
    # A cursor of its own wins over skip_replay for that thread.
    bob2 = await user("bob", device="tablet")
    picky = Connection(bob2, cursors={tid: 8}, skip_replay=True)
    await picky.start(wait_synced=False)
    got, done = await replay_of(picky)
    assert [m.seq for m in got] == [9, 10, 11] and done.replayed == 3
    await picky.close()


async def test_replay_and_live_pushes_overlap_without_duplicates(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    first = await ca.send("m1", recipient="bob")
    tid = first.thread_id
    await asyncio.gather(*(ca.send(f"m{i}", thread_id=tid) for i in range(2, 301)))
    cb = Connection(bob)
    # The replay of 300 runs while 100 more are being sent: buffered pushes overlap it.
    live = asyncio.gather(*(ca.send(f"n{i}", thread_id=tid) for i in range(100)))
    await cb.start(wait_synced=False)
    try:
        got = await collect(cb, 400)
        await live
        assert [m.seq for m in got] == list(range(1, 401))
        await ca.send("sentinel", thread_id=tid)
        [last] = await collect(cb, 1)
        assert last.seq == 401
    finally:
        await cb.close()


# -- receipts ------------------------------------------------------------------------------


def is_receipt(kind: d.ReceiptKind, seq: int) -> Callable[[object], bool]:
    return lambda e: isinstance(e, d.Receipt) and e.kind is kind and e.seq >= seq


async def test_delivered_and_read_receipts_are_stored_and_reach_all_sender_devices(
    user: UserFactory, connect: ConnFactory
) -> None:
    phone, laptop = await user("alice", device="phone"), await user("alice", device="laptop")
    bob_phone = await user("bob", device="phone")
    bob_laptop = await user("bob", device="laptop")  # never connects
    ca1, ca2 = await connect(phone), await connect(laptop)
    sent = [await ca1.send(f"m{i}", recipient="bob") for i in range(3)]
    tid = sent[0].thread_id

    async def states() -> list[d.MessageState]:
        rows, _ = await phone.history(tid)
        return [m.state for m in rows]

    assert await states() == [d.MessageState.SENT] * 3
    # One of bob's devices receives (and the SDK acks): that is "delivered".
    cb = await connect(bob_phone)
    await collect(cb, 3)
    for conn in (ca1, ca2):
        events = await wait_for(conn, is_receipt(d.ReceiptKind.DELIVERED, 3))
        r = events[-1]
        assert isinstance(r, d.Receipt) and r.user.username == "bob" and r.thread_id == tid
    assert await states() == [d.MessageState.DELIVERED] * 3
    await cb.read(tid, 2)
    for conn in (ca1, ca2):
        r = (await wait_for(conn, is_receipt(d.ReceiptKind.READ, 2)))[-1]
        assert isinstance(r, d.Receipt) and r.seq == 2
    assert await states() == [d.MessageState.READ, d.MessageState.READ, d.MessageState.DELIVERED]
    info = await phone.thread(tid)
    [b] = [m for m in info.members if m.user.username == "bob"]
    assert (b.delivered_seq, b.read_seq) == (3, 2)
    # The receiving side sees no state on other people's messages.
    rows, _ = await bob_laptop.history(tid)
    assert {m.state for m in rows} == {d.MessageState.UNKNOWN}


# -- one user, several devices -------------------------------------------------------------


async def test_every_device_of_the_recipient_gets_every_message(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice = await user("alice")
    bobs = [await user("bob", device=f"dev{i}") for i in range(3)]
    conns = [await connect(b) for b in bobs]
    ca = await connect(alice)
    first = await ca.send("m0", recipient="bob")
    await asyncio.gather(*(ca.send(f"m{i}", thread_id=first.thread_id) for i in range(1, 30)))
    for c in conns:
        got = await collect(c, 30)
        assert [m.seq for m in got] == list(range(1, 31))


async def test_what_one_device_sends_appears_on_the_users_other_devices(
    user: UserFactory, connect: ConnFactory
) -> None:
    phone, laptop = await user("alice", device="phone"), await user("alice", device="laptop")
    bob = await user("bob")
    cp, cl, cb = await connect(phone), await connect(laptop), await connect(bob)
    sent = await cp.send("from my phone", recipient="bob")
    [mirror] = await collect(cl, 1)
    assert (mirror.seq, mirror.text, mirror.sender_device_id) == (
        1,
        "from my phone",
        phone.device_id,
    )
    [got] = await collect(cb, 1)
    assert got.msg_id == sent.msg_id
    # The sending device shows its own message once (from the send result), never echoed.
    reply = await cb.send("hi", thread_id=sent.thread_id)
    events = await wait_for(cp, lambda e: isinstance(e, d.Message) and e.seq == reply.seq)
    assert [m.seq for m in messages_in(events)] == [1, 2]


async def test_reading_on_one_device_clears_unread_on_the_others(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice = await user("alice")
    phone, laptop = await user("bob", device="phone"), await user("bob", device="laptop")
    ca = await connect(alice)
    cp, cl = await connect(phone), await connect(laptop)
    first = await ca.send("m1", recipient="bob")
    for i in range(2, 5):
        await ca.send(f"m{i}", thread_id=first.thread_id)
    await collect(cp, 4)
    await collect(cl, 4)
    [t] = await laptop.threads()
    assert t.unread_count == 4
    await cp.read(first.thread_id, 4)
    events = await wait_for(cl, lambda e: isinstance(e, d.ReadCursor))
    rc = events[-1]
    assert isinstance(rc, d.ReadCursor) and rc.cursor == d.Cursor(first.thread_id, 4)
    [t] = await laptop.threads()
    assert (t.unread_count, t.read_seq) == (0, 4)
    # The device that read gets no echo of its own read.
    await ca.send("m5", thread_id=first.thread_id)
    events = await wait_for(cp, lambda e: isinstance(e, d.Message) and e.seq == 5)
    assert not any(isinstance(e, d.ReadCursor) for e in events)


async def test_a_new_device_pages_through_full_history(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice = await user("alice")
    await user("bob", device="old phone")
    ca = await connect(alice)
    first = await ca.send("m1", recipient="bob")
    await asyncio.gather(*(ca.send(f"m{i}", thread_id=first.thread_id) for i in range(2, 121)))
    fresh = await user("bob", device="new phone")
    pages = []
    before = 0
    while True:
        rows, more = await fresh.history(first.thread_id, before_seq=before, limit=50)
        pages.append([m.seq for m in rows])
        if not more:
            break
        before = rows[0].seq
    assert pages == [list(range(71, 121)), list(range(21, 71)), list(range(1, 21))]
    assert [m.seq async for m in fresh.all_history(first.thread_id, page=33)] == list(range(1, 121))
