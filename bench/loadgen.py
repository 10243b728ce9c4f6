"""bench.chat's cheap client: raw Connect streams, a device's ready sends in one pre-encoded batch.

The SDK (`natter.sdk.Connection`) keeps an outbox, futures per send, history, a merger and
an event queue: right for an app, but in a benchmark its CPU hides the server's. This
client speaks the same protocol with as little work as the protocol allows:

- sends go by thread_id (the direct thread the warm-up created), as an app does once a
  thread exists;
- every send ready at one moment (the slots freed by one incoming stream message) goes out
  in one `ClientBatch`, encoded by hand from a template: only the client_msg_id and the
  text (which carries the send's stamp) change, and both have a fixed length;
- the recipient acks once per incoming stream message (the highest seq per thread), and
  it said `accept_batches`, so the server may coalesce what it pushes.

It checks what the SDK checks: every acknowledged send delivered, none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import grpc

from natter.v1 import socket_service_pb2 as spb
from natter.v1 import types_pb2 as tpb

CONNECT = "/natter.v1.SocketService/Connect"
ID_BYTES = 24
TEXT_BYTES = 64
STAMP_DIGITS = 20


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


class SendTemplate:
    """`ClientFrame{send{client_msg_id, thread_id, text}}` with only the id and text to fill."""

    def __init__(self, thread_id: int, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.number = 0
        thread = b"\x10" + varint(thread_id)  # Send.thread_id = 2, varint
        body_len = 2 + ID_BYTES + len(thread) + 2 + TEXT_BYTES
        # ClientFrame.send = 2 (length-delimited), then Send.client_msg_id = 1 (length 24).
        self.head = b"\x12" + varint(body_len) + b"\x0a" + varint(ID_BYTES)
        self.middle = thread + b"\x22" + varint(TEXT_BYTES)  # Send.text = 4
        self.frame_len = len(self.head) + ID_BYTES + len(self.middle) + TEXT_BYTES

    def frame(self, stamp_ns: int) -> bytes:
        self.number += 1
        key = self.prefix + b"%0*x" % (ID_BYTES - len(self.prefix), self.number)
        head = b"%0*d " % (STAMP_DIGITS, stamp_ns)
        text = head + b"x" * (TEXT_BYTES - len(head))
        return self.head + key + self.middle + text


def batch(frames: Sequence[bytes]) -> bytes:
    """One stream message: the frame itself, or `ClientFrame{batch{frames}}` around many."""
    if len(frames) == 1:
        return frames[0]
    inner = b"".join(b"\x0a" + varint(len(f)) + f for f in frames)  # ClientBatch.frames = 1
    return b"\x3a" + varint(len(inner)) + inner  # ClientFrame.batch = 7


def _frames(frame: spb.ServerFrame) -> Sequence[spb.ServerFrame]:
    return frame.batch.frames if frame.WhichOneof("payload") == "batch" else (frame,)


HELLO = spb.ClientFrame(hello=spb.Hello(skip_replay=True, accept_batches=True)).SerializeToString()


async def open_stream(channel: grpc.aio.Channel, token: str) -> Any:
    """A raw Connect stream (bytes out, ServerFrame in), live once SyncDone arrived."""
    method: Any = channel.stream_stream(
        CONNECT, request_serializer=None, response_deserializer=spb.ServerFrame.FromString
    )
    call = method(metadata=(("authorization", f"Bearer {token}"),))
    await call.write(HELLO)
    while True:
        got = await call.read()
        if got is grpc.aio.EOF:
            raise RuntimeError("stream ended before SyncDone")
        if any(f.WhichOneof("payload") == "sync_done" for f in _frames(got)):
            return call


async def run_pairs(
    pipe: Pipe,
    res: Any,
    pairs: Sequence[tuple[grpc.aio.Channel, str, str, int]],
    inflight: int,
    rate_per_sender: float,
    seconds: float,
) -> None:
    """Each pair: (channel, sender token, recipient token, thread id); fills `res` (a ProcResult).

    Says "ready" on `pipe` once every stream is live, then waits for the window's start
    (a `time.monotonic()` value) from it.
    """
    loop = asyncio.get_running_loop()
    seen: set[str] = set()
    sending = True
    all_in = asyncio.Event()
    start_at = 0.0
    end_ns = 0

    async def sender(call: Any, template: SendTemplate) -> None:
        free = inflight
        room = asyncio.Event()
        interval = 1.0 / rate_per_sender if rate_per_sender > 0 else 0.0
        due = start_at + (template.number % 97) / 97 * interval  # senders spread over a beat

        def ready_frames() -> list[bytes]:
            nonlocal free, due
            now_ns = time.monotonic_ns()
            frames: list[bytes] = []
            if interval:  # open loop: each send due by now, stamped with its due time
                while free > 0 and due * 1e9 <= now_ns and due * 1e9 < end_ns:
                    frames.append(template.frame(int(due * 1e9)))
                    due += interval
                    free -= 1
            elif now_ns < end_ns:
                frames = [template.frame(now_ns) for _ in range(free)]
                free = 0
            res.sent += len(frames)
            return frames

        async def write_ready() -> None:
            frames = ready_frames()
            if frames:
                await call.write(batch(frames))

        async def read() -> None:
            nonlocal free
            while True:
                got = await call.read()
                if got is grpc.aio.EOF:
                    return
                for f in _frames(got):
                    which = f.WhichOneof("payload")
                    if which == "send_result":
                        res.acked += 1
                        free += 1
                        if time.monotonic_ns() <= end_ns:
                            res.acked_in_window += 1
                    elif which == "error":
                        res.failed += 1
                        free += 1
                        if len(res.errors) < 5:
                            res.errors.append(f"{f.error.reason}: {f.error.message}")
                room.set()
                if not interval:
                    await write_ready()  # the slots this message freed, in one batch

        async def pace() -> None:
            while due * 1e9 < end_ns:
                if free == 0:
                    room.clear()
                    await room.wait()
                await write_ready()
                await asyncio.sleep(max(0.0, due - time.monotonic()))

        reader = loop.create_task(read())
        pacer = loop.create_task(pace()) if interval else None
        if not interval:
            await write_ready()
        await asyncio.sleep(max(0.0, end_ns / 1e9 - time.monotonic()))
        deadline = time.monotonic() + 30.0
        while free < inflight and time.monotonic() < deadline and not reader.done():
            room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.wait(), 1.0)
        for task in (reader, pacer):
            if task is not None:
                task.cancel()
        await asyncio.gather(reader, *([pacer] if pacer else []), return_exceptions=True)

    async def receiver(call: Any) -> None:
        while True:
            got = await call.read()
            if got is grpc.aio.EOF:
                return
            now = time.monotonic_ns()
            top: dict[int, int] = {}
            for f in _frames(got):
                if f.WhichOneof("payload") != "message":
                    continue
                m = f.message
                if not res.received(m.msg_id, m.text, now, end_ns, seen):
                    continue
                top[m.thread_id] = max(m.seq, top.get(m.thread_id, 0))
            if top:  # one ack per incoming stream message
                ack = spb.ClientFrame(
                    ack=spb.Ack(cursors=[tpb.Cursor(thread_id=t, seq=s) for t, s in top.items()])
                )
                with contextlib.suppress(Exception):
                    await call.write(ack.SerializeToString())
            if not sending and res.delivered >= res.acked:
                all_in.set()

    streams = []
    for n, (channel, send_token, recv_token, thread_id) in enumerate(pairs):
        s_call = await open_stream(channel, send_token)
        r_call = await open_stream(channel, recv_token)
        template = SendTemplate(thread_id, f"L{n:x}-")
        template.number = n  # only spreads paced senders; ids stay unique per sender
        streams.append((s_call, r_call, template))
    receivers = [loop.create_task(receiver(r)) for _, r, _ in streams]
    pipe.send("ready")
    start_at = float(await asyncio.to_thread(pipe.recv))
    end_ns = int((start_at + seconds) * 1e9)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = time.process_time()
    senders = [loop.create_task(sender(s, t)) for s, _, t in streams]
    await asyncio.sleep(max(0.0, end_ns / 1e9 - time.monotonic()))
    res.cpu_window = time.process_time() - cpu0
    await asyncio.gather(*senders)
    sending = False
    if res.delivered >= res.acked:
        all_in.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), 15.0)
    for task in receivers:
        task.cancel()
    for s_call, r_call, _ in streams:
        s_call.cancel()
        r_call.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
