"""Thin gRPC servicers of presence_svc: the public GetPresence and the internal heartbeat report."""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from natter import convert
from natter.domain import Principal
from natter.rpc import bearer
from natter.v1 import presence_internal_service_pb2 as pipb
from natter.v1 import presence_internal_service_pb2_grpc as pipb_grpc
from natter.v1 import presence_service_pb2 as ppb
from natter.v1 import presence_service_pb2_grpc as ppb_grpc
from presence_svc.service import PresenceService

Context = grpc.aio.ServicerContext[Any, Any]


class Authenticator(Protocol):
    """Turns a bearer token into the device acting (message_svc answers this)."""

    async def authenticate(self, token: str) -> Principal: ...


class PresenceServicer(ppb_grpc.PresenceServiceServicer):
    def __init__(self, presence: PresenceService, auth: Authenticator) -> None:
        self.presence = presence
        self.auth = auth

    async def GetPresence(
        self, request: ppb.GetPresenceRequest, context: Context
    ) -> ppb.GetPresenceResponse:
        who = await self.auth.authenticate(bearer(context.invocation_metadata()))
        found = await self.presence.get_presence(who, list(request.usernames))
        return ppb.GetPresenceResponse(presences=[convert.presence(p) for p in found])


class PresenceInternalServicer(pipb_grpc.PresenceInternalServiceServicer):
    """Trusted callers only (internal listener): socket servers report their devices."""

    def __init__(self, presence: PresenceService) -> None:
        self.presence = presence

    async def ReportHeartbeats(
        self, request: pipb.ReportHeartbeatsRequest, context: Context
    ) -> pipb.ReportHeartbeatsResponse:
        await self.presence.report(
            request.node_id,
            [(b.user_id, b.device_id, b.connected) for b in request.beats],
            {b.device_id for b in request.beats if b.connected and b.foreground},
        )
        return pipb.ReportHeartbeatsResponse()

    async def ListActiveDevices(
        self, request: pipb.ListActiveDevicesRequest, context: Context
    ) -> pipb.ListActiveDevicesResponse:
        active = await self.presence.active_devices(
            [(x.user_id, x.device_id) for x in request.devices]
        )
        return pipb.ListActiveDevicesResponse(device_ids=sorted(active))


def add_public(server: grpc.aio.Server, presence: PresenceService, auth: Authenticator) -> None:
    ppb_grpc.add_PresenceServiceServicer_to_server(PresenceServicer(presence, auth), server)


def add_internal(server: grpc.aio.Server, presence: PresenceService) -> None:
    pipb_grpc.add_PresenceInternalServiceServicer_to_server(
        PresenceInternalServicer(presence), server
    )


PUBLIC_SERVICES = ("natter.v1.PresenceService",)
