"""What every cluster process has: a public and an internal listener, a registry entry, peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, ClassVar

import grpc
from grpc_health.v1 import health, health_pb2

from app.listeners import internal_server, public_server, serve_health_and_reflection
from app.metrics_http import MetricsServer
from channel_svc.client import ChannelClient
from natter import tls
from natter.errors import FailedPrecondition
from natter.metrics import Metrics
from natter.pool import Pool
from natter.settings import Settings
from registry import EtcdRegistry, Node, Registry
from registry.node import ROLES

logger = logging.getLogger(__name__)

# Database connections kept open per process: the overflow beyond the pool is reopened per use.
DB_POOL = 20


def _host(addr: str) -> str:
    return addr.rsplit(":", 1)[0]


class ClusterNode:
    """The process of one role. Subclasses assemble their parts in `__init__` and add hooks.

    Lifecycle: `start()` joins the registry (to see peers), opens what the role needs
    (`open`), binds both listeners, starts them, runs `started`, registers this node and
    reports SERVING; `stop()` reverses it with a grace period.
    """

    role: ClassVar[str] = ""
    # The public services this role serves, for reflection.
    services: tuple[str, ...] = ()

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        if not settings.etcd_endpoints and registry is None:
            raise FailedPrecondition(f"role {self.role!r} needs --etcd endpoints")
        if not settings.cluster_secret:
            raise FailedPrecondition(
                "cluster roles need a cluster secret (NATTER_CLUSTER_SECRET) for internal calls"
            )
        self.settings = settings
        self.node_id = settings.node_id or f"{self.role}-{uuid.uuid4().hex[:8]}"
        self.registry: Registry = registry or EtcdRegistry(
            list(settings.etcd_endpoints), settings.etcd_prefix, settings.lease_ttl_seconds
        )
        self.pool = Pool(settings.cluster_secret)
        self.metrics = Metrics(settings.metrics_enabled)
        self.metrics_server = (
            MetricsServer(settings, self.metrics) if settings.metrics_addr else None
        )
        inner = self.interceptors()
        self.public = public_server(settings, inner=inner)
        self.internal = internal_server(settings, inner=inner)
        self.health = health.aio.HealthServicer()
        self.public_port = 0
        self.internal_port = 0
        self.internal_address = ""  # as registered: how the ring names this node
        self._tasks: set[asyncio.Task[None]] = set()
        self.registered = False  # between our registration and our clean stop
        self.registry.subscribe(self._prune_channels)

    # -- peers ---------------------------------------------------------------------------

    def addresses(self, role: str) -> list[str]:
        """Internal addresses of every registered node of a role."""
        return [n.internal_addr for n in self.registry.nodes(role)]

    def owner(self, role: str, key: str) -> Node | None:
        return self.registry.ring(role).owner(key)

    def channel_client(self) -> ChannelClient:
        """A client of channel_svc, sharded by thread on the channel ring."""

        def owner(thread_id: int) -> str | None:
            node = self.owner("channel", str(thread_id))
            return node.internal_addr if node else None

        return ChannelClient(self.pool, owner)

    def presence_owner(self, user_id: int) -> str | None:
        """The internal address of the presence node that owns a user (None: no such node)."""
        node = self.owner("presence", str(user_id))
        return node.internal_addr if node else None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task of this node; cancelled at stop."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _prune_channels(self, role: str) -> None:
        live = {n.internal_addr for r in ROLES for n in self.registry.nodes(r)}
        live |= {n.public_addr for n in self.registry.nodes("message")}
        self.spawn(self.pool.prune(live))

    # -- hooks for the roles -------------------------------------------------------------

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Interceptors of both listeners, inside the error mapping (made before `__init__` ends)."""
        return []

    async def open(self) -> None:
        """Open stores and state before the listeners start."""

    def started(self) -> None:
        """The listeners serve; this node is not registered yet."""

    async def close(self) -> None:
        """The listeners have stopped: release what `open` took."""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.registry.start()
        await self.open()
        if self.metrics_server is not None:
            await self.metrics_server.start()
        serve_health_and_reflection(self.public, self.health, self.services)
        s = self.settings
        self.public_port = tls.listen(self.public, s.grpc_addr, s.tls_cert_file, s.tls_key_file)
        self.internal_port = self.internal.add_insecure_port(s.internal_addr)
        if not self.public_port or not self.internal_port:
            raise OSError("cannot bind the public or internal listener")
        await self.public.start()
        await self.internal.start()
        public = s.advertise_addr or f"{_host(s.grpc_addr)}:{self.public_port}"
        internal = s.advertise_internal_addr or f"{_host(s.internal_addr)}:{self.internal_port}"
        self.internal_address = internal
        self.started()
        await self.registry.register(Node(self.node_id, self.role, public, internal))
        self.registered = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "natter %s (%s) serving public %s, internal %s%s",
            self.node_id,
            self.role,
            public,
            internal,
            f", metrics on port {self.metrics_server.port}" if self.metrics_server else "",
        )

    async def before_stop(self) -> None:
        """Deregistered, listeners still open: end sessions, flush what is pending."""

    async def stop(self, grace: float = 2.0) -> None:
        self.registered = False
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()
        with contextlib.suppress(Exception):
            await self.registry.deregister()
        await self.before_stop()
        await self.public.stop(grace)
        await self.internal.stop(grace)
        for task in list(self._tasks):
            task.cancel()
        await self.close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.pool.close()
        await self.registry.close()

    async def __aenter__(self) -> ClusterNode:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
