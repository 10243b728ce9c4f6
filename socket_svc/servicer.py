"""gRPC servicers of socket_svc: the public Connect stream and Locate, the internal Deliver."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from natter import convert
from natter.errors import InvalidArgument, NatterError
from natter.rpc import Malformed, bearer, rich_status, status_of
from natter.settings import Settings
from natter.v1 import socket_internal_service_pb2 as ipb
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from socket_svc.hub import Hub
from socket_svc.ports import MessageApi
from socket_svc.session import Session, converse, error_frame, heartbeat_seconds

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class _GrpcTransport:
    def __init__(self, context: Context) -> None:
        self.context = context

    async def send(self, frame: spb.ServerFrame) -> None:
        await self.context.write(frame)


class SocketServicer(spb_grpc.SocketServiceServicer):
    def __init__(
        self,
        hub: Hub,
        api: MessageApi,
        settings: Settings,
        locate: Callable[[str], Any],
    ) -> None:
        self.hub = hub
        self.api = api
        self.settings = settings
        self._locate = locate

    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: Context
    ) -> None:
        token = bearer(context.invocation_metadata())
        who = await self.api.authenticate(token)
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if isinstance(first, Malformed) or first.WhichOneof("payload") != "hello":
            raise InvalidArgument("the first frame must be hello", "HELLO_FIRST")
        transport = _GrpcTransport(context)
        session = Session(who, self.api, transport, self.settings, self.hub.ack_pending)
        await transport.send(
            spb.ServerFrame(
                welcome=spb.Welcome(
                    user=convert.user(who.user),
                    device_id=who.device_id,
                    heartbeat_interval_seconds=heartbeat_seconds(self.settings),
                    node_id=self.hub.node_id,
                )
            )
        )
        await self.hub.attach(session)
        try:
            # Checked again once attached: a logout while the stream waited for its Hello (or
            # before attach) found no session to close, so it must be seen here.
            await self.api.authenticate(token)
        except Exception:
            await self.hub.detach(session)
            raise

        async def read() -> spb.ClientFrame | None:
            while True:
                frame = await context.read()
                if frame is grpc.aio.EOF:
                    return None
                if isinstance(frame, Malformed):
                    session.enqueue(
                        error_frame(
                            InvalidArgument(f"malformed frame: {frame.error}", "MALFORMED_FRAME")
                        )
                    )
                    continue
                self.hub.beat(session)
                return frame  # type: ignore[no-any-return]

        try:
            writer = await converse(session, first.hello, read)
        finally:
            await self.hub.detach(session)
        if context.cancelled():
            return
        if writer.done() and not writer.cancelled():
            error = writer.exception()
            if isinstance(error, NatterError):
                raise error
            if error is not None:
                logger.debug("stream of device %s ended: %r", session.device_id, error)
                return
        closed = session.closed
        if closed is not None and closed.error is not None:
            code, message, reason = status_of(closed.error)
            status = rich_status(code, message, reason)
            await context.abort(code, message, trailing_metadata=status.trailing_metadata)

    async def Locate(self, request: spb.LocateRequest, context: Context) -> spb.LocateResponse:
        address, node_id = await self._locate(request.username)
        return spb.LocateResponse(address=address, node_id=node_id)


class SocketInternalServicer(ipb_grpc.SocketInternalServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Deliver(self, request: ipb.DeliverRequest, context: Context) -> ipb.DeliverResponse:
        await self.hub.deliver(convert.deliveries_of(request.deliveries))
        return ipb.DeliverResponse()

    async def ListSubscriptions(
        self, request: ipb.ListSubscriptionsRequest, context: Context
    ) -> ipb.ListSubscriptionsResponse:
        return ipb.ListSubscriptionsResponse(
            thread_ids=self.hub.subscriptions(), node_id=self.hub.node_id
        )


class RedirectServicer(spb_grpc.SocketServiceServicer):
    """SocketService on a message node: Locate answers, Connect redirects to the owner."""

    def __init__(self, api: MessageApi, locate: Callable[[str], Any]) -> None:
        self.api = api
        self._locate = locate

    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: Context
    ) -> None:
        who = await self.api.authenticate(bearer(context.invocation_metadata()))
        address, _ = await self._locate(who.user.username)
        await context.write(spb.ServerFrame(redirect=spb.Redirect(address=address)))

    async def Locate(self, request: spb.LocateRequest, context: Context) -> spb.LocateResponse:
        address, node_id = await self._locate(request.username)
        return spb.LocateResponse(address=address, node_id=node_id)
