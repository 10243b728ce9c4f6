"""Conversions: enum numbers a peer sends that this build does not know become UNKNOWN and
are shown as unsupported; the same numbers in a client's request are INVALID_ARGUMENT.

Protobuf enums are open: a message carries any int32 in an enum field, so a newer server
or peer can always send one this build has no name for.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from app.cli import UNSUPPORTED, message_line, message_obj
from natter import convert
from natter import domain as d
from natter.errors import InvalidArgument
from natter.sdk import Client, Connection, Disconnected
from natter.v1 import socket_internal_service_pb2 as ipb
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from natter.v1 import types_pb2 as pb
from tests.helpers import eventually

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
ALICE = d.User(1, "alice", "Alice")

# (proto enum, domain enum, to proto, from proto): every enum convert.py maps.
ENUMS: list[tuple[Any, type[enum.Enum], Callable[[Any], int], Callable[[Any], enum.Enum]]] = [
    (pb.ThreadKind, d.ThreadKind, convert.thread_kind, convert.thread_kind_of),
    (pb.MemberRole, d.Role, convert.role, convert.role_of),
    (pb.MessageKind, d.MessageKind, convert.message_kind, convert.message_kind_of),
    (pb.MessageState, d.MessageState, convert.message_state, convert.message_state_of),
    (pb.SystemEventKind, d.SystemKind, convert.system_kind, convert.system_kind_of),
    (pb.ReceiptKind, d.ReceiptKind, convert.receipt_kind, convert.receipt_kind_of),
]
IDS = [e[1].__name__ for e in ENUMS]


@pytest.mark.parametrize(("proto", "domain", "to", "of"), ENUMS, ids=IDS)
def test_every_proto_value_has_its_own_domain_member_and_back(
    proto: Any, domain: type[enum.Enum], to: Callable[[Any], int], of: Callable[[Any], enum.Enum]
) -> None:
    known = [n for n in proto.values() if n != 0]
    members = [of(n) for n in known]
    assert domain["UNKNOWN"] not in members
    assert sorted(m.name for m in members) == sorted(m.name for m in domain if m.name != "UNKNOWN")
    assert [to(m) for m in members] == known


@pytest.mark.parametrize(("proto", "domain", "to", "of"), ENUMS, ids=IDS)
@pytest.mark.parametrize("number", [0, 99, -1, 2**31 - 1])
def test_a_number_this_build_does_not_know_is_unknown_both_ways(
    proto: Any,
    domain: type[enum.Enum],
    to: Callable[[Any], int],
    of: Callable[[Any], enum.Enum],
    number: int,
) -> None:
    assert of(number) is domain["UNKNOWN"]
    assert to(domain["UNKNOWN"]) == 0  # goes out as UNSPECIFIED


def _message(kind: int = pb.MESSAGE_KIND_TEXT, seq: int = 3, **fields: Any) -> pb.Message:
    return pb.Message(
        thread_id=5,
        seq=seq,
        msg_id="m3",
        sender=convert.user(ALICE),
        sender_device_id=2,
        client_msg_id="c3",
        kind=pb.MessageKind.ValueType(kind),
        text="a newer kind's fallback text",
        create_time=convert.ts(NOW),
        **fields,
    )


def test_message_of_keeps_a_message_of_an_unknown_kind_state_and_event() -> None:
    m = convert.message_of(
        _message(
            99,
            state=pb.MessageState.ValueType(42),
            system=pb.SystemEvent(kind=pb.SystemEventKind.ValueType(77), actor=convert.user(ALICE)),
        )
    )
    assert (m.thread_id, m.seq, m.msg_id, m.text) == (5, 3, "m3", "a newer kind's fallback text")
    assert m.kind is d.MessageKind.UNKNOWN
    assert m.state is d.MessageState.UNKNOWN
    assert m.system is not None and m.system.kind is d.SystemKind.UNKNOWN
    assert m.system.actor == ALICE
    out = convert.message(m)
    assert (out.kind, out.state, out.system.kind) == (0, 0, 0)


def test_receipt_thread_and_member_of_unknown_numbers() -> None:
    r = convert.receipt_of(
        pb.Receipt(
            thread_id=5,
            user=convert.user(ALICE),
            kind=pb.ReceiptKind.ValueType(9),
            seq=3,
            time=convert.ts(NOW),
        )
    )
    assert (r.kind, r.seq, r.user) == (d.ReceiptKind.UNKNOWN, 3, ALICE)
    t = convert.thread_of(
        pb.Thread(
            thread_id=5,
            kind=pb.ThreadKind.ValueType(9),
            title="g",
            last_seq=3,
            update_time=convert.ts(NOW),
            role=pb.MemberRole.ValueType(9),
            member_count=2,
            active=True,
            last_message=_message(99),
        )
    )
    assert (t.kind, t.role, t.title, t.last_seq, t.peer) == (
        d.ThreadKind.UNKNOWN,
        d.Role.UNKNOWN,
        "g",
        3,
        None,
    )
    assert t.last_message is not None and t.last_message.kind is d.MessageKind.UNKNOWN
    m = convert.member_of(
        pb.Member(user=convert.user(ALICE), role=pb.MemberRole.ValueType(9), read_seq=2)
    )
    assert (m.user, m.role, m.read_seq) == (ALICE, d.Role.UNKNOWN, 2)


def test_known_values_round_trip() -> None:
    m = d.Message(
        5,
        3,
        "m3",
        ALICE,
        2,
        "c3",
        d.MessageKind.SYSTEM,
        "alice made bob admin",
        NOW,
        d.SystemEvent(d.SystemKind.ADMINS_PROMOTED, ALICE, (d.User(2, "bob", "Bob"),)),
        d.MessageState.READ,
    )
    assert convert.message_of(convert.message(m)) == m
    t = d.Thread(5, d.ThreadKind.GROUP, "g", 3, 1, 2, NOW, d.Role.ADMIN, 2, True, None, m)
    assert convert.thread_of(convert.thread(t)) == t
    member = d.Member(ALICE, d.Role.MEMBER, 3, 2, NOW)
    assert convert.member_of(convert.member(member)) == member
    r = d.Receipt(5, ALICE, d.ReceiptKind.READ, 3, NOW)
    assert convert.receipt_of(convert.receipt(r)) == r
    ack = d.DeviceAck(1, 2, (d.Cursor(5, 3), d.Cursor(6, 0)))
    assert convert.device_ack_of(convert.device_ack(ack)) == ack
    rc = d.ReadCursor(d.Cursor(5, 3))
    assert convert.read_cursor_of(convert.read_cursor(rc)) == rc


def test_a_role_in_a_request_must_be_one_the_server_knows() -> None:
    assert convert.requested_role(pb.MEMBER_ROLE_ADMIN) is d.Role.ADMIN
    assert convert.requested_role(pb.MEMBER_ROLE_MEMBER) is d.Role.MEMBER
    with pytest.raises(InvalidArgument) as info:
        convert.requested_role(pb.MemberRole.ValueType(99))
    assert info.value.reason == "UNKNOWN_ENUM"
    assert "role = 99" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        convert.requested_role(pb.MEMBER_ROLE_UNSPECIFIED, "new_role")
    assert info.value.reason == "UNSPECIFIED_ENUM"
    assert info.value.message.startswith("new_role is required")


def _unknown_event(thread_id: int) -> ipb.Delivery:
    """A Delivery whose event is a oneof field this build has no name for (number 99)."""
    known = ipb.Delivery(thread_id=thread_id).SerializeToString()
    tag = (99 << 3) | 2  # field 99, length-delimited
    raw = known + bytes([tag & 0x7F | 0x80, tag >> 7]) + b"\x02\x08\x01"
    parsed = ipb.Delivery.FromString(raw)
    assert parsed.WhichOneof("event") is None and parsed.thread_id == thread_id
    return parsed


def test_deliveries_of_leaves_out_events_it_does_not_know_and_keeps_the_rest() -> None:
    batch = [
        ipb.Delivery(thread_id=5, message=_message()),
        _unknown_event(6),
        ipb.Delivery(user_ids=[1], read_cursor=pb.Cursor(thread_id=5, seq=3)),
    ]
    assert convert.delivery_of(batch[1]) is None
    out = convert.deliveries_of(batch)
    assert [type(x.event) for x in out] == [d.Message, d.ReadCursor]
    assert out[0].thread_id == 5 and out[1].user_ids == (1,)


def test_the_cli_shows_an_unknown_kind_as_unsupported() -> None:
    m = convert.message_of(_message(99))
    assert message_obj(m)["text"] == UNSUPPORTED
    assert message_line(m).endswith(f"alice: {UNSUPPORTED}")
    # A system event of a newer kind shows the server's own description of it.
    event = convert.message_of(
        _message(
            pb.MESSAGE_KIND_SYSTEM,
            system=pb.SystemEvent(kind=pb.SystemEventKind.ValueType(77), actor=convert.user(ALICE)),
        )
    )
    assert message_obj(event)["text"] == "a newer kind's fallback text"
    assert message_obj(event)["system"]["kind"] == "unknown"


# -- the SDK against a server that speaks a newer protocol ---------------------------------


class NewerSocketServer(spb_grpc.SocketServiceServicer):
    """Answers Hello with frames carrying enum numbers no released natter has; records acks."""

    def __init__(self) -> None:
        self.connects = 0
        self.acked: dict[int, int] = {}

    async def Connect(  # type: ignore[override]
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.connects += 1
        hello = await anext(aiter(request_iterator))
        assert hello.WhichOneof("payload") == "hello"
        frames = [
            spb.ServerFrame(
                welcome=spb.Welcome(user=convert.user(ALICE), device_id=7, node_id="newer")
            ),
            spb.ServerFrame(message=_message(99, seq=1)),
            spb.ServerFrame(message=_message(pb.MESSAGE_KIND_TEXT, seq=2)),
            spb.ServerFrame(sync_done=spb.SyncDone(replayed=2)),
            spb.ServerFrame(
                receipt=pb.Receipt(
                    thread_id=5,
                    user=convert.user(ALICE),
                    kind=pb.ReceiptKind.ValueType(9),
                    seq=2,
                    time=convert.ts(NOW),
                )
            ),
        ]
        for frame in frames:
            await context.write(frame)
        async for got in request_iterator:
            inner = got.batch.frames if got.WhichOneof("payload") == "batch" else [got]
            for f in inner:
                for c in f.ack.cursors:
                    self.acked[c.thread_id] = max(self.acked.get(c.thread_id, 0), c.seq)

    async def Locate(
        self, request: spb.LocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> spb.LocateResponse:
        return spb.LocateResponse(address="")


@pytest.fixture
async def newer_server() -> AsyncIterator[tuple[NewerSocketServer, str]]:
    server = grpc.aio.server()
    servicer = NewerSocketServer()
    spb_grpc.add_SocketServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_the_sdk_surfaces_unknown_kinds_and_keeps_its_connection(
    newer_server: tuple[NewerSocketServer, str],
) -> None:
    servicer, address = newer_server
    client = Client(address, token="a-token")
    conn = Connection(client)
    try:
        await conn.start(timeout=10)
        seen: list[object] = []
        while len([e for e in seen if isinstance(e, d.Message | d.Receipt)]) < 3:
            seen.append(await conn.next_event(10))
        assert not any(isinstance(e, Disconnected) for e in seen), seen
        unsupported, text, receipt = [e for e in seen if isinstance(e, d.Message | d.Receipt)]
        assert isinstance(unsupported, d.Message) and unsupported.seq == 1
        assert unsupported.kind is d.MessageKind.UNKNOWN
        assert unsupported.text == "a newer kind's fallback text"
        assert isinstance(text, d.Message) and (text.seq, text.kind) == (2, d.MessageKind.TEXT)
        assert isinstance(receipt, d.Receipt) and receipt.kind is d.ReceiptKind.UNKNOWN
        # Shown (as unsupported) counts as shown: the cursor moves past it, on the same stream.
        await eventually(lambda: servicer.acked.get(5) == 2)
        assert servicer.connects == 1 and conn.stats.connects == 1
        assert not any(isinstance(e, Disconnected) for e in _drain(conn))
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await conn.close()
        await client.close()


def _drain(conn: Connection) -> list[object]:
    out: list[object] = []
    while not conn.events.empty():
        out.append(conn.events.get_nowait())
    return out
