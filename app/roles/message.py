"""The message role: the front door (accounts, contacts, threads, groups, Locate) and the store."""

from __future__ import annotations

import logging
from typing import ClassVar

import grpc
from aiohttp import web

from app.canary import Canary
from app.media import build_media, media_app
from app.outage import FrontDoor, Outage, OutageInterceptor
from app.roles.node import DB_POOL, ClusterNode
from app.roles.presence_proxy import add_presence_proxy
from app.routing import ClusterFanout
from app.stores import build_store
from media_svc import PUBLIC_SERVICES as MEDIA_SERVICES
from media_svc import MediaServicer
from message_svc import PUBLIC_SERVICES, MessageClient, MessageService
from natter import domain as d
from natter import tls
from natter.errors import Unavailable
from natter.settings import Settings
from natter.v1 import media_service_pb2_grpc as mdpb_grpc
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from presence_svc import PUBLIC_SERVICES as PRESENCE_SERVICES
from presence_svc.client import PresenceClient
from push_svc import PUBLIC_SERVICES as PUSH_SERVICES
from push_svc import PushService
from push_svc import add_public as add_push_public
from registry import Registry
from socket_svc.servicer import RedirectServicer

logger = logging.getLogger(__name__)


class MessageNode(ClusterNode):
    """message_svc over the shared database; pushes go out through the cluster's routing."""

    role: ClassVar[str] = "message"
    services = (
        *PUBLIC_SERVICES,
        *PRESENCE_SERVICES,
        *PUSH_SERVICES,
        *MEDIA_SERVICES,
        "natter.v1.SocketService",
    )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        self.outage = Outage()
        return [OutageInterceptor(self.outage)]

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        super().__init__(settings, registry)
        self.store = build_store(settings, pool_size=DB_POOL, metrics=self.metrics)
        self.outage.reachable = lambda: self.store.reachable
        # Retry pushes long enough for a dead socket server's lease to expire.
        retry = 3 * settings.lease_ttl_seconds + 4
        self.fanout = ClusterFanout(self.pool, self.registry, self.channel_client(), retry)
        self.messages = MessageService(self.store, settings, self.fanout, self.metrics)
        self.canary: Canary | None = None
        self.messages.add_public(self.public)
        self.messages.add_internal(self.internal)
        # A device's stream that reaches this node while its database is unreachable is still
        # sent on: the token is checked by the other replica, as its sends would be.
        others = MessageClient(self.pool, self._other_replicas)
        spb_grpc.add_SocketServiceServicer_to_server(
            RedirectServicer(FrontDoor(self.messages, others, self.outage), self._locate),
            self.public,
        )
        add_presence_proxy(self.public, self.store, self.pool, self.registry)
        # Every message node drains the push queue; a lease (FOR UPDATE SKIP LOCKED) gives
        # each job to one of them. Who is active comes from the presence node owning the user.
        liveness = PresenceClient(self.pool, self.presence_owner)
        self.push = PushService(self.store, settings, liveness, self.node_id)
        add_push_public(self.public, self.push, self.messages)
        # Attachments: the blob store every message node shares (S3 in a cluster), records
        # in the database, uploads and downloads on this node's HTTP listener.
        self.media = build_media(settings, self.store, self.messages)
        mdpb_grpc.add_MediaServiceServicer_to_server(MediaServicer(self.media), self.public)
        self._http: web.AppRunner | None = None

    def _other_replicas(self) -> list[str]:
        return [
            n.internal_addr for n in self.registry.nodes("message") if n.node_id != self.node_id
        ]

    async def _locate(self, who: d.Principal) -> tuple[str, str]:
        node = self.owner("socket", str(who.user.user_id))
        if node is None:
            raise Unavailable("no socket server is registered", "NO_SOCKET_SERVER")
        return node.public_addr, node.node_id

    async def open(self) -> None:
        await self.store.open()
        await self.push.start()
        await self.media.open()
        s = self.settings
        self._http = web.AppRunner(media_app(self.media), access_log=None)
        await self._http.setup()
        host, port = s.http_addr.rsplit(":", 1)
        context = tls.server_context(s.tls_cert_file, s.tls_key_file) if s.tls_cert_file else None
        site = web.TCPSite(self._http, host.strip("[]"), int(port), ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        bound = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        if not self.media.http_url:
            scheme = "https" if context is not None else "http"
            self.media.http_url = f"{scheme}://{host}:{bound}"
        logger.info("attachments over HTTP on %s:%d", host, bound)

    def started(self) -> None:
        self.outage.start()
        self.media.start_gc()
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
        await self.outage.stop()
        await self.push.stop()
        if self._http is not None:
            await self._http.cleanup()
        await self.media.close()
        await self.fanout.close()
        await self.store.close()
