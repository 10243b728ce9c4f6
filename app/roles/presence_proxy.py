"""GetPresence on the front door: each user's status comes from the presence node owning them."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import grpc

from message_svc.store import Store
from natter import convert
from natter import domain as d
from natter.errors import Unavailable
from natter.identifiers import normalise
from natter.pool import Pool
from natter.v1 import presence_service_pb2 as ppb
from natter.v1 import presence_service_pb2_grpc as ppb_grpc
from presence_svc.service import query_identifiers
from registry import Registry

Context = grpc.aio.ServicerContext[Any, Any]


class PresenceRouter:
    """Splits a presence query by owner on the presence ring and merges the answers."""

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
                    ppb.GetPresenceRequest(usernames=names),
                    metadata=metadata,
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
        auth = [
            (k, v if isinstance(v, str) else v.decode())
            for k, v in context.invocation_metadata() or ()
            if k == "authorization"
        ]
        found = await self.router.get_presence(auth, list(request.usernames))
        return ppb.GetPresenceResponse(presences=[convert.presence(p) for p in found])


def add_presence_proxy(
    server: grpc.aio.Server, store: Store, pool: Pool, registry: Registry
) -> None:
    """Serve GetPresence on a message node's public listener."""
    router = PresenceRouter(store, pool, registry)
    ppb_grpc.add_PresenceServiceServicer_to_server(PresenceProxyServicer(router), server)
