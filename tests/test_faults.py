"""Fault tests: real `natter serve` processes killed with SIGKILL, streams cut mid-transfer in
both directions, devices offline through bursts. Synchronised by polling, never by sleeping.

Marked `message_log`: CI runs them on the split store (sqlite+mongodb) too, the processes
through `NATTER_MESSAGE_LOG`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import Unavailable
from natter.sdk import Client, Connection, Disconnected, SyncDone
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import collect, eventually
from tests.procs import NatterServer, natter_server

pytestmark = pytest.mark.message_log

BIG = "x" * 2000  # big enough that a long replay is held back by flow control mid-way


async def account(
    address: str, name: str, device: str = "test", register: bool = True, timeout: float = 10.0
) -> Client:
    c = Client(address, timeout=timeout)
    if register:
        await c.register(name, PASSWORD)
    await c.login(name, PASSWORD, device)
    return c


def log_env(message_log_url: str) -> dict[str, str]:
    """The server process's environment for the store under test: its message log, if any."""
    return {"NATTER_MESSAGE_LOG": message_log_url} if message_log_url else {}


def assert_once_in_order(got: list[d.Message], n: int, first: int = 1) -> None:
    seqs = [m.seq for m in got]
    assert seqs == list(range(first, first + n)), (
        f"{len(seqs)} messages; duplicates: {len(seqs) - len(set(seqs))}; "
        f"first wrong at {next((i for i, s in enumerate(seqs) if s != first + i), None)}"
    )


def on_message(conn: Connection, nth: int, action: Callable[[], None], own: bool = False) -> None:
    """Run `action` the moment the connection surfaces its nth message (of others, or own)."""
    seen = [0]
    put = conn.events.put

    async def spy(ev: Any) -> None:
        if isinstance(ev, d.Message) and (ev.sender_device_id == conn.device_id) == own:
            seen[0] += 1
            if seen[0] == nth:
                action()
        await put(ev)

    conn.events.put = spy  # type: ignore[method-assign, assignment]


def drain(conn: Connection) -> list[object]:
    """The events already queued on the connection."""
    out: list[object] = []
    while not conn.events.empty():
        out.append(conn.events.get_nowait())
    return out


def cut(conn: Connection) -> Callable[[], None]:
    """Client side: cancel the call under the connection, as a dropped network would."""

    def go() -> None:
        assert conn._call is not None
        conn._call.cancel()

    return go


def close_session(server: EmbeddedServer, device_id: int) -> Callable[[], None]:
    """Server side: the socket server ends the device's session mid-stream."""

    def go() -> None:
        server.hub.by_device[device_id].close(Unavailable("node draining", "DRAINING"))

    return go


async def events_until(conn: Connection, messages: int, timeout: float = 10.0) -> list[object]:
    """Every event up to (and including) the connection's next `messages` messages."""
    out: list[object] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while messages:
        ev = await conn.next_event(max(0.01, deadline - loop.time()))
        out.append(ev)
        messages -= isinstance(ev, d.Message)
    return out


# -- offline recipient ---------------------------------------------------------------------


async def test_an_offline_recipient_gets_1000_messages_once_in_order(
    tmp_path: Path, message_log_url: str
) -> None:
    async with natter_server(tmp_path / "data", log_env(message_log_url)) as srv:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        ca = await Connection(alice).start()
        first = await ca.send("m0", recipient="bob")
        sent = await asyncio.gather(
            *(ca.send(f"m{i}", thread_id=first.thread_id) for i in range(1, 1000))
        )
        assert sorted(r.seq for r in [first, *sent]) == list(range(1, 1001))
        cb = Connection(bob)
        await cb.start(wait_synced=False)
        got = await collect(cb, 1000, timeout=30)
        assert_once_in_order(got, 1000)
        assert {m.text for m in got} == {f"m{i}" for i in range(1000)}
        await ca.send("after", thread_id=first.thread_id)
        [last] = await collect(cb, 1)
        assert last.seq == 1001 and cb.stats.connects == 1
        for c in (ca, cb):
            await c.close()
        for cl in (alice, bob):
            await cl.close()


# -- the server killed mid-send ------------------------------------------------------------


async def test_server_killed_while_a_client_sends_2000_messages(
    tmp_path: Path, message_log_url: str
) -> None:
    srv = NatterServer(tmp_path / "data", log_env(message_log_url))
    await srv.start()
    try:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        ca = await Connection(alice, max_backoff=0.3).start()
        cb = await Connection(bob, max_backoff=0.3).start()
        thread_id = (await ca.send("hello", recipient="bob")).thread_id
        n = 2000
        texts = [f"msg {i}" for i in range(n)]
        acked: dict[str, d.SendResult] = {}
        failed: list[BaseException] = []

        async def one(text: str) -> None:
            try:
                key = text.replace(" ", "-")
                acked[text] = await ca.send(text, thread_id=thread_id, client_msg_id=key)
            except BaseException as e:  # recorded: the assertion below names it
                failed.append(e)

        # The last few are sent while the server is frozen (SIGSTOP), so at the kill they are
        # certainly on the stream and unanswered: the kill interrupts sends in flight.
        late = 20
        tasks = [asyncio.create_task(one(t)) for t in texts[:-late]]
        await eventually(lambda: len(acked) >= n // 4, timeout=30)
        srv.freeze()
        tasks += [asyncio.create_task(one(t)) for t in texts[-late:]]
        keys = {t.replace(" ", "-") for t in texts[-late:]}
        await eventually(lambda: keys <= set(ca.in_flight), timeout=30)
        srv.kill()
        before_kill = dict(acked)
        assert len(before_kill) < n, "the kill came too late to interrupt anything"
        await srv.start()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert not failed
        # Every send acknowledged exactly once, each with its own seq.
        assert len(acked) == n
        assert sorted(r.seq for r in acked.values()) == list(range(2, n + 2))
        # ... in the order they were sent (per-device FIFO), through the kill and the resends.
        assert [acked[t].seq for t in texts] == list(range(2, n + 2))
        # Acknowledged before the kill means stored, unchanged, after it.
        reader = await account(srv.grpc_address, "bob", "auditor", register=False)
        rows = [m async for m in reader.all_history(thread_id)]
        assert [m.seq for m in rows] == list(range(1, n + 2))
        by_text = {m.text: m for m in rows}
        assert len(by_text) == n + 1  # no text stored twice
        for text, r in before_kill.items():
            assert (by_text[text].seq, by_text[text].msg_id) == (r.seq, r.msg_id)
        assert ca.stats.connects >= 2 and ca.stats.resends > 0
        # The recipient, connected throughout (and reconnected), sees each once in order.
        got = await collect(cb, n + 1, timeout=60)
        assert_once_in_order(got, n + 1)
        assert [m.text for m in got] == [m.text for m in rows]
        for c in (ca, cb):
            await c.close()
        for cl in (alice, bob, reader):
            await cl.close()
    finally:
        srv.kill()


async def test_server_killed_mid_replay_resumes_from_cursors(
    tmp_path: Path, message_log_url: str
) -> None:
    srv = NatterServer(tmp_path / "data", log_env(message_log_url))
    await srv.start()
    try:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        ca = await Connection(alice).start()
        first = await ca.send(BIG + " 1", recipient="bob")
        await asyncio.gather(
            *(ca.send(f"{BIG} {i}", thread_id=first.thread_id) for i in range(2, 1001))
        )
        await ca.close()
        cb = Connection(bob, max_backoff=0.3)
        on_message(cb, 300, srv.kill)
        await cb.start(wait_synced=False)
        events = await events_until(cb, 300)
        assert not srv.running
        await srv.start()
        events += await events_until(cb, 700, timeout=30)
        got = [e for e in events if isinstance(e, d.Message)]
        assert_once_in_order(got, 1000)
        # The second sync starts after what the device had shown: nothing is sent twice.
        cut_at = next(i for i, e in enumerate(events) if isinstance(e, Disconnected))
        while not any(isinstance(e, SyncDone) for e in events[cut_at:]):
            events.append(await cb.next_event(10))
        shown_before = sum(isinstance(e, d.Message) for e in events[:cut_at])
        [second] = [e.replayed for e in events[cut_at:] if isinstance(e, SyncDone)]
        assert 300 <= shown_before < 1000 and second == 1000 - shown_before
        assert cb.stats.connects == 2
        await cb.close()
        for cl in (alice, bob):
            await cl.close()
    finally:
        srv.kill()


# -- streams cut mid-transfer --------------------------------------------------------------


async def _upload(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer, how: str
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice, max_backoff=0.2)
    cb = await connect(bob)
    thread_id = (await ca.send("start", recipient="bob")).thread_id
    ca_cut = cut(ca) if how == "client" else close_session(server, alice.device_id)
    on_message(ca, 100, ca_cut, own=True)
    results = await asyncio.wait_for(
        asyncio.gather(*(ca.send(f"u{i}", thread_id=thread_id) for i in range(500))), 30
    )
    assert sorted(r.seq for r in results) == list(range(2, 502))
    assert ca.stats.connects == 2
    rows = [m async for m in bob.all_history(thread_id)]
    assert len(rows) == len({m.text for m in rows}) == 501
    got = await collect(cb, 501)
    assert_once_in_order(got, 501)


async def _download(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer, how: str
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    first = await ca.send(BIG, recipient="bob")
    await asyncio.gather(*(ca.send(f"{BIG} {i}", thread_id=first.thread_id) for i in range(2, 801)))
    cb = Connection(bob, max_backoff=0.2)
    on_message(cb, 200, cut(cb) if how == "client" else close_session(server, bob.device_id))
    await cb.start(wait_synced=False)
    try:
        # New messages keep arriving while the replay is cut and resumed.
        more = asyncio.gather(
            *(ca.send(f"live {i}", thread_id=first.thread_id) for i in range(100))
        )
        got = await collect(cb, 900, timeout=30)
        await more
        assert_once_in_order(got, 900)
        # The cut may land after the last frame left the server: the reconnect still follows.
        await eventually(lambda: cb.stats.connects == 2)
        assert not [e for e in drain(cb) if isinstance(e, d.Message)]  # nothing shown twice
    finally:
        await cb.close()


async def test_client_cut_while_uploading(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    await _upload(user, connect, server, "client")


async def test_server_cut_while_uploading(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    await _upload(user, connect, server, "server")


async def test_client_cut_while_downloading(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    await _download(user, connect, server, "client")


async def test_server_cut_while_downloading(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    await _download(user, connect, server, "server")


# -- two devices, one offline through the burst --------------------------------------------


async def test_two_devices_one_offline_through_the_burst(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice = await user("alice")
    phone, laptop = await user("bob", device="phone"), await user("bob", device="laptop")
    ca, cp = await connect(alice), await connect(phone)
    first = await ca.send("a0", recipient="bob")
    tid = first.thread_id
    # Alice bursts while bob answers from his phone; the laptop is off the whole time.
    await asyncio.gather(
        *(ca.send(f"a{i}", thread_id=tid) for i in range(1, 400)),
        *(cp.send(f"b{i}", thread_id=tid) for i in range(100)),
    )
    phone_events: list[object] = []
    while len([e for e in phone_events if isinstance(e, d.Message)]) < 500:
        phone_events.append(await cp.next_event(10))
    shown = [e for e in phone_events if isinstance(e, d.Message)]
    assert_once_in_order(shown, 500)  # the phone's own sends are shown once, in place
    cl = Connection(laptop)
    await cl.start(wait_synced=False)
    try:
        got = await collect(cl, 500, timeout=20)
        assert_once_in_order(got, 500)
        assert {m.text for m in got} == {f"a{i}" for i in range(400)} | {
            f"b{i}" for i in range(100)
        }
        assert sum(m.sender_device_id == phone.device_id for m in got) == 100
        # Back online, both stay in step.
        await ca.send("both", thread_id=tid)
        for c in (cl, cp):
            [m] = await collect(c, 1)
            assert m.seq == 501
    finally:
        await cl.close()


# -- resilience of the SDK -----------------------------------------------------------------


async def test_reconnect_resumes_from_cursors_without_replaying_what_was_shown(
    tmp_path: Path, message_log_url: str
) -> None:
    async with natter_server(tmp_path / "data", log_env(message_log_url)) as srv:
        alice = await account(srv.grpc_address, "alice")
        bob = await account(srv.grpc_address, "bob")
        ca = await Connection(alice, max_backoff=0.2).start()
        cb = await Connection(bob, max_backoff=0.2).start()
        first = await ca.send("m1", recipient="bob")
        for i in range(2, 21):
            await ca.send(f"m{i}", thread_id=first.thread_id)
        assert_once_in_order(await collect(cb, 20), 20)
        # Killed before bob's acks could have been stored: his Hello cursors still say 20.
        srv.kill()
        await srv.start()
        pending = asyncio.gather(*(ca.send(f"n{i}", thread_id=first.thread_id) for i in range(5)))
        got = await collect(cb, 5, timeout=20)
        await pending
        assert_once_in_order(got, 5, first=21)
        assert cb.stats.connects >= 2 and ca.stats.connects >= 2
        for c in (ca, cb):
            await c.close()
        for cl in (alice, bob):
            await cl.close()
