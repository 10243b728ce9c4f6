"""Frames encoded once (socket_svc/frames.py) are byte for byte what the generated code writes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from app.embedded import EmbeddedServer
from natter import convert
from natter import domain as d
from natter.sdk import Client, Connection
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import types_pb2 as tpb
from socket_svc import frames
from tests.conftest import ConnFactory, UserFactory

ALICE = d.User(7, "alice", "Alice")
BOB = d.User(2**40, "bob", "Bøb 🙂")
WHEN = datetime(2026, 12, 1, 23, 30, 5, 123456, tzinfo=UTC)


def shapes() -> list[d.Message]:
    """Messages of every shape a thread's log holds, with small and large numbers."""
    text = d.Message(
        1, 1, "01J0000000000000000000000A", ALICE, 3, "c-1", d.MessageKind.TEXT, "hi", WHEN
    )
    picture = d.Attachment(
        "att1", "image/jpeg", 123_456, "p.jpg", "ab" * 32, 640, 480, 0, "LKO2?U%2Tw=w", True
    )
    return [
        text,
        d.Message(
            2**40,
            2**33,
            "m" * 26,
            BOB,
            2**50,
            "",
            d.MessageKind.TEXT,
            "x" * 300,
            WHEN + timedelta(days=400),
            state=d.MessageState.READ,
        ),
        d.Message(5, 2, "m2", ALICE, 0, "k", d.MessageKind.TEXT, "é" * 70 + "🙂" * 40, WHEN),
        d.Message(
            5,
            3,
            "m3",
            ALICE,
            4,
            "k3",
            d.MessageKind.ATTACHMENT,
            "caption",
            WHEN,
            attachments=(picture, picture),
        ),
        d.Message(
            5,
            4,
            "m4",
            BOB,
            4,
            "k4",
            d.MessageKind.TEXT,
            "a reply",
            WHEN,
            reply_to=d.ReplyTo(2, ALICE, "é" * 10, d.MessageKind.TEXT),
            forwarded=True,
        ),
        d.Message(
            5, 5, "m5", BOB, 4, "k5", d.MessageKind.REACTION, "", WHEN, target_seq=4, emoji="👍"
        ),
        d.Message(
            5,
            6,
            "m6",
            ALICE,
            4,
            "k6",
            d.MessageKind.TEXT,
            "edited",
            WHEN,
            edit_time=WHEN + timedelta(seconds=3),
            edit_seq=9,
            deleted=True,
            delete_seq=11,
            reactions=(d.Reaction(BOB, "🎉", 12, WHEN),),
            hidden=True,
        ),
        d.Message(
            5,
            7,
            "m7",
            ALICE,
            1,
            "",
            d.MessageKind.SYSTEM,
            "",
            WHEN,
            system=d.SystemEvent(d.SystemKind.MEMBERS_ADDED, ALICE, (BOB, ALICE), "t"),
        ),
        d.Message(
            0,
            0,
            "",
            d.User(0, "", ""),
            0,
            "",
            d.MessageKind.UNKNOWN,
            "",
            datetime(1970, 1, 1, tzinfo=UTC),
        ),
    ]


def generated(m: d.Message) -> bytes:
    return spb.ServerFrame(message=convert.message(m)).SerializeToString()


def test_a_message_frame_is_what_the_generated_code_writes() -> None:
    for m in shapes():
        data = frames.message(m)
        assert data == generated(m), m
        assert data == frames.replayed(m)
        decoded = spb.ServerFrame.FromString(data)
        assert decoded.WhichOneof("payload") == "message"
        assert decoded.message == convert.message(m)
        assert convert.message_of(decoded.message) == m


def test_a_message_pushed_to_many_streams_is_encoded_once() -> None:
    m = shapes()[0]
    first = frames.message(m)
    assert frames.message(m) is first  # the same bytes object: not encoded again
    # An equal message that is another value is encoded on its own, to the same bytes.
    twin = replace(m)
    again = frames.message(twin)
    assert again == first and again is not first
    # The memo stays bounded and never hands out the bytes of a message it forgot.
    many = [
        d.Message(9, i, f"id{i}", ALICE, 1, "", d.MessageKind.TEXT, f"t{i}", WHEN)
        for i in range(frames.MEMO + 50)
    ]
    for x in many:
        frames.message(x)
    assert len(frames._memo) <= frames.MEMO
    for x in many[:60]:
        assert frames.message(x) == generated(x)


def test_a_batch_is_what_the_generated_code_writes() -> None:
    ms = shapes()
    mixed: list[frames.Frame] = []
    for i, m in enumerate(ms):
        mixed.append(frames.message(m) if i % 2 else spb.ServerFrame(message=convert.message(m)))
    mixed += [
        spb.ServerFrame(heartbeat_ack=spb.HeartbeatAck()),
        spb.ServerFrame(sync_done=spb.SyncDone(replayed=3)),
        spb.ServerFrame(error=spb.StreamError(code=3, message="no", reason="BAD")),
    ]
    protos = [f if isinstance(f, spb.ServerFrame) else spb.ServerFrame.FromString(f) for f in mixed]
    expected = spb.ServerFrame(batch=spb.ServerBatch(frames=protos)).SerializeToString()
    assert frames.batch(mixed) == expected
    assert len(expected) > 300  # lengths of two varint bytes and more are covered
    assert spb.ServerFrame.FromString(frames.batch(mixed)).batch.frames == protos
    for size in (0, 1, 128):
        chunk = [frames.message(ms[0])] * size
        want = spb.ServerFrame(
            batch=spb.ServerBatch(frames=[spb.ServerFrame.FromString(f) for f in chunk])
        )
        assert frames.batch(chunk) == want.SerializeToString()


def test_varints_are_protobufs() -> None:
    assert frames.varint(0) == b"\x00"
    for n in [1, 127, 128, 300, 16_383, 16_384, 2**31, 2**35 + 7, 2**63 - 1]:
        # A Cursor holding only thread_id = n: one key byte, then the varint.
        assert frames.varint(n) == tpb.Cursor(thread_id=n).SerializeToString()[1:]


async def _raw_stream(client: Client, batches: bool) -> Any:
    """A Connect stream whose frames come back as the bytes on the wire, undecoded."""
    call: Any = client.channel.stream_stream(
        "/natter.v1.SocketService/Connect",
        request_serializer=spb.ClientFrame.SerializeToString,
        response_deserializer=None,
    )(metadata=client.metadata())
    await call.write(spb.ClientFrame(hello=spb.Hello(accept_batches=batches)))
    return call


async def _frames_until(call: Any, text: str) -> list[bytes]:
    """Every message frame's bytes (out of batches too) until one carrying `text`."""
    seen: list[bytes] = []
    while True:
        raw = await call.read()
        assert raw is not grpc.aio.EOF
        assert isinstance(raw, bytes)
        outer = spb.ServerFrame.FromString(raw)
        # The bytes are canonical: what the generated code writes for what they decode to.
        assert outer.SerializeToString() == raw
        inner = list(outer.batch.frames) if outer.WhichOneof("payload") == "batch" else [outer]
        for f in inner:
            if f.WhichOneof("payload") == "message":
                seen.append(f.SerializeToString())
                if f.message.text == text:
                    return seen


async def test_a_group_message_reaches_every_stream_as_the_same_bytes(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    group = await alice.create_group("frames", ["bob", "carol"])
    sender = await connect(alice)
    plain, batched = await _raw_stream(bob, False), await _raw_stream(carol, True)
    try:
        for call in (plain, batched):
            while spb.ServerFrame.FromString(await call.read()).WhichOneof("payload") != (
                "sync_done"
            ):
                pass
        texts = [f"hello {i} é🙂" for i in range(20)]
        for t in texts:
            await sender.send(t, thread_id=group.thread_id)
        got_plain = await _frames_until(plain, texts[-1])
        got_batched = await _frames_until(batched, texts[-1])
    finally:
        plain.cancel()
        batched.cancel()
    assert got_plain == got_batched
    assert [spb.ServerFrame.FromString(f).message.text for f in got_plain][-20:] == texts
    for f in got_plain:
        m = spb.ServerFrame.FromString(f).message
        assert m.sender.username == "alice" and m.thread_id == group.thread_id
        assert frames.message(convert.message_of(m)) == f


async def test_a_device_replays_what_it_missed_in_frames_the_sdk_reads(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    out = await connect(alice)
    await out.send("first", recipient="bob")
    away = await connect(bob)
    while not isinstance(await away.next_event(10), d.Message):
        pass
    await away.close()
    texts = [f"missed {i}" for i in range(700)]  # more than one replay page
    for t in texts:
        await out.send(t, recipient="bob")
    back = Connection(bob, cursors=away.cursors)
    try:
        await back.start()
        got: list[str] = []
        while len(got) < len(texts):
            ev = await back.next_event(30)
            if isinstance(ev, d.Message):
                got.append(ev.text)
    finally:
        await back.close()
    assert got == texts
