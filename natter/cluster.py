"""Cluster roles: one service per process, registered in etcd, peers reached over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from channel_svc import Channels
from channel_svc.client import ChannelClient
from channel_svc.servicer import ChannelInternalServicer
from message_svc import MessageService, SqlStore
from message_svc.client import MessageClient
from message_svc.service import PUBLIC_SERVICES
from natter import tls
from natter.cluster_presence import add_presence_proxy, build_presence, presence_client
from natter.embedded import server_options
from natter.errors import FailedPrecondition, Unavailable
from natter.pool import Pool
from natter.routing import ClusterFanout
from natter.rpc import ErrorInterceptor, SecretInterceptor
from natter.settings import Settings
from natter.v1 import channel_internal_service_pb2_grpc as cpb_grpc
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from presence_svc import PresenceService
from registry import EtcdRegistry, Node, Registry
from registry.node import ROLES
from socket_svc import Hub, SocketInternalServicer, SocketServicer
from socket_svc.client import SocketClient
from socket_svc.servicer import RedirectServicer

logger = logging.getLogger(__name__)

# Connections kept open per process: the overflow beyond the pool is reopened per use.
DB_POOL = 20


def _host(addr: str) -> str:
    return addr.rsplit(":", 1)[0]


class RoleServer:
    """One process of one role: a public listener, an internal listener, a registry entry."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        if not settings.etcd_endpoints and registry is None:
            raise FailedPrecondition(f"role {settings.role!r} needs --etcd endpoints")
        if not settings.cluster_secret:
            raise FailedPrecondition(
                "cluster roles need a cluster secret (NATTER_CLUSTER_SECRET) for internal calls"
            )
        self.settings = settings
        self.role = settings.role
        self.node_id = settings.node_id or f"{settings.role}-{uuid.uuid4().hex[:8]}"
        self.registry: Registry = registry or EtcdRegistry(
            list(settings.etcd_endpoints), settings.etcd_prefix, settings.lease_ttl_seconds
        )
        self.pool = Pool(settings.cluster_secret)
        self.public = grpc.aio.server(
            interceptors=[ErrorInterceptor()], options=server_options(settings)
        )
        self.internal = grpc.aio.server(
            interceptors=[SecretInterceptor(settings.cluster_secret), ErrorInterceptor()],
            options=server_options(settings),
        )
        self.health = health.aio.HealthServicer()
        self.store: SqlStore | None = None
        self.hub: Hub | None = None
        self.channels: Channels | None = None
        self.messages: MessageService | None = None
        self.public_port = 0
        self.internal_port = 0
        self.fanout: ClusterFanout | None = None
        self.channel_client: ChannelClient | None = None
        self.presence: PresenceService | None = None
        # Hooks a role adds while it is built: run after the listeners start / before close.
        self.on_start: list[Callable[[], None]] = []
        self.on_stop: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sockets_seen: set[str] = set()
        self._catching_up = False

    # -- addresses of peers --------------------------------------------------------------

    def addresses(self, role: str) -> list[str]:
        """Internal addresses of every registered node of a role."""
        return [n.internal_addr for n in self.registry.nodes(role)]

    def channel_client_for_routing(self) -> ChannelClient:
        """A client of channel_svc, sharded by thread on the channel ring."""
        return self._channel_client()

    def _owner(self, role: str, key: str) -> Node | None:
        return self.registry.ring(role).owner(key)

    def _channel_client(self) -> ChannelClient:
        def owner(thread_id: int) -> str | None:
            node = self._owner("channel", str(thread_id))
            return node.internal_addr if node else None

        return ChannelClient(self.pool, owner)

    async def _locate(self, username: str) -> tuple[str, str]:
        if self.messages is not None:
            user = await self.messages.contacts.resolve(username)
            user_id = user.user_id
        else:
            raise FailedPrecondition("Locate is answered by message and socket nodes")
        node = self._owner("socket", str(user_id))
        if node is None:
            raise Unavailable("no socket server is registered", "NO_SOCKET_SERVER")
        return node.public_addr, node.node_id

    # -- roles ---------------------------------------------------------------------------

    def _build_message(self) -> list[str]:
        self.store = SqlStore(self.settings.db_url, pool_size=DB_POOL)
        # Retry pushes long enough for a dead socket server's lease to expire.
        retry = 3 * self.settings.lease_ttl_seconds + 4
        fanout = ClusterFanout(self.pool, self.registry, self._channel_client(), retry)
        self.fanout = fanout
        self.messages = MessageService(self.store, self.settings, fanout)
        self.messages.add_public(self.public)
        self.messages.add_internal(self.internal)
        spb_grpc.add_SocketServiceServicer_to_server(
            RedirectServicer(self.messages, self._locate), self.public
        )
        presence = add_presence_proxy(self, self.store)
        return [*PUBLIC_SERVICES, *presence, "natter.v1.SocketService"]

    def _build_socket(self) -> list[str]:
        api = MessageClient(self.pool, lambda: self.addresses("message"))
        self.channel_client = self._channel_client()
        self.hub = Hub(self.node_id, api, self.settings, channel=self.channel_client,
                       presence=presence_client(self))
        spb_grpc.add_SocketServiceServicer_to_server(
            SocketServicer(self.hub, api, self.settings, self._locate_via_message), self.public
        )
        ipb_grpc.add_SocketInternalServiceServicer_to_server(SocketInternalServicer(self.hub),
                                                             self.internal)
        self.registry.subscribe(self._on_change)
        self._spawn(self._resubscribe_when_stale())
        return ["natter.v1.SocketService"]

    async def _locate_via_message(self, username: str) -> tuple[str, str]:
        """Socket nodes do not know usernames: message_svc's public Locate answers for them."""
        async def go(channel: grpc.aio.Channel) -> spb.LocateResponse:
            stub = spb_grpc.SocketServiceStub(channel)
            return await stub.Locate(spb.LocateRequest(username=username),
                                     timeout=self.pool.deadline)

        res = await self.pool.call(lambda: [n.public_addr for n in self.registry.nodes("message")],
                                   go)
        return res.address, res.node_id

    def _build_channel(self) -> list[str]:
        def socket(node_id: str) -> SocketClient | None:
            node = self.registry.ring("socket").get(node_id)
            return SocketClient(self.pool, node.internal_addr) if node else None

        self.channels = Channels(socket)
        cpb_grpc.add_ChannelInternalServiceServicer_to_server(
            ChannelInternalServicer(self.channels), self.internal
        )
        self.registry.subscribe(self._on_change)
        return []

    async def _resubscribe_when_stale(self) -> None:
        """A subscribe that failed (channel node down) is repaired by sending the whole list."""
        while True:
            await asyncio.sleep(1.0)
            client, hub = self.channel_client, self.hub
            if client is not None and hub is not None and client.stale:
                client.stale = False
                await hub.resubscribe()

    def _catch_up_later(self) -> None:
        """Pushes published while routing changed may have gone nowhere: look again, twice.

        Once when the change has settled, and once more after a lease TTL, by when every
        node has seen it (channel nodes adopt a reappearing socket server on their own
        schedule). Devices then get what they missed from the store, without a reconnect.
        """
        if self._catching_up or self.hub is None:
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

        self._spawn(run())

    def _on_change(self, role: str) -> None:
        if role in ("socket", "channel"):
            self._catch_up_later()
        if role == "socket" and self.hub is not None:
            me = self.registry.ring("socket").get(self.node_id)
            if me is not None:
                self.hub.rebalance(lambda uid: self._owner("socket", str(uid)), me.node_id)
        if role == "channel" and self.hub is not None:
            if self.channel_client is not None:
                self.channel_client.stale = False
            self._spawn(self.hub.resubscribe())
        if role == "socket" and self.channels is not None:
            alive = {n.node_id for n in self.registry.nodes("socket")}
            for node_id in {n for nodes in self.channels.subs.values() for n in nodes} - alive:
                self.channels.drop_node(node_id)
            # A socket server that (re)appears may hold subscriptions dropped while it was
            # off the ring (etcd lost its data, say): ask it, as at this node's start.
            for node_id in sorted(alive - self._sockets_seen):
                self._spawn(self._adopt(node_id))
            self._sockets_seen = alive
        live = {n.internal_addr for r in ROLES for n in self.registry.nodes(r)}
        live |= {n.public_addr for n in self.registry.nodes("message")}
        self._spawn(self.pool.prune(live))

    async def _adopt(self, node_id: str) -> None:
        channels = self.channels
        node = self.registry.ring("socket").get(node_id)
        if channels is None or node is None:
            return
        try:
            threads = await SocketClient(self.pool, node.internal_addr).list_subscriptions()
        except Exception as e:
            logger.warning("could not list the subscriptions of %s: %s", node_id, e)
            return
        await channels.subscribe(node_id, threads)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.registry.start()
        builders = {
            "message": self._build_message,
            "socket": self._build_socket,
            "channel": self._build_channel,
        }
        if self.role == "presence":
            names = build_presence(self)
        elif self.role in builders:
            names = builders[self.role]()
        else:
            raise FailedPrecondition(f"unknown role {self.role!r}")
        if self.store is not None:
            await self.store.open()
        if self.channels is not None:
            # Before this node is in the ring: what every socket server subscribes now.
            # Later changes reach it as Subscribe calls once the sockets see it join.
            await self.channels.rebuild([n.node_id for n in self.registry.nodes("socket")])
            self._sockets_seen = {n.node_id for n in self.registry.nodes("socket")}
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.public)
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self.public,
        )
        s = self.settings
        self.public_port = tls.listen(self.public, s.grpc_addr, s.tls_cert_file, s.tls_key_file)
        self.internal_port = self.internal.add_insecure_port(self.settings.internal_addr)
        if not self.public_port or not self.internal_port:
            raise OSError("cannot bind the public or internal listener")
        await self.public.start()
        await self.internal.start()
        if self.hub is not None:
            self.hub.start()
        for hook in self.on_start:
            hook()
        public = self.settings.advertise_addr or f"{_host(self.settings.grpc_addr)}:{self.public_port}"
        internal = f"{_host(self.settings.internal_addr)}:{self.internal_port}"
        await self.registry.register(Node(self.node_id, self.role, public, internal))
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        logger.info("natter %s (%s) serving public %s, internal %s", self.node_id, self.role,
                    public, internal)

    async def stop(self, grace: float = 2.0) -> None:
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()
        with contextlib.suppress(Exception):
            await self.registry.deregister()
        if self.hub is not None:
            await self.hub.stop()
        await self.public.stop(grace)
        await self.internal.stop(grace)
        for task in list(self._tasks):
            task.cancel()
        for stop in self.on_stop:
            await stop()
        if self.fanout is not None:
            await self.fanout.close()
        if self.store is not None:
            await self.store.close()
        await self.pool.close()
        await self.registry.close()

    async def __aenter__(self) -> RoleServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_role(settings: Settings) -> None:
    server = RoleServer(settings)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(server.stop())
