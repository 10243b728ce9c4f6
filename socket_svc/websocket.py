"""The WebSocket edge: the Connect stream's ClientFrame/ServerFrame protocol for browsers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import grpc
from aiohttp import WSMsgType, web
from google.protobuf.message import DecodeError

from natter.errors import InvalidArgument, ResourceExhausted
from natter.rpc import status_of
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from socket_svc import stream
from socket_svc.frames import Frame, encode
from socket_svc.hub import Hub
from socket_svc.ports import MessageApi

PATH = "/ws"
PROTOCOL = "natter.v1"
TOKEN_PREFIX = "natter.bearer."

# Close codes: RFC 6455 ones for broken frames, 4000 + google.rpc.Code for session ends.
NORMAL = 1000
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
APP_BASE = 4000
# A refused frame closes with the RFC 6455 code for what was wrong with it; anything else
# that broke the stream's rules (Hello not first, or not in time) is a policy violation.
REFUSED = {
    "FRAME_TOO_LARGE": MESSAGE_TOO_BIG,
    "MALFORMED_FRAME": INVALID_PAYLOAD,
    "BINARY_ONLY": UNSUPPORTED_DATA,
}


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


class _WsTransport:
    """A WebSocket as a stream.Transport: binary frames in and out, the rest refused."""

    def __init__(self, ws: web.WebSocketResponse, max_frame: int) -> None:
        self.ws = ws
        self.max_frame = max_frame

    async def receive(self) -> stream.Incoming:
        msg = await self.ws.receive()
        if msg.type == WSMsgType.BINARY:
            data: bytes = msg.data
            if len(data) > self.max_frame:
                return stream.Refused(
                    ResourceExhausted(
                        f"{len(data)} bytes; the limit is {self.max_frame}", "FRAME_TOO_LARGE"
                    )
                )
            try:
                return spb.ClientFrame.FromString(data)
            except (DecodeError, UnicodeDecodeError, ValueError) as e:
                return stream.Refused(
                    InvalidArgument(str(e) or "not a ClientFrame", "MALFORMED_FRAME")
                )
        if msg.type == WSMsgType.TEXT:
            return stream.Refused(
                InvalidArgument("frames are binary natter.v1.ClientFrame messages", "BINARY_ONLY")
            )
        # CLOSE, CLOSING, CLOSED, or ERROR (aiohttp has already closed it, e.g. 1009 too big).
        return None

    async def send(self, frame: Frame) -> None:
        await self.ws.send_bytes(encode(frame))


def close_of(end: stream.End) -> tuple[int, bytes]:
    """The close code and reason that tell a device how its stream ended."""
    if end.error is None:
        return NORMAL, b""
    code, message, reason = status_of(end.error)
    text = close_reason(reason, message)
    if end.violation:
        return REFUSED.get(reason, POLICY_VIOLATION), text
    if code == grpc.StatusCode.INTERNAL:
        return INTERNAL_ERROR, text
    return close_code(code), text


class WebSocketEdge:
    """GET /ws: one device's stream, authenticated by the token in its subprotocol list."""

    def __init__(
        self,
        hub: Hub,
        api: MessageApi,
        settings: Settings,
        address_of: Callable[[web.Request], str] = lambda r: r.remote or "",
    ) -> None:
        self.hub = hub
        self.api = api
        self.settings = settings
        self.address_of = address_of
        self.max_frame = settings.max_frame_bytes
        self.sockets: set[web.WebSocketResponse] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.handle)]

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"UNAVAILABLE: server shutting down; reconnect")

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
            transport = _WsTransport(ws, self.max_frame)
            end = await stream.serve(
                self.hub,
                self.api,
                self.settings,
                transport,
                token_of(request),
                self.address_of(request),
                "websocket",
            )
            if not ws.closed:
                code, reason = close_of(end)
                await ws.close(code=code, message=reason)
        finally:
            self.sockets.discard(ws)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws
