"""The channel role: group fan-out, sharded by thread, forwarding to socket servers over gRPC."""

from __future__ import annotations

import logging
from typing import ClassVar

from app.roles.node import ClusterNode
from channel_svc import Channels
from channel_svc.servicer import ChannelInternalServicer
from natter.settings import Settings
from natter.v1 import channel_internal_service_pb2_grpc as cpb_grpc
from registry import Registry
from socket_svc.client import SocketClient

logger = logging.getLogger(__name__)


class ChannelNode(ClusterNode):
    """Channels whose subscriptions follow the socket servers in the registry."""

    role: ClassVar[str] = "channel"

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        super().__init__(settings, registry)
        self.channels = Channels(self._socket, self.metrics)
        cpb_grpc.add_ChannelInternalServiceServicer_to_server(
            ChannelInternalServicer(self.channels), self.internal
        )
        self._sockets_seen: set[str] = set()
        self.registry.subscribe(self._on_change)

    def _socket(self, node_id: str) -> SocketClient | None:
        node = self.registry.ring("socket").get(node_id)
        return SocketClient(self.pool, node.internal_addr) if node else None

    async def open(self) -> None:
        # Before this node is in the ring: what every socket server subscribes now.
        # Later changes reach it as Subscribe calls once the sockets see it join.
        sockets = [n.node_id for n in self.registry.nodes("socket")]
        await self.channels.rebuild(sockets)
        self._sockets_seen = set(sockets)

    def _on_change(self, role: str) -> None:
        if role != "socket":
            return
        alive = {n.node_id for n in self.registry.nodes("socket")}
        for node_id in {n for nodes in self.channels.subs.values() for n in nodes} - alive:
            self.channels.drop_node(node_id)
        # A socket server that (re)appears may hold subscriptions dropped while it was
        # off the ring (etcd lost its data, say): ask it, as at this node's start.
        for node_id in sorted(alive - self._sockets_seen):
            self.spawn(self._adopt(node_id))
        self._sockets_seen = alive

    async def _adopt(self, node_id: str) -> None:
        client = self._socket(node_id)
        if client is None:
            return
        try:
            threads = await client.list_subscriptions()
        except Exception as e:
            logger.warning("could not list the subscriptions of %s: %s", node_id, e)
            return
        await self.channels.subscribe(node_id, threads)
