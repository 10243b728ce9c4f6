"""Tests for the hash ring, the Node value and the in-process registry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from natter.hashing import key_hash
from registry import HashRing, LocalRegistry, Node, Registry
from registry.ring import moved_fraction

KEYS = [str(user_id) for user_id in range(1, 20_001)]


def node(i: int, role: str = "socket") -> Node:
    return Node(f"{role}-{i}", role, f"10.0.0.{i}:7070", f"10.0.0.{i}:7071")


def shares(ring: HashRing, keys: list[str]) -> dict[str, float]:
    counts = Counter(owner.node_id for key in keys if (owner := ring.owner(key)) is not None)
    return {node_id: count / len(keys) for node_id, count in counts.items()}


def test_key_hash_is_pinned() -> None:
    # Changing the hash would move every user to another socket server mid-upgrade.
    assert key_hash("alice") == 5614559425216174729
    assert key_hash("thread:42") == 14457182554436653478
    assert key_hash("") == 16476032584258269876


def test_owner_is_deterministic_across_processes_and_member_order() -> None:
    nodes = [node(i) for i in range(1, 6)]
    ring = HashRing(nodes)
    assert [n.node_id for n in HashRing(reversed(nodes)).nodes] == [n.node_id for n in nodes]
    sample = KEYS[:50]
    here = [owner.node_id for key in sample if (owner := ring.owner(key)) is not None]
    assert HashRing(list(reversed(nodes))).owner("123") == ring.owner("123")

    script = (
        "from registry import HashRing, Node\n"
        "ring = HashRing([Node(f'socket-{i}', 'socket', 'a', 'b') for i in range(5, 0, -1)])\n"
        f"print(','.join(ring.owner(k).node_id for k in {sample!r}))\n"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        assert out.split(",") == here


def test_keys_spread_evenly_over_nodes() -> None:
    ring = HashRing([node(i) for i in range(1, 4)])
    got = shares(ring, KEYS)
    assert set(got) == {"socket-1", "socket-2", "socket-3"}
    for share in got.values():
        assert abs(share - 1 / 3) < 0.08, got


def test_adding_a_fourth_node_moves_about_a_quarter_of_keys_all_to_it() -> None:
    before = HashRing([node(i) for i in range(1, 4)])
    after = HashRing([*before.nodes, node(4)])
    fraction = moved_fraction(before, after, KEYS)
    assert 0.17 < fraction < 0.33
    for key in KEYS:
        old, new = before.owner(key), after.owner(key)
        assert old is not None and new is not None
        if old != new:
            assert new.node_id == "socket-4"


def test_removing_a_node_moves_only_its_keys() -> None:
    before = HashRing([node(i) for i in range(1, 5)])
    after = HashRing([n for n in before.nodes if n.node_id != "socket-2"])
    fraction = moved_fraction(before, after, KEYS)
    assert fraction == pytest.approx(shares(before, KEYS)["socket-2"])
    for key in KEYS:
        old = before.owner(key)
        assert old is not None
        if old.node_id != "socket-2":
            assert after.owner(key) == old


def test_owners_are_distinct_successors_starting_with_the_owner() -> None:
    ring = HashRing([node(i) for i in range(1, 5)])
    for key in KEYS[:200]:
        replicas = ring.owners(key, 3)
        assert len(replicas) == 3
        assert len({n.node_id for n in replicas}) == 3
        assert replicas[0] == ring.owner(key)
    assert len(ring.owners("7", 10)) == 4
    assert ring.owners("7", 0) == []


def test_empty_ring_and_bad_input() -> None:
    empty = HashRing([])
    assert empty.owner("1") is None
    assert empty.owners("1", 3) == []
    assert empty.nodes == ()
    assert moved_fraction(empty, HashRing([node(1)]), ["1", "2"]) == 1.0
    with pytest.raises(ValueError, match="duplicate"):
        HashRing([node(1), node(1)])
    with pytest.raises(ValueError):
        HashRing([node(1)], vnodes=0)
    single = HashRing([node(1)], vnodes=1)
    assert {single.owner(k) for k in KEYS[:100]} == {node(1)}
    assert single.get("socket-1") == node(1)
    assert single.get("socket-9") is None


def test_node_json_round_trip_and_validation() -> None:
    n = Node("s1", "socket", "public.example:443", "10.1.2.3:7071")
    assert Node.from_json(n.to_json()) == n
    assert Node.from_json(
        b'{"node_id":"s1","role":"socket","public_addr":"p","internal_addr":"i","extra":1}'
    ) == Node("s1", "socket", "p", "i")
    for bad in (b"not json", b"[1]", b'{"node_id":"s1"}', b"\xff"):
        with pytest.raises(ValueError):
            Node.from_json(bad)
    with pytest.raises(ValueError, match="role"):
        Node("s1", "websocket", "p", "i")
    with pytest.raises(ValueError, match="node_id"):
        Node("a/b", "socket", "p", "i")


async def test_local_registry_is_a_ring_of_one() -> None:
    reg: Registry = LocalRegistry()
    changed: list[str] = []
    reg.subscribe(changed.append)
    await reg.start()
    assert reg.nodes("socket") == []
    assert reg.ring("socket").owner("1") is None

    me = node(1)
    await reg.register(me)
    assert changed == ["socket"]
    assert reg.nodes("socket") == [me]
    assert all(reg.ring("socket").owner(k) == me for k in KEYS[:100])
    assert reg.nodes("message") == []

    await reg.register(node(1, "message"))
    assert changed == ["socket", "message"]
    await reg.deregister()
    assert reg.nodes("message") == []
    assert changed == ["socket", "message", "message"]

    await reg.close()
    assert reg.nodes("socket") == []
    assert changed[-1] == "socket"


async def test_local_registry_subscriber_errors_do_not_break_others() -> None:
    reg = LocalRegistry()
    seen: list[str] = []

    def broken(role: str) -> None:
        raise RuntimeError("boom")

    reg.subscribe(broken)
    reg.subscribe(seen.append)
    await reg.start()
    await reg.register(node(1))
    assert seen == ["socket"]
    assert reg.nodes("socket") == [node(1)]
    await reg.close()
    with pytest.raises(RuntimeError):
        await reg.register(node(2))
