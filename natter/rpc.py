"""gRPC plumbing shared by every service: one error table, the server interceptor, auth metadata."""

from __future__ import annotations

import contextvars
import hmac
import inspect
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from natter import errors

logger = logging.getLogger(__name__)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The address of the client a request came from: its IP, or what a trusted proxy (the web
# gateway of this process, a configured reverse proxy) says it was. "" when unknown.
client_address: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="")

# Carries a request's (or a device stream's) id to the processes it calls, in cluster mode.
REQUEST_ID_HEADER = "x-natter-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
# Set by this process's web gateway: the browser's address, vouched for by a per-process key.
GATEWAY_KEY_HEADER = "x-natter-gateway-key"
CLIENT_ADDRESS_HEADER = "x-natter-client-address"

DOMAIN = "natter.dev"

# Resolved along the exception's MRO; anything unmapped is INTERNAL and logged.
STATUS_OF: dict[type[errors.NatterError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}
ERROR_OF: dict[grpc.StatusCode, type[errors.NatterError]] = {v: k for k, v in STATUS_OF.items()}


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(code, message, reason) for an exception; unknown exceptions are INTERNAL."""
    for klass in type(error).__mro__:
        code = STATUS_OF.get(klass)
        if code is not None:
            assert isinstance(error, errors.NatterError)
            return code, error.message, error.reason
    if isinstance(error, NotImplementedError):
        # A generated servicer's default (a standard service's method the library lacks).
        return grpc.StatusCode.UNIMPLEMENTED, "this method is not implemented", "UNIMPLEMENTED"
    return grpc.StatusCode.INTERNAL, "internal error", "INTERNAL"


def rich_status(code: grpc.StatusCode, message: str, reason: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(proto)


def error_from_rpc(e: grpc.aio.AioRpcError | grpc.RpcError) -> errors.NatterError:
    """Turn a status back into the domain error it came from (used by typed clients and the SDK)."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    message = (e.details() if hasattr(e, "details") else None) or str(code)
    reason = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    try:
        status = rpc_status.from_call(e)  # type: ignore[arg-type]
    except Exception:
        status = None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
    klass = ERROR_OF.get(
        code, errors.Unavailable if code == grpc.StatusCode.CANCELLED else errors.Internal
    )
    return klass(message, reason)


def code_name(number: int) -> str:
    return str(code_pb2.Code.Name(number)) if number in code_pb2.Code.values() else str(number)


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


def _metadata(metadata: Any, key: str) -> str:
    for k, value in metadata or ():
        if k == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string: "ipv4:1.2.3.4:5" -> "1.2.3.4", "ipv6:[::1]:5" -> "::1"."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0]
        return host.strip("[]")
    return kind or ""


class ClientAddresses:
    """Decides the client address of a call: the peer, unless a trusted proxy speaks for it.

    The web gateway of the same process passes the browser's address with a random key
    made at start (nobody else knows it); a reverse proxy listed in `trusted_proxies`
    passes it as the last entry of x-forwarded-for.
    """

    def __init__(self, trusted_proxies: Sequence[str] = (), gateway_key: str = "") -> None:
        self.networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.gateway_key = gateway_key

    def trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in n for n in self.networks)

    def of(self, peer: str, metadata: Any) -> str:
        host = peer_host(peer)
        key = _metadata(metadata, GATEWAY_KEY_HEADER)
        if key and self.gateway_key and hmac.compare_digest(key, self.gateway_key):
            return _metadata(metadata, CLIENT_ADDRESS_HEADER)[:64] or host
        if self.networks and self.trusted(host):
            forwarded = _metadata(metadata, "x-forwarded-for")
            if forwarded:
                return forwarded.rsplit(",", 1)[-1].strip()[:64] or host
        return host


class _MalformedLog:
    """At most one log line a minute about requests that did not parse (anyone can send them)."""

    PERIOD = 60.0

    def __init__(self) -> None:
        self.count = 0
        self.last = -self.PERIOD

    def note(self, method: str, peer: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.PERIOD:
            logger.warning(
                "refused %d malformed requests in the last minute (latest: %s from %s)",
                self.count,
                method,
                peer_host(peer),
            )
            self.count = 0
            self.last = now


MALFORMED_LOG = _MalformedLog()


def bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.lower().startswith("bearer "):
                return text[7:].strip()
            return ""
    return ""


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
    """End a call with the status of `error` and its ErrorInfo reason (raises AbortError).

    Nothing is sent when the call's status already went out: an abort whose status could
    not be sent, because the peer had gone, must not be followed by a second one.
    """
    if context.done():
        return
    code, message, reason = status_of(error)
    status = rich_status(code, message, reason)
    await context.abort(code, message, trailing_metadata=status.trailing_metadata)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
    if context.done():
        # Raised after the status went out (typically an abort that failed to reach a peer
        # that had cancelled): there is nobody left to tell, and nothing went wrong here.
        logger.debug("request %s ended after its status: %r", request_id.get(), error)
        return
    if status_of(error)[0] == grpc.StatusCode.INTERNAL:
        logger.error("request %s failed", request_id.get(), exc_info=error)
    await abort(context, error)


def _parse(deserializer: Callable[[bytes], Any] | None, raw: bytes) -> Any:
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except (DecodeError, UnicodeDecodeError, ValueError) as e:
        raise errors.InvalidArgument(f"malformed request: {e}", "MALFORMED") from e


class Malformed:
    """Stands in for a stream frame that did not parse, so the stream can answer and go on."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except (DecodeError, UnicodeDecodeError, ValueError) as e:
            return Malformed(str(e) or type(e).__name__)

    return parse


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id and client address, parses requests, maps domain errors.

    A request that does not parse is INVALID_ARGUMENT (reason MALFORMED) on every method,
    natter's own and the standard health and reflection services alike, and costs at most
    one log line a minute, never a traceback. A request id from a cluster peer
    (`trust_request_id`, internal listeners) is kept, so one id follows a request across
    processes; otherwise each call or stream gets a new one.
    """

    def __init__(
        self, addresses: ClientAddresses | None = None, trust_request_id: bool = False
    ) -> None:
        self.addresses = addresses or ClientAddresses()
        self.trust_request_id = trust_request_id
        # The wrapped handler of each method, made once: a stream holds its handler for its
        # whole life, and tens of thousands of idle streams each held their own closures.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def _begin(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = context.invocation_metadata()
        given = _metadata(metadata, REQUEST_ID_HEADER) if self.trust_request_id else ""
        request_id.set(given if _REQUEST_ID.match(given) else new_request_id())
        address = self.addresses.of(context.peer() or "", metadata)
        client_address.set(address)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("call %s from %s", method, address)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        deser = handler.request_deserializer

        def begin(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            self._begin(method, context)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                begin(context)
                try:
                    return await inner(_parse(deser, raw), context)
                except errors.NatterError as e:
                    if e.reason == "MALFORMED" and not method.startswith("/natter."):
                        MALFORMED_LOG.note(method, context.peer() or "")
                    await _abort(context, e)
                except (grpc.aio.AbortError, grpc.aio.UsageError, AssertionError):
                    raise
                except Exception as e:
                    await _abort(context, e)

            return handler._replace(unary_unary=unary, request_deserializer=None)
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=_unary_stream(handler.unary_stream, deser, method, begin),
                request_deserializer=None,
            )
        if handler.stream_stream is not None:
            inner_s = handler.stream_stream
            if inspect.isasyncgenfunction(inner_s):
                # Server reflection: not ours; only what does not parse is answered here.
                return handler._replace(
                    stream_stream=_checked_stream(inner_s, method, begin),
                    request_deserializer=_lenient(deser),
                )
            ours = method.startswith("/natter.")

            async def stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                begin(context)
                try:
                    return await inner_s(requests, context)
                except errors.NatterError as e:
                    await _abort(context, e)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception as e:
                    await _abort(context, e)

            if not ours:
                return handler._replace(stream_stream=stream)
            lenient = _lenient(deser)
            return handler._replace(stream_stream=stream, request_deserializer=lenient)
        return handler


def _malformed(
    method: str, context: grpc.aio.ServicerContext[Any, Any], error: str
) -> errors.InvalidArgument:
    MALFORMED_LOG.note(method, context.peer() or "")
    return errors.InvalidArgument(f"malformed request: {error}", "MALFORMED")


def _unary_stream(
    inner: Callable[..., Any],
    deser: Callable[[bytes], Any] | None,
    method: str,
    begin: Callable[[grpc.aio.ServicerContext[Any, Any]], None],
) -> Callable[..., Any]:
    """A server-streaming handler (Health/Watch) whose request is parsed here first."""
    if inspect.isasyncgenfunction(inner):

        async def generator(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            begin(context)
            try:
                request = _parse(deser, raw)
            except errors.InvalidArgument as e:
                await _abort(context, _malformed(method, context, e.message))
                return
            async for response in inner(request, context):
                yield response

        return generator

    async def coroutine(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        begin(context)
        try:
            request = _parse(deser, raw)
        except errors.InvalidArgument as e:
            await _abort(context, _malformed(method, context, e.message))
            return None
        try:
            return await inner(request, context)
        except errors.NatterError as e:
            await _abort(context, e)
        except (grpc.aio.AbortError, grpc.aio.UsageError, AssertionError):
            raise
        except Exception as e:
            await _abort(context, e)
        return None

    return coroutine


def _checked_stream(
    inner: Callable[..., Any],
    method: str,
    begin: Callable[[grpc.aio.ServicerContext[Any, Any]], None],
) -> Callable[..., Any]:
    """A bidirectional generator handler (reflection) fed only requests that parsed."""

    async def generator(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        begin(context)

        async def parsed() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Malformed):
                    await _abort(context, _malformed(method, context, request.error))
                    return
                yield request

        async for response in inner(parsed(), context):
            yield response

    return generator


class SecretInterceptor(grpc.aio.ServerInterceptor):
    """Internal listeners: every call must carry the cluster secret."""

    def __init__(self, secret: str, header: str = "x-natter-cluster-secret") -> None:
        self.secret = secret
        self.header = header

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        given = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == self.header:
                given = value.decode() if isinstance(value, bytes) else str(value)
        if self.secret and hmac.compare_digest(given.encode(), self.secret.encode()):
            return await continuation(handler_call_details)

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "internal API: cluster secret required"
            )

        return grpc.unary_unary_rpc_method_handler(deny)


class RequestIdClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Service-to-service calls carry the id of the request (or stream) they serve."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        rid = request_id.get()
        if rid != "-":
            metadata = grpc.aio.Metadata(*tuple(client_call_details.metadata or ()))
            metadata.add(REQUEST_ID_HEADER, rid)
            client_call_details = client_call_details._replace(metadata=metadata)  # type: ignore[attr-defined]
        return await continuation(client_call_details, request)
