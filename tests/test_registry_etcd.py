"""EtcdRegistry against a real etcd: discovery, leases, crashes and etcd restarts."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end

from devtools.etcd import EtcdServer
from registry import EtcdRegistry, Node, Registry
from tests.helpers import eventually

TTL = 2
PREFIX = "/natter-test"
ROOT = f"{PREFIX}/nodes/"
KEYS = [str(user_id) for user_id in range(200)]

MakeRegistry = Callable[..., Awaitable[EtcdRegistry]]


def node(name: str, role: str = "socket") -> Node:
    return Node(name, role, f"{name}.public:443", f"{name}.internal:7071")


def ids(reg: Registry, role: str = "socket") -> list[str]:
    return [n.node_id for n in reg.nodes(role)]


def sees(reg: Registry, *expected: str, role: str = "socket") -> Callable[[], bool]:
    return lambda: ids(reg, role) == list(expected)


def owners(reg: Registry, role: str = "socket") -> list[str | None]:
    ring = reg.ring(role)
    return [o.node_id if (o := ring.owner(key)) else None for key in KEYS]


@pytest.fixture
async def etcd() -> AsyncIterator[EtcdServer]:
    async with EtcdServer() as server:
        yield server


@pytest.fixture
async def make_registry(etcd: EtcdServer) -> AsyncIterator[MakeRegistry]:
    made: list[EtcdRegistry] = []

    async def make(registered: Node | None = None) -> EtcdRegistry:
        reg = EtcdRegistry([etcd.endpoint], prefix=PREFIX, ttl=TTL)
        made.append(reg)
        await reg.start()
        if registered is not None:
            await reg.register(registered)
        return reg

    yield make
    for reg in made:
        await reg.close()


async def stored(etcd: EtcdServer) -> dict[str, int]:
    """Key -> lease id of every node key in etcd, read directly."""
    async with Etcd3Client([etcd.endpoint]) as client:
        assert client.kv is not None
        resp = await client.kv.get(ROOT, prefix_range_end(ROOT), timeout=2)
        return {kv.key.decode(): int(kv.lease) for kv in resp.kvs}


async def test_two_registries_see_each_other_and_agree(make_registry: MakeRegistry) -> None:
    a: Registry = await make_registry(node("s1"))
    changed: list[str] = []
    a.subscribe(changed.append)
    b = await make_registry(node("s2"))
    observer = await make_registry()
    await make_registry(node("m1", "message"))

    for reg in (a, b, observer):
        await eventually(sees(reg, "s1", "s2"), 5, message="both sockets")
        await eventually(sees(reg, "m1", role="message"), 5)
    assert "socket" in changed and "message" in changed
    assert owners(a) == owners(b) == owners(observer)
    assert set(owners(a)) == {"s1", "s2"}
    assert a.nodes("socket")[1] == node("s2")
    assert a.nodes("presence") == [] and a.ring("presence").owner("1") is None


async def test_clean_deregister_is_seen_at_once(
    etcd: EtcdServer, make_registry: MakeRegistry
) -> None:
    a = await make_registry(node("s1"))
    b = await make_registry(node("s2"))
    await eventually(lambda: ids(a) == ids(b) == ["s1", "s2"], 5)

    await b.deregister()
    assert ids(b) == ["s1"]  # applied locally before deregister returns
    took = await eventually(lambda: ids(a) == ["s1"], 5)
    assert took < 0.5 < TTL
    assert set(owners(a)) == {"s1"}

    await b.register(node("s2"))
    await eventually(lambda: ids(a) == ["s1", "s2"], 5)
    await b.close()
    took = await eventually(lambda: ids(a) == ["s1"], 5)
    assert took < 0.5
    assert list(await stored(etcd)) == [f"{ROOT}socket/s1"]


async def test_dead_process_disappears_after_ttl(
    etcd: EtcdServer, make_registry: MakeRegistry
) -> None:
    a = await make_registry(node("s1"))
    b = await make_registry(node("s2"))
    await eventually(lambda: ids(a) == ["s1", "s2"], 5)

    await b.close(revoke=False)  # keepalive stops, the lease is left to expire
    start = time.monotonic()
    assert ids(a) == ["s1", "s2"]
    await eventually(lambda: ids(a) == ["s1"], TTL + 4, message="dead node expired")
    took = time.monotonic() - start
    assert 0.5 < took < TTL + 4
    assert list(await stored(etcd)) == [f"{ROOT}socket/s1"]


async def test_etcd_kill9_and_restart_converges(
    etcd: EtcdServer, make_registry: MakeRegistry
) -> None:
    a = await make_registry(node("s1"))
    b = await make_registry(node("s2"))
    await eventually(lambda: ids(a) == ids(b) == ["s1", "s2"], 5)
    before = await stored(etcd)

    await etcd.kill()
    await etcd.restart()

    # Both keys are back under live leases and both views agree again.
    async def both_stored() -> bool:
        return set(await stored(etcd)) == set(before)

    await eventually(both_stored, 10)
    await eventually(lambda: ids(a) == ids(b) == ["s1", "s2"], 10)
    assert owners(a) == owners(b)

    # The watches are live again: a newcomer is seen by both, a leaver is gone from both.
    c = await make_registry(node("s3"))
    await eventually(lambda: ids(a) == ids(b) == ids(c) == ["s1", "s2", "s3"], 10)
    await c.deregister()
    await eventually(lambda: ids(a) == ids(b) == ["s1", "s2"], 5)

    # And the leases are still being kept alive: nothing expires after a few TTLs.
    deadline = time.monotonic() + TTL * 1.5
    await eventually(lambda: time.monotonic() > deadline, TTL * 2)
    assert set(await stored(etcd)) == set(before)
    assert ids(a) == ids(b) == ["s1", "s2"]


async def test_etcd_restarted_empty_gets_everyone_registered_again(
    etcd: EtcdServer, make_registry: MakeRegistry
) -> None:
    a = await make_registry(node("s1"))
    b = await make_registry(node("s2"))
    observer = await make_registry()
    await eventually(lambda: ids(observer) == ["s1", "s2"], 5)
    old_leases = set((await stored(etcd)).values())

    await etcd.restart(wipe=True)  # kill -9, then an etcd with no data at all

    async def both_back() -> bool:
        now = await stored(etcd)
        return len(now) == 2 and not (set(now.values()) & old_leases)

    await eventually(both_back, 10, message="re-registered under new leases")
    for reg in (a, b, observer):
        await eventually(sees(reg, "s1", "s2"), 10)

    c = await make_registry(node("s3"))
    for reg in (a, b, observer, c):
        await eventually(sees(reg, "s1", "s2", "s3"), 10)


async def test_own_key_deleted_or_lease_revoked_is_restored(
    etcd: EtcdServer, make_registry: MakeRegistry
) -> None:
    a = await make_registry(node("s1"))
    key = f"{ROOT}socket/s1"
    async with Etcd3Client([etcd.endpoint]) as client:
        assert client.kv is not None and client.lease is not None
        await client.kv.delete(key)

        async def key_back() -> bool:
            return key in await stored(etcd)

        await eventually(key_back, 5)
        lease = (await stored(etcd))[key]
        await client.lease.revoke(lease)

        async def new_lease() -> bool:
            now = await stored(etcd)
            return key in now and now[key] != lease

        await eventually(new_lease, 5)
    await eventually(lambda: ids(a) == ["s1"], 5)


async def test_bad_values_are_ignored_and_start_needs_etcd(
    etcd: EtcdServer, make_registry: MakeRegistry
) -> None:
    async with Etcd3Client([etcd.endpoint]) as client:
        assert client.kv is not None
        await client.kv.put(f"{ROOT}socket/junk", b"not json")
        await client.kv.put(f"{ROOT}socket/liar", node("other").to_json())
    a = await make_registry(node("s1"))
    await eventually(lambda: ids(a) == ["s1"], 5)

    await etcd.kill()
    down = EtcdRegistry([etcd.endpoint], prefix=PREFIX, ttl=TTL, call_timeout=0.5)
    with pytest.raises((EtcdError, TimeoutError)):
        await down.start()
    await down.close()
    with pytest.raises(RuntimeError):
        await down.register(node("s9"))


async def test_a_node_whose_lease_lapses_leaves_its_own_view_until_etcd_takes_it_back(
    etcd: EtcdServer, make_registry: MakeRegistry
) -> None:
    """Unreachable etcd: after a TTL without keepalives the others no longer see this node,
    so it must not see itself either (it would go on serving users others now own)."""
    a = await make_registry(node("a"))
    b = await make_registry(node("b"))
    await eventually(sees(a, "a", "b"), 10)
    changes: list[str] = []
    a.subscribe(changes.append)
    assert etcd.proc is not None
    etcd.proc.send_signal(signal.SIGSTOP)  # etcd answers nothing: no keepalive gets through
    try:
        took = await eventually(lambda: "a" not in ids(a), 4 * TTL)
        assert took >= TTL * 0.9, f"left after {took:.2f} s, before its lease could expire"
        assert "socket" in changes
        assert ids(a) == ["b"]  # what it last knew of the others is kept
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    await eventually(sees(a, "a", "b"), 5 * TTL)
    await eventually(sees(b, "a", "b"), 5 * TTL)
