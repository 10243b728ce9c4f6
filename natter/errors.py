"""Domain errors shared by every service and the SDK; each maps to one gRPC status."""

from __future__ import annotations


class NatterError(Exception):
    """Base of every error a caller should see; `reason` is machine-readable."""

    reason: str = "ERROR"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(NatterError):
    reason = "INVALID_ARGUMENT"


class NotFound(NatterError):
    reason = "NOT_FOUND"


class AlreadyExists(NatterError):
    reason = "ALREADY_EXISTS"


class PermissionDenied(NatterError):
    reason = "PERMISSION_DENIED"


class Unauthenticated(NatterError):
    reason = "UNAUTHENTICATED"


class ResourceExhausted(NatterError):
    reason = "RESOURCE_EXHAUSTED"


class FailedPrecondition(NatterError):
    reason = "FAILED_PRECONDITION"


class Unavailable(NatterError):
    reason = "UNAVAILABLE"


class DeadlineExceeded(NatterError):
    reason = "DEADLINE_EXCEEDED"


class Internal(NatterError):
    reason = "INTERNAL"


def transient(error: BaseException) -> bool:
    """Whether a failure says nothing about the request itself: the same one may succeed later.

    Unavailable, DeadlineExceeded, Internal (and anything that is not a natter error, which
    devices are told as INTERNAL) and the frame budget's RATE_LIMITED. Clients retry these
    with the same client_msg_id; the others are a verdict on the request.
    """
    if isinstance(error, ResourceExhausted):
        return error.reason == "RATE_LIMITED"
    return isinstance(error, Unavailable | DeadlineExceeded | Internal) or not isinstance(
        error, NatterError
    )
