"""The presence role of a cluster, and the presence pieces the socket and message roles use."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from message_svc import SqlStore
from message_svc.client import MessageClient
from message_svc.contacts import normalise
from message_svc.store import Store
from natter import convert
from natter import domain as d
from natter.errors import Unavailable
from natter.pool import Pool
from natter.routing import ClusterFanout
from natter.v1 import presence_service_pb2 as ppb
from natter.v1 import presence_service_pb2_grpc as ppb_grpc
from presence_svc import PUBLIC_SERVICES, PresenceService, add_internal, add_public
from presence_svc.client import PresenceClient
from presence_svc.service import query_identifiers
from registry import Registry

if TYPE_CHECKING:
    from natter.cluster import RoleServer

DB_POOL = 10

Context = grpc.aio.ServicerContext[Any, Any]


def presence_owner(registry: Registry) -> Callable[[int], str | None]:
    """The internal address of the presence node that owns a user (None: no presence node)."""

    def owner(user_id: int) -> str | None:
        node = registry.ring("presence").owner(str(user_id))
        return node.internal_addr if node else None

    return owner


def presence_client(server: RoleServer) -> PresenceClient:
    """What a socket node's hub reports heartbeats through."""
    return PresenceClient(server.pool, presence_owner(server.registry))


def build_presence(server: RoleServer) -> list[str]:
    """Wire a presence node: heartbeats in (internal), GetPresence out (public), pushes routed."""
    settings = server.settings
    store = SqlStore(settings.db_url, pool_size=DB_POOL)
    server.store = store
    retry = 3 * settings.lease_ttl_seconds + 4
    fanout = ClusterFanout(server.pool, server.registry, server.channel_client_for_routing(),
                           retry)
    server.fanout = fanout
    presence = PresenceService(store, settings, fanout)
    auth = MessageClient(server.pool, lambda: server.addresses("message"))
    add_internal(server.internal, presence)
    add_public(server.public, presence, auth)
    server.on_start.append(presence.start)
    server.on_stop.append(presence.stop)
    server.presence = presence
    follow_socket_nodes(server.registry, presence)
    return list(PUBLIC_SERVICES)


def follow_socket_nodes(registry: Registry, presence: PresenceService) -> None:
    """Take a socket server's devices offline when it leaves the registry.

    Its lease expires within lease_ttl_seconds of a crash, sooner than the devices' beats
    would time out; a device that reconnected elsewhere stays online through its new beats.
    """
    known = {n.node_id for n in registry.nodes("socket")}
    tasks: set[asyncio.Task[None]] = set()

    def changed(role: str) -> None:
        nonlocal known
        if role != "socket":
            return
        now = {n.node_id for n in registry.nodes("socket")}
        for gone in known - now:
            task = asyncio.get_running_loop().create_task(presence.forget_node(gone))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        known = now

    registry.subscribe(changed)


class PresenceRouter:
    """GetPresence on a message node: each user's status comes from the presence node owning them."""

    def __init__(self, store: Store, pool: Pool, registry: Registry) -> None:
        self.store = store
        self.pool = pool
        self.registry = registry

    async def get_presence(
        self, metadata: Sequence[tuple[str, str]], usernames: Sequence[str]
    ) -> list[d.Presence]:
        idents = query_identifiers(usernames)
        found = await self.store.find_users(idents)
        ring = self.registry.ring("presence")
        by_owner: dict[str, list[str]] = defaultdict(list)
        for ident in idents:
            row = found.get(ident)
            if row is None:
                continue
            node = ring.owner(str(row.user_id))
            if node is None:
                raise Unavailable("no presence server is registered", "NO_PRESENCE_SERVER")
            by_owner[node.public_addr].append(ident)

        async def ask(address: str, names: list[str]) -> list[d.Presence]:
            async def go(ch: grpc.aio.Channel) -> ppb.GetPresenceResponse:
                return await ppb_grpc.PresenceServiceStub(ch).GetPresence(
                    ppb.GetPresenceRequest(usernames=names), metadata=metadata,
                    timeout=self.pool.deadline,
                )

            res = await self.pool.call_one(address, go)
            return [convert.presence_of(p) for p in res.presences]

        parts = await asyncio.gather(*(ask(a, n) for a, n in by_owner.items()))
        order = {ident: i for i, ident in enumerate(idents)}
        merged = [p for part in parts for p in part]
        merged.sort(key=lambda p: order.get(normalise(p.user.username), len(order)))
        return merged


class PresenceProxyServicer(ppb_grpc.PresenceServiceServicer):
    """PresenceService on the front door, answered by the presence nodes."""

    def __init__(self, router: PresenceRouter) -> None:
        self.router = router

    async def GetPresence(
        self, request: ppb.GetPresenceRequest, context: Context
    ) -> ppb.GetPresenceResponse:
        auth = [(k, v if isinstance(v, str) else v.decode())
                for k, v in context.invocation_metadata() or () if k == "authorization"]
        found = await self.router.get_presence(auth, list(request.usernames))
        return ppb.GetPresenceResponse(presences=[convert.presence(p) for p in found])


def add_presence_proxy(server: RoleServer, store: Store) -> list[str]:
    """Serve GetPresence on a message node's public listener."""
    router = PresenceRouter(store, server.pool, server.registry)
    ppb_grpc.add_PresenceServiceServicer_to_server(PresenceProxyServicer(router), server.public)
    return list(PUBLIC_SERVICES)
