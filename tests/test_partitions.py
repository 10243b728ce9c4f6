"""Network faults between separate hosts, with the whole history checked (Jepsen-style).

One cluster (tests/hosts.py: etcd, PostgreSQL, two message nodes, a channel node, a presence
node and three socket servers, each on its own host; the clients on another) serves the
module; each test starts a fresh workload of users on one or two devices in 1:1 pairs and a
group (devtools/workload.py, run by the agent in the clients' host), breaks the network while
it sends, heals it, lets every device catch up, reads the store back and hands the recorded
history to the checker (devtools/history.py): every acknowledged message on every device of
every member once and in per-thread order, no send stored twice.

Each test sends `--fault-messages` messages (1,000 by default; the long mode is
`--fault-messages 5000`, docs/reliability.md). The fault is injected after a third of them
were acknowledged and healed once what it is meant to cause was seen (a lease expired,
clients moved, sends were refused for now) and more were sent through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.helpers import eventually
from tests.hosts import (
    HostCluster,
    Run,
    busiest_socket,
    lasting,
    on_node,
    require_hosts,
    run,
    until,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

TTL = 2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HostCluster]:
    require_hosts()
    async with HostCluster(tmp_path_factory.mktemp("hosts"), sockets=3, ttl=TTL) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def healthy(cluster: HostCluster) -> AsyncIterator[HostCluster]:
    """The cluster whole again: no rule, every link up, every node running and registered."""
    cluster.heal()
    for n in cluster.nodes:
        if not n.running:
            n.spawn()
    await cluster.wait_ready()
    yield cluster
    cluster.heal()


@pytest.fixture
def messages(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("fault_messages"))


# -- the faults ----------------------------------------------------------------------------


async def test_no_fault_baseline(healthy: HostCluster, messages: int) -> None:
    async def nothing(r: Run) -> None:
        await r.until_acked(messages // 2)

    await run(healthy, messages, nothing)


async def test_socket_server_cut_from_etcd_loses_its_lease_and_its_clients_move(
    healthy: HostCluster, messages: int
) -> None:
    c = healthy

    async def fault(r: Run) -> None:
        victim = await busiest_socket(r)
        moved = len((await on_node(r))[victim])
        await c.note(f"{victim} cut from etcd ({moved} devices on it)")
        c.partition([victim], ["etcd"])

        async def dropped() -> bool:
            return victim not in (await c.members())["socket"]

        await eventually(dropped, 6 * TTL, 0.2, f"{victim}'s lease expired")

        async def moved_away() -> bool:
            return victim not in await on_node(r)

        # Its devices must move to the servers that own their users now, while it still
        # runs and still reaches them, message_svc and the database.
        await eventually(moved_away, 10 * TTL, 0.2, f"devices left {victim}")
        await c.note(f"every device left {victim}")
        await r.until_acked(await r.acked() + messages // 6)
        c.heal()
        await c.note("healed")

        async def back() -> bool:
            return victim in (await c.members())["socket"]

        await eventually(back, 10 * TTL, 0.2, f"{victim} registered again")

    await run(c, messages, fault)


async def test_message_node_cut_from_the_database_mid_burst(
    healthy: HostCluster, messages: int
) -> None:
    c = healthy

    async def fault(r: Run) -> None:
        await c.note("message-1 cut from the database")
        c.partition(["message-1"], ["db"])
        cut = await r.stats()
        # Sends that went to it, also those already waiting on the database, are answered
        # UNAVAILABLE once its store sees the database gone, and the socket servers move them
        # to the other replica, which has it: no conversation waits for the heal.
        await lasting(
            r,
            lambda s: all(s["acked_by"][d] > n for d, n in cut["acked_by"].items()),
            "every device had a send acknowledged while message-1 was cut off",
            timeout=30,
        )
        await r.until_acked((await r.acked()) + messages // 6, timeout=60)
        c.heal()
        await c.note("healed")

    await run(c, messages, fault, rate=120)


async def test_socket_server_cut_from_message_svc(healthy: HostCluster, messages: int) -> None:
    c = healthy

    async def fault(r: Run) -> None:
        victim = await busiest_socket(r)
        before = await r.stats()
        await c.note(f"{victim} cut from message-1 and message-2")
        c.partition([victim], ["message-1", "message-2"])
        # Its devices' sends cannot reach message_svc: refused for now, held in outboxes.
        await until(r, lambda s: s["retries"] > before["retries"], "a send refused for now")
        await r.until_acked((await r.acked()) + messages // 6, timeout=60)
        c.heal()
        await c.note("healed")

    await run(c, messages, fault)


async def test_a_flapping_link(healthy: HostCluster, messages: int) -> None:
    """A socket server's cable out for 2 s and in for 2 s, five times (its lease may lapse)."""
    c = healthy

    async def fault(r: Run) -> None:
        victim = c.net[await busiest_socket(r)]
        await c.note(f"{victim.name}'s link flapping")
        for _ in range(5):
            c.net.link(victim, up=False)
            await asyncio.sleep(2.0)  # the fault's own rhythm, not a wait for anything
            c.net.link(victim, up=True)
            await asyncio.sleep(2.0)
        await c.note("link steady")

    await run(c, messages, fault)


async def test_etcd_cut_from_everything_then_healed(healthy: HostCluster, messages: int) -> None:
    c = healthy

    async def fault(r: Run) -> None:
        before = await r.stats()
        await c.note("etcd cut from every host")
        c.net.isolate(c.etcd_host)
        # Every lease lapses; socket servers hand their devices back once, and the front
        # door, whose ring is as stale as theirs, sends them back: service goes on.
        await until(
            r,
            lambda s: s["connects"] >= before["connects"] + len(s["nodes"]),
            "devices reconnected after the leases lapsed",
            timeout=10 * TTL,
        )
        await r.until_acked((await r.acked()) + messages // 6, timeout=60)
        c.heal()
        await c.note("healed")
        await c.wait_ready()

    await run(c, messages, fault)


async def test_socket_servers_split_into_two_groups_then_healed(
    healthy: HostCluster, messages: int
) -> None:
    """socket-2 and socket-3 on one side with nobody; socket-1 with etcd, the database and
    every other node on the other. Clients reach both sides."""
    c = healthy
    side_b = ["socket-2", "socket-3"]
    side_a = [h for h in c.net.hosts if h not in (*side_b, "clients", "proxy")]

    async def fault(r: Run) -> None:
        await c.note("split: socket-2, socket-3 | everything else")
        c.partition(side_b, side_a)

        async def one_left() -> bool:
            return (await c.members())["socket"] == ["socket-1"]

        await eventually(one_left, 6 * TTL, 0.2, "socket-2 and socket-3 expired")

        async def all_on_socket_1() -> bool:
            return set(await on_node(r)) == {"socket-1"}

        await eventually(all_on_socket_1, 10 * TTL, 0.2, "every device moved to socket-1")
        await c.note("every device on socket-1")
        await r.until_acked((await r.acked()) + messages // 6, timeout=60)
        c.heal()
        await c.note("healed")
        await c.wait_ready()

    await run(c, messages, fault)
