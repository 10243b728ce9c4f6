"""In-process registry for the embedded single-process server: a ring of one."""

from __future__ import annotations

from collections.abc import Callable

from registry.membership import Membership
from registry.node import Node
from registry.ring import DEFAULT_VNODES, HashRing


class LocalRegistry:
    """Membership that lives in this process only.

    In the embedded server every service registers its node here; the rings then hold
    exactly those nodes. Several nodes may register through one instance (one per
    role, or more in tests); `deregister()` removes the most recently registered one
    still present.
    """

    def __init__(self, vnodes: int = DEFAULT_VNODES) -> None:
        self._members = Membership(vnodes)
        self._registered: list[Node] = []
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("registry is closed")

    async def register(self, node: Node) -> None:
        if self._closed:
            raise RuntimeError("registry is closed")
        for old in self._registered:
            if old.node_id == node.node_id and old.role != node.role:
                self._members.remove(old.role, old.node_id)
        self._registered = [n for n in self._registered if n.node_id != node.node_id]
        self._registered.append(node)
        self._members.put(node)

    async def deregister(self) -> None:
        if self._registered:
            node = self._registered.pop()
            self._members.remove(node.role, node.node_id)

    def nodes(self, role: str) -> list[Node]:
        return self._members.nodes(role)

    def ring(self, role: str) -> HashRing:
        return self._members.ring(role)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._members.subscribe(callback)

    async def close(self) -> None:
        while self._registered:
            await self.deregister()
        self._closed = True
