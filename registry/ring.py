"""Consistent hash ring with virtual nodes: maps a user or thread id to its owning node."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from natter.hashing import key_hash
from registry.node import Node

DEFAULT_VNODES = 128


class HashRing:
    """An immutable ring; build a new one when membership changes.

    Each node gets `vnodes` points at `key_hash(f"{node_id}#{i}")`. A key belongs to the
    node of the first point at or after the key's hash, wrapping around, so adding or
    removing one of N nodes moves only about 1/N of the keys.
    """

    __slots__ = ("_by_id", "_hashes", "_nodes", "_owners", "_vnodes")

    def __init__(self, nodes: Iterable[Node] = (), vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        by_id: dict[str, Node] = {}
        for node in nodes:
            if node.node_id in by_id:
                raise ValueError(f"duplicate node_id {node.node_id!r}")
            by_id[node.node_id] = node
        self._by_id = by_id
        self._vnodes = vnodes
        self._nodes = tuple(sorted(by_id.values(), key=lambda n: n.node_id))
        # Ties between equal hashes (vanishingly rare) break by node_id, so every
        # process builds the same ring from the same members in any order.
        points = sorted(
            (key_hash(f"{node.node_id}#{i}"), node.node_id)
            for node in self._nodes
            for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [by_id[node_id] for _, node_id in points]

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The members, sorted by node_id."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def get(self, node_id: str) -> Node | None:
        """Return the member with this id, if any."""
        return self._by_id.get(node_id)

    def owner(self, key: str) -> Node | None:
        """Return the node that owns `key`, or None if the ring is empty."""
        if not self._hashes:
            return None
        idx = bisect_left(self._hashes, key_hash(key))
        return self._owners[idx % len(self._owners)]

    def owners(self, key: str, n: int) -> list[Node]:
        """Up to `n` distinct nodes for `key`: the owner first, then its successors (replicas)."""
        if n < 1 or not self._hashes:
            return []
        want = min(n, len(self._nodes))
        found: list[Node] = []
        seen: set[str] = set()
        start = bisect_left(self._hashes, key_hash(key))
        total = len(self._owners)
        for step in range(total):
            node = self._owners[(start + step) % total]
            if node.node_id not in seen:
                seen.add(node.node_id)
                found.append(node)
                if len(found) == want:
                    break
        return found

    def __repr__(self) -> str:
        ids = ", ".join(node.node_id for node in self._nodes)
        return f"HashRing([{ids}], vnodes={self._vnodes})"


def moved_fraction(before: HashRing, after: HashRing, keys: Sequence[str]) -> float:
    """Return the fraction of `keys` whose owner differs between two rings (0.0 for no keys)."""
    if not keys:
        return 0.0
    moved = 0
    for key in keys:
        a, b = before.owner(key), after.owner(key)
        if (a.node_id if a else None) != (b.node_id if b else None):
            moved += 1
    return moved / len(keys)
