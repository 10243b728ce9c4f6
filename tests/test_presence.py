"""Online status: heartbeats, timeouts, last seen, pushes, the query, privacy, floods, typing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import InvalidArgument
from natter.sdk import Client, Connection, Rejected
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from presence_svc import Change, Tracker
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import eventually, gather_events
from tests.procs import Cli, RawStream, wait_exit

T = TypeVar("T")

BEAT = 0.2  # heartbeat interval in these tests; offline after 3 missed beats
TIMEOUT = 3 * BEAT


@pytest.fixture
def settings(tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url=store_url,
        message_log=message_log_url,
        heartbeat_interval_seconds=BEAT,
    )


async def presence_event(
    conn: Connection, username: str, online: bool, timeout: float = 10.0
) -> d.Presence:
    """The next presence event about a user with this status; other events are skipped."""
    [ev] = await gather_events(
        conn,
        lambda ev: (
            isinstance(ev, d.Presence) and ev.user.username == username and ev.online == online
        ),
        1,
        timeout,
        f"presence {username} online={online}",
    )
    return ev  # type: ignore[no-any-return]


def pending_presence(conn: Connection) -> list[d.Presence]:
    """Presence events already queued on a connection (non-blocking)."""
    return [e for e in list(conn.events._queue) if isinstance(e, d.Presence)]  # type: ignore[attr-defined]


async def reports_pass(server: EmbeddedServer, count: int = 2) -> None:
    """Wait until the hubs have reported to presence_svc `count` more times."""
    start = server.presence.reports
    await eventually(lambda: server.presence.reports >= start + count)


# -- the tracker on its own ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.wall = datetime(2026, 1, 1, tzinfo=UTC)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.wall += timedelta(seconds=seconds)


def test_tracker_online_while_any_device_beats_offline_after_the_timeout() -> None:
    clock = Clock()
    t = Tracker(3.0, clock=lambda: clock.now, wall=lambda: clock.wall)
    first = clock.wall
    assert t.report("n1", [(1, 10, True)]) == [Change(1, True, first)]
    clock.tick(1)
    assert t.report("n1", [(1, 11, True)]) == []  # a second device: no change
    clock.tick(1.5)
    last = clock.wall
    assert t.report("n1", [(1, 11, True)]) == []
    clock.tick(1)  # device 10 silent for 3.5 s: gone, but device 11 keeps the user online
    assert t.expire() == [] and t.online(1)
    clock.tick(2.5)  # device 11 silent for 3.5 s
    assert t.expire() == [Change(1, False, last)]  # last seen: its last beat
    assert not t.online(1) and t.seen(1) is None


def test_tracker_disconnects_and_moves_between_socket_servers() -> None:
    clock = Clock()
    t = Tracker(3.0, clock=lambda: clock.now, wall=lambda: clock.wall)
    t.report("n1", [(1, 10, True), (2, 20, True)])
    clock.tick(1)
    # Device 10 reconnected to n2 before n1 reported its disconnect: still online.
    assert t.report("n2", [(1, 10, True)]) == []
    assert t.report("n1", [(1, 10, False)]) == [] and t.online(1)
    clock.tick(1)
    assert t.report("n2", [(1, 10, False)]) == [Change(1, False, clock.wall)]
    # Connect and disconnect within one batch is no change at all.
    assert t.report("n1", [(3, 30, True), (3, 30, False)]) == []
    # A socket server that went away takes its devices offline.
    assert t.forget_node("n1") == [Change(2, False, clock.wall)]
    assert t.online_users() == []


# -- pushes to contacts ---------------------------------------------------------------------


async def test_contacts_see_online_and_offline_within_an_interval(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob = await user("alice"), await user("bob")
    await bob.add_contact("alice")
    await alice.add_contact("bob")  # presence goes to mutual contacts only
    cb = await connect(bob, heartbeat_seconds=BEAT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    ca = await connect(alice, heartbeat_seconds=BEAT)
    online = await presence_event(cb, "alice", True)
    assert loop.time() - started < 4 * BEAT  # one report interval, plus a connect
    assert online.last_seen_time is not None
    [status] = await bob.presence(["alice"])
    assert (status.user.username, status.online) == ("alice", True)

    await ca.close()
    closed = loop.time()
    offline = await presence_event(cb, "alice", False)
    assert loop.time() - closed < 4 * BEAT
    assert offline.last_seen_time is not None
    assert abs(offline.last_seen_time - datetime.now(UTC)) < timedelta(seconds=5)
    [status] = await bob.presence(["alice"])
    assert (status.online, status.last_seen_time) == (False, offline.last_seen_time)
    assert alice.user is not None
    row = (await server.store.get_users([alice.user.user_id]))[alice.user.user_id]
    assert row.last_seen_time == offline.last_seen_time


async def test_a_silent_device_goes_offline_though_its_stream_is_open(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob = await user("alice"), await user("bob")
    await bob.add_contact("alice")
    await alice.add_contact("bob")
    cb = await connect(bob, heartbeat_seconds=BEAT)
    raw = RawStream(alice)  # says hello, then nothing: a half-open connection
    await raw.hello()
    await presence_event(cb, "alice", True)
    loop = asyncio.get_running_loop()
    went_online = loop.time()
    offline = await presence_event(cb, "alice", False)
    assert loop.time() - went_online >= TIMEOUT - BEAT
    assert offline.last_seen_time is not None
    assert alice.device_id in server.hub.by_device  # the session itself is still there
    # A frame later: alive again.
    await raw.write(spb.ClientFrame(heartbeat=spb.Heartbeat()))
    await presence_event(cb, "alice", True)
    raw.cancel()


async def test_online_while_any_device_is(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    phone, laptop, bob = (
        await user("alice", "phone"),
        await user("alice", "laptop"),
        await user("bob"),
    )
    await bob.add_contact("alice")
    await phone.add_contact("bob")
    cb = await connect(bob, heartbeat_seconds=BEAT)
    c1 = await connect(phone, heartbeat_seconds=BEAT)
    c2 = await connect(laptop, heartbeat_seconds=BEAT)
    await presence_event(cb, "alice", True)
    await c1.close()
    await eventually(lambda: phone.device_id not in server.hub.by_device)
    await reports_pass(server, 3)
    assert [p.online for p in pending_presence(cb)] == []  # no offline for one device
    [status] = await bob.presence(["alice"])
    assert status.online
    await c2.close()
    await presence_event(cb, "alice", False)


async def test_last_seen_survives_a_restart(settings: Settings) -> None:
    # The product's interval: no timeout can flap the status while the test runs.
    settings = settings.replace(heartbeat_interval_seconds=5.0)
    async with EmbeddedServer(settings) as srv:
        a, b = Client(srv.grpc_address), Client(srv.grpc_address)
        await a.register("alice", PASSWORD)
        await b.register("bob", PASSWORD)
        await a.login("alice", PASSWORD)
        await b.login("bob", PASSWORD)
        await b.add_contact("alice")
        await a.add_contact("bob")
        conn = await Connection(a).start()
        await eventually(lambda: srv.presence.tracker.online_users() != [])
        await conn.close()
        await eventually(lambda: srv.presence.tracker.online_users() == [])
        [before] = await b.presence(["alice"])
        await a.close()
        await b.close()
    assert before.last_seen_time is not None and not before.online
    async with EmbeddedServer(settings) as srv:
        b = Client(srv.grpc_address)
        await b.login("bob", PASSWORD)
        [after] = await b.presence(["alice"])
        assert (after.online, after.last_seen_time) == (False, before.last_seen_time)
        await b.close()


# -- privacy --------------------------------------------------------------------------------


async def test_only_mutual_contacts_see_status(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    """Adding someone is one-sided: their status shows only once they add you back."""
    alice, bob, carol, dave, erin = [
        await user(n) for n in ("alice", "bob", "carol", "dave", "erin")
    ]
    await bob.add_contact("alice")
    await alice.add_contact("bob")  # mutual: bob sees alice, alice sees bob
    await carol.add_contact("alice")  # carol has alice, alice not carol: carol sees nothing
    await alice.add_contact("erin")  # alice has erin, erin not alice: erin sees nothing
    await alice.create_group("g", ["dave"])  # a shared group shows nothing by default
    watchers = {
        n: await connect(c, heartbeat_seconds=BEAT)
        for n, c in (("bob", bob), ("carol", carol), ("dave", dave), ("erin", erin))
    }
    ca = await connect(alice, heartbeat_seconds=BEAT)
    await presence_event(watchers["bob"], "alice", True)
    await reports_pass(server)
    for n in ("carol", "dave", "erin"):
        assert pending_presence(watchers[n]) == [], n
    await ca.close()
    seen = (await presence_event(watchers["bob"], "alice", False)).last_seen_time
    assert seen is not None

    [p] = await bob.presence(["alice"])
    assert (p.user.username, p.online, p.last_seen_time) == ("alice", False, seen)
    for viewer in (carol, dave, erin):
        assert await viewer.presence(["alice"]) == []
    # Once carol is added back, she sees alice too.
    await alice.add_contact("carol")
    [p] = await carol.presence(["alice"])
    assert p.last_seen_time == seen
    # Hidden last seen: the status still shows, the time does not, except to oneself.
    await alice.update_settings(hide_last_seen=True)
    [p] = await bob.presence(["alice"])
    assert (p.online, p.last_seen_time) == (False, None)
    [own] = await alice.presence(["alice"])
    assert own.last_seen_time == seen
    await connect(alice, heartbeat_seconds=BEAT)
    pushed = await presence_event(watchers["bob"], "alice", True)
    assert pushed.last_seen_time is None


class TestChatsSeeStatus:
    """presence_audience = contacts_and_chats: people one shares a thread with see it too."""

    @pytest.fixture
    def settings(self, tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
        return make_settings(
            tmp_path / "data",
            database_url=store_url,
            message_log=message_log_url,
            heartbeat_interval_seconds=BEAT,
            presence_audience="contacts_and_chats",
        )

    async def test_thread_peers_see_status_strangers_do_not(
        self, user: UserFactory, connect: ConnFactory, server: EmbeddedServer
    ) -> None:
        alice, carol, dave = [await user(n) for n in ("alice", "carol", "dave")]
        await carol.add_contact("alice")  # one-sided: still nothing
        await alice.create_group("g", ["dave"])
        cd, cc = (
            await connect(dave, heartbeat_seconds=BEAT),
            await connect(carol, heartbeat_seconds=BEAT),
        )
        await connect(alice, heartbeat_seconds=BEAT)
        await presence_event(cd, "alice", True)
        await reports_pass(server)
        assert pending_presence(cc) == []
        [p] = await dave.presence(["alice"])
        assert p.online
        assert await carol.presence(["alice"]) == []


class TestSmallGroupPushes:
    @pytest.fixture
    def settings(self, tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
        return make_settings(
            tmp_path / "data",
            database_url=store_url,
            message_log=message_log_url,
            heartbeat_interval_seconds=BEAT,
            presence_push_group_size=2,
            presence_audience="contacts_and_chats",
        )

    async def test_pushes_reach_small_threads_only(
        self, user: UserFactory, connect: ConnFactory, server: EmbeddedServer
    ) -> None:
        alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
        await alice.create_group("three", ["bob", "carol"])  # 3 > 2: no pushes
        ca = await connect(alice, heartbeat_seconds=BEAT)
        await ca.send("hi", recipient="bob")  # a direct thread: 2 members, pushes
        await ca.close()
        assert alice.user is not None
        alice_id = alice.user.user_id
        await eventually(lambda: not server.presence.tracker.online(alice_id))
        cb = await connect(bob, heartbeat_seconds=BEAT)
        cc = await connect(carol, heartbeat_seconds=BEAT)
        await connect(alice, heartbeat_seconds=BEAT)
        await presence_event(cb, "alice", True)
        await reports_pass(server)
        assert pending_presence(cc) == []
        # Pulling works for anyone sharing a thread, whatever its size.
        [p] = await carol.presence(["alice"])
        assert p.online


async def test_presence_query_limits(user: UserFactory, server: EmbeddedServer) -> None:
    alice, bob = await user("alice"), await user("bob")
    await alice.add_contact("bob")
    await bob.add_contact("alice")
    with pytest.raises(InvalidArgument) as info:
        await alice.presence([f"user{i}" for i in range(1001)])
    assert info.value.reason == "TOO_MANY_USERS" and "1000" in info.value.message
    many = ["nobody", "BOB", "", "alice", "bob", *[f"ghost{i}" for i in range(995)]]
    got = await alice.presence(many)
    assert [p.user.username for p in got] == ["bob", "alice"]
    assert await alice.presence([]) == []
    assert bob is not None


# -- floods ---------------------------------------------------------------------------------


class TestHeartbeatFlood:
    @pytest.fixture
    def settings(self, tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
        return make_settings(
            tmp_path / "data",
            database_url=store_url,
            message_log=message_log_url,
            heartbeat_interval_seconds=BEAT,
            frames_per_second=20.0,
            frame_burst=40,
        )

    async def test_a_heartbeat_flood_is_refused_and_reaches_presence_as_one_beat(
        self, user: UserFactory, server: EmbeddedServer
    ) -> None:
        alice = await user("alice")
        raw = RawStream(alice)
        await raw.hello()
        # The connect is reported at once; a silent device is not reported again.
        await eventually(lambda: server.presence.beats >= 1, message="the connect is reported")
        reports, beats = server.presence.reports, server.presence.beats
        for _ in range(300):
            await raw.write(spb.ClientFrame(heartbeat=spb.Heartbeat()))
        error = await raw.until("error")
        assert error.error.code == 8 and error.error.reason == "RATE_LIMITED"  # RESOURCE_EXHAUSTED
        await reports_pass(server, 1)
        # Batched: one beat per device per report, however many frames came in.
        assert server.presence.beats - beats == server.presence.reports - reports
        # The stream stays usable: a device that slows down gets through again (the same
        # idempotent send, offered ten times a second until the bucket lets it in).
        send = spb.ClientFrame(
            send=spb.Send(client_msg_id="after-flood", recipient="alice", text="still here")
        )

        async def offer() -> None:
            while True:
                await raw.write(send)
                await asyncio.sleep(0.1)

        offering = asyncio.create_task(offer())
        try:
            result = await raw.until("send_result")
        finally:
            offering.cancel()
        assert result.send_result.client_msg_id == "after-flood"
        raw.cancel()


# -- typing -------------------------------------------------------------------------------


async def test_typing_reaches_other_members_only_is_not_stored_and_is_limited(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, alice2, bob, carol = (
        await user("alice"),
        await user("alice", "tablet"),
        await user("bob"),
        await user("carol"),
    )
    group = await alice.create_group("g", ["bob", "carol"])
    g = group.thread_id
    ca, ca2 = await connect(alice), await connect(alice2)
    cb, cc = await connect(bob), await connect(carol)
    await ca.typing(g, True)
    for conn in (cb, cc):
        ev = await next_typing(conn)
        assert (ev.thread_id, ev.user.username, ev.active) == (g, "alice", True)
    await ca.typing(g, False)
    assert (await next_typing(cb)).active is False
    # Never stored: the thread is as it was.
    assert (await bob.thread(g)).thread.last_seq == 1
    # The typist's other device hears nothing of it (a message follows as a marker).
    await cb.send("marker", thread_id=g)
    while True:
        seen = await ca2.next_event(10)
        assert not isinstance(seen, d.Typing)
        if isinstance(seen, d.Message) and seen.text == "marker":
            break
    # Rate limited per device: a burst gets a RESOURCE_EXHAUSTED and only a few get through.
    for _ in range(20):
        await cc.typing(g, True)
    rejected = await next_of_kind(cc, Rejected)
    assert (rejected.code, rejected.reason) == (8, "RATE_LIMITED")
    await cc.send("after typing", thread_id=g)
    relayed = 0
    while True:
        seen = await cb.next_event(10)
        if isinstance(seen, d.Typing) and seen.user.username == "carol":
            relayed += 1
        if isinstance(seen, d.Message) and seen.text == "after typing":
            break
    assert 1 <= relayed <= 8  # the bucket's burst (6) and what refilled meanwhile
    # Typing in a thread one is not in is refused on the stream.
    await cb.typing(99999, True)
    refused = await next_of_kind(cb, Rejected)
    assert (refused.code, refused.reason) == (5, "THREAD_NOT_FOUND")


async def test_typing_at_the_pace_clients_keep_is_never_rate_limited(
    user: UserFactory, connect: ConnFactory
) -> None:
    """Clients keep typing indicators within 1 a second and 3 at once (the TypeScript SDK's
    pacer, docs/clients.md). The worst such a client sends, with the network holding its
    frames back and releasing them together, still passes the server's limit untouched."""
    alice, bob = await user("alice"), await user("bob")
    ca, cb = await connect(alice), await connect(bob)
    t = (await ca.send("hi", recipient="bob")).thread_id
    frames = 0

    async def typing_frames(n: int) -> None:
        nonlocal frames
        for i in range(n):
            frames += 1
            await ca.typing(t, i % 2 == 0)

    # The client's full burst of 3 and the next second's frame arrive together.
    await typing_frames(4)
    for _ in range(3):
        await asyncio.sleep(1.0)  # the pace being modelled, not a wait for anything
        await typing_frames(1)
    await ca.send("between", thread_id=t)
    # A 2-second stall: those seconds' frames and the current one at once.
    await asyncio.sleep(3.0)
    await typing_frames(3)
    await ca.send("done", thread_id=t)
    relayed = 0
    while True:
        seen = await cb.next_event(10)
        if isinstance(seen, d.Typing):
            relayed += 1
        if isinstance(seen, d.Message) and seen.text == "done":
            break
    assert relayed == frames
    # A refusal would have come before the result of the send that followed it.
    queued = [ca.events.get_nowait() for _ in range(ca.events.qsize())]
    assert not [ev for ev in queued if isinstance(ev, Rejected)], queued


async def next_typing(conn: Connection) -> d.Typing:
    return await next_of_kind(conn, d.Typing)


async def next_of_kind(conn: Connection, kind: type[T], timeout: float = 10.0) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} within {timeout} s")
        ev = await conn.next_event(left)
        if isinstance(ev, kind):
            return ev


# -- the command line -----------------------------------------------------------------------


@pytest.mark.above_the_store
class TestCli:
    @pytest.fixture
    def settings(self, tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
        # The product's interval: the CLI's own device heartbeats every 5 s like any client.
        return make_settings(tmp_path / "data", database_url=store_url, message_log=message_log_url)

    async def test_status_and_listen(
        self, tmp_path: Path, server: EmbeddedServer, user: UserFactory, connect: ConnFactory
    ) -> None:
        cli = Cli(tmp_path / "home", server.grpc_address, PASSWORD)
        alice = await user("alice")
        await user("bob")
        await cli.run("bob", "login", "bob")
        await cli.run("bob", "contacts", "add", "alice")
        await alice.add_contact("bob")
        [never, hidden] = await cli.json("bob", "status", "alice", "nobody")
        assert never == {"type": "presence", "user": "alice", "online": False, "last_seen": None}
        assert hidden == {"type": "presence", "user": "nobody", "visible": False}
        listen = cli.start("bob", "--json", "listen", "--timeout", "4")
        try:
            await eventually(lambda: server.presence.tracker.online_users() != [])  # bob
            ca = await connect(alice)
            assert alice.user is not None
            alice_id = alice.user.user_id
            await eventually(lambda: server.presence.tracker.online(alice_id))
            thread = (await ca.send("hi", recipient="bob")).thread_id
            await ca.typing(thread, True)
            await ca.close()
            code, out, err = await wait_exit(listen, 30)
        finally:
            if listen.poll() is None:
                listen.kill()
        assert code == 0, err
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert [(e["user"], e["online"]) for e in events if e["type"] == "presence"] == [
            ("alice", True),
            ("alice", False),
        ]
        assert [(e["user"], e["thread"], e["active"]) for e in events if e["type"] == "typing"] == [
            ("alice", thread, True)
        ]
        assert any(e["type"] == "message" and e["text"] == "hi" for e in events)
        [seen] = await cli.json("bob", "status", "alice")
        assert seen["online"] is False and seen["last_seen"]
        text = (await cli.run("bob", "status", "alice")).stdout
        assert text.startswith("alice: offline, last seen ")


async def test_a_socket_server_leaving_the_registry_takes_its_devices_offline(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    """Cluster wiring: presence follows the socket servers' leases, not only the beats."""
    from app.roles.presence import follow_socket_nodes
    from registry import LocalRegistry, Node

    alice, bob = await user("alice"), await user("bob")
    await bob.add_contact("alice")
    await alice.add_contact("bob")
    cb = await connect(bob, heartbeat_seconds=BEAT)
    registry = LocalRegistry()
    await registry.register(Node("far-away", "socket", "127.0.0.1:1", "127.0.0.1:2"))
    presence = server.presence
    follow_socket_nodes(registry, presence)
    # alice's device is on a socket server this process knows only from the registry.
    assert alice.user is not None
    await presence.report("far-away", [(alice.user.user_id, alice.device_id, True)])
    await presence_event(cb, "alice", True)
    await registry.deregister()
    # Offline at once, well before her beats would have timed out.
    gone = await presence_event(cb, "alice", False, timeout=TIMEOUT / 2)
    assert gone.last_seen_time is not None
