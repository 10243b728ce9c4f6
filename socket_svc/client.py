"""A socket server over gRPC, as channel_svc and message_svc in other processes reach it."""

from __future__ import annotations

from collections.abc import Sequence

from natter import convert
from natter import domain as d
from natter.pool import Pool
from natter.v1 import socket_internal_service_pb2 as ipb
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc


class SocketClient:
    """One socket server's internal listener; failures come back as domain errors.

    Pushes are best effort: the caller decides whether to retry (message_svc re-resolves
    the owner on the ring, channel_svc drops a node that left) — devices catch up by sync.
    """

    def __init__(self, pool: Pool, address: str) -> None:
        self.pool = pool
        self.address = address

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None:
        request = ipb.DeliverRequest(deliveries=[convert.delivery(x) for x in deliveries])
        await self.pool.call_one(
            self.address,
            lambda ch: self.pool.stub(ch, ipb_grpc.SocketInternalServiceStub).Deliver(
                request, metadata=self.pool.metadata, timeout=self.pool.deadline
            ),
        )

    async def list_subscriptions(self) -> list[int]:
        res = await self.pool.call_one(
            self.address,
            lambda ch: ipb_grpc.SocketInternalServiceStub(ch).ListSubscriptions(
                ipb.ListSubscriptionsRequest(),
                metadata=self.pool.metadata,
                timeout=self.pool.deadline,
            ),
        )
        return list(res.thread_ids)
