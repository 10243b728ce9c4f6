"""The Connect unary gateway: browsers' POST /{service}/{method} forwarded to the public gRPC port."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from natter.rpc import CLIENT_ADDRESS_HEADER, GATEWAY_KEY_HEADER

# Importing the generated modules fills the default descriptor pool with every public service.
from natter.v1 import (
    account_service_pb2,
    contact_service_pb2,
    group_service_pb2,
    media_service_pb2,
    presence_service_pb2,
    push_service_pb2,
    socket_service_pb2,
    thread_service_pb2,
)

logger = logging.getLogger(__name__)

PUBLIC_PACKAGE = "natter.v1."
PROTO = "application/proto"
JSON = "application/json"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 120.0

# Loaded for their side effect on the descriptor pool (see above).
_MODULES = (
    account_service_pb2,
    contact_service_pb2,
    group_service_pb2,
    media_service_pb2,
    presence_service_pb2,
    push_service_pb2,
    socket_service_pb2,
    thread_service_pb2,
)

# The Connect protocol's HTTP status for each code (connectrpc.com/docs/protocol#error-codes).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def _printable(text: str) -> str:
    """What a metadata value may hold: printable ASCII."""
    return "".join(ch for ch in text if " " <= ch <= "~")


def connect_code(code: grpc.StatusCode) -> str:
    """The Connect name of a gRPC code: INVALID_ARGUMENT -> invalid_argument, CANCELLED -> canceled."""
    return "canceled" if code == grpc.StatusCode.CANCELLED else code.name.lower()


def loopback(address: str) -> str:
    """host:port to dial from this process: a wildcard listen address becomes loopback."""
    host, port = address.rsplit(":", 1)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Method:
    """One public unary RPC, with the message classes to translate JSON."""

    path: str
    request: type[Message]
    response: type[Message]


class ConnectError(Exception):
    """A failure answered as Connect's JSON error body."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        http_status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.http_status = http_status or HTTP_STATUS.get(code, 500)
        self.headers = headers or {}


def error_response(error: ConnectError) -> web.Response:
    body: dict[str, Any] = {"code": connect_code(error.code), "message": error.message}
    if error.reason:
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain="natter.dev")
        body["details"] = [
            {
                "type": info.DESCRIPTOR.full_name,
                "value": base64.b64encode(info.SerializeToString()).decode().rstrip("="),
                "debug": {"reason": error.reason, "domain": "natter.dev"},
            }
        ]
    return web.Response(
        status=error.http_status, text=json.dumps(body), content_type=JSON, headers=error.headers
    )


def _reason_of(e: grpc.aio.AioRpcError) -> str:
    for key, value in e.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except DecodeError:
                return ""
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


class Gateway:
    """Speaks the Connect protocol's unary form; every call goes through the real gRPC stack."""

    def __init__(
        self,
        grpc_address: str,
        max_request_bytes: int,
        key: str = "",
        address_of: Callable[[web.Request], str] = lambda r: r.remote or "",
    ) -> None:
        self.target = loopback(grpc_address)
        self.max_request_bytes = max_request_bytes
        # Vouches for the browser's address to the gRPC stack of this process.
        self.key = key
        self.address_of = address_of
        self._channel: grpc.aio.Channel | None = None
        self._methods: dict[tuple[str, str], Method | None] = {}

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", self.max_request_bytes),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def routes(self) -> Sequence[web.RouteDef]:
        return [web.post("/{service}/{method}", self.handle)]

    def resolve(self, service: str, method: str) -> Method | None:
        """A unary method of a public natter.v1 service, or None (internal, streaming, unknown)."""
        key = (service, method)
        if key in self._methods:
            return self._methods[key]
        found: Method | None = None
        if service.startswith(PUBLIC_PACKAGE) and not service.endswith("InternalService"):
            try:
                sd = descriptor_pool.Default().FindServiceByName(service)
            except KeyError:
                sd = None
            md = sd.methods_by_name.get(method) if sd is not None else None
            if md is not None and not md.client_streaming and not md.server_streaming:
                found = Method(
                    f"/{service}/{method}",
                    message_factory.GetMessageClass(md.input_type),
                    message_factory.GetMessageClass(md.output_type),
                )
        if len(self._methods) < 1024:  # bounded: unknown names come from the network
            self._methods[key] = found
        return found

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except ConnectError as e:
            return error_response(e)

    async def _handle(self, request: web.Request) -> web.Response:
        service, name = request.match_info["service"], request.match_info["method"]
        method = self.resolve(service, name)
        if method is None:
            raise ConnectError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{service}/{name} is not a public unary method",
                "NO_SUCH_METHOD",
                http_status=404,
            )
        kind = request.content_type
        if kind not in (PROTO, JSON):
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"content type {kind or 'none'!r} is not supported; use {PROTO} or {JSON}",
                "UNSUPPORTED_MEDIA_TYPE",
                http_status=415,
                headers={"Accept-Post": f"{PROTO}, {JSON}"},
            )
        version = request.headers.get("Connect-Protocol-Version")
        if version is not None and version != "1":
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Connect-Protocol-Version {version!r} is not supported; use 1",
                "BAD_PROTOCOL_VERSION",
            )
        encoding = request.headers.get("Content-Encoding", "identity")
        if encoding != "identity":
            raise ConnectError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"content encoding {encoding!r} is not supported",
                "NO_COMPRESSION",
            )
        body = await self._body(request)
        raw = body if kind == PROTO else self._from_json(method, body)
        timeout = self._timeout(request)
        metadata: list[tuple[str, str]] = []
        auth = request.headers.get("Authorization")
        if auth:
            metadata.append(("authorization", auth))
        if self.key:
            metadata.append((GATEWAY_KEY_HEADER, self.key))
            metadata.append((CLIENT_ADDRESS_HEADER, _printable(self.address_of(request))))
        agent = _printable(request.headers.get("User-Agent", ""))[:200]
        if agent:
            metadata.append(("x-natter-user-agent", "web " + agent))
        assert self._channel is not None, "gateway not started"
        # No serializers: bytes in, bytes out.
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            method.path
        )
        try:
            reply: bytes = await call(raw, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.INTERNAL:
                logger.warning("gateway call %s failed: %s", method.path, e.details())
            raise ConnectError(code, e.details() or code.name.lower(), _reason_of(e)) from None
        if kind == PROTO:
            return web.Response(body=reply, content_type=PROTO)
        out = method.response.FromString(reply)
        return web.Response(text=json_format.MessageToJson(out, indent=None), content_type=JSON)

    async def _body(self, request: web.Request) -> bytes:
        limit = self.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_big(request.content_length)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise self._too_big(size)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_big(self, size: int) -> ConnectError:
        return ConnectError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request of {size} bytes exceeds the {self.max_request_bytes}-byte limit",
            "REQUEST_TOO_LARGE",
        )

    @staticmethod
    def _from_json(method: Method, body: bytes) -> bytes:
        msg = method.request()
        try:
            json_format.Parse(
                body.decode("utf-8") if body else "{}", msg, ignore_unknown_fields=True
            )
        except (json_format.ParseError, UnicodeDecodeError) as e:
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT, f"malformed JSON request: {e}", "MALFORMED"
            ) from None
        return msg.SerializeToString()

    @staticmethod
    def _timeout(request: web.Request) -> float:
        header = request.headers.get("Connect-Timeout-Ms")
        if header is None:
            return DEFAULT_TIMEOUT
        if not header.isdigit() or len(header) > 10:
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Connect-Timeout-Ms {header!r} is not a whole number",
                "BAD_TIMEOUT",
            )
        return min(max(int(header), 1) / 1000, MAX_TIMEOUT)
