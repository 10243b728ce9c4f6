"""channel_svc over gRPC, sharded by thread on the ring of channel nodes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from natter import convert
from natter import domain as d
from natter.pool import Pool
from natter.v1 import channel_internal_service_pb2 as cpb
from natter.v1 import channel_internal_service_pb2_grpc as cpb_grpc


class ChannelClient:
    """`owner(thread_id)` names the channel node's internal address for a thread."""

    def __init__(self, pool: Pool, owner: Callable[[int], str | None]) -> None:
        self.pool = pool
        self.owner = owner

    def _by_owner(self, thread_ids: Sequence[int]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for t in thread_ids:
            address = self.owner(t)
            if address:
                out[address].append(t)
        return out

    def _stub(self, address: str) -> cpb_grpc.ChannelInternalServiceAsyncStub:
        return cpb_grpc.ChannelInternalServiceStub(self.pool.channel(address))

    async def subscribe(self, node_id: str, thread_ids: Sequence[int]) -> None:
        for address, ids in self._by_owner(thread_ids).items():
            await self._stub(address).Subscribe(
                cpb.SubscribeRequest(node_id=node_id, thread_ids=ids),
                metadata=self.pool.metadata, timeout=self.pool.deadline,
            )

    async def unsubscribe(self, node_id: str, thread_ids: Sequence[int]) -> None:
        for address, ids in self._by_owner(thread_ids).items():
            await self._stub(address).Unsubscribe(
                cpb.UnsubscribeRequest(node_id=node_id, thread_ids=ids),
                metadata=self.pool.metadata, timeout=self.pool.deadline,
            )

    async def publish(self, deliveries: Sequence[d.Delivery]) -> None:
        groups: dict[str, list[d.Delivery]] = defaultdict(list)
        for x in deliveries:
            address = self.owner(x.thread_id)
            if address:
                groups[address].append(x)
        for address, batch in groups.items():
            await self._stub(address).Publish(
                cpb.PublishRequest(deliveries=[convert.delivery(x) for x in batch]),
                metadata=self.pool.metadata, timeout=self.pool.deadline,
            )
