"""gRPC servicers of socket_svc: the public Connect stream and Locate, the internal Deliver."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from natter import convert
from natter import domain as d
from natter.errors import PermissionDenied
from natter.identifiers import normalise
from natter.rpc import abort, bearer, client_address
from natter.settings import Settings
from natter.v1 import socket_internal_service_pb2 as ipb
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from socket_svc import stream
from socket_svc.frames import Frame, encode
from socket_svc.hub import Hub
from socket_svc.ports import MessageApi

Context = grpc.aio.ServicerContext[Any, Any]


class _GrpcTransport:
    """The Connect stream as a stream.Transport: frames in and out, nothing more."""

    __slots__ = ("context",)

    def __init__(self, context: Context) -> None:
        self.context = context

    async def receive(self) -> stream.Incoming:
        frame = await self.context.read()
        if frame is grpc.aio.EOF:
            return None
        return frame  # type: ignore[no-any-return]  # a ClientFrame, or a Malformed stand-in

    async def send(self, frame: Frame) -> None:
        # Bytes are a frame encoded once for many streams: the serializer passes them on.
        await self.context.write(frame)


# Where a user's devices should connect: (address, node id).
Locator = Callable[[d.Principal], Awaitable[tuple[str, str]]]


class Authenticator(Protocol):
    """What Locate and a front door's Connect need of message_svc: whose token this is."""

    async def authenticate(self, token: str) -> d.Principal: ...


async def locate(
    api: Authenticator, where: Locator, request: spb.LocateRequest, context: Context
) -> spb.LocateResponse:
    """Locate for the caller only: a token is needed, and names other than one's own are refused."""
    who = await api.authenticate(bearer(context.invocation_metadata()))
    asked = normalise(request.username)
    if asked and asked != who.user.username:
        raise PermissionDenied("Locate answers for your own account only", "NOT_YOURSELF")
    address, node_id = await where(who)
    return spb.LocateResponse(address=address, node_id=node_id)


class SocketServicer(spb_grpc.SocketServiceServicer):
    def __init__(
        self,
        hub: Hub,
        api: MessageApi,
        settings: Settings,
        locate: Locator,
    ) -> None:
        self.hub = hub
        self.api = api
        self.settings = settings
        self._locate = locate

    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: Context
    ) -> None:
        token = bearer(context.invocation_metadata())
        end = await stream.serve(
            self.hub,
            self.api,
            self.settings,
            _GrpcTransport(context),
            token,
            client_address.get(),
            "grpc",
        )
        if end.error is not None:
            await abort(context, end.error)

    async def Locate(self, request: spb.LocateRequest, context: Context) -> spb.LocateResponse:
        return await locate(self.api, self._locate, request, context)


def add_socket_service(servicer: spb_grpc.SocketServiceServicer, server: grpc.aio.Server) -> None:
    """SocketService on `server`, with Connect's frames allowed to arrive encoded.

    As the generated `add_SocketServiceServicer_to_server` registers it, except that
    Connect's serializer passes a frame already encoded (bytes) through: what reaches the
    wire is the same ServerFrame encoding either way.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect,
            request_deserializer=spb.ClientFrame.FromString,
            response_serializer=encode,
        ),
        "Locate": grpc.unary_unary_rpc_method_handler(
            servicer.Locate,
            request_deserializer=spb.LocateRequest.FromString,
            response_serializer=spb.LocateResponse.SerializeToString,
        ),
    }
    name = spb.DESCRIPTOR.services_by_name["SocketService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class SocketInternalServicer(ipb_grpc.SocketInternalServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Deliver(self, request: ipb.DeliverRequest, context: Context) -> ipb.DeliverResponse:
        deliveries = convert.deliveries_of(request.deliveries)
        self.hub.received(deliveries)
        await self.hub.deliver(deliveries)
        return ipb.DeliverResponse()

    async def ListSubscriptions(
        self, request: ipb.ListSubscriptionsRequest, context: Context
    ) -> ipb.ListSubscriptionsResponse:
        return ipb.ListSubscriptionsResponse(
            thread_ids=self.hub.subscriptions(), node_id=self.hub.node_id
        )


class RedirectServicer(spb_grpc.SocketServiceServicer):
    """SocketService on a message node: Locate answers, Connect redirects to the owner."""

    def __init__(self, api: Authenticator, locate: Locator) -> None:
        self.api = api
        self._locate = locate

    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: Context
    ) -> None:
        who = await self.api.authenticate(bearer(context.invocation_metadata()))
        address, _ = await self._locate(who)
        await context.write(spb.ServerFrame(redirect=spb.Redirect(address=address)))

    async def Locate(self, request: spb.LocateRequest, context: Context) -> spb.LocateResponse:
        return await locate(self.api, self._locate, request, context)
