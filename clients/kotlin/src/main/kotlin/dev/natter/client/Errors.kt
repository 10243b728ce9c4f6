// Typed errors carrying natter's reason codes, from gRPC statuses and from refused stream frames.
package dev.natter.client

import com.google.protobuf.CodedInputStream
import io.grpc.Metadata
import io.grpc.Status
import io.grpc.StatusException
import io.grpc.StatusRuntimeException
import kotlinx.coroutines.CancellationException

/**
 * A failure the server (or the connection) reports. [code] is the gRPC status code, [reason]
 * natter's machine-readable reason in UPPER_SNAKE_CASE (`BAD_TOKEN`, `NOT_A_MEMBER`,
 * `RATE_LIMITED`, ...), the message a sentence for people. Each code has its own subclass,
 * so callers can catch, say, [UnauthenticatedException] and send the person to log in.
 */
open class NatterException(
    val code: Status.Code,
    val reason: String,
    message: String,
    cause: Throwable? = null,
) : Exception(message, cause) {
    /**
     * Whether the same request may succeed later (the server was unavailable, a deadline
     * passed, an internal error, or the frame budget's `RATE_LIMITED`). The connection retries
     * sends refused this way itself, with the same client_msg_id; the rest are a verdict.
     */
    val transient: Boolean
        get() = when (code) {
            Status.Code.UNAVAILABLE, Status.Code.DEADLINE_EXCEEDED, Status.Code.INTERNAL -> true
            Status.Code.RESOURCE_EXHAUSTED -> reason == "RATE_LIMITED"
            else -> false
        }

    override fun toString(): String = "${this::class.simpleName}($code $reason: $message)"

    companion object {
        private val DETAILS: Metadata.Key<ByteArray> =
            Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER)

        /** The typed exception for a code (a google.rpc code number or a gRPC Status.Code). */
        fun of(code: Status.Code, message: String, reason: String = code.name, cause: Throwable? = null): NatterException =
            when (code) {
                Status.Code.INVALID_ARGUMENT -> InvalidArgumentException(reason, message, cause)
                Status.Code.NOT_FOUND -> NotFoundException(reason, message, cause)
                Status.Code.ALREADY_EXISTS -> AlreadyExistsException(reason, message, cause)
                Status.Code.PERMISSION_DENIED -> PermissionDeniedException(reason, message, cause)
                Status.Code.UNAUTHENTICATED -> UnauthenticatedException(reason, message, cause)
                Status.Code.RESOURCE_EXHAUSTED -> ResourceExhaustedException(reason, message, cause)
                Status.Code.FAILED_PRECONDITION -> FailedPreconditionException(reason, message, cause)
                // A cancelled call is a lost connection as far as the caller can tell.
                Status.Code.UNAVAILABLE, Status.Code.CANCELLED -> UnavailableException(reason, message, cause)
                Status.Code.DEADLINE_EXCEEDED -> DeadlineExceededException(reason, message, cause)
                Status.Code.INTERNAL -> InternalException(reason, message, cause)
                else -> NatterException(code, reason, message, cause)
            }

        /** From a StreamError frame's google.rpc code number. */
        fun of(codeValue: Int, message: String, reason: String): NatterException =
            of(Status.fromCodeValue(codeValue).code, message, reason.ifEmpty { Status.fromCodeValue(codeValue).code.name })

        /** From a failed gRPC call: the status, and the ErrorInfo reason in its details. */
        fun from(t: Throwable): NatterException {
            if (t is NatterException) return t
            if (t is CancellationException) throw t
            val (status, trailers) = when (t) {
                is StatusException -> t.status to t.trailers
                is StatusRuntimeException -> t.status to t.trailers
                else -> Status.fromThrowable(t) to Status.trailersFromThrowable(t)
            }
            val reason = trailers?.get(DETAILS)?.let(::errorInfoReason) ?: status.code.name
            val message = status.description ?: status.code.name
            return of(status.code, message, reason, t)
        }

        /**
         * The `reason` of the first google.rpc.ErrorInfo in a serialized google.rpc.Status.
         * Read field by field with the lite runtime, so no google.rpc classes are needed.
         */
        internal fun errorInfoReason(statusBytes: ByteArray): String? = try {
            val status = CodedInputStream.newInstance(statusBytes)
            var found: String? = null
            while (found == null) {
                val tag = status.readTag()
                if (tag == 0) break
                if (tag == (3 shl 3 or 2)) { // repeated google.protobuf.Any details = 3
                    val any = CodedInputStream.newInstance(status.readByteArray())
                    var typeUrl = ""
                    var value: ByteArray? = null
                    while (true) {
                        val t = any.readTag()
                        if (t == 0) break
                        when (t) {
                            1 shl 3 or 2 -> typeUrl = any.readString()
                            2 shl 3 or 2 -> value = any.readByteArray()
                            else -> any.skipField(t)
                        }
                    }
                    if (typeUrl.endsWith("/google.rpc.ErrorInfo") && value != null) {
                        val info = CodedInputStream.newInstance(value)
                        while (true) {
                            val t = info.readTag()
                            if (t == 0) break
                            if (t == (1 shl 3 or 2)) { found = info.readString(); break } // reason = 1
                            info.skipField(t)
                        }
                    }
                } else {
                    status.skipField(tag)
                }
            }
            found
        } catch (_: java.io.IOException) {
            null
        }
    }
}

class InvalidArgumentException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.INVALID_ARGUMENT, reason, message, cause)

class NotFoundException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.NOT_FOUND, reason, message, cause)

class AlreadyExistsException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.ALREADY_EXISTS, reason, message, cause)

class PermissionDeniedException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.PERMISSION_DENIED, reason, message, cause)

/** The token is missing, wrong or revoked (`NO_TOKEN`, `BAD_TOKEN`, `DEVICE_LOGGED_OUT`), or the password is (`BAD_CREDENTIALS`): log in again. */
class UnauthenticatedException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.UNAUTHENTICATED, reason, message, cause)

class ResourceExhaustedException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.RESOURCE_EXHAUSTED, reason, message, cause)

class FailedPreconditionException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.FAILED_PRECONDITION, reason, message, cause)

class UnavailableException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.UNAVAILABLE, reason, message, cause)

class DeadlineExceededException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.DEADLINE_EXCEEDED, reason, message, cause)

class InternalException(reason: String, message: String, cause: Throwable? = null) :
    NatterException(Status.Code.INTERNAL, reason, message, cause)
