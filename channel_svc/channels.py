"""Group fan-out: which socket servers have members of which group, and forwarding once to each."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from natter.domain import Delivery
from natter.metrics import NO_METRICS, Metrics

logger = logging.getLogger(__name__)


class SocketApi(Protocol):
    """One socket server as channel_svc sees it."""

    async def deliver(self, deliveries: Sequence[Delivery]) -> None: ...
    async def list_subscriptions(self) -> list[int]: ...


class Channels:
    """Soft state: rebuilt from the socket servers after a restart."""

    def __init__(
        self, socket: Callable[[str], SocketApi | None], metrics: Metrics = NO_METRICS
    ) -> None:
        self._socket = socket
        self.metrics = metrics
        self.subs: dict[int, set[str]] = defaultdict(set)
        self.forwards = 0

    async def subscribe(self, node_id: str, thread_ids: Sequence[int]) -> None:
        for t in thread_ids:
            self.subs[t].add(node_id)

    async def unsubscribe(self, node_id: str, thread_ids: Sequence[int]) -> None:
        for t in thread_ids:
            nodes = self.subs.get(t)
            if nodes is not None:
                nodes.discard(node_id)
                if not nodes:
                    del self.subs[t]

    def drop_node(self, node_id: str) -> None:
        for t in list(self.subs):
            self.subs[t].discard(node_id)
            if not self.subs[t]:
                del self.subs[t]

    async def rebuild(self, node_ids: Sequence[str]) -> None:
        """Ask every socket server what it subscribes; replaces what this node knew."""
        fresh: dict[int, set[str]] = defaultdict(set)
        for node_id in node_ids:
            api = self._socket(node_id)
            if api is None:
                continue
            try:
                for t in await api.list_subscriptions():
                    fresh[t].add(node_id)
            except Exception:
                logger.warning("could not list subscriptions of %s", node_id, exc_info=True)
        self.subs = fresh

    async def publish(self, deliveries: Sequence[Delivery]) -> int:
        """Forward each delivery once to every socket server subscribed to its thread."""
        per_node: dict[str, list[Delivery]] = defaultdict(list)
        for dl in deliveries:
            nodes = self.subs.get(dl.thread_id, ())
            self.metrics.group_fanout_nodes.observe(len(nodes))
            for node in nodes:
                per_node[node].append(dl)
        calls = []
        for node, batch in per_node.items():
            api = self._socket(node)
            if api is not None:
                self.forwards += 1
                calls.append(self._forward(node, api, batch))
        await asyncio.gather(*calls)
        return len(calls)

    async def _forward(self, node: str, api: SocketApi, batch: list[Delivery]) -> None:
        try:
            await api.deliver(batch)
        except Exception:  # devices catch up by sync; a dead node is dropped by the registry
            logger.warning("forward to %s failed", node, exc_info=True)
