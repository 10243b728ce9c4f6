"""presence_svc over gRPC: socket servers report heartbeats to the node that owns each user."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import grpc

from natter.pool import Pool
from natter.v1 import presence_internal_service_pb2 as pipb
from natter.v1 import presence_internal_service_pb2_grpc as pipb_grpc

logger = logging.getLogger(__name__)


class PresenceClient:
    """socket_svc's PresenceApi in cluster mode, sharded by user on the ring of presence nodes.

    `owner(user_id)` names the presence node's internal address for a user. A report that
    fails raises (the hub logs it); presence is soft state, re-reported every heartbeat
    interval, so a restarted or new owner is complete again one interval later.
    """

    def __init__(self, pool: Pool, owner: Callable[[int], str | None]) -> None:
        self.pool = pool
        self.owner = owner

    async def report(self, node_id: str, beats: Sequence[tuple[int, int, bool]]) -> None:
        by_owner: dict[str, list[pipb.DeviceBeat]] = defaultdict(list)
        for user_id, device_id, connected in beats:
            address = self.owner(user_id)
            if address:
                by_owner[address].append(
                    pipb.DeviceBeat(user_id=user_id, device_id=device_id, connected=connected)
                )

        async def one(address: str, batch: list[pipb.DeviceBeat]) -> None:
            async def go(ch: grpc.aio.Channel) -> pipb.ReportHeartbeatsResponse:
                return await pipb_grpc.PresenceInternalServiceStub(ch).ReportHeartbeats(
                    pipb.ReportHeartbeatsRequest(node_id=node_id, beats=batch),
                    metadata=self.pool.metadata,
                    timeout=self.pool.deadline,
                )

            await self.pool.call_one(address, go)

        results = await asyncio.gather(
            *(one(a, b) for a, b in by_owner.items()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
