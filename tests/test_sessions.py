"""Session lifecycle and bad input on the stream: heartbeats, idle timeout, keepalive and
half-open connections, logout, bad acks and reads, floods — the stream stays up where it can."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from app.embedded import EmbeddedServer
from app.listeners import server_options
from natter import domain as d
from natter.errors import Unauthenticated
from natter.rpc import error_from_rpc
from natter.sdk import Client, Connection, Disconnected
from natter.sdk.client import CHANNEL_OPTIONS
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import types_pb2 as tpb
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import collect, eventually
from tests.procs import RawStream

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(settings) as srv:
        yield srv


async def login(
    srv: EmbeddedServer, name: str, device: str = "test", register: bool = True
) -> Client:
    c = Client(srv.grpc_address)
    if register:
        await c.register(name, PASSWORD)
    await c.login(name, PASSWORD, device)
    return c


def ack(thread_id: int, seq: int) -> spb.ClientFrame:
    return spb.ClientFrame(ack=spb.Ack(cursors=[tpb.Cursor(thread_id=thread_id, seq=seq)]))


def send(key: str, text: str, recipient: str = "", thread_id: int = 0) -> spb.ClientFrame:
    frame = spb.Send(client_msg_id=key, text=text)
    if recipient:
        frame.recipient = recipient
    else:
        frame.thread_id = thread_id
    return spb.ClientFrame(send=frame)


async def next_error(raw: RawStream) -> spb.StreamError:
    return (await raw.until("error")).error


async def still_up(raw: RawStream, key: str, thread_id: int) -> None:
    """The stream still carries sends after being refused something."""
    await raw.write(send(key, f"still up {key}", thread_id=thread_id))
    result = (await raw.until("send_result")).send_result
    assert result.client_msg_id == key


# -- heartbeats and the idle timeout -------------------------------------------------------


def test_defaults_are_a_5_s_heartbeat_and_a_10_min_idle_timeout() -> None:
    s = Settings()
    assert (s.heartbeat_interval_seconds, s.session_idle_timeout_seconds) == (5.0, 600.0)
    assert s.hello_timeout_seconds == 30.0


async def test_a_stream_that_never_says_hello_is_closed_after_the_hello_timeout(
    tmp_path: Path,
) -> None:
    async with running(make_settings(tmp_path, hello_timeout_seconds=0.5)) as srv:
        alice = await login(srv, "alice")
        loop = asyncio.get_running_loop()
        opened = loop.time()
        raw = RawStream(alice)  # opened, authenticated, and then silent
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await raw.read(timeout=10)
        waited = loop.time() - opened
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error_from_rpc(failed.value).reason == "HELLO_TIMEOUT"
        assert 0.5 <= waited < 5
        assert raw.frames == [] and alice.device_id not in srv.hub.by_device
        # A stream that says hello in time outlives the deadline.
        raw = RawStream(alice)
        await raw.hello()
        session = srv.hub.by_device[alice.device_id]
        until = loop.time() + 1.0
        while loop.time() < until:  # bounded: it must stay the same open session throughout
            assert srv.hub.by_device.get(alice.device_id) is session and session.closed is None
            await asyncio.sleep(0.05)
        await raw.write(spb.ClientFrame(heartbeat=spb.Heartbeat()))
        await raw.until("heartbeat_ack")
        raw.cancel()
        await alice.close()


async def test_welcome_tells_the_configured_heartbeat_interval(tmp_path: Path) -> None:
    for configured, told in ((2.0, 2), (0.2, 1)):  # never 0: that would mean "the default"
        async with running(
            make_settings(tmp_path / str(configured), heartbeat_interval_seconds=configured)
        ) as srv:
            alice = await login(srv, "alice")
            raw = RawStream(alice)
            await raw.hello()
            [welcome] = raw.of("welcome")
            assert welcome.welcome.heartbeat_interval_seconds == told
            raw.cancel()
            await alice.close()


async def test_the_sdk_heartbeats_at_the_interval_the_server_tells(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, heartbeat_interval_seconds=1.0)) as srv:
        alice = await login(srv, "alice")
        conn = await Connection(alice).start()
        session = srv.hub.by_device[alice.device_id]
        synced_at = session.last_frame
        # Nothing else is written: the next frame is a heartbeat, due in 1 s (not the SDK's 5).
        await eventually(lambda: session.last_frame > synced_at, timeout=3)
        assert session.last_frame - synced_at < 2.5
        await conn.close()
        await alice.close()


def _socket_tasks() -> int:
    """Tasks running socket_svc code now (the hub's own loops among them)."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if "/socket_svc/" in getattr(getattr(t.get_coro(), "cr_code", None), "co_filename", "")
    )


async def test_an_idle_device_costs_one_task_and_heartbeats_start_none(tmp_path: Path) -> None:
    """A synced, idle stream runs in its own task only: no writer waits while there is
    nothing to write, and a heartbeat is answered by the reader itself, not by a new task."""
    async with running(make_settings(tmp_path)) as srv:
        clients = [
            await login(srv, name, f"phone{i}", register=i == 0)
            for name in ("alice", "bob")
            for i in range(2)
        ]
        before = _socket_tasks()
        raws = [RawStream(c) for c in clients]
        for raw in raws:
            await raw.hello()
        await eventually(lambda: _socket_tasks() == before + len(raws))
        for _ in range(3):
            for raw in raws:
                await raw.write(spb.ClientFrame(heartbeat=spb.Heartbeat()))
            for raw in raws:
                await raw.until("heartbeat_ack")
            assert _socket_tasks() == before + len(raws)
        # The writer still starts when there is something to write, and ends after it.
        await raws[0].write(send("k1", "hi", recipient="bob"))
        await raws[0].until("send_result")
        for raw in raws[2:]:
            await raw.until("message")
        await eventually(lambda: _socket_tasks() == before + len(raws))
        for raw in raws:
            raw.cancel()
        await eventually(lambda: _socket_tasks() == before)
        for c in clients:
            await c.close()


async def test_heartbeats_keep_a_session_alive_past_the_idle_timeout(tmp_path: Path) -> None:
    idle = 0.4
    async with running(
        make_settings(tmp_path, heartbeat_interval_seconds=0.1, session_idle_timeout_seconds=idle)
    ) as srv:
        alice = await login(srv, "alice")
        conn = await Connection(alice, heartbeat_seconds=0.1).start()
        session = srv.hub.by_device[alice.device_id]
        loop = asyncio.get_running_loop()
        until = loop.time() + 4 * idle
        while loop.time() < until:  # bounded: it must stay the same session throughout
            assert srv.hub.by_device.get(alice.device_id) is session
            assert session.closed is None and conn.stats.connects == 1
            await asyncio.sleep(0.05)
        await conn.close()
        await alice.close()


async def test_a_silent_session_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    async with running(
        make_settings(tmp_path, heartbeat_interval_seconds=0.1, session_idle_timeout_seconds=0.3)
    ) as srv:
        alice = await login(srv, "alice")
        raw = RawStream(alice)
        await raw.hello()
        assert await raw.status(timeout=5) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "heartbeat" in (await raw.call.details() or "")
        await eventually(lambda: alice.device_id not in srv.hub.by_device)
        # The SDK treats it as a dropped stream: it reconnects and carries on.
        conn = await Connection(alice, heartbeat_seconds=60).start()
        ev = await conn.next_event(5)
        while not isinstance(ev, Disconnected):
            ev = await conn.next_event(5)
        assert not ev.final and "DEADLINE_EXCEEDED" in ev.reason
        await eventually(lambda: conn.stats.connects >= 2 and conn.synced.is_set())
        await conn.close()
        await alice.close()


def test_keepalive_options_are_sane() -> None:
    for settings in (Settings(), Settings(keepalive_seconds=0.5)):
        opts = dict(server_options(settings))
        ping_every = opts["grpc.keepalive_time_ms"]
        timeout = opts["grpc.keepalive_timeout_ms"]
        assert ping_every == settings.keepalive_seconds * 1000
        # A dead peer is noticed long before the idle sweep (10 min) would notice it.
        assert 0 < timeout <= min(ping_every, 10_000)
        assert ping_every + timeout < settings.session_idle_timeout_seconds * 1000
        # The wait for any ping ack is bounded the same way, or an outstanding flow-control
        # ping keeps a half-open connection for a minute (gRPC's default).
        assert opts["grpc.http2.ping_timeout_ms"] == timeout
        assert opts["grpc.keepalive_permit_without_calls"] == 1
        # Server pings continue on a quiet stream (the default stops after two).
        assert opts["grpc.http2.max_pings_without_data"] == 0
    # The SDK's own keepalive pings must not count as abuse (GOAWAY too_many_pings).
    client = dict(CHANNEL_OPTIONS)
    server = dict(server_options(Settings()))
    assert (
        client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    )
    assert client["grpc.keepalive_timeout_ms"] <= client["grpc.keepalive_time_ms"]
    assert client["grpc.http2.ping_timeout_ms"] <= client["grpc.keepalive_timeout_ms"]


class _Blackhole:
    """A TCP relay that can go silent without closing: a half-open connection on demand."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.silent = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await src.read(65536):
                if not self.silent:
                    dst.write(data)
                    await dst.drain()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [w, uw]
        for t in (asyncio.create_task(self._pipe(r, uw)), asyncio.create_task(self._pipe(ur, w))):
            self.tasks.add(t)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def test_the_server_drops_a_half_open_connection(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, keepalive_seconds=0.3)) as srv:
        relay = _Blackhole(srv.grpc_port)
        port = await relay.start()
        alice = Client(f"127.0.0.1:{port}")
        await alice.register("alice", PASSWORD)
        await alice.login("alice", PASSWORD)
        raw = RawStream(alice)
        await raw.hello()
        assert alice.device_id in srv.hub.by_device
        relay.silent = True  # the device vanishes without a FIN: only keepalive can tell
        loop = asyncio.get_running_loop()
        start = loop.time()
        await eventually(lambda: alice.device_id not in srv.hub.by_device, timeout=10)
        assert loop.time() - start < 5
        raw.cancel()
        await alice.close()
        await relay.stop()


# -- logout --------------------------------------------------------------------------------


async def test_logging_a_device_out_closes_its_streams_at_once_and_spares_the_others(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    phone, laptop = await user("alice", device="phone"), await user("alice", device="laptop")
    bob = await user("bob")
    cp, cl, cb = await connect(phone), await connect(laptop), await connect(bob)
    raw = RawStream(phone)  # a second stream of the revoked device: replaced, then refused
    loop = asyncio.get_running_loop()
    start = loop.time()
    await phone.logout()
    ev = await cp.next_event(5)
    while not isinstance(ev, Disconnected):
        ev = await cp.next_event(5)
    assert ev.final and "logged out" in ev.reason
    assert loop.time() - start < 2
    with pytest.raises(Unauthenticated):
        await cp.send("too late", recipient="bob", timeout=5)
    with pytest.raises(Unauthenticated):
        await phone.devices()
    await raw.call.write(spb.ClientFrame(hello=spb.Hello()))
    assert await raw.status() == grpc.StatusCode.UNAUTHENTICATED
    await eventually(lambda: phone.device_id not in server.hub.by_device)
    # The laptop never noticed.
    sent = await cl.send("still here", recipient="bob")
    [got] = await collect(cb, 1)
    assert got.msg_id == sent.msg_id
    await cb.send("good", thread_id=sent.thread_id)
    [back] = await collect(cl, 1)
    assert back.text == "good" and cl.stats.connects == 1
    assert [dv.name for dv in await laptop.devices()] == ["laptop"]


async def test_streams_cancelled_right_after_welcome_end_quietly(
    user: UserFactory,
    connect: ConnFactory,
    server: EmbeddedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    tid = (await ca.send("before", recipient="bob")).thread_id
    jitter = random.Random(7)

    async def cut() -> None:
        raw = RawStream(bob)
        await raw.write(spb.ClientFrame(hello=spb.Hello()))
        await raw.until("welcome")
        await asyncio.sleep(jitter.uniform(0, 0.05))  # anywhere in attach, sync, displacement
        raw.cancel()

    # One device, 50 streams at once: each displaces the one before, and each is cut.
    for _ in range(2):
        await asyncio.gather(*(cut() for _ in range(50)))
    await eventually(lambda: bob.device_id not in server.hub.by_device)
    # The device still syncs (nothing was acked: the first message is replayed) and
    # receives on a fresh connection.
    cb = await connect(bob)
    sent = await ca.send("after", thread_id=tid)
    got = await collect(cb, 2)
    assert [(m.thread_id, m.seq) for m in got] == [(tid, 1), (tid, sent.seq)]
    gc.collect()  # a task left pending is reported when it is collected
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- bad input -----------------------------------------------------------------------------


async def test_acks_beyond_the_thread_are_clamped_foreign_threads_refused_stream_stays_up(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca, cc = await connect(alice), await connect(carol)
    first = await ca.send("m1", recipient="bob")
    tid = first.thread_id
    for i in range(2, 4):
        await ca.send(f"m{i}", thread_id=tid)
    foreign = (await cc.send("not for bob", recipient="alice")).thread_id
    raw = RawStream(bob)
    await raw.hello()
    cases = [
        (ack(tid, -1), INVALID_ARGUMENT, "BAD_ACK"),
        (ack(foreign, 1), PERMISSION_DENIED, "NOT_A_MEMBER"),
        (ack(987654, 1), PERMISSION_DENIED, "NOT_A_MEMBER"),  # no such thread
        # A frame with one good and one bad cursor is refused whole: nothing half-applied.
        (
            spb.ClientFrame(
                ack=spb.Ack(
                    cursors=[tpb.Cursor(thread_id=tid, seq=2), tpb.Cursor(thread_id=foreign, seq=1)]
                )
            ),
            PERMISSION_DENIED,
            "NOT_A_MEMBER",
        ),
    ]
    for frame, code, reason in cases:
        await raw.write(frame)
        err = await next_error(raw)
        assert (err.code, err.reason) == (code, reason), frame
    await raw.write(ack(tid, 1))
    await still_up(raw, "k1", tid)  # seq 4, bob's own

    def stored(seq: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await server.store.device_cursors(bob.device_id) == {tid: seq}

        return check

    await eventually(stored(1))
    # Beyond what exists (a client may have loaded history, not pushes): accepted, clamped to
    # the thread's last seq, never refused.
    await raw.write(ack(tid, 99))
    await eventually(stored(4))
    assert bob.user is not None
    member = await server.store.get_member(tid, bob.user.user_id)
    assert member is not None and member.delivered_seq == 4
    # The clamped ack does not hide a later real one.
    await ca.send("m5", thread_id=tid)
    assert (await raw.until("message")).message.seq == 5
    await raw.write(ack(tid, 5))
    await eventually(stored(5))
    assert not raw.of("error")[len(cases) :]
    raw.cancel()


async def test_an_ack_sent_before_sync_done_is_accepted_and_stored(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca, cc = await connect(alice), await connect(carol)
    ab = (await ca.send("m1", recipient="bob")).thread_id
    for i in range(2, 5):
        await ca.send(f"m{i}", thread_id=ab)
    cb = (await cc.send("c1", recipient="bob")).thread_id
    raw = RawStream(bob)
    # Hello and acks in one go: they arrive while the session is still syncing (the device
    # knew these messages from an earlier session, or loaded them through history).
    await raw.write(spb.ClientFrame(hello=spb.Hello()))
    await raw.write(ack(ab, 3))
    await raw.write(ack(cb, 7))  # beyond the thread's last seq: clamped, not refused
    await raw.until("sync_done")
    await still_up(raw, "k1", ab)
    assert raw.of("error") == []

    async def stored() -> bool:
        return await server.store.device_cursors(bob.device_id) == {ab: 3, cb: 1}

    await eventually(stored)
    raw.cancel()


async def test_read_cursor_never_moves_back_an_older_read_is_a_no_op(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca, cc = await connect(alice), await connect(carol)
    first = await ca.send("m1", recipient="bob")
    tid = first.thread_id
    for i in range(2, 7):
        await ca.send(f"m{i}", thread_id=tid)
    foreign = (await cc.send("hi", recipient="alice")).thread_id
    raw = RawStream(bob)
    await raw.hello()
    await raw.write(spb.ClientFrame(read=spb.Read(thread_id=tid, seq=5)))
    await raw.write(spb.ClientFrame(read=spb.Read(thread_id=tid, seq=2)))  # older: ignored
    await raw.write(spb.ClientFrame(read=spb.Read(thread_id=tid, seq=99)))
    err = await next_error(raw)
    assert (err.code, err.reason) == (INVALID_ARGUMENT, "BAD_CURSOR")
    await raw.write(spb.ClientFrame(read=spb.Read(thread_id=foreign, seq=1)))
    err = await next_error(raw)
    assert err.code == PERMISSION_DENIED
    assert len(raw.of("error")) == 2  # the backwards read was not an error
    await still_up(raw, "k", tid)
    [t] = await bob.threads()
    assert (t.read_seq, t.unread_count) == (5, 1)
    # The sender heard of the read at 5, and of nothing older afterwards.
    reads = []
    while True:
        ev = await ca.next_event(5)
        if isinstance(ev, d.Receipt) and ev.kind is d.ReceiptKind.READ:
            reads.append(ev.seq)
        if isinstance(ev, d.Message) and ev.client_msg_id == "k":
            break
    assert reads == [5]
    raw.cancel()


async def test_duplicate_hello_and_empty_frames_are_refused_and_the_stream_stays_up(
    user: UserFactory,
) -> None:
    alice, _ = await user("alice"), await user("bob")
    raw = RawStream(alice)
    await raw.hello()
    await raw.write(spb.ClientFrame(hello=spb.Hello()))
    assert (await next_error(raw)).reason == "DUPLICATE_HELLO"
    await raw.write(spb.ClientFrame())
    assert (await next_error(raw)).reason == "EMPTY_FRAME"
    await raw.write(send("k", "fine", recipient="bob"))
    assert (await raw.until("send_result")).send_result.seq == 1
    raw.cancel()


async def test_a_flood_of_frames_is_rate_limited_per_device_and_the_stream_stays_up(
    tmp_path: Path,
) -> None:
    async with running(make_settings(tmp_path, frames_per_second=20, frame_burst=20)) as srv:
        alice = await login(srv, "alice", "phone")
        laptop = await login(srv, "alice", "laptop", register=False)
        bob = await login(srv, "bob")
        raw = RawStream(alice)
        await raw.hello()
        for _ in range(200):
            await raw.write(spb.ClientFrame(heartbeat=spb.Heartbeat()))
        err = await next_error(raw)
        assert (err.code, err.reason) == (RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert len(raw.of("heartbeat_ack")) <= 21
        # Sends refused by the limit say which send they were, so the device can retry them.
        for i in range(40):
            await raw.write(send(f"s{i}", f"flood {i}", recipient="bob"))
        results: dict[str, spb.SendResult] = {}
        refused: set[str] = set()
        while len(results) + len(refused) < 40:
            f = await raw.read()
            if f.WhichOneof("payload") == "send_result":
                results[f.send_result.client_msg_id] = f.send_result
            elif f.WhichOneof("payload") == "error" and f.error.client_msg_id:
                assert f.error.code == RESOURCE_EXHAUSTED
                refused.add(f.error.client_msg_id)
        assert refused and results.keys().isdisjoint(refused)
        # Another device of the same user has its own budget.
        other = await Connection(laptop).start()
        assert (await other.send("from the laptop", recipient="bob", timeout=5)).seq > 0
        # The stream is still up: a retried send goes through once the bucket refills. (The
        # first refused: until it comes again, the sends after it are refused too, in order.)
        key = min(refused, key=lambda k: int(k[1:]))
        while True:
            await raw.write(send(key, f"flood {key[1:]}", recipient="bob"))
            f = await raw.read()
            while f.WhichOneof("payload") not in ("send_result", "error"):
                f = await raw.read()
            if f.WhichOneof("payload") == "send_result":
                break
        raw.cancel()
        # The SDK paces itself through the same limit: every send ends up acknowledged once.
        sdk = await Connection(alice).start()
        sent = await asyncio.gather(
            *(sdk.send(f"paced {i}", recipient="bob", timeout=30) for i in range(60))
        )
        assert len({r.seq for r in sent}) == 60 and sdk.stats.extra  # some were refused first
        rows = [m async for m in bob.all_history(sent[0].thread_id)]
        texts = [m.text for m in rows]
        assert len(texts) == len(set(texts)) == len(results) + 1 + 1 + 60
        for c in (other, sdk):
            await c.close()
        for cl in (alice, laptop, bob):
            await cl.close()
