"""The embedded server: every service in one process over SQLite, calling each other directly."""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid
from collections.abc import Sequence
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2

from app.canary import Canary
from app.listeners import public_server, serve_health_and_reflection
from app.media import build_media
from app.metrics_http import MetricsServer
from app.stores import build_store
from channel_svc import Channels
from media_svc import PUBLIC_SERVICES as MEDIA_SERVICES
from media_svc import MediaHttp, MediaServicer
from message_svc import PUBLIC_SERVICES, MessageService
from message_svc.ports import DeviceRevocations
from natter import domain as d
from natter import tls
from natter.errors import AlreadyExists
from natter.metrics import Metrics
from natter.settings import Settings
from natter.v1 import media_service_pb2_grpc as mpb_grpc
from presence_svc import PUBLIC_SERVICES as PRESENCE_SERVICES
from presence_svc import PresenceService
from presence_svc import add_public as add_presence_public
from push_svc import PUBLIC_SERVICES as PUSH_SERVICES
from push_svc import PushService
from push_svc import add_public as add_push_public
from socket_svc import Hub, SocketServicer, add_socket_service
from socket_svc.web import WebServer

logger = logging.getLogger(__name__)

SOCKET_SERVICE = "natter.v1.SocketService"


class _LocalSocket:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None:
        await self.hub.deliver(deliveries)

    async def list_subscriptions(self) -> list[int]:
        return self.hub.subscriptions()


class LocalFanout:
    """Direct deliveries go to the hubs, group ones through channel_svc: no sockets in between.

    Usually one hub; tests and benchmarks add more, each a socket server with its own node id.
    A hub delivers only to its own sessions, so user-addressed events go to every hub.
    """

    def __init__(self) -> None:
        self.hubs: dict[str, Hub] = {}
        self.channels: Channels | None = None

    def socket(self, node_id: str) -> _LocalSocket | None:
        hub = self.hubs.get(node_id)
        return _LocalSocket(hub) if hub is not None else None

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None:
        assert self.channels is not None
        direct = [x for x in deliveries if x.user_ids]
        group = [x for x in deliveries if not x.user_ids]
        if direct:
            for node_id, hub in list(self.hubs.items()):
                # A sender's own copies: that hub pushed them to its devices itself.
                mine = [x for x in direct if x.pushed_by != node_id]
                if mine:
                    await hub.deliver(mine)
        if group:
            await self.channels.publish(group)


class EmbeddedServer:
    """`async with EmbeddedServer(settings) as s:` binds, serves, and on exit stops everything."""

    def __init__(self, settings: Settings, revocations: Sequence[DeviceRevocations] = ()) -> None:
        self.settings = settings
        self.node_id = settings.node_id or f"embedded-{uuid.uuid4().hex[:8]}"
        self.metrics = Metrics(settings.metrics_enabled)
        self.store = build_store(settings, metrics=self.metrics)
        self.fanout = LocalFanout()
        self.messages = MessageService(self.store, settings, self.fanout, self.metrics, revocations)
        self.channels = Channels(self.fanout.socket, self.metrics)
        self.presence = PresenceService(self.store, settings, self.fanout, metrics=self.metrics)
        # One process, one worker: SQLite's single writer claims each job once.
        self.push = PushService(self.store, settings, self.presence, self.node_id)
        self.hub = Hub(
            self.node_id,
            self.messages,
            settings,
            channel=self.channels,
            presence=self.presence,
            metrics=self.metrics,
        )
        # The web gateway vouches for browsers' addresses with this (see natter.rpc).
        self.gateway_key = secrets.token_urlsafe(24)
        self.canary: Canary | None = None
        self.metrics_server: MetricsServer | None = None
        self.fanout.hubs[self.node_id] = self.hub
        self.fanout.channels = self.channels
        self.media = build_media(settings, self.store, self.messages)
        self.grpc_port = 0
        self.http_port = 0
        self._server: grpc.aio.Server | None = None
        self._extra: list[tuple[Hub, grpc.aio.Server]] = []
        self._health = health.aio.HealthServicer()
        self.web: WebServer | None = None

    @property
    def grpc_address(self) -> str:
        host = self.settings.grpc_addr.rsplit(":", 1)[0]
        return f"{host}:{self.grpc_port}"

    async def _locate(self, who: d.Principal) -> tuple[str, str]:
        return self.settings.advertise_addr or self.grpc_address, self.node_id

    def _grpc_server(self, hub: Hub) -> grpc.aio.Server:
        server = public_server(self.settings, self.gateway_key)
        self.messages.add_public(server)
        add_presence_public(server, self.presence, self.messages)
        add_push_public(server, self.push, self.messages)
        add_socket_service(SocketServicer(hub, self.messages, self.settings, self._locate), server)
        mpb_grpc.add_MediaServiceServicer_to_server(MediaServicer(self.media), server)
        serve_health_and_reflection(
            server,
            self._health,
            (*PUBLIC_SERVICES, *PRESENCE_SERVICES, *PUSH_SERVICES, *MEDIA_SERVICES, SOCKET_SERVICE),
        )
        return server

    async def start(self) -> None:
        await self.store.open()
        await self.push.start()
        await self.media.open()
        server = self._grpc_server(self.hub)
        s = self.settings
        self.grpc_port = tls.listen(server, s.grpc_addr, s.tls_cert_file, s.tls_key_file)
        if not self.grpc_port:
            raise OSError(f"cannot listen on {self.settings.grpc_addr}")
        gateway_target = self.grpc_address
        if s.tls_cert_file:
            # The web gateway (and the canary) call the gRPC stack in this process over
            # loopback, on a plaintext port of its own that only this machine can reach.
            gateway_target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        self._server = server
        self.presence.start()
        self.hub.start()
        self.web = WebServer(
            self.settings,
            self.hub,
            self.messages,
            self.grpc_address,
            gateway_target,
            self.metrics,
            self.gateway_key,
            extra_routes=MediaHttp(self.media).routes(),
        )
        self.http_port = await self.web.start()
        if not self.media.http_url:
            scheme = "https" if s.tls_cert_file else "http"
            self.media.http_url = f"{scheme}://{s.http_addr.rsplit(':', 1)[0]}:{self.http_port}"
        self.media.start_gc()
        if s.metrics_addr:
            self.metrics_server = MetricsServer(s, self.metrics)
            await self.metrics_server.start()
        self.canary = Canary(self.store, s, self.metrics, gateway_target)
        self.canary.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "natter %s serving gRPC on %s and HTTP on %s:%d (data in %s)",
            self.node_id,
            self.grpc_address,
            self.settings.http_addr.rsplit(":", 1)[0],
            self.http_port,
            self.settings.data_dir,
        )

    async def stop(self, grace: float = 2.0) -> None:
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        if self.canary is not None:
            await self.canary.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        for hub, extra in self._extra:
            await hub.stop()
            await extra.stop(grace)
            self.fanout.hubs.pop(hub.node_id, None)
        self._extra = []
        await self.hub.stop()
        await self.presence.stop()
        await self.push.stop()
        if self.web is not None:
            await self.web.stop()
        if self._server is not None:
            await self._server.stop(grace)
        await self.media.close()
        await self.store.close()

    async def add_socket_server(self, node_id: str) -> tuple[Hub, str]:
        """Another socket server in this process, on its own port, as a cluster would have one.

        For tests and benchmarks of group fan-out across socket servers; it shares this
        server's message, channel and presence services. Returns its hub and address.
        """
        if node_id in self.fanout.hubs:
            raise AlreadyExists(f"socket server {node_id!r} already exists", "NODE_EXISTS")
        hub = Hub(
            node_id,
            self.messages,
            self.settings,
            channel=self.channels,
            presence=self.presence,
            metrics=self.metrics,
        )
        server = self._grpc_server(hub)
        host = self.settings.grpc_addr.rsplit(":", 1)[0]
        port = tls.listen(
            server, f"{host}:0", self.settings.tls_cert_file, self.settings.tls_key_file
        )
        await server.start()
        self.fanout.hubs[node_id] = hub
        hub.start()
        self._extra.append((hub, server))
        return hub, f"{host}:{port}"

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
