"""Fan-out across several socket servers (hubs) in one process: groups, a sender's own copies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from natter.sdk import Client, Connection
from natter.settings import Settings
from socket_svc import Hub
from tests.conftest import PASSWORD
from tests.conftest import test_settings as make_settings
from tests.helpers import collect, eventually


class Cluster:
    """The embedded server plus extra socket servers; devices connect to the node named."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.hubs: dict[str, Hub] = {server.node_id: server.hub}
        self.addresses: dict[str, str] = {server.node_id: server.grpc_address}
        self.clients: list[Client] = []
        self.conns: list[Connection] = []

    async def add_nodes(self, count: int) -> list[str]:
        for i in range(count):
            hub, address = await self.server.add_socket_server(f"sock-{i}")
            self.hubs[hub.node_id] = hub
            self.addresses[hub.node_id] = address
        return list(self.hubs)

    async def register(self, names: list[str]) -> None:
        for name in names:
            await self.server.messages.accounts.register(name, "", "", PASSWORD)

    async def device(self, name: str, node: str) -> tuple[Client, Connection]:
        client = Client(self.addresses[node])
        self.clients.append(client)
        await client.login(name, PASSWORD)
        conn = Connection(client)
        self.conns.append(conn)
        await conn.start()
        return client, conn

    def deliveries(self) -> dict[str, int]:
        return {node: hub.deliveries for node, hub in self.hubs.items()}

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()
        for client in self.clients:
            await client.close()


@pytest.fixture
def settings(tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
    # No receipt or presence pushes to group members (they are deliveries too, at moments of
    # their own): the counts here are of messages alone.
    return make_settings(
        tmp_path / "data",
        database_url=store_url,
        message_log=message_log_url,
        presence_push_group_size=0,
    )


@pytest.fixture
async def cluster(server: EmbeddedServer) -> AsyncIterator[Cluster]:
    c = Cluster(server)
    yield c
    await c.close()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


async def test_500_member_group_with_10_online_costs_one_forward_per_socket_server(
    cluster: Cluster, server: EmbeddedServer
) -> None:
    a, b, c, d = await cluster.add_nodes(3)
    names = [f"member{i:03d}" for i in range(500)]
    await cluster.register([*names, "outsider"])
    owner = Client(server.grpc_address)
    cluster.clients.append(owner)
    await owner.login(names[0], PASSWORD)
    group = await owner.create_group("five hundred", names[1:])
    g = group.thread_id
    assert group.member_count == 500
    # 10 members online: 4 on a, 3 on b, 3 on c; on d only someone who is not a member.
    placement = {a: names[0:4], b: names[4:7], c: names[7:10]}
    conns: dict[str, Connection] = {}
    for node, members in placement.items():
        for name in members:
            _, conns[name] = await cluster.device(name, node)
    await cluster.device("outsider", d)
    assert server.channels.subs[g] == {a, b, c}
    assert cluster.hubs[d].subscriptions() == []
    # The creation is replayed to every device on connect.
    for conn in conns.values():
        assert [m.seq for m in await collect(conn, 1)] == [1]

    forwards, before = server.channels.forwards, cluster.deliveries()
    sent = await conns[names[0]].send("hello five hundred", thread_id=g)
    # Publishing is done when the send is acknowledged (embedded: in-process).
    assert server.channels.forwards - forwards == 3
    assert delta(cluster.deliveries(), before) == {a: 3, b: 3, c: 3, d: 0}
    for name in names[1:10]:
        [m] = await collect(conns[name], 1)
        assert (m.thread_id, m.seq, m.text) == (g, sent.seq, "hello five hundred")

    # Ten more messages: still one forward per socket server per message, 9 deliveries each.
    forwards, before = server.channels.forwards, cluster.deliveries()
    for i in range(10):
        await conns[names[5]].send(f"more {i}", thread_id=g)
    assert server.channels.forwards - forwards == 30
    assert delta(cluster.deliveries(), before) == {a: 40, b: 20, c: 30, d: 0}


async def test_socket_server_unsubscribes_when_the_last_device_of_its_members_leaves(
    cluster: Cluster, server: EmbeddedServer
) -> None:
    a, b = await cluster.add_nodes(1)
    await cluster.register(["alice", "bob"])
    alice, ca = await cluster.device("alice", a)
    _, bob1 = await cluster.device("bob", b)
    _, bob2 = await cluster.device("bob", b)
    group = await alice.create_group("g", ["bob"])
    g = group.thread_id
    # Created while both were online: each socket server joined on seeing the event.
    await eventually(lambda: server.channels.subs.get(g) == {a, b})
    hub_b = cluster.hubs[b]
    await bob1.close()
    await eventually(lambda: len(hub_b.by_device) == 1)
    assert server.channels.subs[g] == {a, b} and hub_b.subscriptions() == [g]
    await bob2.close()
    await eventually(lambda: server.channels.subs.get(g) == {a})
    assert hub_b.subscriptions() == [] and hub_b.groups_of == {}

    forwards, before = server.channels.forwards, cluster.deliveries()
    await ca.send("bob is away", thread_id=g)
    assert server.channels.forwards - forwards == 1
    assert delta(cluster.deliveries(), before) == {a: 0, b: 0}

    # Back online: subscribed again on connect, and the missed message comes by sync.
    _, bob3 = await cluster.device("bob", b)
    assert server.channels.subs[g] == {a, b}
    seqs = [m.seq for m in await collect(bob3, 2)]
    assert seqs == [1, 2]


async def test_channel_restart_rebuilds_from_socket_servers_and_loses_nothing(
    cluster: Cluster, server: EmbeddedServer
) -> None:
    a, b, c = await cluster.add_nodes(2)
    await cluster.register(["alice", "bob", "carol"])
    alice, ca = await cluster.device("alice", a)
    _, cb = await cluster.device("bob", b)
    _, cc = await cluster.device("carol", c)
    group = await alice.create_group("g", ["bob", "carol"])
    g = group.thread_id
    for conn in (cb, cc):
        assert [m.seq for m in await collect(conn, 1)] == [1]
    await eventually(lambda: server.channels.subs.get(g) == {a, b, c})
    want = {t: set(nodes) for t, nodes in server.channels.subs.items()}

    server.channels.subs.clear()  # channel_svc restarted: its soft state is gone
    forwards, before = server.channels.forwards, cluster.deliveries()
    lost = await ca.send("while channels were down", thread_id=g)
    assert server.channels.forwards == forwards
    assert delta(cluster.deliveries(), before) == {a: 0, b: 0, c: 0}

    await server.channels.rebuild(list(cluster.hubs))
    assert server.channels.subs == want
    after = await ca.send("after the restart", thread_id=g)
    assert server.channels.forwards - forwards == 3
    # One push each; the session fills the gap before it (m1) from the store.
    assert delta(cluster.deliveries(), before) == {a: 0, b: 1, c: 1}
    for conn in (cb, cc):
        got = await collect(conn, 2)
        assert [(m.seq, m.text) for m in got] == [
            (lost.seq, "while channels were down"),
            (after.seq, "after the restart"),
        ]


async def test_a_senders_own_copies_reach_its_devices_on_every_socket_server_once(
    cluster: Cluster, server: EmbeddedServer
) -> None:
    """The sending device's socket server pushes the sender's other devices there itself.

    message_svc still pushes the sender's copies to every other socket server that holds
    one of the sender's devices (here a second hub; in a cluster, one that owns the sender
    after a ring change), and to no device twice: each hub counts one push per device.
    """
    main, other = await cluster.add_nodes(1)
    await cluster.register(["alice", "bob"])
    _, phone = await cluster.device("alice", main)
    _, laptop = await cluster.device("alice", main)
    _, tablet = await cluster.device("alice", other)
    _, bob = await cluster.device("bob", other)
    before = cluster.deliveries()
    sent = [await phone.send(f"m{i}", recipient="bob") for i in range(5)]
    want = [(s.thread_id, s.seq, f"m{i}") for i, s in enumerate(sent)]
    for conn in (laptop, tablet, bob):
        assert [(m.thread_id, m.seq, m.text) for m in await collect(conn, 5)] == want
    # main: the laptop once per message; other: the tablet and bob once each.
    assert delta(cluster.deliveries(), before) == {main: 5, other: 10}


async def test_a_senders_own_copies_of_group_messages_reach_each_device_once(
    cluster: Cluster, server: EmbeddedServer
) -> None:
    """In a group the same: channel_svc's forward skips the sender, whose socket server
    pushes the sender's other devices there, and message_svc the sender's devices elsewhere."""
    main, other = await cluster.add_nodes(1)
    await cluster.register(["alice", "bob"])
    alice, phone = await cluster.device("alice", main)
    _, laptop = await cluster.device("alice", main)
    _, tablet = await cluster.device("alice", other)
    _, bob = await cluster.device("bob", other)
    g = (await alice.create_group("g", ["bob"])).thread_id
    for conn in (laptop, tablet, bob):
        assert [m.seq for m in await collect(conn, 1)] == [1]
    await eventually(lambda: server.channels.subs.get(g) == {main, other})
    before = cluster.deliveries()
    sent = [await phone.send(f"g{i}", thread_id=g) for i in range(3)]
    want = [(g, s.seq, f"g{i}") for i, s in enumerate(sent)]
    for conn in (laptop, tablet, bob):
        assert [(m.thread_id, m.seq, m.text) for m in await collect(conn, 3)] == want
    assert delta(cluster.deliveries(), before) == {main: 3, other: 6}
