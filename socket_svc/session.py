"""One device's live session: sync on connect, ordered gap-free pushes, acks, reads, limits."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from natter import convert
from natter import domain as d
from natter.errors import (
    InvalidArgument,
    NatterError,
    ResourceExhausted,
    Unauthenticated,
)
from natter.metrics import NO_METRICS, Metrics
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from socket_svc import frames
from socket_svc.frames import Frame
from socket_svc.light import Flag, Inbox
from socket_svc.ports import MessageApi
from socket_svc.sends import OwnCopies, Sends

logger = logging.getLogger(__name__)

SYNC_PAGE = 500
MAX_QUEUE = 20_000
BATCH = 128
# Messages pushed and not acked yet that a session keeps track of (for the backlog metrics).
MAX_UNACKED = 20_000


class Transport(Protocol):
    """How a session reaches its device: the sending half of a `socket_svc.stream.Transport`."""

    async def send(self, frame: Frame) -> None: ...


@dataclass(frozen=True, slots=True)
class _Own:
    """The device's own message, already answered with SendResult: advance, do not echo."""

    thread_id: int
    seq: int
    frame: spb.ServerFrame


@dataclass(frozen=True, slots=True)
class _CatchUp:
    """Look in the store for anything after what was pushed (pushes may have been lost)."""


@dataclass(frozen=True, slots=True)
class _Close:
    """Why the session ends: None for a normal end, else the error the device is told."""

    error: NatterError | None


class TokenBucket:
    __slots__ = ("at", "burst", "rate", "tokens")

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


def _nothing() -> None:
    """A session's callbacks until someone sets them (one function, not one per session)."""


def _ignore(_: Session) -> None:
    """See `_nothing`."""


def heartbeat_seconds(settings: Settings) -> int:
    """Welcome's whole-second interval: rounded up, never 0 (0 tells the device "default")."""
    return max(1, math.ceil(settings.heartbeat_interval_seconds))


# One frame for every heartbeat's answer (never changed: shared by all sessions).
HEARTBEAT_ACK = spb.ServerFrame(heartbeat_ack=spb.HeartbeatAck())


def error_frame(error: BaseException, client_msg_id: str = "") -> spb.ServerFrame:
    return spb.ServerFrame(error=convert.stream_error(error, client_msg_id))


class Session:
    """Frames in through `on_frame`; frames out through the transport, one writer at a time.

    Slotted, with a light queue and flags: an idle device is mostly this object, and a
    socket server holds tens of thousands of them (see docs/benchmarks.md, bench.idle).
    The writer is a task only while there is something to write: `run` syncs and writes
    what queued meanwhile, and later an enqueue starts a writer that ends once the queue
    is empty. A heartbeat is answered by the reader itself when no writer runs, so an idle
    device costs no task of its own and a heartbeat no task switch.
    """

    __slots__ = (
        "_catch_up_queued",
        "_frames",
        "_fresh",
        "_inline",
        "_last_limit_error",
        "_member_of",
        "_on_ack",
        "_on_state",
        "_out",
        "_own",
        "_queued_at",
        "_sends",
        "_typing",
        "_unacked",
        "_unacked_count",
        "_when_done",
        "_writer",
        "ack_dirty",
        "acked",
        "api",
        "batches",
        "closed",
        "device_id",
        "done",
        "failure",
        "foreground",
        "last_frame",
        "log_pushed",
        "metrics",
        "pushed",
        "queue",
        "replayed",
        "settings",
        "skip_unknown",
        "synced",
        "transport",
        "user_id",
        "who",
    )

    def __init__(
        self,
        who: d.Principal,
        api: MessageApi,
        transport: Transport,
        settings: Settings,
        on_ack: Callable[[Session], None],
        metrics: Metrics = NO_METRICS,
        own: OwnCopies | None = None,
    ) -> None:
        self.who = who
        self._own = own  # pushes this device's sends to the user's other devices here
        self.metrics = metrics
        self.user_id = who.user.user_id
        self.device_id = who.device_id
        self.api = api
        self.transport = transport
        self.settings = settings
        self._on_ack = on_ack
        self.queue: Inbox[d.Event | _Own | _Close | _CatchUp | spb.ServerFrame] = Inbox()
        self._catch_up_queued = False
        self.pushed: dict[int, int] = {}
        self.skip_unknown = False
        self.acked: dict[int, int] = {}
        # Threads message_svc confirmed the user is or was in (acks before sync named them).
        self._member_of: set[int] | None = None  # made on the first such ack (216 B empty)
        self.ack_dirty: dict[int, int] = {}
        self.last_frame = time.monotonic()
        self.closed: _Close | None = None
        self.done = Flag()
        self.synced = Flag()
        # What ended the writer, when it failed rather than closed.
        self.failure: BaseException | None = None
        self._when_done: Callable[[], None] = _nothing
        # The running writer (the sync, then one per burst of queued items), if any; and
        # whether the reader is writing a heartbeat's answer itself.
        self._writer: asyncio.Task[None] | None = None
        self._inline = False
        self._frames = TokenBucket(settings.frames_per_second, settings.frame_burst)
        self._typing = TokenBucket(settings.typing_per_second, settings.typing_burst)
        self._last_limit_error = 0.0
        self._sends: Sends | None = None  # made on the first send: most devices are idle
        self.replayed = 0
        # The user's own change log (delete for me): None when the device did not ask for it.
        self.log_pushed: int | None = None
        self.batches = False
        self._out: list[Frame] = []
        # The app says it is in front of the person (Hello, then ClientState): with a live
        # stream that makes the device active, and active devices get no push notifications.
        self.foreground = False
        self._on_state: Callable[[Session], None] = _ignore
        # Pushed messages from others not acked yet: per thread, (seq, when pushed).
        self._unacked: dict[int, deque[tuple[int, float]]] = {}
        self._unacked_count = 0
        # Commit times of the live messages in `_out` and when each was queued here, for the
        # deliver latency and the push_queue hop; `_queued_at`: messages in `queue`, in order.
        self._fresh: list[tuple[datetime, float]] = []
        self._queued_at: deque[float] | None = None

    @property
    def sends(self) -> Sends:
        """The device's sends in order (socket_svc/sends.py), made when the first arrives."""
        if self._sends is None:
            self._sends = Sends(
                self.who, self.api, self._sent, self._send_refused, self.metrics, self._own
            )
        return self._sends

    # -- outbound ------------------------------------------------------------------------

    def catch_up(self) -> None:
        """After routing changed (a node joined or left): fetch what live pushes may have missed.

        Runs in the session's own writer, in order with live pushes, so nothing is shown
        twice; at most one is queued at a time.
        """
        if not self._catch_up_queued:
            self._catch_up_queued = True
            self.enqueue(_CatchUp())

    def enqueue(self, item: d.Event | _Own | _Close | _CatchUp | spb.ServerFrame) -> None:
        if self.closed is not None:
            return
        if isinstance(item, d.DeviceRevoked):
            # Closed at once, not when the writer reaches it: nothing sent after the logout
            # is queued behind it.
            if item.device_id == self.device_id:
                self.close(Unauthenticated("this device was logged out", "DEVICE_LOGGED_OUT"))
            return
        if self.queue.qsize() >= MAX_QUEUE:
            # A device this far behind is cheaper to resync than to feed.
            self.close(ResourceExhausted("device too slow; reconnect to resync", "DEVICE_TOO_SLOW"))
            return
        self.queue.put_nowait(item)
        if self.metrics.enabled and isinstance(item, d.Message):
            if self._queued_at is None:
                self._queued_at = deque()
            self._queued_at.append(time.perf_counter())
        self._wake()

    def close(self, error: NatterError | None = None) -> None:
        """End the session after what is queued; with an error, the device is told why."""
        if self.closed is None:
            self.closed = _Close(error)
            self.queue.put_nowait(self.closed)
            self._wake()

    def watch_state(self, changed: Callable[[Session], None]) -> None:
        """Call `changed` whenever the app moves between foreground and background."""
        self._on_state = changed

    def set_foreground(self, foreground: bool) -> None:
        if foreground != self.foreground:
            self.foreground = foreground
            self._on_state(self)

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the session is over (closed and written, or failed)."""
        self._when_done = callback

    def start(self, hello: spb.Hello) -> None:
        """The first writer: replay what the device missed, SyncDone, then what queued."""
        self._writer = asyncio.create_task(self.run(hello))

    async def stop(self) -> None:
        """Cancel a writer still running (the close grace ran out) and wait until it ends."""
        writer = self._writer
        if writer is not None:
            if not writer.done():
                writer.cancel()
            await asyncio.wait({writer})

    async def run(self, hello: spb.Hello) -> None:
        """Replay what the device missed, mark SyncDone, then push what queued meanwhile."""
        self.batches = hello.accept_batches
        try:
            await self._sync(hello)
            self.synced.set()
        except BaseException as e:
            self._writer = None
            self._finish(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return  # the stream reads `failure`: nothing else awaits this task's result
        await self._write()

    def _wake(self) -> None:
        """Something was queued: start a writer unless one runs (or the reader is writing)."""
        if (
            self._writer is None
            and not self._inline
            and self.synced.is_set()
            and not self.done.is_set()
        ):
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        """Push what is queued, in order, until the queue is empty or the session closed."""
        try:
            while not self.queue.empty():
                items = [self.queue.get_nowait()]
                # Whatever else is ready goes out with it: one stream message for many frames.
                while len(items) < BATCH and not self.queue.empty():
                    items.append(self.queue.get_nowait())
                for item in items:
                    if isinstance(item, _Close):
                        await self._flush()
                        self._writer = None
                        self._finish(None)
                        return
                    await self._push(item)
                await self._flush()
        except BaseException as e:
            self._writer = None
            self._finish(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        # Nothing awaited since the queue was found empty: no item can be left behind.
        self._writer = None

    def _finish(self, error: BaseException | None) -> None:
        if self.done.is_set():
            return
        if error is not None and not isinstance(error, asyncio.CancelledError):
            self.failure = error
        self.done.set()
        self._when_done()

    async def _beat(self) -> None:
        """A heartbeat: answered at once by the reader when nothing else is being written."""
        if (
            self._writer is not None
            or self._inline
            or not self.synced.is_set()
            or self.closed is not None
            or not self.queue.empty()
        ):
            self.enqueue(HEARTBEAT_ACK)
            return
        self._inline = True
        try:
            await self.transport.send(HEARTBEAT_ACK)
        finally:
            self._inline = False
            if not self.queue.empty():
                self._wake()

    def _emit(self, frame: Frame) -> None:
        self._out.append(frame)

    def _pushed(self, thread_id: int, seq: int) -> None:
        """A message from someone else goes out: it is unacked until the device acks it."""
        if self._unacked_count >= MAX_UNACKED:
            return
        self._unacked.setdefault(thread_id, deque()).append((seq, time.monotonic()))
        self._unacked_count += 1

    def _acked_to(self, thread_id: int, seq: int) -> None:
        waiting = self._unacked.get(thread_id)
        while waiting and waiting[0][0] <= seq:
            waiting.popleft()
            self._unacked_count -= 1
        if waiting is not None and not waiting:
            del self._unacked[thread_id]

    def backlog(self) -> tuple[int, float]:
        """Messages queued for or pushed to the device and not acked; the oldest one's age."""
        oldest = min((q[0][1] for q in self._unacked.values() if q), default=None)
        age = 0.0 if oldest is None else time.monotonic() - oldest
        return self.queue.qsize() + self._unacked_count, age

    async def _flush(self) -> None:
        out, self._out = self._out, []
        if not out:
            return
        if not self.batches or len(out) == 1:
            for frame in out:
                await self.transport.send(frame)
        else:
            for start in range(0, len(out), BATCH):
                await self.transport.send(frames.batch(out[start : start + BATCH]))
        if self._fresh:
            fresh, self._fresh = self._fresh, []
            now, written = time.time(), time.perf_counter()
            push_queue = self.metrics.hops["push_queue"]
            for committed, queued in fresh:
                self.metrics.deliver_seconds.observe(max(0.0, now - committed.timestamp()))
                if queued:
                    push_queue.observe(written - queued)

    async def _sync(self, hello: spb.Hello) -> None:
        given = [convert.cursor_of(c) for c in hello.cursors]
        self.skip_unknown = hello.skip_replay
        page, starts = await self.api.sync_device(self.who, given, hello.skip_replay, SYNC_PAGE)
        for c in starts:
            self.pushed[c.thread_id] = c.seq
        while True:
            for m in page.messages:
                if m.seq > self.pushed.get(m.thread_id, 0):
                    self._emit(frames.replayed(m))
                    self.pushed[m.thread_id] = m.seq
                    self.replayed += 1
                    if m.sender.user_id != self.user_id:
                        self._pushed(m.thread_id, m.seq)
            if not page.more:
                await self._flush()
                break
            # The next page is read while this one is on its way to the device.
            cursors = [d.Cursor(t, s) for t, s in self.pushed.items()]
            ahead = asyncio.ensure_future(self.api.sync_device(self.who, cursors, False, SYNC_PAGE))
            try:
                await self._flush()
            except BaseException:
                ahead.cancel()
                await asyncio.wait({ahead})
                raise
            page, _ = await ahead
        if hello.HasField("user_log_seq"):
            self.log_pushed = max(0, hello.user_log_seq)
            await self._user_log_until(None)
        await self.transport.send(spb.ServerFrame(sync_done=spb.SyncDone(replayed=self.replayed)))

    async def _user_log_until(self, before: int | None) -> None:
        """The user's change log after what was pushed (up to `before`, exclusive), in order."""
        while self.log_pushed is not None:
            changes, more = await self.api.user_changes(self.who, self.log_pushed, SYNC_PAGE)
            for c in changes:
                if before is not None and c.seq >= before:
                    return
                self._emit(spb.ServerFrame(user_change=convert.user_change(c)))
                self.log_pushed = c.seq
            await self._flush()
            if not more:
                return

    async def _user_change(self, c: d.UserChange) -> None:
        """A live change: in log order without gaps, like a thread's messages."""
        if self.log_pushed is None or c.seq <= self.log_pushed:
            return
        if c.seq > self.log_pushed + 1:
            await self._user_log_until(c.seq)
        self._emit(spb.ServerFrame(user_change=convert.user_change(c)))
        self.log_pushed = c.seq

    async def _push(self, item: d.Event | _Own | _CatchUp | spb.ServerFrame) -> None:
        if isinstance(item, spb.ServerFrame):
            self._emit(item)
        elif isinstance(item, _CatchUp):
            await self._catch_up()
        elif isinstance(item, _Own):
            await self._advance(item.thread_id, item.seq, item.frame, own=True)
        elif isinstance(item, d.Message):
            queued = self._queued_at.popleft() if self._queued_at else 0.0
            if (
                await self._advance(
                    item.thread_id,
                    item.seq,
                    frames.message(item),
                    from_other=item.sender.user_id != self.user_id,
                )
                and self.metrics.enabled
            ):
                self._fresh.append((item.create_time, queued))
        elif isinstance(item, d.Receipt):
            self._emit(spb.ServerFrame(receipt=convert.receipt(item)))
        elif isinstance(item, d.Presence):
            self._emit(spb.ServerFrame(presence=convert.presence(item)))
        elif isinstance(item, d.Typing):
            self._emit(spb.ServerFrame(typing=convert.typing(item)))
        elif isinstance(item, d.ReadCursor):
            self._emit(spb.ServerFrame(read_cursor=convert.read_cursor(item)))
        elif isinstance(item, d.ThreadMute):
            self._emit(spb.ServerFrame(thread_mute=convert.thread_mute(item)))
        elif isinstance(item, d.UserChange):
            await self._user_change(item)
        elif isinstance(item, d.ProfileChanged):
            frame = spb.ServerFrame()
            frame.profile_changed.user.CopyFrom(convert.user(item.user))
            self._emit(frame)
        elif isinstance(item, d.DeviceRevoked) and item.device_id == self.device_id:
            self.close(Unauthenticated("this device was logged out", "DEVICE_LOGGED_OUT"))

    async def _catch_up(self) -> None:
        self._catch_up_queued = False
        while True:
            cursors = [d.Cursor(t, s) for t, s in self.pushed.items()]
            page, _ = await self.api.sync_device(self.who, cursors, False, SYNC_PAGE)
            for m in page.messages:
                await self._advance(
                    m.thread_id,
                    m.seq,
                    frames.replayed(m),
                    from_other=m.sender.user_id != self.user_id,
                )
            if not page.more:
                return

    async def _advance(
        self,
        thread_id: int,
        seq: int,
        frame: Frame,
        own: bool = False,
        from_other: bool = False,
    ) -> bool:
        """Push in seq order without gaps: older seqs are dropped, gaps filled from the store.

        `frame` carries seq: the message itself, or the SendResult of the device's own send.
        Everything before seq goes out first, so a device never sees seq before seq - 1, even
        when its own send was answered before another member's earlier message was pushed
        (its own messages in the gap go out too: they have not been answered yet). A
        SendResult always goes out, even for a seq already pushed (a retried send).
        """
        last = self.pushed.get(thread_id)
        if last is None:
            last = seq - 1 if self.skip_unknown else 0
        if seq <= last:
            if own:
                self._emit(frame)
            return False
        if seq > last + 1:
            for m in await self.api.messages_between(self.who, thread_id, last, seq):
                self._emit(frames.replayed(m))
                if m.sender.user_id != self.user_id:
                    self._pushed(thread_id, m.seq)
        self._emit(frame)
        self.pushed[thread_id] = seq
        if from_other:
            self._pushed(thread_id, seq)
        return True

    # -- inbound -------------------------------------------------------------------------

    def on_malformed(self, error: str) -> None:
        """A frame that did not parse: it counts against the frame budget like any other."""
        self.last_frame = time.monotonic()
        if not self._frames.take():
            self._limited("too many frames; slow down")
            return
        self.enqueue(error_frame(InvalidArgument(f"malformed frame: {error}", "MALFORMED_FRAME")))

    async def on_frame(self, frame: spb.ClientFrame) -> None:
        self.last_frame = time.monotonic()
        which = frame.WhichOneof("payload")
        # Every frame costs: a batch its frames, an empty batch (or one of nothing) one.
        costs = which != "batch" or not frame.batch.frames
        if costs and not self._frames.take():
            if frame.WhichOneof("payload") == "send":
                # A dropped send must say which one it was, so the device retries it (and,
                # to keep its order, the sends after it: see socket_svc/sends.py).
                self.metrics.rate_limited.labels("frames").inc()
                self.sends.refused(
                    frame.send, ResourceExhausted("too many frames; slow down", "RATE_LIMITED")
                )
                return
            self._limited("too many frames; slow down")
            return
        if which == "batch":
            for inner in frame.batch.frames:
                if inner.WhichOneof("payload") == "batch":
                    self.enqueue(
                        error_frame(InvalidArgument("batches do not nest", "NESTED_BATCH"))
                    )
                    continue
                await self.on_frame(inner)
            return
        try:
            if which == "send":
                await self.sends.offer(frame.send)
            elif which == "ack":
                await self._ack(frame.ack)
            elif which == "read":
                await self.api.mark_read(self.who, d.Cursor(frame.read.thread_id, frame.read.seq))
            elif which == "heartbeat":
                await self._beat()
            elif which == "client_state":
                self.set_foreground(frame.client_state.foreground)
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
        self.metrics.rate_limited.labels("frames").inc()
        now = time.monotonic()
        if now - self._last_limit_error >= 1.0:
            self._last_limit_error = now
            self.enqueue(error_frame(ResourceExhausted(message, "RATE_LIMITED")))

    def _sent(self, res: d.SendResult) -> None:
        self.enqueue(
            _Own(res.thread_id, res.seq, spb.ServerFrame(send_result=convert.send_result(res)))
        )

    def _send_refused(self, client_msg_id: str, error: NatterError) -> None:
        self.enqueue(error_frame(error, client_msg_id))

    async def _ack(self, ack: spb.Ack) -> None:
        """Delivered cursors, taken from Welcome on (before SyncDone, too).

        The store clamps each cursor to the last seq its member may see (a device may ack
        what it loaded through history, not only what was pushed), so only a thread the
        user never was in is refused. A thread is known once sync or a push named it; any
        other is asked of message_svc. Every cursor is checked before any is applied: a
        refused frame changes nothing.
        """
        for c in ack.cursors:
            if c.seq < 0:
                raise InvalidArgument(
                    f"ack for thread {c.thread_id} has a negative seq ({c.seq})", "BAD_ACK"
                )
        for c in ack.cursors:
            known = self._member_of
            if c.thread_id not in self.pushed and (known is None or c.thread_id not in known):
                await self.api.check_member(self.who, c.thread_id)
                if self._member_of is None:
                    self._member_of = set()
                self._member_of.add(c.thread_id)
        for c in ack.cursors:
            if c.seq > self.acked.get(c.thread_id, 0):
                # Remembered only up to what was pushed: beyond it the store may clamp, and a
                # later, smaller ack must still reach it.
                self.acked[c.thread_id] = min(c.seq, self.pushed.get(c.thread_id, 0))
                self.ack_dirty[c.thread_id] = max(c.seq, self.ack_dirty.get(c.thread_id, 0))
                self._acked_to(c.thread_id, c.seq)
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
        if self._sends is not None:
            await self._sends.drain()

    async def finish(self, grace: float) -> None:
        """Once the stream is over, let sends in flight finish, cancel the rest, wait for them.

        Sends get up to `grace` seconds; nothing the session started outlives it.
        """
        if self._sends is not None:
            await self._sends.finish(grace)
