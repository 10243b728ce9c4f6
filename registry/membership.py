"""In-memory membership by role: rings rebuilt on change, subscribers told which role changed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from registry.node import Node
from registry.ring import DEFAULT_VNODES, HashRing

logger = logging.getLogger(__name__)


class Membership:
    """The current members of every role, with one cached ring per role.

    Shared by the registry implementations; callers mutate it through `replace_role`/
    `put`/`remove` and it notifies subscribers once per role whose members changed.
    """

    def __init__(self, vnodes: int = DEFAULT_VNODES) -> None:
        self._vnodes = vnodes
        self._by_role: dict[str, dict[str, Node]] = {}
        self._rings: dict[str, HashRing] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self._empty = HashRing((), vnodes)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def nodes(self, role: str) -> list[Node]:
        return list(self.ring(role).nodes)

    def ring(self, role: str) -> HashRing:
        ring = self._rings.get(role)
        if ring is None:
            return self._empty
        return ring

    def replace_all(self, nodes: Iterable[Node]) -> None:
        """Set the whole membership at once (after a fresh listing)."""
        new: dict[str, dict[str, Node]] = {}
        for node in nodes:
            new.setdefault(node.role, {})[node.node_id] = node
        changed = [
            role
            for role in sorted(set(new) | set(self._by_role))
            if new.get(role, {}) != self._by_role.get(role, {})
        ]
        self._by_role = new
        for role in changed:
            self._rebuild(role)
        self._notify(changed)

    def put(self, node: Node) -> None:
        """Add or update one node."""
        members = self._by_role.setdefault(node.role, {})
        if members.get(node.node_id) == node:
            return
        members[node.node_id] = node
        self._rebuild(node.role)
        self._notify([node.role])

    def remove(self, role: str, node_id: str) -> None:
        """Remove one node; a no-op if it is not a member."""
        members = self._by_role.get(role)
        if not members or node_id not in members:
            return
        del members[node_id]
        self._rebuild(role)
        self._notify([role])

    def _rebuild(self, role: str) -> None:
        members = self._by_role.get(role)
        if members:
            self._rings[role] = HashRing(members.values(), self._vnodes)
        else:
            self._by_role.pop(role, None)
            self._rings.pop(role, None)

    def _notify(self, roles: list[str]) -> None:
        for role in roles:
            for callback in list(self._callbacks):
                try:
                    callback(role)
                except Exception:
                    logger.exception("registry subscriber %r failed for role %s", callback, role)
