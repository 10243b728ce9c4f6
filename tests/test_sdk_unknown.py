"""The Python SDK against a socket server from the future: frames with a oneof case, a field and
enum values it does not know arrive over real gRPC; it skips or surfaces them, never crashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from natter import domain as d
from natter.sdk import Client, Connection
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import types_pb2 as tpb
from tests.helpers import eventually


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_unknown_field(raw: bytes, field: int, value: bytes) -> bytes:
    """`raw` with one more length-delimited field, numbered as no field of this build is."""
    return raw + _varint(field << 3 | 2) + _varint(len(value)) + value


def frame(**payload: object) -> bytes:
    raw: bytes = spb.ServerFrame(**payload).SerializeToString()  # type: ignore[arg-type]
    return raw


async def test_the_sdk_skips_unknown_frames_and_surfaces_unknown_kinds() -> None:
    peer = tpb.User(user_id=2, username="peer")
    future = tpb.Message(thread_id=9, seq=1, msg_id="m1", sender=peer, kind=42)  # type: ignore[arg-type]
    future_raw = with_unknown_field(future.SerializeToString(), 50, b"a reaction, say")
    text = tpb.Message(
        thread_id=9, seq=2, msg_id="m2", sender=peer, kind=tpb.MESSAGE_KIND_TEXT, text="still here"
    )
    script = [
        frame(
            welcome=spb.Welcome(
                user=tpb.User(user_id=1, username="future"), device_id=7, node_id="x"
            )
        ),
        with_unknown_field(b"", 99, b"a new kind of frame"),
        # ServerFrame.message is field 2: the future message's bytes, unknown field and all.
        _varint(2 << 3 | 2) + _varint(len(future_raw)) + future_raw,
        frame(receipt=tpb.Receipt(thread_id=9, user=peer, kind=9, seq=1)),  # type: ignore[arg-type]
        frame(message=text),
        frame(sync_done=spb.SyncDone(replayed=2)),
    ]
    acks: list[spb.Ack] = []

    async def connect(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async def read() -> None:
            async for raw in requests:
                f = spb.ClientFrame.FromString(raw)
                for inner in f.batch.frames if f.WhichOneof("payload") == "batch" else [f]:
                    if inner.WhichOneof("payload") == "ack":
                        acks.append(inner.ack)

        reader = asyncio.create_task(read())
        try:
            for raw in script:
                yield raw
            await reader
        finally:
            reader.cancel()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "natter.v1.SocketService",
                {"Connect": grpc.stream_stream_rpc_method_handler(connect)},
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = Client(f"127.0.0.1:{port}", token="t")
        conn = await Connection(client).start()
        events: list[object] = []
        while not any(isinstance(e, d.Message) and e.seq == 2 for e in events):
            events.append(await conn.next_event(10))
        messages = [e for e in events if isinstance(e, d.Message)]
        assert [m.seq for m in messages] == [1, 2]
        assert messages[0].kind is d.MessageKind.UNKNOWN  # shown as unsupported
        assert messages[1].text == "still here"
        receipts = [e for e in events if isinstance(e, d.Receipt)]
        assert [r.kind for r in receipts] == [d.ReceiptKind.UNKNOWN]
        assert conn.synced.is_set()
        # Both were taken, the unknown kind too: the ack covers seq 2.
        await eventually(
            lambda: any(c.thread_id == 9 and c.seq == 2 for a in acks for c in a.cursors)
        )
        await conn.close()
        await client.close()
    finally:
        await server.stop(0)
