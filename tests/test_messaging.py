"""One-to-one messaging end to end: send, push, history, threads, unread, bad input."""

import asyncio

import grpc
import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import InvalidArgument, NotFound, PermissionDenied
from natter.sdk import Client
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import collect, eventually

# The split store's end-to-end subset: these run on sqlite+mongodb too (tests/conftest.py).
pytestmark = pytest.mark.message_log


@pytest.mark.all_stores
async def test_two_people_chat_in_real_time(user: UserFactory, connect: ConnFactory) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca, cb = await connect(alice), await connect(bob)
    sent = await ca.send("hello bob", recipient="bob")
    assert sent.seq == 1 and sent.thread_id > 0 and len(sent.msg_id) == 26
    [got] = await collect(cb, 1)
    assert (got.text, got.seq, got.thread_id, got.sender.username) == (
        "hello bob",
        1,
        sent.thread_id,
        "alice",
    )
    assert got.msg_id == sent.msg_id
    reply = await cb.send("hi alice", thread_id=sent.thread_id)
    assert reply.seq == 2
    [back] = await collect(ca, 1)
    assert back.text == "hi alice" and back.sender.username == "bob"


@pytest.mark.all_stores
async def test_direct_thread_is_unique_per_pair(user: UserFactory, connect: ConnFactory) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca, cb = await connect(alice), await connect(bob)
    one = await ca.send("a", recipient="bob")
    two = await cb.send("b", recipient="alice")
    both = await asyncio.gather(*(ca.send(str(i), recipient="bob") for i in range(5)))
    assert {one.thread_id, two.thread_id, *(r.thread_id for r in both)} == {one.thread_id}
    assert sorted(r.seq for r in both) == [3, 4, 5, 6, 7]
    assert len(await alice.threads()) == 1


async def test_history_pages_before_and_after(user: UserFactory, connect: ConnFactory) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    first = await ca.send("m1", recipient="bob")
    for i in range(2, 26):
        await ca.send(f"m{i}", thread_id=first.thread_id)
    newest, more = await bob.history(first.thread_id, limit=10)
    assert [m.seq for m in newest] == list(range(16, 26)) and more
    older, more = await bob.history(first.thread_id, before_seq=16, limit=10)
    assert [m.seq for m in older] == list(range(6, 16)) and more
    oldest, more = await bob.history(first.thread_id, before_seq=6, limit=10)
    assert [m.seq for m in oldest] == [1, 2, 3, 4, 5] and not more
    after, more = await bob.history(first.thread_id, after_seq=20, limit=3)
    assert [m.text for m in after] == ["m21", "m22", "m23"] and more
    all_ = [m.seq async for m in bob.all_history(first.thread_id, page=7)]
    assert all_ == list(range(1, 26))


async def test_threads_ordered_by_last_update(user: UserFactory, connect: ConnFactory) -> None:
    alice = await user("alice")
    for name in ("bob", "carol", "dave"):
        await user(name)
    ca = await connect(alice)
    ids = {}
    for name in ("bob", "carol", "dave"):
        ids[name] = (await ca.send(f"hi {name}", recipient=name)).thread_id
    await ca.send("again", recipient="bob")
    threads = await alice.threads()
    assert [t.thread_id for t in threads] == [ids["bob"], ids["dave"], ids["carol"]]
    assert threads[0].last_message.text == "again" and threads[0].peer.username == "bob"
    page = await alice.threads(limit=2)
    assert len(page) == 2


@pytest.mark.all_stores
async def test_unread_counts_and_sender_state(user: UserFactory, connect: ConnFactory) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca = await connect(alice)
    sent = [await ca.send(f"m{i}", recipient="bob") for i in range(3)]
    [t] = await bob.threads()
    assert t.unread_count == 3
    rows, _ = await alice.history(sent[0].thread_id)
    assert {m.state for m in rows} == {d.MessageState.SENT}
    cb = await connect(bob)
    await collect(cb, 3)
    await cb.read(sent[0].thread_id, 2)
    receipt = None
    while not (isinstance(receipt, d.Receipt) and receipt.kind is d.ReceiptKind.READ):
        receipt = await ca.next_event(5)
    assert receipt.seq == 2 and receipt.user.username == "bob"

    async def states() -> bool:
        rows, _ = await alice.history(sent[0].thread_id)
        return [m.state for m in rows] == [
            d.MessageState.READ,
            d.MessageState.READ,
            d.MessageState.DELIVERED,
        ]

    await eventually(states)
    [t] = await bob.threads()
    assert t.unread_count == 1


@pytest.mark.all_stores
async def test_restart_keeps_everything(settings: Settings) -> None:
    async with EmbeddedServer(settings) as srv:
        a, b = Client(srv.grpc_address), Client(srv.grpc_address)
        await a.register("alice", PASSWORD)
        await b.register("bob", PASSWORD)
        await a.login("alice", PASSWORD)
        await b.login("bob", PASSWORD)
        await a.add_contact("bob")
        from natter.sdk import Connection

        conn = await Connection(a).start()
        sent = await conn.send("before restart", recipient="bob")
        await conn.close()
        await a.close()
        await b.close()
    async with EmbeddedServer(settings) as srv:
        b = Client(srv.grpc_address)
        await b.login("bob", PASSWORD)
        rows, _ = await b.history(sent.thread_id)
        assert [m.text for m in rows] == ["before restart"]
        a = Client(srv.grpc_address)
        await a.login("alice", PASSWORD)
        assert [c.user.username for c in await a.contacts()] == ["bob"]
        assert len(await a.devices()) == 2
        await a.close()
        await b.close()


@pytest.mark.all_stores
async def test_bad_sends_get_clear_errors(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca = await connect(alice)
    cases = [
        (dict(text="", recipient="bob"), InvalidArgument, "EMPTY_TEXT"),
        (dict(text="   ", recipient="bob"), InvalidArgument, "EMPTY_TEXT"),
        (dict(text="x" * (64 * 1024 + 1), recipient="bob"), InvalidArgument, "TEXT_TOO_LONG"),
        (dict(text="hi", recipient="nobody"), NotFound, "USER_NOT_FOUND"),
        (dict(text="hi", thread_id=999), NotFound, "THREAD_NOT_FOUND"),
        (dict(text="hi"), InvalidArgument, "NO_TARGET"),
    ]
    for kwargs, error, reason in cases:
        with pytest.raises(error) as info:
            await ca.send(**kwargs, timeout=5)  # type: ignore[arg-type]
        assert info.value.reason == reason, kwargs
    cb = await connect(bob)
    private = await cb.send("just us", recipient="carol")
    with pytest.raises(PermissionDenied):
        await ca.send("let me in", thread_id=private.thread_id, timeout=5)
    with pytest.raises(PermissionDenied):
        await alice.history(private.thread_id)
    # Multi-byte text counts bytes, not characters: 16,384 four-byte characters is exactly the cap.
    ok = await ca.send("😀" * 16384, recipient="bob")
    assert ok.seq == 1
    with pytest.raises(InvalidArgument):
        await ca.send("😀" * 16385, recipient="bob", timeout=5)
    # Nothing half-written: only the valid messages exist.
    rows, _ = await bob.history(ok.thread_id)
    assert [m.seq for m in rows] == [1]
    assert carol is not None


async def test_invalid_utf8_and_malformed_frames_keep_the_stream(
    user: UserFactory, server: EmbeddedServer
) -> None:

    alice = await user("alice")
    await user("bob")
    raw = alice.channel.stream_stream(
        "/natter.v1.SocketService/Connect",
        request_serializer=lambda b: b,
        response_deserializer=spb.ServerFrame.FromString,
    )
    call = raw(metadata=alice.metadata())
    await call.write(spb.ClientFrame(hello=spb.Hello()).SerializeToString())
    # Send.text (field 4 of Send, field 2 of ClientFrame) with invalid UTF-8 bytes.
    bad_text = b"\x0a\x02id" + b"\x1a\x03bob" + b"\x22\x02\xff\xfe"
    frame = b"\x12" + bytes([len(bad_text)]) + bad_text
    await call.write(frame)
    await call.write(b"\xff\xff\xff")  # not protobuf at all
    good = spb.ClientFrame(send=spb.Send(client_msg_id="ok1", recipient="bob", text="fine"))
    await call.write(good.SerializeToString())
    errors, result = [], None
    async for f in call:
        which = f.WhichOneof("payload")
        if which == "error":
            errors.append(f.error)
        if which == "send_result":
            result = f.send_result
            break
    assert [e.code for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]] * 2
    assert all(e.reason == "MALFORMED_FRAME" for e in errors)
    assert result is not None and result.client_msg_id == "ok1"
    call.cancel()


async def _refused(
    call: grpc.aio.StreamStreamCall[spb.ClientFrame, spb.ServerFrame], *frames: spb.ClientFrame
) -> grpc.aio.AioRpcError:
    """Write frames and read until the server ends the stream with an error.

    The server may refuse a stream on its metadata before it reads a frame,
    so the error can surface on a write as well as on the read."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        for frame in frames:
            await call.write(frame)
        async for _ in call:
            pass
    return info.value


async def test_oversized_frame_is_refused(user: UserFactory, server: EmbeddedServer) -> None:
    from natter.v1 import socket_service_pb2_grpc as spb_grpc

    alice = await user("alice")
    stub = spb_grpc.SocketServiceStub(alice.channel)
    call = stub.Connect(metadata=alice.metadata())
    big = spb.ClientFrame(send=spb.Send(client_msg_id="big", recipient="alice", text="x" * 300_000))
    info = await _refused(call, spb.ClientFrame(hello=spb.Hello()), big)
    assert info.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The server keeps serving everyone else.
    assert len(await alice.devices()) == 1


async def test_stream_requires_a_valid_token(user: UserFactory, server: EmbeddedServer) -> None:
    from natter.v1 import socket_service_pb2_grpc as spb_grpc

    alice = await user("alice")
    stub = spb_grpc.SocketServiceStub(alice.channel)
    for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", "Basic x"),)):
        info = await _refused(stub.Connect(metadata=metadata), spb.ClientFrame(hello=spb.Hello()))
        assert info.code() == grpc.StatusCode.UNAUTHENTICATED
    call = stub.Connect(metadata=alice.metadata())
    info = await _refused(call, spb.ClientFrame(heartbeat=spb.Heartbeat()))
    assert info.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (info.details() or "")
