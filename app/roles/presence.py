"""The presence role: heartbeats in (internal), GetPresence out (public), changes pushed."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from app.roles.node import ClusterNode
from app.routing import ClusterFanout
from message_svc import MessageClient, SqlStore
from natter.settings import Settings
from presence_svc import PUBLIC_SERVICES, PresenceService, add_internal, add_public
from registry import Registry

DB_POOL = 10


class PresenceNode(ClusterNode):
    """presence_svc over the shared database, sharded by user on the presence ring."""

    role: ClassVar[str] = "presence"
    services = PUBLIC_SERVICES

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        super().__init__(settings, registry)
        self.store = SqlStore(settings.db_url, pool_size=DB_POOL, metrics=self.metrics)
        retry = 3 * settings.lease_ttl_seconds + 4
        self.fanout = ClusterFanout(self.pool, self.registry, self.channel_client(), retry)
        self.presence = PresenceService(self.store, settings, self.fanout, metrics=self.metrics)
        auth = MessageClient(self.pool, lambda: self.addresses("message"))
        add_internal(self.internal, self.presence)
        add_public(self.public, self.presence, auth)
        follow_socket_nodes(self.registry, self.presence)

    async def open(self) -> None:
        await self.store.open()

    def started(self) -> None:
        self.presence.start()

    async def close(self) -> None:
        await self.presence.stop()
        await self.fanout.close()
        await self.store.close()


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
