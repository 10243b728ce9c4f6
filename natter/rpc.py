"""gRPC plumbing shared by every service: one error table, the server interceptor, auth metadata."""

from __future__ import annotations

import contextvars
import hmac
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from natter import errors

logger = logging.getLogger(__name__)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

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
    """Sets a request id, parses requests (malformed → INVALID_ARGUMENT), maps domain errors."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        deser = handler.request_deserializer
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                request_id.set(uuid.uuid4().hex[:12])
                try:
                    return await inner(_parse(deser, raw), context)
                except errors.NatterError as e:
                    await _abort(context, e)
                except (grpc.aio.AbortError, grpc.aio.UsageError, AssertionError):
                    raise
                except Exception as e:
                    await _abort(context, e)

            return handler._replace(unary_unary=unary, request_deserializer=None)
        if handler.stream_stream is not None:
            inner_s = handler.stream_stream
            if inspect.isasyncgenfunction(inner_s):
                return handler  # e.g. server reflection: not ours, nothing to map
            ours = handler_call_details.method.startswith("/natter.")

            async def stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                request_id.set(uuid.uuid4().hex[:12])
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
