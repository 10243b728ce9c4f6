"""The WebSocket edge: the Connect stream's ClientFrame/ServerFrame protocol for browsers."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import grpc
from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError

from natter import convert
from natter.errors import InvalidArgument, NatterError
from natter.rpc import status_of
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from socket_svc.hub import Hub
from socket_svc.ports import MessageApi
from socket_svc.session import Session, converse, heartbeat_seconds

logger = logging.getLogger(__name__)

PATH = "/ws"
PROTOCOL = "natter.v1"
TOKEN_PREFIX = "natter.bearer."
HELLO_TIMEOUT = 30.0

# Close codes: RFC 6455 ones for broken frames, 4000 + google.rpc.Code for session ends.
NORMAL = 1000
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
APP_BASE = 4000


def close_code(code: grpc.StatusCode) -> int:
    """4000 + the google.rpc.Code (4016 is UNAUTHENTICATED); OK is a normal close."""
    return NORMAL if code == grpc.StatusCode.OK else APP_BASE + int(code.value[0])


def close_reason(reason: str, message: str) -> bytes:
    """`REASON: message`, cut to the 123 bytes a close frame allows."""
    text = f"{reason}: {message}" if reason else message
    data = text.encode()
    if len(data) > 123:
        data = data[:120].decode(errors="ignore").encode() + b"..."
    return data


def token_of(request: web.Request) -> str:
    """The bearer token offered as the subprotocol `natter.bearer.<token>`."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for item in offered.split(","):
        item = item.strip()
        if item.startswith(TOKEN_PREFIX):
            return item[len(TOKEN_PREFIX) :]
    return ""


@dataclass(frozen=True, slots=True)
class _Refused:
    """The device sent a frame that ends its socket."""

    code: int
    reason: bytes


class _WsTransport:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame: spb.ServerFrame) -> None:
        await self.ws.send_bytes(frame.SerializeToString())


class WebSocketEdge:
    """GET /ws: one device's stream, authenticated by the token in its subprotocol list."""

    def __init__(self, hub: Hub, api: MessageApi, settings: Settings) -> None:
        self.hub = hub
        self.api = api
        self.settings = settings
        self.max_frame = settings.max_frame_bytes
        self.sockets: set[web.WebSocketResponse] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.handle)]

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"UNAVAILABLE: server shutting down; reconnect")

    async def _read(
        self, ws: web.WebSocketResponse, timeout: float | None = None
    ) -> spb.ClientFrame | _Refused | None:
        """The next frame, a refusal that ends the socket, or None once the device hung up."""
        try:
            msg = await ws.receive(timeout)
        except TimeoutError:
            return _Refused(POLICY_VIOLATION, b"HELLO_TIMEOUT: no hello frame in time")
        if msg.type == WSMsgType.BINARY:
            data: bytes = msg.data
            if len(data) > self.max_frame:
                return _Refused(
                    MESSAGE_TOO_BIG,
                    close_reason(
                        "FRAME_TOO_LARGE", f"{len(data)} bytes; the limit is {self.max_frame}"
                    ),
                )
            try:
                return spb.ClientFrame.FromString(data)
            except (DecodeError, UnicodeDecodeError, ValueError) as e:
                return _Refused(
                    INVALID_PAYLOAD, close_reason("MALFORMED_FRAME", str(e) or "not a ClientFrame")
                )
        if msg.type == WSMsgType.TEXT:
            return _Refused(
                UNSUPPORTED_DATA,
                close_reason("BINARY_ONLY", "frames are binary natter.v1.ClientFrame messages"),
            )
        # CLOSE, CLOSING, CLOSED, or ERROR (aiohttp has already closed it, e.g. 1009 too big).
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            protocols=(PROTOCOL,),
            # Frames up to twice the limit arrive whole so the close can say why; beyond that
            # aiohttp closes with 1009 itself.
            max_msg_size=max(2 * self.max_frame, self.max_frame + 65536),
            heartbeat=self.settings.keepalive_seconds,
            compress=False,
        )
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            await self._serve(ws, token_of(request))
        finally:
            self.sockets.discard(ws)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _refuse(self, ws: web.WebSocketResponse, error: BaseException) -> None:
        code, message, reason = status_of(error)
        await ws.close(code=close_code(code), message=close_reason(reason, message))

    async def _serve(self, ws: web.WebSocketResponse, token: str) -> None:
        try:
            who = await self.api.authenticate(token)
        except NatterError as e:
            await self._refuse(ws, e)
            return
        first = await self._read(ws, HELLO_TIMEOUT)
        if first is None:
            return
        if isinstance(first, _Refused):
            await ws.close(code=first.code, message=first.reason)
            return
        if first.WhichOneof("payload") != "hello":
            await ws.close(
                code=POLICY_VIOLATION,
                message=close_reason("HELLO_FIRST", "the first frame must be hello"),
            )
            return
        transport = _WsTransport(ws)
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
            # Checked again once attached: a logout while the socket waited for its Hello found
            # no session to close, so it must be seen here.
            await self.api.authenticate(token)
        except NatterError as e:
            await self.hub.detach(session)
            await self._refuse(ws, e)
            return
        refused: list[_Refused] = []

        async def read() -> spb.ClientFrame | None:
            frame = await self._read(ws)
            if isinstance(frame, _Refused):
                refused.append(frame)
                return None
            if frame is not None:
                self.hub.beat(session)
            return frame

        def refusal() -> NatterError | None:
            return InvalidArgument("refused frame", "REFUSED_FRAME") if refused else None

        try:
            writer = await converse(session, first.hello, read, refusal)
        finally:
            await self.hub.detach(session)
        if ws.closed:
            return
        if refused:
            await ws.close(code=refused[0].code, message=refused[0].reason)
            return
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            error = writer.exception()
            if isinstance(error, NatterError):
                await self._refuse(ws, error)
            else:
                logger.debug("socket of device %s ended: %r", session.device_id, error)
                await ws.close(code=1011, message=b"INTERNAL: internal error")
            return
        closed = session.closed
        if closed is not None:
            if closed.error is None:
                await ws.close(code=NORMAL, message=b"")
            else:
                code, message, reason = status_of(closed.error)
                await ws.close(code=close_code(code), message=close_reason(reason, message))
