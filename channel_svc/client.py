"""channel_svc over gRPC, sharded by thread on the ring of channel nodes."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import grpc

from natter import convert
from natter import domain as d
from natter.errors import NatterError
from natter.pool import Pool
from natter.v1 import channel_internal_service_pb2 as cpb
from natter.v1 import channel_internal_service_pb2_grpc as cpb_grpc

logger = logging.getLogger(__name__)


class ChannelClient:
    """`owner(thread_id)` names the channel node's internal address for a thread.

    Subscriptions are soft state: a subscribe that cannot reach its channel node is logged
    and remembered (`stale`), and the socket server sends its whole list again when the
    channel ring changes or `stale` is set; a restarted channel node also asks every socket
    server for its list. Publish errors are raised, as domain errors, for the caller to retry.
    """

    def __init__(self, pool: Pool, owner: Callable[[int], str | None]) -> None:
        self.pool = pool
        self.owner = owner
        self.stale = False

    def _by_owner(self, thread_ids: Sequence[int]) -> tuple[dict[str, list[int]], bool]:
        out: dict[str, list[int]] = defaultdict(list)
        unowned = False
        for t in thread_ids:
            address = self.owner(t)
            if address:
                out[address].append(t)
            else:
                unowned = True
        return out, unowned

    def _stub(self, channel: grpc.aio.Channel) -> cpb_grpc.ChannelInternalServiceAsyncStub:
        return self.pool.stub(channel, cpb_grpc.ChannelInternalServiceStub)

    async def subscribe(self, node_id: str, thread_ids: Sequence[int]) -> None:
        by_owner, unowned = self._by_owner(thread_ids)
        if unowned:
            self.stale = True  # no channel node yet: the next ring change sends the list

        async def one(address: str, ids: list[int]) -> None:
            try:
                await self.pool.call_one(
                    address,
                    lambda ch: self._stub(ch).Subscribe(
                        cpb.SubscribeRequest(node_id=node_id, thread_ids=ids),
                        metadata=self.pool.metadata,
                        timeout=self.pool.deadline,
                    ),
                )
            except NatterError as e:
                self.stale = True
                logger.warning("subscribe at %s failed (%s); will resubscribe", address, e)

        await asyncio.gather(*(one(a, ids) for a, ids in by_owner.items()))

    async def unsubscribe(self, node_id: str, thread_ids: Sequence[int]) -> None:
        by_owner, _ = self._by_owner(thread_ids)

        async def one(address: str, ids: list[int]) -> None:
            try:
                await self.pool.call_one(
                    address,
                    lambda ch: self._stub(ch).Unsubscribe(
                        cpb.UnsubscribeRequest(node_id=node_id, thread_ids=ids),
                        metadata=self.pool.metadata,
                        timeout=self.pool.deadline,
                    ),
                )
            except NatterError as e:  # a stale subscription only costs a wasted forward
                logger.info("unsubscribe at %s failed: %s", address, e)

        await asyncio.gather(*(one(a, ids) for a, ids in by_owner.items()))

    async def publish(self, deliveries: Sequence[d.Delivery]) -> list[d.Delivery]:
        """Publish to each thread's owner; returns the deliveries that could not be handed over."""
        groups: dict[str, list[d.Delivery]] = defaultdict(list)
        failed: list[d.Delivery] = []
        for x in deliveries:
            address = self.owner(x.thread_id)
            if address:
                groups[address].append(x)
            else:
                failed.append(x)

        async def one(address: str, batch: list[d.Delivery]) -> None:
            try:
                await self.pool.call_one(
                    address,
                    lambda ch: self._stub(ch).Publish(
                        cpb.PublishRequest(deliveries=[convert.delivery(x) for x in batch]),
                        metadata=self.pool.metadata,
                        timeout=self.pool.deadline,
                    ),
                )
            except NatterError as e:
                logger.info("publish to %s failed: %s", address, e)
                failed.extend(batch)

        await asyncio.gather(*(one(a, b) for a, b in groups.items()))
        return failed
