"""The message role: the front door (accounts, contacts, threads, groups, Locate) and the store."""

from __future__ import annotations

import logging
from typing import ClassVar

from app.canary import Canary
from app.roles.node import DB_POOL, ClusterNode
from app.roles.presence_proxy import add_presence_proxy
from app.routing import ClusterFanout
from message_svc import PUBLIC_SERVICES, MessageService, SqlStore
from natter import domain as d
from natter.errors import Unavailable
from natter.settings import Settings
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from presence_svc import PUBLIC_SERVICES as PRESENCE_SERVICES
from registry import Registry
from socket_svc.servicer import RedirectServicer

logger = logging.getLogger(__name__)


class MessageNode(ClusterNode):
    """message_svc over the shared database; pushes go out through the cluster's routing."""

    role: ClassVar[str] = "message"
    services = (*PUBLIC_SERVICES, *PRESENCE_SERVICES, "natter.v1.SocketService")

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        super().__init__(settings, registry)
        self.store = SqlStore(settings.db_url, pool_size=DB_POOL, metrics=self.metrics)
        # Retry pushes long enough for a dead socket server's lease to expire.
        retry = 3 * settings.lease_ttl_seconds + 4
        self.fanout = ClusterFanout(self.pool, self.registry, self.channel_client(), retry)
        self.messages = MessageService(self.store, settings, self.fanout, self.metrics)
        self.canary: Canary | None = None
        self.messages.add_public(self.public)
        self.messages.add_internal(self.internal)
        spb_grpc.add_SocketServiceServicer_to_server(
            RedirectServicer(self.messages, self._locate), self.public
        )
        add_presence_proxy(self.public, self.store, self.pool, self.registry)

    async def _locate(self, who: d.Principal) -> tuple[str, str]:
        node = self.owner("socket", str(who.user.user_id))
        if node is None:
            raise Unavailable("no socket server is registered", "NO_SOCKET_SERVER")
        return node.public_addr, node.node_id

    async def open(self) -> None:
        await self.store.open()

    def started(self) -> None:
        s = self.settings
        if s.tls_cert_file:
            # Its own listener speaks TLS with a certificate for a public name: the probe
            # would need that name. The canary runs on embedded servers and plain clusters.
            logger.info("delivery canary off: the public listener speaks TLS")
            return
        address = f"{s.grpc_addr.rsplit(':', 1)[0]}:{self.public_port}"
        self.canary = Canary(self.store, s, self.metrics, address)
        self.canary.start()

    async def before_stop(self) -> None:
        if self.canary is not None:
            await self.canary.stop()

    async def close(self) -> None:
        await self.fanout.close()
        await self.store.close()
