"""Cluster failover: every role a real process on loopback, killed with SIGKILL under traffic.

One cluster (etcd, PostgreSQL, three socket servers, two message_svc, one channel_svc, one
presence_svc; lease TTL 2 s, heartbeat 1 s) serves the whole module; each test hurts it,
checks that no acknowledged message was lost or duplicated and that per-thread order held,
and the next test starts from a healed cluster.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import aiohttp
import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from natter.errors import Unavailable
from natter.pool import SECRET_HEADER
from natter.sdk import Client, Connection
from natter.v1 import channel_internal_service_pb2 as cpb
from natter.v1 import channel_internal_service_pb2_grpc as cpb_grpc
from natter.v1 import message_internal_service_pb2 as mpb
from natter.v1 import message_internal_service_pb2_grpc as mpb_grpc
from natter.v1 import presence_internal_service_pb2 as pipb
from natter.v1 import presence_internal_service_pb2_grpc as pipb_grpc
from natter.v1 import socket_internal_service_pb2 as ipb
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import types_pb2 as tpb
from tests.cluster import SECRET, Chat, Cluster, running_cluster
from tests.conftest import PASSWORD
from tests.helpers import collect, eventually
from tests.procs import RawStream

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def healthy(cluster: Cluster) -> AsyncIterator[Cluster]:
    """The cluster, whole again whatever the previous test did to it."""
    await cluster.heal()
    yield cluster


# -- internal traffic is not public ------------------------------------------------------


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_internal_apis_are_not_reachable_from_outside(healthy: Cluster) -> None:
    secret = ((SECRET_HEADER, SECRET),)
    wrong = ((SECRET_HEADER, "guess"),)
    deliver = ipb.DeliverRequest()
    publish = cpb.PublishRequest()
    send = mpb.SendMessageRequest(user_id=1, device_id=1)
    beats = pipb.ReportHeartbeatsRequest(
        node_id="x", beats=[pipb.DeviceBeat(user_id=1, device_id=1)]
    )

    Call = Callable[[grpc.aio.Channel, tuple[tuple[str, str], ...]], object]
    internal: dict[str, Call] = {
        "socket": lambda ch, md: ipb_grpc.SocketInternalServiceStub(ch).Deliver(
            deliver, metadata=md, timeout=5
        ),
        "channel": lambda ch, md: cpb_grpc.ChannelInternalServiceStub(ch).Publish(
            publish, metadata=md, timeout=5
        ),
        "message": lambda ch, md: mpb_grpc.MessageInternalServiceStub(ch).SendMessage(
            send, metadata=md, timeout=5
        ),
        "presence": lambda ch, md: pipb_grpc.PresenceInternalServiceStub(ch).ReportHeartbeats(
            beats, metadata=md, timeout=5
        ),
    }

    first = {role: healthy.of(role)[0] for role in internal}

    # On the public listeners the internal services do not exist, even with the secret.
    for node in first.values():
        async with grpc.aio.insecure_channel(node.public_addr) as ch:
            for role, call in internal.items():
                code = await _code(call(ch, secret))
                assert code == grpc.StatusCode.UNIMPLEMENTED, (node.node_id, role)

    # On the internal listeners a call without the secret, or with a wrong one, is refused.
    for role, call in internal.items():
        node = first[role]
        async with grpc.aio.insecure_channel(node.internal_addr) as ch:
            assert await _code(call(ch, ())) == grpc.StatusCode.PERMISSION_DENIED, node.node_id
            assert await _code(call(ch, wrong)) == grpc.StatusCode.PERMISSION_DENIED, node.node_id
    # With the secret, the same listener answers.
    async with grpc.aio.insecure_channel(first["socket"].internal_addr) as ch:
        assert await _code(internal["socket"](ch, secret)) == grpc.StatusCode.OK


# -- acks through message_svc -------------------------------------------------------------


def ack(thread_id: int, seq: int) -> spb.ClientFrame:
    return spb.ClientFrame(ack=spb.Ack(cursors=[tpb.Cursor(thread_id=thread_id, seq=seq)]))


async def test_acks_before_sync_done_and_for_unknown_threads_go_through_message_svc(
    healthy: Cluster,
) -> None:
    """A socket server asks message_svc (CheckMember) about threads its session has not met."""
    tag = f"ack{os.getpid() % 1000}x{int(time.time() * 1000) % 100000}"
    names = [f"{tag}a", f"{tag}b", f"{tag}c"]
    clients = [Client(healthy.front_door, timeout=20.0) for _ in names]
    for c, name in zip(clients, names, strict=True):
        await c.register(name, PASSWORD)
        await c.login(name, PASSWORD, "test")
    alice, bob, carol = clients
    conns = [await Connection(c).start(timeout=30) for c in (alice, carol)]
    try:
        tid = (await conns[0].send("m1", recipient=names[1])).thread_id
        for i in range(2, 4):
            await conns[0].send(f"m{i}", thread_id=tid)
        foreign = (await conns[1].send("not for bob", recipient=names[0])).thread_id
        # Straight to bob's socket server: a raw stream does not follow redirects.
        direct = Client(await bob.locate(names[1]), token=bob.token)
        raw = RawStream(direct)
        await raw.write(spb.ClientFrame(hello=spb.Hello()))
        await raw.write(ack(tid, 2))  # while the session syncs
        await raw.until("sync_done")
        await raw.write(ack(foreign, 1))
        error = (await raw.until("error")).error
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED.value[0],
            "NOT_A_MEMBER",
        )
        assert len(raw.of("error")) == 1
        raw.cancel()

        async def stored() -> bool:
            fresh = RawStream(direct)
            done = await fresh.hello()
            fresh.cancel()
            return done.replayed == 1  # only seq 3: the early ack was stored

        await eventually(stored, 15, message="the ack before SyncDone was stored")
        await direct.close()
    finally:
        for conn in conns:
            await conn.close()
        for c in clients:
            await c.close()


async def test_a_device_that_reaches_a_server_not_owning_its_user_is_sent_to_the_owner(
    healthy: Cluster,
) -> None:
    """A stream opened on the wrong socket server is redirected, and then gets live pushes.

    Redirects are decided on the sender's view of the ring, and followed later: one decided
    while a healed server was not yet back on every ring led a device to a server that no
    longer owned its user once it arrived. Served there, it got no live push again (they go
    to the owner), so a peer's last message never reached it.
    """
    tag = f"own{os.getpid() % 1000}x{int(time.time() * 1000) % 100000}"
    names = [f"{tag}a", f"{tag}b"]
    clients = [Client(healthy.front_door, timeout=20.0) for _ in names]
    for c, name in zip(clients, names, strict=True):
        await c.register(name, PASSWORD)
        await c.login(name, PASSWORD, "test")
    alice, bob = clients
    assert bob.user is not None
    owner_id = healthy.owner(bob.user.user_id)
    owner = healthy.proc(owner_id or "")
    wrong = next(p for p in healthy.of("socket") if p.node_id != owner_id)
    direct = Client(wrong.public_addr, token=bob.token)
    raw = RawStream(direct)
    sender = await Connection(alice).start(timeout=30)
    try:
        await raw.write(spb.ClientFrame(hello=spb.Hello()))
        first = await raw.read()
        assert first.WhichOneof("payload") == "welcome"
        assert first.welcome.node_id == wrong.node_id
        moved = await raw.read()
        assert moved.WhichOneof("payload") == "redirect", moved
        assert moved.redirect.address == owner.public_addr
        assert await raw.status() == grpc.StatusCode.OK

        there = Client(moved.redirect.address, token=bob.token)
        live = RawStream(there)
        try:
            await live.write(spb.ClientFrame(hello=spb.Hello()))
            welcome = await live.until("welcome")
            assert welcome.welcome.node_id == owner.node_id
            await live.until("sync_done")
            await sender.send("after the move", recipient=names[1])
            pushed = await live.until("message", timeout=15)
            assert pushed.message.text == "after the move"
        finally:
            await live.close()
            await there.close()
    finally:
        await raw.close()
        await direct.close()
        await sender.close()
        for c in clients:
            await c.close()


# -- the sender's own copies ---------------------------------------------------------------


async def _deliver_counts(cluster: Cluster) -> dict[str, float]:
    """Messages each socket server received in Deliver calls (natter_deliver_messages_total)."""
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        for p in cluster.of("socket"):
            async with http.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as res:
                assert res.status == 200, p.node_id
                text = await res.text()
            out[p.node_id] = sum(
                s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "natter_deliver_messages_total"
            )
    return out


async def test_a_senders_other_devices_get_its_messages_once_from_its_own_socket_server(
    healthy: Cluster,
) -> None:
    """Three devices of one sender, its peer on another of the three socket servers.

    The sender's socket server pushes the sender's copies to its other devices itself, once
    SendMessages answered: message_svc's Deliver goes to the peer's socket server only. It
    used to go to the sender's as well, a call per message that reached no device when the
    sender had only the one, and whose share grew with the number of socket servers.
    """
    tag = f"cp{os.getpid() % 1000}x{int(time.time() * 1000) % 100000}"
    sender = Client(healthy.front_door, timeout=20.0)
    await sender.register(f"{tag}s", PASSWORD)
    await sender.login(f"{tag}s", PASSWORD, "phone")
    assert sender.user is not None
    home = healthy.owner(sender.user.user_id)
    peers: list[Client] = []
    peer: Client | None = None
    for i in range(8):  # a peer on another socket server: 1 - (1/3)^8 likely at once
        c = Client(healthy.front_door, timeout=20.0)
        peers.append(c)
        await c.register(f"{tag}p{i}", PASSWORD)
        await c.login(f"{tag}p{i}", PASSWORD, "test")
        assert c.user is not None
        if healthy.owner(c.user.user_id) != home:
            peer = c
            break
    assert peer is not None and peer.user is not None, "every peer landed on the sender's server"
    there = healthy.owner(peer.user.user_id)
    others = [Client(healthy.front_door, timeout=20.0) for _ in range(2)]
    for i, c in enumerate(others):
        await c.login(f"{tag}s", PASSWORD, f"device{i}")
    conns = [await Connection(c).start(timeout=30) for c in (sender, *others, peer)]
    phone, *copies, recipient = conns
    try:
        before = await _deliver_counts(healthy)
        sent = [await phone.send(f"m{i}", recipient=peer.user.username) for i in range(10)]
        want = [(s.thread_id, s.seq) for s in sent]
        for conn in (*copies, recipient):
            got = await collect(conn, 10, timeout=30)
            assert [(m.thread_id, m.seq) for m in got] == want
            assert [m.text for m in got] == [f"m{i}" for i in range(10)]
        after = await _deliver_counts(healthy)
        delta = {node: after[node] - before[node] for node in after}
        assert home is not None and there is not None
        # The peer's server got each message in a Deliver; the sender's server none.
        assert delta[there] >= 10, delta
        assert delta[home] == 0, delta
    finally:
        for conn in conns:
            await conn.close()
        for c in (sender, *others, *peers):
            await c.close()


# -- failover ----------------------------------------------------------------------------


async def test_socket_server_killed_with_100_users_mid_traffic(healthy: Cluster) -> None:
    chat = await Chat(healthy.front_door, 100, interval=0.5).open()
    try:
        chat.start()
        await eventually(lambda: chat.acked_total() >= 150, 30, message="traffic flows")
        victim_id, count = Counter(p.node for p in chat.peers).most_common(1)[0]
        assert count < 100, "users are spread over the socket servers"
        moved = [p for p in chat.peers if p.node == victim_id]
        victim = healthy.proc(victim_id)
        killed = time.monotonic()
        victim.kill()

        def reconnected() -> bool:
            return all(any(t > killed and n != victim_id for t, n in p.connects) for p in moved)

        await eventually(reconnected, healthy.ttl + 10, message="every user reconnected")
        worst = max(
            min(t for t, n in p.connects if t > killed and n != victim_id) - killed for p in moved
        )
        assert worst <= healthy.ttl + 2, f"slowest reconnect took {worst:.2f} s"
        for p in moved:
            assert p.conn is not None and p.conn.user is not None
            assert p.node == healthy.owner(p.conn.user.user_id), "on its new owner"
        before = chat.acked_total()
        await eventually(lambda: chat.acked_total() >= before + 100, 30, message="traffic resumes")
        await chat.finish()
    finally:
        await chat.close()


async def test_channel_server_killed_group_traffic_resumes(healthy: Cluster) -> None:
    chat = await Chat(healthy.front_door, 6, group=True, interval=0.2).open()
    try:
        chat.start()
        await eventually(lambda: chat.acked_total() >= 12, 20)
        channel = healthy.of("channel")[0]
        channel.kill()
        # Sends are still acknowledged (the store is the truth) while fan-out is down.
        before = chat.acked_total()
        await eventually(lambda: chat.acked_total() >= before + 12, 20)
        channel.spawn()
        await healthy.wait_ready([channel])
        before = chat.acked_total()
        await eventually(lambda: chat.acked_total() >= before + 12, 20)
        await chat.finish()
    finally:
        await chat.close()


async def test_message_replica_killed_sends_land_on_the_other(healthy: Cluster) -> None:
    chat = await Chat(healthy.front_door, 10, interval=0.1).open()
    try:
        chat.start()
        await eventually(lambda: chat.acked_total() >= 30, 20)
        victim = healthy.of("message")[0]  # also the clients' first front door
        victim.kill()
        before = chat.acked_total()
        await eventually(lambda: chat.acked_total() >= before + 50, 20, message="sends go on")
        threads = await chat.peers[0].client.threads()  # unary calls fail over too
        assert threads
        await chat.finish()
    finally:
        await chat.close()


async def test_presence_server_killed_status_recovers(healthy: Cluster) -> None:
    chat = await Chat(healthy.front_door, 2, interval=1.0).open()
    try:
        alice, bob = chat.peers
        await alice.client.add_contact(bob.name)
        await bob.client.add_contact(alice.name)  # status shows to mutual contacts

        async def bob_online() -> bool:
            try:
                found = await alice.client.presence([bob.name])
            except Unavailable:
                return False
            return bool(found) and found[0].online

        await eventually(bob_online, 10, message="bob online")
        presence = healthy.of("presence")[0]
        presence.kill()
        with pytest.raises(Unavailable):
            await alice.client.presence([bob.name])
        presence.spawn()
        await healthy.wait_ready([presence])
        back = time.monotonic()
        await eventually(bob_online, 10, message="bob online again")
        took = time.monotonic() - back
        assert took <= 2 * healthy.heartbeat, f"presence took {took:.2f} s to recover"
    finally:
        await chat.close()


async def test_etcd_restarted_nodes_register_again(healthy: Cluster) -> None:
    chat = await Chat(healthy.front_door, 6, interval=0.2).open()
    group = await Chat(healthy.front_door, 4, group=True, interval=0.2).open()
    both = (chat, group)
    try:
        for c in both:
            c.start()
        await eventually(lambda: all(c.acked_total() >= 12 for c in both), 20)
        await healthy.etcd.kill()
        # The rings live in every process's memory: traffic goes on without etcd.
        goals = [c.acked_total() + 12 for c in both]
        await eventually(
            lambda: all(c.acked_total() >= g for c, g in zip(both, goals, strict=True)), 20
        )
        await healthy.etcd.restart(wipe=True)  # it lost everything: every node registers again
        await healthy.wait_ready(timeout=20)
        goals = [c.acked_total() + 12 for c in both]
        await eventually(
            lambda: all(c.acked_total() >= g for c, g in zip(both, goals, strict=True)), 20
        )
        for c in both:
            await c.stop()
        for c in both:
            await c.settle()
            await c.check_store()
    finally:
        for c in both:
            await c.close()


async def test_database_restarted_sends_wait_and_nothing_is_lost(healthy: Cluster) -> None:
    assert healthy.db is not None
    chat = await Chat(healthy.front_door, 6, interval=0.2).open()
    try:
        chat.start()
        await eventually(lambda: chat.acked_total() >= 12, 20)
        await healthy.db.kill()

        def refused() -> bool:
            return any(
                p.conn is not None and p.conn.stats.extra.get("send_retry_UNAVAILABLE")
                for p in chat.peers
            )

        await eventually(refused, 20, message="sends refused with UNAVAILABLE")
        with pytest.raises(Unavailable):
            await chat.peers[0].client.threads()
        before = chat.acked_total()
        await healthy.db.start()
        await eventually(lambda: chat.acked_total() >= before + 12, 30, message="sends resume")
        await chat.finish()
    finally:
        await chat.close()


async def test_rolling_restart_of_every_process_under_load(healthy: Cluster) -> None:
    chat = await Chat(healthy.front_door, 12, interval=0.2).open()
    try:
        chat.start()
        await eventually(lambda: chat.acked_total() >= 24, 20)
        for proc in list(healthy.procs):
            await healthy.restart(proc, crash=False)
            await healthy.wait_ready()
            goal = chat.acked_total() + 12
            await eventually(
                lambda: chat.acked_total() >= goal,  # noqa: B023
                20,
                message=f"traffic after restarting {proc.node_id}",
            )
        await chat.finish()

        def on_owners() -> bool:
            return all(
                p.conn is not None
                and p.conn.user is not None
                and p.node == healthy.owner(p.conn.user.user_id)
                for p in chat.peers
            )

        await eventually(on_owners, 10, message="every user on its owner")
    finally:
        await chat.close()


async def test_a_socket_server_joining_the_ring_takes_its_users_by_redirect(
    healthy: Cluster,
) -> None:
    """Ring changes move exactly the users whose owner changed, once each, without loss."""
    chat = await Chat(healthy.front_door, 30, interval=0.5).open()

    def on_owners() -> bool:
        return all(
            p.conn is not None
            and p.conn.user is not None
            and p.node == healthy.owner(p.conn.user.user_id)
            for p in chat.peers
        )

    try:
        chat.start()
        await eventually(lambda: chat.acked_total() >= 60, 30, message="traffic flows")
        victim_id = Counter(p.node for p in chat.peers).most_common(1)[0][0]
        victim = healthy.proc(victim_id)
        await victim.terminate()  # a clean stop deregisters: the ring changes at once
        await eventually(on_owners, healthy.ttl + 10, message="users left the stopped server")
        before = {p.name: len(p.connects) for p in chat.peers}

        victim.spawn()
        await healthy.wait_ready([victim])
        await eventually(on_owners, 15, message="users moved to the server that joined")
        back = [p for p in chat.peers if p.node == victim_id]
        assert back, "the joining server owns some of the users"
        for p in chat.peers:
            moves = len(p.connects) - before[p.name]
            want = 1 if p in back else 0
            assert moves == want, f"{p.name} reconnected {moves} times, expected {want}"
        goal = chat.acked_total() + 60
        await eventually(lambda: chat.acked_total() >= goal, 30, message="traffic resumes")
        await chat.finish()
    finally:
        await chat.close()
