"""The thin gRPC servicer of push_svc: proto in, one domain call, proto out."""

from __future__ import annotations

from typing import Any

import grpc

from natter import convert
from natter.rpc import bearer
from natter.v1 import push_service_pb2 as pspb
from natter.v1 import push_service_pb2_grpc as pspb_grpc
from push_svc.ports import Authenticator
from push_svc.service import PushService

Context = grpc.aio.ServicerContext[Any, Any]

PUBLIC_SERVICES = ("natter.v1.PushService",)


class PushServicer(pspb_grpc.PushServiceServicer):
    def __init__(self, push: PushService, auth: Authenticator) -> None:
        self.push = push
        self.auth = auth

    async def GetPushConfig(
        self, request: pspb.GetPushConfigRequest, context: Context
    ) -> pspb.GetPushConfigResponse:
        c = self.push.config()
        return pspb.GetPushConfigResponse(
            web_push_enabled=c.web_push,
            vapid_public_key=c.vapid_public_key,
            gateway_urls=list(c.gateway_urls),
            grace_seconds=c.grace_seconds,
        )

    async def SetPushTarget(
        self, request: pspb.SetPushTargetRequest, context: Context
    ) -> pspb.SetPushTargetResponse:
        who = await self.auth.authenticate(bearer(context.invocation_metadata()))
        stored = await self.push.set_target(who, convert.requested_push_target(request, who))
        return pspb.SetPushTargetResponse(target=convert.push_target(stored))

    async def GetPushTarget(
        self, request: pspb.GetPushTargetRequest, context: Context
    ) -> pspb.GetPushTargetResponse:
        who = await self.auth.authenticate(bearer(context.invocation_metadata()))
        found = await self.push.get_target(who)
        if found is None:
            return pspb.GetPushTargetResponse()
        return pspb.GetPushTargetResponse(target=convert.push_target(found))

    async def DeletePushTarget(
        self, request: pspb.DeletePushTargetRequest, context: Context
    ) -> pspb.DeletePushTargetResponse:
        await self.push.delete_target(
            await self.auth.authenticate(bearer(context.invocation_metadata()))
        )
        return pspb.DeletePushTargetResponse()


def add_public(server: grpc.aio.Server, push: PushService, auth: Authenticator) -> None:
    pspb_grpc.add_PushServiceServicer_to_server(PushServicer(push, auth), server)
