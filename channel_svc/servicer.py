"""The internal gRPC servicer of channel_svc: subscriptions in, publishes fanned out."""

from __future__ import annotations

from typing import Any

import grpc

from channel_svc.channels import Channels
from natter import convert
from natter.v1 import channel_internal_service_pb2 as cpb
from natter.v1 import channel_internal_service_pb2_grpc as cpb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class ChannelInternalServicer(cpb_grpc.ChannelInternalServiceServicer):
    def __init__(self, channels: Channels) -> None:
        self.channels = channels

    async def Subscribe(
        self, request: cpb.SubscribeRequest, context: Context
    ) -> cpb.SubscribeResponse:
        await self.channels.subscribe(request.node_id, list(request.thread_ids))
        return cpb.SubscribeResponse()

    async def Unsubscribe(
        self, request: cpb.UnsubscribeRequest, context: Context
    ) -> cpb.UnsubscribeResponse:
        await self.channels.unsubscribe(request.node_id, list(request.thread_ids))
        return cpb.UnsubscribeResponse()

    async def Publish(self, request: cpb.PublishRequest, context: Context) -> cpb.PublishResponse:
        nodes = await self.channels.publish(convert.deliveries_of(request.deliveries))
        return cpb.PublishResponse(nodes=nodes)
