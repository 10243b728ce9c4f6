"""Push notifications across processes: queued in the store, sent by exactly one process,
surviving SIGKILL — of the embedded server (SQLite) and of the message node mid-burst in a
cluster (PostgreSQL, two message nodes draining one queue).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.pushservice import PushService, Subscription
from message_svc.sqlstore import SqlStore
from natter.sdk import Client, Connection
from push_svc.worker import CHUNK
from tests.cluster import PASSWORD, Cluster
from tests.helpers import eventually
from tests.procs import natter_server


def push_env(ps: PushService, grace: float) -> dict[str, str]:
    return {
        "NATTER_PUSH_GRACE_SECONDS": str(grace),
        "NATTER_PUSH_POLL_SECONDS": "0.05",
        "NATTER_PUSH_LEASE_SECONDS": "2",
        "NATTER_PUSH_ALLOW_HTTP": "1",
        "NATTER_WEB_PUSH_HOSTS": "127.0.0.1",
        "NATTER_VAPID_SUBJECT": "mailto:ops@natter.test",
    }


async def person(address: str, name: str) -> Client:
    c = Client(address)
    await c.register(name, PASSWORD)
    await c.login(name, PASSWORD, "phone")
    return c


async def subscribed(ps: PushService, address: str, name: str) -> tuple[Client, Subscription]:
    c = await person(address, name)
    sub = ps.subscribe((await c.push_config()).vapid_public_key)
    await c.set_web_push(sub.endpoint, sub.p256dh, sub.auth)
    return c, sub


async def test_a_push_queued_before_a_kill_9_is_sent_after_the_restart(tmp_path: Path) -> None:
    async with PushService() as ps, natter_server(tmp_path / "data", push_env(ps, 3.0)) as srv:
        alice = await person(srv.grpc_address, "alice")
        bob, sub = await subscribed(ps, srv.grpc_address, "bob")
        conn = Connection(alice)
        await conn.start()
        res = await conn.send("sent, then the server died", recipient="bob")
        await conn.close()
        srv.kill()  # within the grace period: the push is only a row in the store
        assert ps.of(sub) == []
        await srv.start()
        await eventually(lambda: ps.of(sub), timeout=20, message="push after the restart")
        # A later push of another chat: by then the first job is long gone from the queue.
        carol = await person(srv.grpc_address, "carol")
        conn = Connection(carol)
        await conn.start()
        await conn.send("a later one", recipient="bob")
        await conn.close()
        await eventually(lambda: len(ps.of(sub)) == 2, timeout=20)
        first = [r for r in ps.of(sub) if r.payload["thread_id"] == res.thread_id]
        assert len(first) == 1, "sent once"
        assert first[0].payload["text"] == "sent, then the server died"
        assert ps.problems == []
        for c in (alice, bob, carol):
            await c.close()


# -- a cluster: two message nodes drain one queue ---------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ps_module() -> AsyncIterator[PushService]:
    async with PushService() as service:
        yield service


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def push_cluster(
    tmp_path_factory: pytest.TempPathFactory, ps_module: PushService
) -> AsyncIterator[Cluster]:
    env = push_env(ps_module, 0.5)
    env["NATTER_PUSH_CONCURRENCY"] = "8"
    async with Cluster(
        tmp_path_factory.mktemp("push-cluster"), sockets=1, messages=2, env=env
    ) as c:
        yield c


async def group_of(
    ps: PushService, cluster: Cluster, size: int, tag: str
) -> tuple[Client, int, list[Subscription]]:
    alice = await person(cluster.front_door, f"{tag}-alice")
    members = await asyncio.gather(
        *(subscribed(ps, cluster.front_door, f"{tag}-m{i}") for i in range(size))
    )
    names = [c.user.username for c, _ in members if c.user is not None]
    thread = await alice.create_group(tag, names)
    for c, _ in members:
        await c.close()
    subs = [s for _, s in members]
    await eventually(lambda: all(ps.of(s) for s in subs), timeout=60, message="told of the group")
    await eventually(lambda: _queue_empty(cluster), timeout=30)
    return alice, thread.thread_id, subs


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.timeout(240)
async def test_each_push_is_sent_by_one_message_node_once(
    push_cluster: Cluster, ps_module: PushService
) -> None:
    ps = ps_module
    alice, thread_id, subs = await group_of(ps, push_cluster, 20, "once")
    conn = Connection(alice)
    await conn.start()
    for i in range(6):  # six bursts, each after the last one's pushes arrived
        await conn.send(f"burst {i}", thread_id=thread_id)
        await eventually(_all_got(ps, subs, f"burst {i}"), timeout=30, message=f"burst {i}")
    await eventually(lambda: _queue_empty(push_cluster), timeout=30)
    await conn.close()
    for s in subs:
        texts = Counter(str(r.payload.get("text")) for r in ps.of(s))
        added = [r for r in ps.of(s) if r.payload["system"]]
        assert len(added) == 1, "told once of being added"
        assert all(texts[f"burst {i}"] == 1 for i in range(6)), texts
    # Both nodes signed with the one key the browsers subscribed with.
    assert ps.problems == []
    await alice.close()


async def _queue_empty(cluster: Cluster) -> bool:
    store = SqlStore(cluster.db_url)
    await store.open()
    try:
        return not await store.push_jobs()
    finally:
        await store.close()


async def _owner(cluster: Cluster) -> str:
    store = SqlStore(cluster.db_url)
    await store.open()
    try:
        owners = {j.lease_owner for j in await store.push_jobs() if j.lease_owner}
    finally:
        await store.close()
    return owners.pop().split(":")[0] if len(owners) == 1 else ""


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.timeout(240)
async def test_a_burst_survives_sigkill_of_the_node_sending_it(
    push_cluster: Cluster, ps_module: PushService
) -> None:
    ps = ps_module
    size = 3 * CHUNK
    alice, thread_id, subs = await group_of(ps, push_cluster, size, "kill")
    ps.delay = 0.1  # a slow push service: the burst takes a few seconds
    conn = Connection(alice)
    await conn.start()
    before = ps.requests
    await conn.send("who survives?", thread_id=thread_id)
    await conn.close()
    owner = ""

    async def sending() -> bool:
        nonlocal owner
        owner = owner or await _owner(push_cluster)
        return bool(owner) and ps.requests - before > CHUNK + 8

    await eventually(sending, timeout=30, message="a node is sending the burst")
    victim = push_cluster.proc(owner)
    victim.kill()
    try:
        await eventually(
            _all_got(ps, subs, "who survives?"), timeout=60, message="all notified after the kill"
        )
        ps.delay = 0.0
        await eventually(lambda: _queue_empty(push_cluster), timeout=30)
        twice = [s for s in subs if _got(ps, s, "who survives?") > 1]
        # Only what was in flight when the node died is sent again: the recorded progress
        # spares the rest, and the repeats share the thread's Topic, so each collapses into
        # the one notification (the push service keeps one pending per Topic).
        assert 0 < len(twice) <= CHUNK + 8, len(twice)
        for s in twice:
            topics = {r.topic for r in ps.of(s) if r.payload.get("text") == "who survives?"}
            assert len(topics) == 1
            assert len([r for r in ps.pending[s.sub_id].values() if r.topic in topics]) == 1
        assert ps.problems == []
    finally:
        ps.delay = 0.0
        await push_cluster.restart(victim, crash=False)
    await alice.close()


def _got(ps: PushService, sub: Subscription, text: str) -> int:
    return sum(r.payload.get("text") == text for r in ps.of(sub))


def _all_got(ps: PushService, subs: list[Subscription], text: str) -> Callable[[], bool]:
    return lambda: all(_got(ps, s, text) for s in subs)
