"""The SDK's live connection: reconnect with jittered backoff, resume from cursors, outbox, acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from natter import convert
from natter import domain as d
from natter.errors import NatterError, Unauthenticated, Unavailable
from natter.rpc import ERROR_OF, code_name, error_from_rpc
from natter.sdk.client import Client, open_channel
from natter.sdk.fold import Fold
from natter.sdk.history import Recorder
from natter.sdk.merge import Merger
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from natter.v1 import types_pb2 as tpb

logger = logging.getLogger(__name__)

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE.value[0],
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    grpc.StatusCode.INTERNAL.value[0],
}
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
# One stream message carries at most this much: well inside the server's max_frame_bytes.
BATCH_BYTES = 64 * 1024
BATCH_FRAMES = 256


def _batched(frames: list[spb.ClientFrame]) -> list[spb.ClientFrame]:
    """Frames as few stream messages, each within BATCH_BYTES and BATCH_FRAMES, in order."""
    if len(frames) == 1:
        return frames
    whole = spb.ClientFrame(batch=spb.ClientBatch(frames=frames))
    if len(frames) <= BATCH_FRAMES and whole.ByteSize() <= BATCH_BYTES:
        return [whole]
    half = len(frames) // 2
    return _batched(frames[:half]) + _batched(frames[half:])


@dataclass(frozen=True, slots=True)
class SyncDone:
    replayed: int


@dataclass(frozen=True, slots=True)
class Connected:
    node_id: str
    address: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str
    final: bool


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame the server refused (not a send: those fail their future)."""

    code: int
    message: str
    reason: str


Event = (
    d.Message
    | d.Receipt
    | d.Presence
    | d.Typing
    | d.ReadCursor
    | d.ThreadMute
    | d.UserChange
    | d.ProfileChanged
    | SyncDone
    | Connected
    | Disconnected
    | Rejected
)


class _Events(asyncio.Queue[Event]):
    """The queue the application takes events from: taking a message is what acks it."""

    def __init__(self, taken: Callable[[Event], None]) -> None:
        super().__init__()
        self._taken = taken

    def _get(self) -> Event:  # behind get() and get_nowait()
        ev = super()._get()
        self._taken(ev)
        return ev


@dataclass
class _Pending:
    frame: spb.Send
    future: asyncio.Future[d.SendResult]
    text: str
    sent_on: int = -1
    retries: int = 0


@dataclass
class Stats:
    connects: int = 0
    resends: int = 0
    gaps_filled: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Connection:
    """Holds a device's stream open across failures; every acknowledged send resolves once."""

    def __init__(
        self,
        client: Client,
        *,
        cursors: dict[int, int] | None = None,
        skip_replay: bool = False,
        auto_ack: bool = True,
        locate: bool = False,
        heartbeat_seconds: float | None = None,
        max_backoff: float = 5.0,
        foreground: bool = False,
        recorder: Recorder | None = None,
        handshake_seconds: float = 15.0,
        user_log_seq: int | None = None,
    ) -> None:
        if not client.token:
            raise Unauthenticated("log in before connecting", "NO_TOKEN")
        self.client = client
        self.merger = Merger(dict(cursors or {}))  # what arrived: de-duplication and gaps
        self._taken: dict[int, int] = dict(cursors or {})  # what the application took
        self.skip_replay = skip_replay
        self.auto_ack = auto_ack
        self.locate = locate
        self.heartbeat_seconds = heartbeat_seconds
        self.max_backoff = max_backoff
        # The app is in front of the person: the server then sends this device no push
        # notifications while its stream is live. Told in every Hello, changed by set_foreground.
        self.foreground = foreground

        # A stream not welcomed (or redirected) within this long is given up and tried again:
        # a server that accepts it but cannot answer (its database unreachable) must not hold
        # the device for ever.
        self.handshake_seconds = handshake_seconds
        # Messages wait here until the application takes them; only then are they acked.
        self.events: asyncio.Queue[Event] = _Events(self._took)
        self.outbox: dict[str, _Pending] = {}
        self.user: d.User | None = None
        self.device_id = 0
        self.stats = Stats()
        self.synced = asyncio.Event()
        # The user's own change log (delete for me): what arrived, and what the app took.
        # Asked for unless this connection replays nothing (a one-shot send, say).
        self._log_wanted = user_log_seq is not None or not skip_replay
        self._log_arrived = user_log_seq or 0
        self._log_taken = user_log_seq or 0
        # Every entry surfaced, folded: edits, deletes and reactions on their messages.
        self.fold = Fold()
        # The latest profile of each user heard of by ProfileChanged, by user id.
        self.profiles: dict[int, d.User] = {}
        self._address = client.server
        self._call: grpc.aio.StreamStreamCall[spb.ClientFrame, spb.ServerFrame] | None = None
        self._epoch = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ack_dirty: dict[int, int] = {}
        self._ack_task: asyncio.Task[None] | None = None
        self._acks_ok = False  # the current stream delivered something: it can take acks
        self._write_lock = asyncio.Lock()
        self._pending: list[spb.ClientFrame] = []
        self._live = False  # welcomed on the current stream
        # After a send was refused for now: nothing is sent until `_resume` sends it again.
        self._holding = False
        self._resume: asyncio.Task[None] | None = None
        self._final: NatterError | None = None  # the device was logged out: no more tries
        # Every operation and every message shown, for a history checker (natter/sdk/history.py).
        self.recorder = recorder

    # -- public --------------------------------------------------------------------------

    async def start(self, wait_synced: bool = True, timeout: float = 30.0) -> Connection:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        if wait_synced:
            await asyncio.wait_for(self.synced.wait(), timeout)
        return self

    async def close(self) -> None:
        self._closing = True
        await self._flush_acks()
        call = self._call
        if call is not None:
            with contextlib.suppress(Exception):
                await call.done_writing()
            if self._live and self._task is not None:
                # Let the server end the stream: the acks written above are stored by then.
                await asyncio.wait({self._task}, timeout=2.0)
            call.cancel()
        if self._ack_task is not None:
            self._ack_task.cancel()
        if self._resume is not None:
            self._resume.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for key, p in self.outbox.items():
            if not p.future.done():
                self._record("abandoned", key=key)
                p.future.set_exception(
                    NatterError("connection closed before the send was acknowledged")
                )
                # A caller that gave up waiting (a timeout) never reads it: no warning then.
                p.future.exception()

    async def __aenter__(self) -> Connection:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(
        self,
        text: str,
        *,
        thread_id: int = 0,
        recipient: str = "",
        client_msg_id: str = "",
        timeout: float | None = None,
        attachments: tuple[str, ...] | list[str] = (),
        reply_to_seq: int = 0,
    ) -> d.SendResult:
        """Store-and-forward: retried on every reconnect until acknowledged or refused.

        Sends go out in the order of the calls, and so are stored (per-device FIFO): the
        outbox keeps that order, and every resend sends it again from its oldest entry.
        `attachments` are ids from `natter.sdk.media.Media.upload` (text is then a caption);
        `reply_to_seq` quotes a message of the same thread.
        """
        req = d.SendRequest(
            client_msg_id, text, thread_id, recipient, tuple(attachments), reply_to_seq
        )
        return await self.submit(req, timeout)

    async def react(self, thread_id: int, seq: int, emoji: str, **kw: Any) -> d.SendResult:
        """Set this user's reaction to a message (an empty emoji removes it)."""
        return await self.submit(d.SendRequest("", "", thread_id, change=d.React(seq, emoji)), **kw)

    async def edit(self, thread_id: int, seq: int, text: str, **kw: Any) -> d.SendResult:
        """Change the text of one of this user's messages, within the server's edit window."""
        return await self.submit(d.SendRequest("", text, thread_id, change=d.Edit(seq)), **kw)

    async def delete(self, thread_id: int, seq: int, **kw: Any) -> d.SendResult:
        """Delete a message for everyone (one's own within the window, any as a group admin)."""
        return await self.submit(d.SendRequest("", "", thread_id, change=d.Delete(seq)), **kw)

    async def forward(
        self,
        from_thread: int,
        seq: int,
        *,
        thread_id: int = 0,
        recipient: str = "",
        **kw: Any,
    ) -> d.SendResult:
        """Copy a message into another thread (attachments by reference, marked forwarded)."""
        req = d.SendRequest("", "", thread_id, recipient, change=d.Forward(from_thread, seq))
        return await self.submit(req, **kw)

    async def submit(
        self, req: d.SendRequest, timeout: float | None = None, client_msg_id: str = ""
    ) -> d.SendResult:
        """Any send (a message or a change to one), through the outbox like `send`."""
        if self._final is not None:
            raise type(self._final)(self._final.message, self._final.reason)
        key = client_msg_id or req.client_msg_id or uuid.uuid4().hex
        pending = self.outbox.get(key)
        if pending is None:
            frame = convert.send(replace(req, client_msg_id=key))
            loop = asyncio.get_running_loop()
            pending = _Pending(frame, loop.create_future(), req.text)
            self.outbox[key] = pending
            self._record("send", key=key, thread=req.thread_id, to=req.recipient, text=req.text)
            await self._transmit([pending])
        return await asyncio.wait_for(asyncio.shield(pending.future), timeout)

    async def set_foreground(self, foreground: bool) -> None:
        """The app moved to the foreground (True) or the background (False)."""
        self.foreground = foreground
        if self._live:
            await self._write(spb.ClientFrame(client_state=spb.ClientState(foreground=foreground)))

    async def read(self, thread_id: int, seq: int) -> None:
        await self._write(spb.ClientFrame(read=spb.Read(thread_id=thread_id, seq=seq)))

    async def typing(self, thread_id: int, active: bool = True) -> None:
        await self._write(
            spb.ClientFrame(typing=spb.TypingRequest(thread_id=thread_id, active=active))
        )

    async def next_event(self, timeout: float | None = None) -> Event:
        if not self.events.empty():  # no task and timer for an event already here
            return self.events.get_nowait()
        return await asyncio.wait_for(self.events.get(), timeout)

    async def messages(self) -> AsyncIterator[d.Message]:
        while True:
            ev = await self.events.get()
            if isinstance(ev, d.Message):
                yield ev

    @property
    def cursors(self) -> dict[int, int]:
        """Per thread, how far the application has taken messages (or acked them itself).

        Messages still waiting in `events` are not covered: a device that passes these
        cursors to its next connection gets those again.
        """
        return dict(self._taken)

    @property
    def user_log_seq(self) -> int:
        """How far the application has taken the user's own change log (save it like cursors)."""
        return self._log_taken

    @property
    def in_flight(self) -> list[str]:
        """The client_msg_ids sent on the current stream and not answered yet, oldest first."""
        if not self._live:
            return []
        return [k for k, p in self.outbox.items() if p.sent_on == self._epoch]

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                redirected = await self._session()
                attempt = 0
                reason = "redirected" if redirected else "stream ended"
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    await self._give_up(error_from_rpc(e))
                    return
                reason = f"{e.code().name}: {e.details()}"
            except Unauthenticated as e:
                await self._give_up(e)
                return
            except NatterError as e:  # a history call for a gap failed: the server went away
                reason = f"{e.reason}: {e.message}"
            except (OSError, ConnectionError) as e:
                reason = str(e)
            except asyncio.CancelledError:
                # gRPC raises this, too, when the call (not this task) was cancelled: a cut
                # stream, which is retried like any other. Only close() stops the loop.
                task = asyncio.current_task()
                if self._closing or (task is not None and task.cancelling()):
                    raise
                reason = "stream cancelled"
            except Exception as e:  # never die quietly with sends waiting: log, try again
                logger.exception("connection failed")
                reason = f"{type(e).__name__}: {e}"
            self.synced.clear()
            self._call = None
            self._live = False
            self._stop_holding()
            if reason != "redirected":
                # A redirect target that failed may be gone: ask the front door again.
                self._address = self.client.server
            if self._closing:
                return
            self._record("disconnect", reason=reason)
            await self.events.put(Disconnected(reason, False))
            delay = random.uniform(0, min(self.max_backoff, 0.1 * 2**attempt))
            attempt = min(attempt + 1, 10)
            await asyncio.sleep(delay)

    async def _give_up(self, err: NatterError) -> None:
        """The token is no longer valid (logged out): fail every send, now and later."""
        self._final = err
        self._call = None
        self._live = False
        self.synced.clear()
        self._fail_outbox(err)
        await self.events.put(Disconnected(err.message, True))

    async def _session(self) -> bool:
        address = self._address
        if self.locate and self.client.user is not None:
            with contextlib.suppress(NatterError):
                address = await self.client.locate(self.client.user.username)
        channel = (
            self.client.channel
            if address == self.client.server
            else open_channel(address, self.client.credentials)
        )
        try:
            stub = spb_grpc.SocketServiceStub(channel)
            call = stub.Connect(metadata=self.client.metadata())
            self._call = call
            self._pending = []
            self._epoch += 1
            self._acks_ok = False
            cursors = [tpb.Cursor(thread_id=t, seq=s) for t, s in self.merger.cursors.items()]
            self._record("hello", stream=self._epoch, cursors=dict(self.merger.cursors))
            async with self._write_lock:  # Hello goes first, before any frame of another task
                await call.write(
                    spb.ClientFrame(
                        hello=spb.Hello(
                            cursors=cursors,
                            skip_replay=self.skip_replay,
                            accept_batches=True,
                            foreground=self.foreground,
                            user_log_seq=self._log_arrived if self._log_wanted else None,
                        )
                    )
                )
            heart: asyncio.Task[None] | None = None
            waiting = asyncio.get_running_loop().call_later(self.handshake_seconds, call.cancel)
            try:
                async for outer in call:
                    frames = (
                        list(outer.batch.frames)
                        if outer.WhichOneof("payload") == "batch"
                        else [outer]
                    )
                    for frame in frames:
                        which = frame.WhichOneof("payload")
                        if which == "welcome":
                            waiting.cancel()
                            w = frame.welcome
                            self.user = convert.user_of(w.user)
                            self.device_id = w.device_id
                            self.stats.connects += 1
                            self._live = True
                            self._stop_holding()  # a new session holds nothing back
                            self._record(
                                "connect", stream=self._epoch, node=w.node_id, address=address
                            )
                            # The outbox first, oldest first: sends made from now on follow.
                            await self._transmit(list(self.outbox.values()))
                            await self.events.put(Connected(w.node_id, address))
                            interval = self.heartbeat_seconds or w.heartbeat_interval_seconds or 5
                            heart = asyncio.create_task(self._heartbeat(interval))
                        elif which == "redirect":
                            self._address = frame.redirect.address
                            call.cancel()
                            return True
                        else:
                            await self._on_frame(frame)
            finally:
                waiting.cancel()
                if heart is not None:
                    heart.cancel()
        finally:
            if channel is not self.client.channel:
                await channel.close()
        return False

    async def _heartbeat(self, interval: float) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(interval)
                await self._write(spb.ClientFrame(heartbeat=spb.Heartbeat()))

    async def _on_frame(self, frame: spb.ServerFrame) -> None:
        which = frame.WhichOneof("payload")
        if which == "message":
            self._acks_ok = True
            m = convert.message_of(frame.message)
            self._record("push", thread=m.thread_id, seq=m.seq)
            await self._offer(m)
        elif which == "send_result":
            result = convert.send_result_of(frame.send_result)
            pending = self.outbox.pop(result.client_msg_id, None)
            if pending is not None:
                self._record(
                    "sent",
                    key=result.client_msg_id,
                    thread=result.thread_id,
                    seq=result.seq,
                    msg_id=result.msg_id,
                )
                if result.message is not None:
                    await self._offer(replace(result.message, state=d.MessageState.SENT))
                elif self.user is not None:
                    own = d.Message(
                        result.thread_id,
                        result.seq,
                        result.msg_id,
                        self.user,
                        self.device_id,
                        result.client_msg_id,
                        d.MessageKind.TEXT,
                        pending.text,
                        result.create_time,
                        state=d.MessageState.SENT,
                    )
                    await self._offer(own)
                if not pending.future.done():
                    pending.future.set_result(result)
        elif which == "sync_done":
            self._acks_ok = True
            if self._ack_dirty:  # taken while no stream could take the ack
                self._schedule_acks()
            self.synced.set()
            await self.events.put(SyncDone(frame.sync_done.replayed))
        elif which == "receipt":
            await self.events.put(convert.receipt_of(frame.receipt))
        elif which == "presence":
            await self.events.put(convert.presence_of(frame.presence))
        elif which == "typing":
            await self.events.put(convert.typing_of(frame.typing))
        elif which == "read_cursor":
            await self.events.put(convert.read_cursor_of(frame.read_cursor))
        elif which == "thread_mute":
            await self.events.put(convert.thread_mute_of(frame.thread_mute))
        elif which == "profile_changed":
            profile = convert.user_of(frame.profile_changed.user)
            self.profiles[profile.user_id] = profile
            await self.events.put(d.ProfileChanged(profile))
        elif which == "user_change":
            change = convert.user_change_of(frame.user_change)
            if change.seq > self._log_arrived:
                self._log_arrived = change.seq
                self.fold.change(change)
                await self.events.put(change)
        elif which == "error":
            await self._on_error(frame.error)

    async def _on_error(self, e: spb.StreamError) -> None:
        if e.client_msg_id and e.client_msg_id in self.outbox:
            if e.code in RETRYABLE or (e.code == RESOURCE_EXHAUSTED and e.reason == "RATE_LIMITED"):
                # Stays in the outbox: sent again on the next connect, or on this stream
                # after a pause (the server is up but, say, its database is restarting).
                key = f"send_retry_{code_name(e.code)}"  # e.g. send_retry_UNAVAILABLE
                self.stats.extra[key] = self.stats.extra.get(key, 0) + 1
                self._record("retry", key=e.client_msg_id, code=e.code, reason=e.reason)
                self._hold_back(self.outbox[e.client_msg_id])
                return
            pending = self.outbox.pop(e.client_msg_id)
            self._record("refused", key=e.client_msg_id, code=e.code, reason=e.reason)
            klass = next((k for c, k in ERROR_OF.items() if c.value[0] == e.code), NatterError)
            if not pending.future.done():
                pending.future.set_exception(klass(e.message, e.reason))
            return
        await self.events.put(Rejected(e.code, e.message, e.reason))

    async def _offer(self, m: d.Message) -> None:
        released, gap = self.merger.offer(m)
        for r in released:
            await self._surface(r)
        while gap is not None:
            before = self.merger.cursors.get(gap.thread_id, 0)
            rows, _ = await self.client.history(
                gap.thread_id,
                after_seq=gap.after_seq,
                forward=True,
                limit=max(1, min(1000, gap.before_seq - gap.after_seq - 1)),
            )
            self.stats.gaps_filled += 1
            first = rows[0].seq if rows else gap.before_seq
            if first > gap.after_seq + 1:
                # History starts later: those seqs are not this member's to see (before they
                # joined, after they left) and will never come. Move past them.
                for r in self.merger.skip_to(gap.thread_id, min(first, gap.before_seq) - 1):
                    await self._surface(r)
            for row in rows:
                released, _ = self.merger.offer(row)
                for r in released:
                    await self._surface(r)
            gap = self.merger.pending_gap(gap.thread_id)
            if gap is not None and self.merger.cursors.get(gap.thread_id, 0) == before:
                raise NatterError(
                    f"history of thread {gap.thread_id} did not fill seqs "
                    f"{gap.after_seq + 1}..{gap.before_seq - 1}",
                    "GAP_NOT_FILLED",
                )

    async def _surface(self, m: d.Message) -> None:
        self.fold.apply(m)
        await self.events.put(m)

    def _took(self, ev: Event) -> None:
        """The application took `ev` from `events`: a message is now shown or stored."""
        if isinstance(ev, d.UserChange):
            self._log_taken = max(self._log_taken, ev.seq)
            return
        if not isinstance(ev, d.Message):
            return
        if self.recorder is not None:
            self._record(
                "show",
                thread=ev.thread_id,
                seq=ev.seq,
                msg_id=ev.msg_id,
                sender=ev.sender.user_id,
                sdev=ev.sender_device_id,
                key=ev.client_msg_id,
                text=ev.text,
            )
        if not self.auto_ack:
            return
        if (
            self.user is not None
            and ev.sender.user_id == self.user.user_id
            and ev.sender_device_id == self.device_id
        ):
            self._advance(ev.thread_id, ev.seq)  # this device's own send: nothing to ack
        else:
            self.ack(ev.thread_id, ev.seq)

    def _advance(self, thread_id: int, seq: int) -> None:
        if seq > self._taken.get(thread_id, 0):
            self._taken[thread_id] = seq

    def ack(self, thread_id: int, seq: int) -> None:
        """Everything up to seq of the thread is shown or stored: move the device's cursor.

        With auto_ack (the default) taking a message from `events` does this. Acks are
        coalesced: one frame carries every thread's cursor, a few times a second.
        """
        self._advance(thread_id, seq)
        if seq > self._ack_dirty.get(thread_id, 0):
            self._ack_dirty[thread_id] = seq
        self._schedule_acks()

    def _schedule_acks(self) -> None:
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._ack_soon())

    async def _ack_soon(self) -> None:
        await asyncio.sleep(0.05)
        await self._flush_acks()

    async def _flush_acks(self) -> None:
        # A new stream takes acks once it has replayed or pushed something: before that the
        # server does not know where this device's threads stand. Sync done flushes them.
        if not self._ack_dirty or self._call is None or not self._acks_ok:
            return
        acks, self._ack_dirty = self._ack_dirty, {}
        frame = spb.ClientFrame(
            ack=spb.Ack(cursors=[tpb.Cursor(thread_id=t, seq=s) for t, s in acks.items()])
        )
        try:
            await self._write(frame)
        except Exception:
            # Lost with the stream: the next one carries them (cursors are cumulative).
            for t, s in acks.items():
                if s > self._ack_dirty.get(t, 0):
                    self._ack_dirty[t] = s

    async def _transmit(self, pendings: list[_Pending]) -> None:
        """Write the given sends not yet on this stream, in the order given (the outbox's).

        Nothing goes out before the stream is welcomed (the outbox is sent first then, oldest
        first) or while sends are held back after a refusal. They are put on the wire in one
        step, so a send made meanwhile cannot come between them.
        """
        if not self._live or self._holding:
            return
        epoch = self._epoch
        todo = [p for p in pendings if p.sent_on != epoch]
        if not todo:
            return
        again = sum(1 for p in todo if p.sent_on != -1)
        for p in todo:
            p.sent_on = epoch
        with contextlib.suppress(Exception):  # a lost stream: the next one sends them again
            self._record("transmit", stream=epoch, keys=[p.frame.client_msg_id for p in todo])
            await self._write(*(spb.ClientFrame(send=p.frame) for p in todo))
            self.stats.resends += again

    def _hold_back(self, refused: _Pending) -> None:
        """A send refused for now: after a pause it goes again, and every send after it too.

        The server refuses the device's later sends until this one comes again (so none can
        overtake it), so nothing is sent meanwhile: the pause ends by sending the outbox
        again in order, from its oldest unanswered entry. The refusals of the sends after it
        are expected and change nothing.
        """
        if refused.sent_on == -1:
            return  # already waiting to go again
        keys = list(self.outbox)
        for key in keys[keys.index(refused.frame.client_msg_id) :]:
            self.outbox[key].sent_on = -1
        refused.retries += 1
        self._holding = True
        if self._resume is not None and not self._resume.done():
            return
        epoch = self._epoch
        delay = random.uniform(0.5, 1.0) * min(self.max_backoff, 0.2 * 2 ** min(refused.retries, 5))

        async def resume() -> None:
            await asyncio.sleep(delay)
            if self._epoch == epoch:
                self._holding = False
                await self._transmit(list(self.outbox.values()))

        self._resume = asyncio.create_task(resume())

    def _stop_holding(self) -> None:
        self._holding = False
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None

    async def _write(self, *frames: spb.ClientFrame) -> None:
        """Frames written while another write is in flight go out together in one batch."""
        call = self._call
        if call is None:
            raise NatterError("not connected")
        self._pending.extend(frames)
        async with self._write_lock:
            if not self._pending or call is not self._call:
                return
            batch, self._pending = self._pending, []
            try:
                for frame in _batched(batch):
                    await call.write(frame)
            except asyncio.CancelledError:
                # gRPC raises this when the call was cancelled under us (a cut stream), not
                # only when this task is: that is a lost connection, which sends survive.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                raise Unavailable("connection lost while writing; will resend") from None
            except (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as e:
                raise Unavailable(f"connection lost while writing: {type(e).__name__}") from None

    def _record(self, op: str, **fields: object) -> None:
        if self.recorder is not None:
            user = self.client.user
            dev = f"{user.username if user else '?'}/{self.device_id or self.client.device_id}"
            self.recorder.record(op, dev=dev, **fields)

    def _fail_outbox(self, err: NatterError) -> None:
        for key, p in self.outbox.items():
            if not p.future.done():
                self._record("refused", key=key, code=0, reason=err.reason)
                p.future.set_exception(err)
        self.outbox.clear()
