"""Conversions between the shared domain values and their natter.v1 protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from natter import domain as d
from natter.errors import Internal, InvalidArgument, NatterError
from natter.rpc import ERROR_OF, status_of
from natter.v1 import message_internal_service_pb2 as mpb
from natter.v1 import socket_internal_service_pb2 as ipb
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import types_pb2 as pb

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(value: datetime | None) -> Timestamp | None:
    # Integer arithmetic: Timestamp.FromDatetime costs several times more on every push.
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.astimezone(UTC)
    delta = value - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    return Timestamp(seconds=seconds, nanos=delta.microseconds * 1000)


def from_ts(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def opt_ts(msg: object, field: str) -> datetime | None:
    return from_ts(getattr(msg, field)) if msg.HasField(field) else None  # type: ignore[attr-defined]


def user(u: d.User) -> pb.User:
    return pb.User(user_id=u.user_id, username=u.username, display_name=u.display_name)


def user_of(p: pb.User) -> d.User:
    return d.User(p.user_id, p.username, p.display_name)


def system(e: d.SystemEvent) -> pb.SystemEvent:
    return pb.SystemEvent(
        kind=pb.SystemEventKind.ValueType(e.kind.value),
        actor=user(e.actor),
        users=[user(u) for u in e.users],
        title=e.title,
    )


def system_of(p: pb.SystemEvent) -> d.SystemEvent:
    return d.SystemEvent(
        d.SystemKind(p.kind), user_of(p.actor), tuple(user_of(u) for u in p.users), p.title
    )


def message(m: d.Message) -> pb.Message:
    out = pb.Message(
        thread_id=m.thread_id,
        seq=m.seq,
        msg_id=m.msg_id,
        sender=user(m.sender),
        sender_device_id=m.sender_device_id,
        client_msg_id=m.client_msg_id,
        kind=pb.MessageKind.ValueType(m.kind.value),
        text=m.text,
        create_time=ts(m.create_time),
        state=pb.MessageState.ValueType(m.state.value),
    )
    if m.system is not None:
        out.system.CopyFrom(system(m.system))
    return out


def message_of(p: pb.Message) -> d.Message:
    return d.Message(
        thread_id=p.thread_id,
        seq=p.seq,
        msg_id=p.msg_id,
        sender=user_of(p.sender),
        sender_device_id=p.sender_device_id,
        client_msg_id=p.client_msg_id,
        kind=d.MessageKind(p.kind),
        text=p.text,
        create_time=from_ts(p.create_time),
        system=system_of(p.system) if p.HasField("system") else None,
        state=d.MessageState(p.state),
    )


def cursor(c: d.Cursor) -> pb.Cursor:
    return pb.Cursor(thread_id=c.thread_id, seq=c.seq)


def cursor_of(p: pb.Cursor) -> d.Cursor:
    if p.thread_id <= 0 or p.seq < 0:
        raise InvalidArgument("cursor needs a positive thread_id and a seq >= 0", "BAD_CURSOR")
    return d.Cursor(p.thread_id, p.seq)


def receipt(r: d.Receipt) -> pb.Receipt:
    return pb.Receipt(
        thread_id=r.thread_id,
        user=user(r.user),
        kind=pb.ReceiptKind.ValueType(r.kind.value),
        seq=r.seq,
        time=ts(r.time),
    )


def receipt_of(p: pb.Receipt) -> d.Receipt:
    return d.Receipt(p.thread_id, user_of(p.user), d.ReceiptKind(p.kind), p.seq, from_ts(p.time))


def presence(p: d.Presence) -> pb.Presence:
    return pb.Presence(user=user(p.user), online=p.online, last_seen_time=ts(p.last_seen_time))


def presence_of(p: pb.Presence) -> d.Presence:
    return d.Presence(user_of(p.user), p.online, opt_ts(p, "last_seen_time"))


def typing(t: d.Typing) -> pb.Typing:
    return pb.Typing(thread_id=t.thread_id, user=user(t.user), active=t.active)


def typing_of(p: pb.Typing) -> d.Typing:
    return d.Typing(p.thread_id, user_of(p.user), p.active)


def thread(t: d.Thread) -> pb.Thread:
    out = pb.Thread(
        thread_id=t.thread_id,
        kind=pb.ThreadKind.ValueType(t.kind.value),
        title=t.title,
        last_seq=t.last_seq,
        read_seq=t.read_seq,
        unread_count=t.unread_count,
        update_time=ts(t.update_time),
        role=pb.MemberRole.ValueType(t.role.value),
        member_count=t.member_count,
        active=t.active,
    )
    if t.peer is not None:
        out.peer.CopyFrom(user(t.peer))
    if t.last_message is not None:
        out.last_message.CopyFrom(message(t.last_message))
    return out


def member(m: d.Member) -> pb.Member:
    return pb.Member(
        user=user(m.user),
        role=pb.MemberRole.ValueType(m.role.value),
        delivered_seq=m.delivered_seq,
        read_seq=m.read_seq,
        join_time=ts(m.join_time),
    )


def device(x: d.Device) -> pb.Device:
    return pb.Device(
        device_id=x.device_id,
        name=x.name,
        create_time=ts(x.create_time),
        last_active_time=ts(x.last_active_time),
        current=x.current,
    )


def delivery(x: d.Delivery) -> ipb.Delivery:
    out = ipb.Delivery(
        user_ids=list(x.user_ids), thread_id=x.thread_id, exclude_device_id=x.exclude_device_id
    )
    ev = x.event
    if isinstance(ev, d.Message):
        out.message.CopyFrom(message(ev))
    elif isinstance(ev, d.Receipt):
        out.receipt.CopyFrom(receipt(ev))
    elif isinstance(ev, d.Presence):
        out.presence.CopyFrom(presence(ev))
    elif isinstance(ev, d.Typing):
        out.typing.CopyFrom(typing(ev))
    elif isinstance(ev, d.ReadCursor):
        out.read_cursor.CopyFrom(cursor(ev.cursor))
    else:
        out.revoked_device_id = ev.device_id
    return out


def delivery_of(p: ipb.Delivery) -> d.Delivery:
    which = p.WhichOneof("event")
    ev: d.Event
    if which == "message":
        ev = message_of(p.message)
    elif which == "receipt":
        ev = receipt_of(p.receipt)
    elif which == "presence":
        ev = presence_of(p.presence)
    elif which == "typing":
        ev = typing_of(p.typing)
    elif which == "read_cursor":
        ev = d.ReadCursor(d.Cursor(p.read_cursor.thread_id, p.read_cursor.seq))
    elif which == "revoked_device_id":
        ev = d.DeviceRevoked(p.revoked_device_id)
    else:
        raise InvalidArgument("delivery carries no event", "EMPTY_DELIVERY")
    return d.Delivery(ev, tuple(p.user_ids), p.thread_id, p.exclude_device_id)


def send(r: d.SendRequest) -> spb.Send:
    out = spb.Send(client_msg_id=r.client_msg_id, text=r.text)
    if r.recipient:
        out.recipient = r.recipient
    else:
        out.thread_id = r.thread_id
    return out


def send_request_of(p: spb.Send) -> d.SendRequest:
    """A Send frame as a request; the target is checked by message_svc (NO_TARGET)."""
    which = p.WhichOneof("target")
    return d.SendRequest(
        client_msg_id=p.client_msg_id,
        text=p.text,
        thread_id=p.thread_id if which == "thread_id" else 0,
        recipient=p.recipient if which == "recipient" else "",
    )


def send_result(r: d.SendResult) -> spb.SendResult:
    return spb.SendResult(
        client_msg_id=r.client_msg_id,
        msg_id=r.msg_id,
        thread_id=r.thread_id,
        seq=r.seq,
        create_time=ts(r.create_time),
    )


def send_result_of(p: spb.SendResult) -> d.SendResult:
    return d.SendResult(p.client_msg_id, p.msg_id, p.thread_id, p.seq, from_ts(p.create_time))


def stream_error(error: BaseException, client_msg_id: str = "") -> spb.StreamError:
    """What a device (or a socket server) is told of an error; unknown ones are INTERNAL."""
    code, message, reason = status_of(error)
    return spb.StreamError(
        code=code.value[0], message=message, reason=reason, client_msg_id=client_msg_id
    )


def error_of(p: spb.StreamError) -> NatterError:
    """The domain error a StreamError was made from (its class by code, its reason kept)."""
    klass = next((k for c, k in ERROR_OF.items() if c.value[0] == p.code), NatterError)
    return klass(p.message, p.reason)


def send_outcome(outcome: d.SendResult | NatterError, client_msg_id: str) -> mpb.SendOutcome:
    if isinstance(outcome, d.SendResult):
        return mpb.SendOutcome(result=send_result(outcome))
    return mpb.SendOutcome(error=stream_error(outcome, client_msg_id))


def send_outcome_of(p: mpb.SendOutcome) -> d.SendResult | NatterError:
    if p.WhichOneof("outcome") == "result":
        return send_result_of(p.result)
    if p.WhichOneof("outcome") == "error":
        return error_of(p.error)
    return Internal("send outcome carries neither a result nor an error", "EMPTY_OUTCOME")
