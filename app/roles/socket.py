"""The socket role: devices' live streams, with message_svc, channel_svc and presence_svc over gRPC."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from app.roles.node import ClusterNode
from message_svc import MessageClient
from natter import domain as d
from natter.errors import Unavailable
from natter.settings import Settings
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from presence_svc.client import PresenceClient
from registry import Registry
from socket_svc import Hub, SocketInternalServicer, SocketServicer, add_socket_service


class SocketNode(ClusterNode):
    """A Hub on the socket ring: owns the devices of the users the ring gives it."""

    role: ClassVar[str] = "socket"
    services = ("natter.v1.SocketService",)

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        super().__init__(settings, registry)
        api = MessageClient(self.pool, lambda: self.addresses("message"))
        self.channels = self.channel_client()
        self.hub = Hub(
            self.node_id,
            api,
            settings,
            channel=self.channels,
            presence=PresenceClient(self.pool, self.presence_owner),
            metrics=self.metrics,
        )
        add_socket_service(SocketServicer(self.hub, api, settings, self._locate), self.public)
        ipb_grpc.add_SocketInternalServiceServicer_to_server(
            SocketInternalServicer(self.hub), self.internal
        )
        self.hub.elsewhere = self._elsewhere
        self.registry.subscribe(self._on_change)
        self._catching_up = False
        self._left = False  # out of the ring while registered: devices were handed back
        self._left_at = 0.0

    async def _locate(self, who: d.Principal) -> tuple[str, str]:
        """The socket server owning the caller on the ring (this one, or where to go)."""
        node = self.owner("socket", str(who.user.user_id))
        if node is None:
            raise Unavailable("no socket server is registered", "NO_SOCKET_SERVER")
        return node.public_addr, node.node_id

    def _elsewhere(self, user_id: int) -> str | None:
        """Where a connecting device of `user_id` belongs, if not here (None: serve it).

        Out of our own ring (our lease lapsed: etcd unreachable from here) every device is
        served once a lease TTL has passed since the hand-back, as `_on_change` promises:
        the ring we hold is then no better than the front door's, and turning devices away
        could send them round in circles. Within that TTL, `LEFT_RING` as at the hand-back.
        """
        ring = self.registry.ring("socket")
        if ring.get(self.node_id) is None:
            if self._left and time.monotonic() - self._left_at < self.settings.lease_ttl_seconds:
                # Just handed back: a stream that was on its way when the devices were handed
                # back (sent here by a front door that had not yet seen our lease go) goes
                # back too, or it stays here for the whole partition.
                raise Unavailable("this server left the cluster's ring; reconnect", "LEFT_RING")
            return None
        node = ring.owner(str(user_id))
        if node is None or node.node_id == self.node_id:
            return None
        return node.public_addr

    def started(self) -> None:
        # message_svc's fan-out routes by internal address: the sender's copies it skips here.
        self.hub.origin = self.internal_address
        self.hub.start()
        self.spawn(self._resubscribe_when_stale())

    async def before_stop(self) -> None:
        await self.hub.stop()

    async def _resubscribe_when_stale(self) -> None:
        """A subscribe that failed (channel node down) is repaired by sending the whole list."""
        while True:
            await asyncio.sleep(1.0)
            if self.channels.stale:
                self.channels.stale = False
                await self.hub.resubscribe()

    def _on_change(self, role: str) -> None:
        if role in ("socket", "channel"):
            self._catch_up_later()
        if role == "socket":
            me = self.registry.ring("socket").get(self.node_id)
            if me is not None:
                self._left = False
                self.hub.rebalance(lambda uid: self.owner("socket", str(uid)), me.node_id)
            elif self.registered and not self._left:
                # Our lease lapsed (etcd unreachable from here): the others have given our
                # users to other servers, and push there. Devices go back to the front door,
                # which knows the ring, once; a reconnect that comes back here is served.
                self._left = True
                self._left_at = time.monotonic()
                self.hub.hand_back(
                    Unavailable("this server left the cluster's ring; reconnect", "LEFT_RING")
                )
        if role == "channel":
            self.channels.stale = False
            self.spawn(self.hub.resubscribe())

    def _catch_up_later(self) -> None:
        """Pushes published while routing changed may have gone nowhere: look again, twice.

        Once when the change has settled, and once more after a lease TTL, by when every
        node has seen it (channel nodes adopt a reappearing socket server on their own
        schedule). Devices then get what they missed from the store, without a reconnect.
        """
        if self._catching_up:
            return
        self._catching_up = True
        hub, ttl = self.hub, self.settings.lease_ttl_seconds

        async def run() -> None:
            try:
                await asyncio.sleep(1.0)
                hub.catch_up()
            finally:
                self._catching_up = False
            await asyncio.sleep(ttl)
            hub.catch_up()

        self.spawn(run())
