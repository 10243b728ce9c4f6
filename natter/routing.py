"""Cluster routing: deliveries to the socket server that owns each user, groups via channel_svc."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

from channel_svc.client import ChannelClient
from natter import domain as d
from natter.pool import Pool
from registry import Registry
from socket_svc.client import SocketClient

logger = logging.getLogger(__name__)


class ClusterFanout:
    """message_svc's Fanout in cluster mode: one Deliver per socket server per batch."""

    def __init__(self, pool: Pool, registry: Registry, channel: ChannelClient) -> None:
        self.pool = pool
        self.registry = registry
        self.channel = channel

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None:
        ring = self.registry.ring("socket")
        per_node: dict[str, list[d.Delivery]] = defaultdict(list)
        group: list[d.Delivery] = []
        for dl in deliveries:
            if not dl.user_ids:
                group.append(dl)
                continue
            split: dict[str, list[int]] = defaultdict(list)
            for uid in dl.user_ids:
                node = ring.owner(str(uid))
                if node is not None:
                    split[node.internal_addr].append(uid)
            for address, uids in split.items():
                per_node[address].append(
                    d.Delivery(dl.event, tuple(uids), 0, dl.exclude_device_id)
                )
        calls = [self._send(address, batch) for address, batch in per_node.items()]
        if group:
            calls.append(self._publish(group))
        await asyncio.gather(*calls)

    async def _send(self, address: str, batch: list[d.Delivery]) -> None:
        try:
            await SocketClient(self.pool, address).deliver(batch)
        except Exception:  # devices catch up by sync; the registry drops dead nodes
            logger.warning("deliver to %s failed", address, exc_info=True)

    async def _publish(self, batch: list[d.Delivery]) -> None:
        try:
            await self.channel.publish(batch)
        except Exception:
            logger.warning("publish to channel_svc failed", exc_info=True)
