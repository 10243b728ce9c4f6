"""presence_svc over gRPC: socket servers report heartbeats to the node that owns each user."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence

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

    async def report(
        self,
        node_id: str,
        beats: Sequence[tuple[int, int, bool]],
        foreground: Collection[int] = frozenset(),
    ) -> None:
        by_owner: dict[str, list[pipb.DeviceBeat]] = defaultdict(list)
        for user_id, device_id, connected in beats:
            address = self.owner(user_id)
            if address:
                by_owner[address].append(
                    pipb.DeviceBeat(
                        user_id=user_id,
                        device_id=device_id,
                        connected=connected,
                        foreground=device_id in foreground,
                    )
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

    async def active_devices(self, devices: Sequence[tuple[int, int]]) -> set[int]:
        """Of (user, device) pairs, those active (live stream, app in front), asked of owners.

        A presence node that cannot be asked counts its devices as not active: a needless
        notification is better than a missed one.
        """
        by_owner: dict[str, list[pipb.DeviceRef]] = defaultdict(list)
        for user_id, device_id in devices:
            address = self.owner(user_id)
            if address:
                by_owner[address].append(pipb.DeviceRef(user_id=user_id, device_id=device_id))

        async def one(address: str, refs: list[pipb.DeviceRef]) -> list[int]:
            async def go(ch: grpc.aio.Channel) -> pipb.ListActiveDevicesResponse:
                return await pipb_grpc.PresenceInternalServiceStub(ch).ListActiveDevices(
                    pipb.ListActiveDevicesRequest(devices=refs),
                    metadata=self.pool.metadata,
                    timeout=self.pool.deadline,
                )

            return list((await self.pool.call_one(address, go)).device_ids)

        results = await asyncio.gather(
            *(one(a, r) for a, r in by_owner.items()), return_exceptions=True
        )
        active: set[int] = set()
        for r in results:
            if isinstance(r, BaseException):
                logger.warning("active devices unknown (%s); they are pushed to", r)
            else:
                active.update(r)
        return active
