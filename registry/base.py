"""The Registry port: membership of the cluster by role, and a hash ring per role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from registry.node import Node
from registry.ring import HashRing


class Registry(Protocol):
    """Where nodes announce themselves and learn about each other.

    Lifecycle: `start()` once, `register()` this process's node (optional: a process may
    only observe), `deregister()` on a clean shutdown, `close()` at the end. Reads
    (`nodes`, `ring`) are in-memory and never block. Subscribers are called with a role
    after the membership of that role changed; they run on the event loop and must not
    block.
    """

    async def start(self) -> None: ...

    async def register(self, node: Node) -> None: ...

    async def deregister(self) -> None: ...

    def nodes(self, role: str) -> list[Node]: ...

    def ring(self, role: str) -> HashRing: ...

    def subscribe(self, callback: Callable[[str], None]) -> None: ...

    async def close(self) -> None: ...
