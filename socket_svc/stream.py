"""The device-stream protocol, written once for every transport: hello, attach, session, end.

In the manner of sans-I/O libraries (h11, wsproto), nothing here touches a socket. A
transport (the gRPC Connect stream, the WebSocket) moves frames in and out through the
`Transport` port and turns the `End` it is handed into its own close: a gRPC status with an
ErrorInfo reason, or a WebSocket close code.

The rules, in order: authenticate the bearer token; the first frame must be Hello, within
`hello_timeout_seconds`; answer Welcome; attach to the hub (live pushes buffer from here
on); authenticate again (a logout while the stream waited found no session to close); run
the session until either side ends it; detach; let sends still in flight finish. When the
peer goes away (`hang_up`), the stream ends at its next wait on the transport, never
halfway through a call to message_svc.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from natter import convert
from natter import domain as d
from natter.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NatterError,
    ResourceExhausted,
)
from natter.rpc import Malformed
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from socket_svc.frames import Frame
from socket_svc.hub import Hub, Moved
from socket_svc.ports import MessageApi
from socket_svc.session import Session, heartbeat_seconds

logger = logging.getLogger(__name__)

# How long a closing session's writer may take to send what is already queued.
CLOSE_GRACE = 5.0
# How long a frame being handled when the stream ends may take to finish.
FRAME_GRACE = 5.0
# How long sends still in flight may take to finish once the stream has ended.
SEND_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame the transport will not carry (not binary, too big, unparsable): ends the stream."""

    error: NatterError


# What a transport receives: a frame; one that did not parse (`natter.rpc.Malformed`: the
# device is told and the stream goes on); one that ends the stream; None once it hung up.
Incoming = spb.ClientFrame | Malformed | Refused | None


class Transport(Protocol):
    """A device stream as the protocol sees it: the next frame in, a frame out."""

    async def receive(self) -> Incoming: ...
    async def send(self, frame: Frame) -> None: ...


@dataclass(frozen=True, slots=True)
class End:
    """How a stream ended: `error` None for a normal end, else what the device is told.

    `violation` marks an end because the device broke the stream's own rules — no Hello
    first or none in time, a frame the transport refused — which the WebSocket closes with
    an RFC 6455 code rather than 4000 + code.
    """

    error: NatterError | None = None
    violation: bool = False


class DeviceStream:
    """One device's stream from its first frame to its end, over any transport."""

    __slots__ = (
        "_gone",
        "_hello_wait",
        "_interrupted",
        "_reader",
        "_receiving",
        "_refused",
        "_stopping",
        "address",
        "api",
        "hub",
        "kind",
        "session",
        "settings",
        "token",
        "transport",
    )

    def __init__(
        self,
        hub: Hub,
        api: MessageApi,
        settings: Settings,
        transport: Transport,
        token: str,
        address: str = "",
        kind: str = "grpc",
    ) -> None:
        self.hub = hub
        self.api = api
        self.settings = settings
        self.transport = transport
        self.token = token
        self.address = address
        self.kind = kind
        self.session: Session | None = None
        self._gone = False
        self._hello_wait: asyncio.Task[Incoming] | None = None
        # The task reading the device's frames (the stream's own), while it reads them.
        self._reader: asyncio.Task[Any] | None = None
        self._interrupted = False
        self._receiving = False
        self._stopping = False
        self._refused: Refused | None = None

    def hang_up(self) -> None:
        """The peer went away: end at the next wait on the transport, not halfway through a call."""
        self._gone = True
        if self._hello_wait is not None:
            self._hello_wait.cancel()
        if self.session is not None:
            self.session.close()
        self._interrupt()

    def _interrupt(self) -> None:
        """Stop the reader if it waits for the device's next frame (never mid-frame)."""
        if self._reader is not None and self._receiving and not self._interrupted:
            self._interrupted = True
            self._reader.cancel()

    async def run(self) -> End:
        pending = self.hub.pending
        if not pending.enter(self.address):
            self.hub.metrics.rate_limited.labels("pending_streams").inc()
            return End(
                ResourceExhausted(
                    f"too many streams from your address are waiting to say hello "
                    f"(at most {pending.cap})",
                    "TOO_MANY_PENDING_STREAMS",
                )
            )
        gauge = self.hub.metrics.streams.labels(self.kind, "pending")
        gauge.inc()
        try:
            try:
                who = await self.api.authenticate(self.token)
            except NatterError as e:
                return End(e)
            hello = await self._hello()
        finally:
            pending.leave(self.address)
            gauge.dec()
        if isinstance(hello, End):
            return hello
        opened = self.hub.metrics.streams.labels(self.kind, "open")
        opened.inc()
        try:
            return await self._run(who, hello)
        finally:
            opened.dec()

    async def _run(self, who: d.Principal, hello: spb.Hello) -> End:
        session = Session(
            who,
            self.api,
            self.transport,
            self.settings,
            self.hub.ack_pending,
            self.hub.metrics,
            self.hub,
        )
        session.foreground = hello.foreground
        try:
            await self.transport.send(self._welcome(who))
        except Exception as e:  # the device left before its Welcome reached it
            logger.debug("stream of device %s lost before welcome: %r", who.device_id, e)
            return End()
        if self._gone:
            return End()
        self.session = session
        try:
            await self.hub.attach(session)
        except Moved as moved:
            # Another server owns this user now: the device goes there, as after a ring change.
            try:
                await self.transport.send(
                    spb.ServerFrame(redirect=spb.Redirect(address=moved.address))
                )
            except Exception as e:
                logger.debug("redirect of device %s lost: %r", who.device_id, e)
            return End()
        except NatterError as e:
            return End(e)
        try:
            # Checked again once attached: a logout while the stream waited for its Hello (or
            # before attach) found no session to close, so it must be seen here.
            await self.api.authenticate(self.token)
        except BaseException as e:
            await self.hub.detach(session)
            if isinstance(e, NatterError):
                return End(e)
            raise
        try:
            if self._gone:  # went away while attaching: nothing to sync
                return End()
            return await self._converse(session, hello)
        finally:
            await self.hub.detach(session)
            await session.finish(SEND_GRACE)

    def _welcome(self, who: d.Principal) -> spb.ServerFrame:
        return spb.ServerFrame(
            welcome=spb.Welcome(
                user=convert.user(who.user),
                device_id=who.device_id,
                heartbeat_interval_seconds=heartbeat_seconds(self.settings),
                node_id=self.hub.node_id,
            )
        )

    async def _hello(self) -> spb.Hello | End:
        """The first frame, which must be Hello and arrive within hello_timeout_seconds."""
        limit = self.settings.hello_timeout_seconds
        waiting = self._hello_wait = asyncio.create_task(self.transport.receive())
        try:
            done, _ = await asyncio.wait({waiting}, timeout=limit)
        finally:
            self._hello_wait = None
            await _settle(waiting)
        if self._gone:
            return End()
        if not done:
            late = DeadlineExceeded(f"no hello frame within {limit:g} s", "HELLO_TIMEOUT")
            return End(late, violation=True)
        if waiting.cancelled():
            return End()
        lost = waiting.exception()
        if lost is not None:
            logger.debug("stream lost before hello: %r", lost)
            return End()
        first = waiting.result()
        if first is None:
            return End()
        if isinstance(first, Refused):
            return End(first.error, violation=True)
        if isinstance(first, Malformed) or first.WhichOneof("payload") != "hello":
            wrong = InvalidArgument("the first frame must be hello", "HELLO_FIRST")
            return End(wrong, violation=True)
        return first.hello

    async def _converse(self, session: Session, hello: spb.Hello) -> End:
        """Run the session until either side ends it, then say how it ended.

        This task reads the device's frames itself; the session writes from tasks of its
        own only while it has something to write (socket_svc/session.py). When the device
        hangs up first, in-flight sends still answer before the session closes; when the
        transport refused a frame, the session closes with that error.
        """
        session.when_done(self._session_over)
        session.start(hello)
        try:
            try:
                await self._pump(session)
            except Exception as e:
                logger.debug("reading from device %s failed: %r", session.device_id, e)
            if not session.done.is_set():
                if session.closed is None:
                    if self._refused is None:
                        await session.drain()
                    session.close(None if self._refused is None else self._refused.error)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE):
                        await session.done.wait()
        finally:
            self._stopping = True
            self._reader = None
            await session.stop()
        return self._end(session)

    def _session_over(self) -> None:
        """The session ended on its side: the reader stops, after the frame it is handling.

        A frame being handled gets FRAME_GRACE to finish (a call to message_svc is not cut
        short); then the reader is stopped wherever it is.
        """
        self._interrupt()
        if self._reader is not None and not self._interrupted:
            asyncio.get_running_loop().call_later(FRAME_GRACE, self._cut)

    def _cut(self) -> None:
        if self._reader is not None and not self._interrupted:
            self._interrupted = True
            self._reader.cancel()

    def _end(self, session: Session) -> End:
        if self._refused is not None:
            return End(self._refused.error, violation=True)
        error = session.failure
        if isinstance(error, NatterError):
            return End(error)
        if error is not None:
            logger.debug("stream of device %s ended: %r", session.device_id, error)
            return End(Internal("internal error", "INTERNAL"))
        closed = session.closed
        return End(closed.error if closed is not None else None)

    async def _pump(self, session: Session) -> None:
        """Feed the device's frames to the session until it hangs up or the session ends.

        Stopped by `_interrupt` (a cancel of this task, taken back here) while it waits for
        a frame, so the stream's own task is the reader and needs no task of its own.
        """
        self._reader = asyncio.current_task()
        try:
            while session.closed is None and not self._stopping and not session.done.is_set():
                self._receiving = True
                try:
                    incoming = await self.transport.receive()
                finally:
                    self._receiving = False
                if incoming is None:
                    return
                if isinstance(incoming, Refused):
                    self._refused = incoming
                    return
                if isinstance(incoming, Malformed):
                    session.on_malformed(incoming.error)
                    continue
                self.hub.beat(session)
                await session.on_frame(incoming)
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
        finally:
            self._reader = None
            if self._interrupted:
                self._uncancel()

    def _uncancel(self) -> None:
        """Take back the reader's own cancel (`_interrupt`): the stream goes on to its end."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()


async def _settle(task: asyncio.Task[Any]) -> None:
    """Cancel a task unless it is done, and wait until it is."""
    if not task.done():
        task.cancel()
    await asyncio.wait({task})


def _release(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def serve(
    hub: Hub,
    api: MessageApi,
    settings: Settings,
    transport: Transport,
    token: str,
    address: str = "",
    kind: str = "grpc",
) -> End:
    """Run one device's stream to its end.

    Cancelled (the peer went away, the server is stopping), the stream still ends in order —
    a call to message_svc cut halfway would leave its database connection to be torn down —
    and then the cancellation goes on.
    """
    stream = DeviceStream(hub, api, settings, transport, token, address, kind)
    task = asyncio.create_task(stream.run())
    # asyncio.shield, in a future and one callback (shield's two closures and its outer
    # future are most of a kilobyte, held by every open stream for its whole life).
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task.add_done_callback(functools.partial(_release, ended))
    try:
        await ended
        return task.result()
    except asyncio.CancelledError:
        stream.hang_up()
        await asyncio.wait({task})
        if not task.cancelled():
            error = task.exception()
            if error is not None and not isinstance(error, NatterError):
                logger.warning("stream of a device that went away failed", exc_info=error)
        raise
