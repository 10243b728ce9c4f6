"""One device's live session: sync on connect, ordered gap-free pushes, acks, reads, limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from message_svc.api import MessageApi
from natter import convert
from natter import domain as d
from natter.errors import InvalidArgument, NatterError, PermissionDenied, ResourceExhausted
from natter.rpc import status_of
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb

logger = logging.getLogger(__name__)

SYNC_PAGE = 500
MAX_QUEUE = 20_000
MAX_SENDS_IN_FLIGHT = 64


class Transport(Protocol):
    """How a session reaches its device: a gRPC stream or a WebSocket."""

    async def send(self, frame: spb.ServerFrame) -> None: ...


@dataclass(frozen=True, slots=True)
class _Own:
    """The device's own message, already answered with SendResult: advance, do not echo."""

    thread_id: int
    seq: int
    frame: spb.ServerFrame


@dataclass(frozen=True, slots=True)
class _Close:
    code: grpc.StatusCode
    message: str


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def error_frame(error: BaseException, client_msg_id: str = "") -> spb.ServerFrame:
    code, message, reason = status_of(error)
    return spb.ServerFrame(
        error=spb.StreamError(code=code.value[0], message=message, reason=reason,
                              client_msg_id=client_msg_id)
    )


class Session:
    """Frames in through `on_frame`; frames out through the transport, one writer task."""

    def __init__(
        self,
        who: d.Principal,
        api: MessageApi,
        transport: Transport,
        settings: Settings,
        on_ack: Callable[[Session], None],
    ) -> None:
        self.who = who
        self.user_id = who.user.user_id
        self.device_id = who.device_id
        self.api = api
        self.transport = transport
        self.settings = settings
        self._on_ack = on_ack
        self.queue: asyncio.Queue[d.Event | _Own | _Close | spb.ServerFrame] = asyncio.Queue()
        self.pushed: dict[int, int] = {}
        self.skip_unknown = False
        self.acked: dict[int, int] = {}
        self.ack_dirty: dict[int, int] = {}
        self.last_frame = time.monotonic()
        self.closed: _Close | None = None
        self.done = asyncio.Event()
        self.synced = asyncio.Event()
        self._frames = TokenBucket(settings.frames_per_second, settings.frame_burst)
        self._typing = TokenBucket(settings.typing_per_second, 3)
        self._last_limit_error = 0.0
        self._sends = asyncio.Semaphore(MAX_SENDS_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self.replayed = 0

    # -- outbound ------------------------------------------------------------------------

    def enqueue(self, item: d.Event | _Own | _Close | spb.ServerFrame) -> None:
        if self.closed is not None:
            return
        if self.queue.qsize() >= MAX_QUEUE:
            # A device this far behind is cheaper to resync than to feed.
            self.close(grpc.StatusCode.RESOURCE_EXHAUSTED, "device too slow; reconnect to resync")
            return
        self.queue.put_nowait(item)

    def close(self, code: grpc.StatusCode, message: str) -> None:
        if self.closed is None:
            self.closed = _Close(code, message)
            self.queue.put_nowait(self.closed)

    async def run(self, hello: spb.Hello) -> None:
        """Replay what the device missed, mark SyncDone, then push live events until closed."""
        try:
            await self._sync(hello)
            self.synced.set()
            while True:
                item = await self.queue.get()
                if isinstance(item, _Close):
                    return
                await self._push(item)
        finally:
            self.done.set()

    async def _sync(self, hello: spb.Hello) -> None:
        given = [convert.cursor_of(c) for c in hello.cursors]
        self.skip_unknown = hello.skip_replay
        page, starts = await self.api.sync_device(self.who, given, hello.skip_replay, SYNC_PAGE)
        for c in starts:
            self.pushed[c.thread_id] = c.seq
        while True:
            for m in page.messages:
                if m.seq > self.pushed.get(m.thread_id, 0):
                    await self.transport.send(spb.ServerFrame(message=convert.message(m)))
                    self.pushed[m.thread_id] = m.seq
                    self.replayed += 1
            if not page.more:
                break
            cursors = [d.Cursor(t, s) for t, s in self.pushed.items()]
            page, _ = await self.api.sync_device(self.who, cursors, False, SYNC_PAGE)
        await self.transport.send(spb.ServerFrame(sync_done=spb.SyncDone(replayed=self.replayed)))

    async def _push(self, item: d.Event | _Own | spb.ServerFrame) -> None:
        if isinstance(item, spb.ServerFrame):
            await self.transport.send(item)
        elif isinstance(item, _Own):
            await self._advance(item.thread_id, item.seq, item.frame, own=True)
        elif isinstance(item, d.Message):
            frame = spb.ServerFrame(message=convert.message(item))
            await self._advance(item.thread_id, item.seq, frame)
        elif isinstance(item, d.Receipt):
            await self.transport.send(spb.ServerFrame(receipt=convert.receipt(item)))
        elif isinstance(item, d.Presence):
            await self.transport.send(spb.ServerFrame(presence=convert.presence(item)))
        elif isinstance(item, d.Typing):
            await self.transport.send(spb.ServerFrame(typing=convert.typing(item)))
        elif isinstance(item, d.ReadCursor):
            frame = spb.ServerFrame(read_cursor=spb.ReadCursor(cursor=convert.cursor(item.cursor)))
            await self.transport.send(frame)
        elif isinstance(item, d.DeviceRevoked) and item.device_id == self.device_id:
            self.close(grpc.StatusCode.UNAUTHENTICATED, "this device was logged out")

    async def _advance(
        self, thread_id: int, seq: int, frame: spb.ServerFrame, own: bool = False
    ) -> None:
        """Push in seq order without gaps: older seqs are dropped, gaps filled from the store.

        `frame` carries seq: the message itself, or the SendResult of the device's own send.
        Everything before it goes out first, so a device always sees seq - 1 before seq, even
        when its own send was answered before another member's earlier message was pushed
        (the device's own messages in the gap are pushed too: they were not answered yet).
        A SendResult always goes out, even for a seq already pushed (a retried send).
        """
        last = self.pushed.get(thread_id)
        if last is None:
            last = seq - 1 if self.skip_unknown else 0
        if seq <= last:
            if own:
                await self.transport.send(frame)
            return
        if seq > last + 1:
            for m in await self.api.messages_between(self.who, thread_id, last, seq):
                await self.transport.send(spb.ServerFrame(message=convert.message(m)))
        await self.transport.send(frame)
        self.pushed[thread_id] = seq

    # -- inbound -------------------------------------------------------------------------

    async def on_frame(self, frame: spb.ClientFrame) -> None:
        self.last_frame = time.monotonic()
        if not self._frames.take():
            self._limited("too many frames; slow down")
            return
        which = frame.WhichOneof("payload")
        try:
            if which == "send":
                await self._sends.acquire()
                task = asyncio.create_task(self._send(frame.send))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif which == "ack":
                self._ack(frame.ack)
            elif which == "read":
                await self.api.mark_read(self.who, d.Cursor(frame.read.thread_id, frame.read.seq))
            elif which == "heartbeat":
                self.enqueue(spb.ServerFrame(heartbeat_ack=spb.HeartbeatAck()))
            elif which == "typing":
                if not self._typing.take():
                    self._limited("typing indicators are limited; slow down")
                    return
                await self.api.relay_typing(self.who, frame.typing.thread_id, frame.typing.active)
            elif which == "hello":
                raise InvalidArgument("hello may only be sent once, first", "DUPLICATE_HELLO")
            else:
                raise InvalidArgument("frame has no payload", "EMPTY_FRAME")
        except NatterError as e:
            self.enqueue(error_frame(e))

    def _limited(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_limit_error >= 1.0:
            self._last_limit_error = now
            self.enqueue(error_frame(ResourceExhausted(message, "RATE_LIMITED")))

    async def _send(self, send: spb.Send) -> None:
        try:
            which = send.WhichOneof("target")
            req = d.SendRequest(
                client_msg_id=send.client_msg_id,
                text=send.text,
                thread_id=send.thread_id if which == "thread_id" else 0,
                recipient=send.recipient if which == "recipient" else "",
            )
            res = await self.api.send(self.who, req)
            frame = spb.ServerFrame(
                send_result=spb.SendResult(
                    client_msg_id=res.client_msg_id, msg_id=res.msg_id, thread_id=res.thread_id,
                    seq=res.seq, create_time=convert.ts(res.create_time),
                )
            )
            self.enqueue(_Own(res.thread_id, res.seq, frame))
        except Exception as e:
            if not isinstance(e, NatterError):
                logger.exception("send failed")
            self.enqueue(error_frame(e, send.client_msg_id))
        finally:
            self._sends.release()

    def _ack(self, ack: spb.Ack) -> None:
        for c in ack.cursors:
            if c.thread_id not in self.pushed:
                raise PermissionDenied(
                    f"thread {c.thread_id} is not one of your threads", "NOT_A_MEMBER"
                )
            if c.seq < 0 or c.seq > self.pushed[c.thread_id]:
                raise InvalidArgument(
                    f"ack for thread {c.thread_id} seq {c.seq} is beyond what was delivered "
                    f"({self.pushed[c.thread_id]})",
                    "BAD_ACK",
                )
            if c.seq > self.acked.get(c.thread_id, 0):
                self.acked[c.thread_id] = c.seq
                self.ack_dirty[c.thread_id] = c.seq
        if self.ack_dirty:
            self._on_ack(self)

    def take_acks(self) -> d.DeviceAck | None:
        if not self.ack_dirty:
            return None
        cursors = tuple(d.Cursor(t, s) for t, s in self.ack_dirty.items())
        self.ack_dirty = {}
        return d.DeviceAck(self.user_id, self.device_id, cursors)

    async def drain(self) -> None:
        """Wait for in-flight sends to finish (their results may still reach the device)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def pump(
    session: Session,
    read: Callable[[], Awaitable[spb.ClientFrame | None]],
) -> None:
    """Feed frames from `read` until the device hangs up or the session closes."""
    while session.closed is None:
        frame = await read()
        if frame is None:
            return
        await session.on_frame(frame)
