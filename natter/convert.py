"""Conversions between the shared domain values and their natter.v1 protobuf messages.

The only place proto and domain types meet. Enum numbers are mapped by explicit tables, and
a number this build does not know is handled one of two ways: arriving from a server or a
peer (a newer version) it becomes the domain enum's UNKNOWN member, so the caller shows it as
unsupported and carries on; in a request field (`requested_*`) it is INVALID_ARGUMENT, with
the field and value named.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from natter import domain as d
from natter.errors import Internal, InvalidArgument, NatterError
from natter.rpc import ERROR_OF, status_of
from natter.v1 import contact_service_pb2 as cpb
from natter.v1 import message_internal_service_pb2 as mpb
from natter.v1 import push_service_pb2 as pspb
from natter.v1 import socket_internal_service_pb2 as ipb
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import thread_service_pb2 as tpb
from natter.v1 import types_pb2 as pb

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

E = TypeVar("E", bound=enum.Enum)
V = TypeVar("V", bound=int)


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
    # What Timestamp.ToDatetime(tzinfo=UTC) gives, in a third of its time (every message).
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def _set_ts(out: Timestamp, value: datetime) -> None:
    """`out` set to `value` (as `ts` converts it), in place: no Timestamp to copy in."""
    if value.tzinfo is None:
        value = value.astimezone(UTC)
    delta = value - _EPOCH
    out.SetInParent()
    out.seconds = delta.days * 86_400 + delta.seconds
    out.nanos = delta.microseconds * 1000


def opt_ts(msg: object, field: str) -> datetime | None:
    return from_ts(getattr(msg, field)) if msg.HasField(field) else None  # type: ignore[attr-defined]


# -- enums ---------------------------------------------------------------------------------


class _Enum(Generic[E, V]):
    """One enum both ways: proto number ↔ domain member, by an explicit table."""

    __slots__ = ("_descriptor", "_members", "_numbers", "_unknown", "_unspecified")

    def __init__(
        self, descriptor: EnumDescriptor, members: Mapping[V, E], unknown: E, unspecified: V
    ) -> None:
        self._descriptor = descriptor
        self._members = dict(members)
        self._numbers = {m: n for n, m in members.items()}
        self._unknown = unknown
        self._unspecified = unspecified

    def number(self, member: E) -> V:
        """The proto number; UNKNOWN goes out as UNSPECIFIED."""
        return self._numbers.get(member, self._unspecified)

    def of(self, number: V) -> E:
        """From a server or peer: a number this build does not know is UNKNOWN."""
        return self._members.get(number, self._unknown)

    def required(self, number: V, field: str) -> E:
        """From a client's request: UNSPECIFIED and unknown numbers are INVALID_ARGUMENT."""
        member = self._members.get(number)
        if member is not None:
            return member
        names = self._descriptor.values_by_number
        expected = " or ".join(names[n].name for n in self._members)
        if number == self._unspecified:
            raise InvalidArgument(f"{field} is required: {expected}", "UNSPECIFIED_ENUM")
        raise InvalidArgument(
            f"{field} = {int(number)} is not a {self._descriptor.name} this server knows "
            f"(expected {expected})",
            "UNKNOWN_ENUM",
        )


_THREAD_KIND = _Enum(
    pb.ThreadKind.DESCRIPTOR,
    {pb.THREAD_KIND_DIRECT: d.ThreadKind.DIRECT, pb.THREAD_KIND_GROUP: d.ThreadKind.GROUP},
    d.ThreadKind.UNKNOWN,
    pb.THREAD_KIND_UNSPECIFIED,
)
_ROLE = _Enum(
    pb.MemberRole.DESCRIPTOR,
    {pb.MEMBER_ROLE_MEMBER: d.Role.MEMBER, pb.MEMBER_ROLE_ADMIN: d.Role.ADMIN},
    d.Role.UNKNOWN,
    pb.MEMBER_ROLE_UNSPECIFIED,
)
_MESSAGE_KIND = _Enum(
    pb.MessageKind.DESCRIPTOR,
    {
        pb.MESSAGE_KIND_TEXT: d.MessageKind.TEXT,
        pb.MESSAGE_KIND_SYSTEM: d.MessageKind.SYSTEM,
        pb.MESSAGE_KIND_ATTACHMENT: d.MessageKind.ATTACHMENT,
        pb.MESSAGE_KIND_REACTION: d.MessageKind.REACTION,
        pb.MESSAGE_KIND_EDIT: d.MessageKind.EDIT,
        pb.MESSAGE_KIND_DELETE: d.MessageKind.DELETE,
    },
    d.MessageKind.UNKNOWN,
    pb.MESSAGE_KIND_UNSPECIFIED,
)
_MESSAGE_STATE = _Enum(
    pb.MessageState.DESCRIPTOR,
    {
        pb.MESSAGE_STATE_SENT: d.MessageState.SENT,
        pb.MESSAGE_STATE_DELIVERED: d.MessageState.DELIVERED,
        pb.MESSAGE_STATE_READ: d.MessageState.READ,
    },
    d.MessageState.UNKNOWN,
    pb.MESSAGE_STATE_UNSPECIFIED,
)
_SYSTEM_KIND = _Enum(
    pb.SystemEventKind.DESCRIPTOR,
    {
        pb.SYSTEM_EVENT_KIND_GROUP_CREATED: d.SystemKind.GROUP_CREATED,
        pb.SYSTEM_EVENT_KIND_MEMBERS_ADDED: d.SystemKind.MEMBERS_ADDED,
        pb.SYSTEM_EVENT_KIND_MEMBERS_REMOVED: d.SystemKind.MEMBERS_REMOVED,
        pb.SYSTEM_EVENT_KIND_MEMBER_LEFT: d.SystemKind.MEMBER_LEFT,
        pb.SYSTEM_EVENT_KIND_TITLE_CHANGED: d.SystemKind.TITLE_CHANGED,
        pb.SYSTEM_EVENT_KIND_ADMINS_PROMOTED: d.SystemKind.ADMINS_PROMOTED,
        pb.SYSTEM_EVENT_KIND_ADMINS_DEMOTED: d.SystemKind.ADMINS_DEMOTED,
    },
    d.SystemKind.UNKNOWN,
    pb.SYSTEM_EVENT_KIND_UNSPECIFIED,
)
_RECEIPT_KIND = _Enum(
    pb.ReceiptKind.DESCRIPTOR,
    {pb.RECEIPT_KIND_DELIVERED: d.ReceiptKind.DELIVERED, pb.RECEIPT_KIND_READ: d.ReceiptKind.READ},
    d.ReceiptKind.UNKNOWN,
    pb.RECEIPT_KIND_UNSPECIFIED,
)

_PREVIEW = _Enum(
    pb.NotificationPreview.DESCRIPTOR,
    {
        pb.NOTIFICATION_PREVIEW_FULL: d.NotificationPreview.FULL,
        pb.NOTIFICATION_PREVIEW_SENDER_ONLY: d.NotificationPreview.SENDER_ONLY,
        pb.NOTIFICATION_PREVIEW_HIDDEN: d.NotificationPreview.HIDDEN,
    },
    d.NotificationPreview.UNKNOWN,
    pb.NOTIFICATION_PREVIEW_UNSPECIFIED,
)

_USER_CHANGE_KIND = _Enum(
    pb.UserChangeKind.DESCRIPTOR,
    {pb.USER_CHANGE_KIND_HIDE_MESSAGE: d.UserChangeKind.HIDE_MESSAGE},
    d.UserChangeKind.UNKNOWN,
    pb.USER_CHANGE_KIND_UNSPECIFIED,
)

thread_kind, thread_kind_of = _THREAD_KIND.number, _THREAD_KIND.of
preview, preview_of = _PREVIEW.number, _PREVIEW.of
user_change_kind, user_change_kind_of = _USER_CHANGE_KIND.number, _USER_CHANGE_KIND.of
role, role_of = _ROLE.number, _ROLE.of
message_kind, message_kind_of = _MESSAGE_KIND.number, _MESSAGE_KIND.of
message_state, message_state_of = _MESSAGE_STATE.number, _MESSAGE_STATE.of
system_kind, system_kind_of = _SYSTEM_KIND.number, _SYSTEM_KIND.of
receipt_kind, receipt_kind_of = _RECEIPT_KIND.number, _RECEIPT_KIND.of


def requested_role(value: pb.MemberRole.ValueType, field: str = "role") -> d.Role:
    """A role a client asks for: MEMBER or ADMIN, anything else INVALID_ARGUMENT."""
    return _ROLE.required(value, field)


def requested_preview(
    value: pb.NotificationPreview.ValueType, field: str = "notification_preview"
) -> d.NotificationPreview:
    """A privacy mode a client asks for: FULL, SENDER_ONLY or HIDDEN, else INVALID_ARGUMENT."""
    return _PREVIEW.required(value, field)


# -- messages ------------------------------------------------------------------------------


def user(u: d.User) -> pb.User:
    out = pb.User(user_id=u.user_id, username=u.username, display_name=u.display_name)
    if u.about or u.picture_id:  # a shown profile; message senders carry none
        out.about = u.about
        out.picture_id = u.picture_id
    return out


def user_of(p: pb.User) -> d.User:
    return d.User(p.user_id, p.username, p.display_name, p.about, p.picture_id)


def system(e: d.SystemEvent) -> pb.SystemEvent:
    return pb.SystemEvent(
        kind=system_kind(e.kind),
        actor=user(e.actor),
        users=[user(u) for u in e.users],
        title=e.title,
    )


def system_of(p: pb.SystemEvent) -> d.SystemEvent:
    return d.SystemEvent(
        system_kind_of(p.kind), user_of(p.actor), tuple(user_of(u) for u in p.users), p.title
    )


def attachment(a: d.Attachment) -> pb.Attachment:
    return pb.Attachment(
        attachment_id=a.attachment_id,
        mime_type=a.mime_type,
        size=a.size,
        name=a.name,
        width=a.width,
        height=a.height,
        duration_ms=a.duration_ms,
        blurhash=a.blurhash,
        has_thumbnail=a.has_thumbnail,
        sha256=a.sha256,
        voice_note=a.voice_note,
    )


def attachment_of(p: pb.Attachment) -> d.Attachment:
    return d.Attachment(
        attachment_id=p.attachment_id,
        mime_type=p.mime_type,
        size=p.size,
        name=p.name,
        sha256=p.sha256,
        width=p.width,
        height=p.height,
        duration_ms=p.duration_ms,
        blurhash=p.blurhash,
        has_thumbnail=p.has_thumbnail,
        voice_note=p.voice_note,
    )


def reaction(r: d.Reaction) -> pb.Reaction:
    return pb.Reaction(user=user(r.user), emoji=r.emoji, seq=r.seq, time=ts(r.time))


def reaction_of(p: pb.Reaction) -> d.Reaction:
    return d.Reaction(user_of(p.user), p.emoji, p.seq, from_ts(p.time))


def message(m: d.Message) -> pb.Message:
    out = pb.Message(
        thread_id=m.thread_id,
        seq=m.seq,
        msg_id=m.msg_id,
        sender_device_id=m.sender_device_id,
        client_msg_id=m.client_msg_id,
        kind=message_kind(m.kind),
        text=m.text,
        state=message_state(m.state),
    )
    # Filled in place (every push and replay): what `user()` and `ts()` would copy in.
    u, sender = m.sender, out.sender
    sender.SetInParent()
    sender.user_id = u.user_id
    sender.username = u.username
    sender.display_name = u.display_name
    if u.about or u.picture_id:
        sender.about = u.about
        sender.picture_id = u.picture_id
    _set_ts(out.create_time, m.create_time)
    if m.system is not None:
        out.system.CopyFrom(system(m.system))
    if m.attachments:
        out.attachments.extend(attachment(a) for a in m.attachments)
    if m.reply_to is not None:
        r = m.reply_to
        out.reply_to.CopyFrom(
            pb.ReplyTo(
                seq=r.seq, sender=user(r.sender), snippet=r.snippet, kind=message_kind(r.kind)
            )
        )
    if m.forwarded:
        out.forwarded = True
    if m.target_seq:
        out.target_seq = m.target_seq
    if m.emoji:
        out.emoji = m.emoji
    edited = ts(m.edit_time)
    if edited is not None:
        out.edit_time.CopyFrom(edited)
        out.edit_seq = m.edit_seq
    if m.deleted:
        out.deleted = True
        out.delete_seq = m.delete_seq
    if m.reactions:
        out.reactions.extend(reaction(r) for r in m.reactions)
    if m.hidden:
        out.hidden = True
    return out


def message_of(p: pb.Message) -> d.Message:
    """A kind or state this build does not know is UNKNOWN: shown as unsupported, not fatal."""
    if not (
        p.attachments
        or p.reactions
        or p.HasField("system")
        or p.HasField("reply_to")
        or p.HasField("edit_time")
    ):
        # A plain message (nearly every one a device takes in): the same value, built in
        # half the time.
        s = p.sender
        return d.Message(
            p.thread_id,
            p.seq,
            p.msg_id,
            d.User(s.user_id, s.username, s.display_name, s.about, s.picture_id),
            p.sender_device_id,
            p.client_msg_id,
            _MESSAGE_KIND.of(p.kind),
            p.text,
            from_ts(p.create_time),
            None,
            _MESSAGE_STATE.of(p.state),
            (),
            None,
            p.forwarded,
            p.target_seq,
            p.emoji,
            None,
            p.edit_seq,
            p.deleted,
            p.delete_seq,
            (),
            p.hidden,
        )
    reply = None
    if p.HasField("reply_to"):
        r = p.reply_to
        reply = d.ReplyTo(r.seq, user_of(r.sender), r.snippet, message_kind_of(r.kind))
    return d.Message(
        thread_id=p.thread_id,
        seq=p.seq,
        msg_id=p.msg_id,
        sender=user_of(p.sender),
        sender_device_id=p.sender_device_id,
        client_msg_id=p.client_msg_id,
        kind=message_kind_of(p.kind),
        text=p.text,
        create_time=from_ts(p.create_time),
        system=system_of(p.system) if p.HasField("system") else None,
        state=message_state_of(p.state),
        attachments=tuple(attachment_of(a) for a in p.attachments),
        reply_to=reply,
        forwarded=p.forwarded,
        target_seq=p.target_seq,
        emoji=p.emoji,
        edit_time=opt_ts(p, "edit_time"),
        edit_seq=p.edit_seq,
        deleted=p.deleted,
        delete_seq=p.delete_seq,
        reactions=tuple(reaction_of(r) for r in p.reactions),
        hidden=p.hidden,
    )


def user_change(c: d.UserChange) -> pb.UserChange:
    return pb.UserChange(
        seq=c.seq, kind=user_change_kind(c.kind), message=cursor(c.message), time=ts(c.time)
    )


def user_change_of(p: pb.UserChange) -> d.UserChange:
    """A kind this build does not know is UNKNOWN: the device skips it (and moves past it)."""
    return d.UserChange(
        p.seq,
        user_change_kind_of(p.kind),
        d.Cursor(p.message.thread_id, p.message.seq),
        from_ts(p.time),
    )


def cursor(c: d.Cursor) -> pb.Cursor:
    return pb.Cursor(thread_id=c.thread_id, seq=c.seq)


def cursor_of(p: pb.Cursor) -> d.Cursor:
    if p.thread_id <= 0 or p.seq < 0:
        raise InvalidArgument("cursor needs a positive thread_id and a seq >= 0", "BAD_CURSOR")
    return d.Cursor(p.thread_id, p.seq)


def read_cursor(r: d.ReadCursor) -> spb.ReadCursor:
    return spb.ReadCursor(cursor=cursor(r.cursor))


def read_cursor_of(p: spb.ReadCursor) -> d.ReadCursor:
    return d.ReadCursor(d.Cursor(p.cursor.thread_id, p.cursor.seq))


def device_ack(a: d.DeviceAck) -> mpb.DeviceAck:
    return mpb.DeviceAck(
        user_id=a.user_id, device_id=a.device_id, cursors=[cursor(c) for c in a.cursors]
    )


def device_ack_of(p: mpb.DeviceAck) -> d.DeviceAck:
    return d.DeviceAck(p.user_id, p.device_id, tuple(cursor_of(c) for c in p.cursors))


def receipt(r: d.Receipt) -> pb.Receipt:
    return pb.Receipt(
        thread_id=r.thread_id,
        user=user(r.user),
        kind=receipt_kind(r.kind),
        seq=r.seq,
        time=ts(r.time),
    )


def receipt_of(p: pb.Receipt) -> d.Receipt:
    return d.Receipt(p.thread_id, user_of(p.user), receipt_kind_of(p.kind), p.seq, from_ts(p.time))


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
        kind=thread_kind(t.kind),
        title=t.title,
        last_seq=t.last_seq,
        read_seq=t.read_seq,
        unread_count=t.unread_count,
        update_time=ts(t.update_time),
        role=role(t.role),
        member_count=t.member_count,
        active=t.active,
        muted=t.muted,
        mute_end_time=ts(t.mute_end_time) if t.muted else None,
    )
    if t.peer is not None:
        out.peer.CopyFrom(user(t.peer))
    if t.last_message is not None:
        out.last_message.CopyFrom(message(t.last_message))
    return out


def thread_of(p: pb.Thread) -> d.Thread:
    return d.Thread(
        thread_id=p.thread_id,
        kind=thread_kind_of(p.kind),
        title=p.title,
        last_seq=p.last_seq,
        read_seq=p.read_seq,
        unread_count=p.unread_count,
        update_time=from_ts(p.update_time),
        role=role_of(p.role),
        member_count=p.member_count,
        active=p.active,
        peer=user_of(p.peer) if p.HasField("peer") else None,
        last_message=message_of(p.last_message) if p.HasField("last_message") else None,
        muted=p.muted,
        mute_end_time=opt_ts(p, "mute_end_time") if p.muted else None,
    )


def requested_mute(p: tpb.MuteThreadRequest) -> timedelta | None:
    """How long a mute asks for: a duration, or None for forever; neither is INVALID_ARGUMENT."""
    which = p.WhichOneof("until")
    if which == "forever" and p.forever:
        return None
    if which == "duration":
        return timedelta(seconds=p.duration.seconds, microseconds=p.duration.nanos // 1000)
    raise InvalidArgument("a mute needs a duration or forever", "BAD_MUTE")


def thread_mute(m: d.ThreadMute) -> pb.ThreadMute:
    return pb.ThreadMute(
        thread_id=m.thread_id, muted=m.muted, mute_end_time=ts(m.end_time) if m.muted else None
    )


def thread_mute_of(p: pb.ThreadMute) -> d.ThreadMute:
    return d.ThreadMute(p.thread_id, p.muted, opt_ts(p, "mute_end_time") if p.muted else None)


def member(m: d.Member) -> pb.Member:
    return pb.Member(
        user=user(m.user),
        role=role(m.role),
        delivered_seq=m.delivered_seq,
        read_seq=m.read_seq,
        join_time=ts(m.join_time),
    )


def member_of(p: pb.Member) -> d.Member:
    return d.Member(
        user_of(p.user), role_of(p.role), p.delivered_seq, p.read_seq, from_ts(p.join_time)
    )


def contact(c: d.Contact) -> cpb.Contact:
    return cpb.Contact(user=user(c.user), alias=c.alias)


def device(x: d.Device) -> pb.Device:
    return pb.Device(
        device_id=x.device_id,
        name=x.name,
        create_time=ts(x.create_time),
        last_active_time=ts(x.last_active_time),
        current=x.current,
        platform=x.platform,
        expire_time=ts(x.expire_time),
    )


def device_of(p: pb.Device) -> d.Device:
    return d.Device(
        p.device_id,
        p.name,
        from_ts(p.create_time),
        opt_ts(p, "last_active_time"),
        p.current,
        p.platform,
        opt_ts(p, "expire_time"),
    )


def delivery(x: d.Delivery) -> ipb.Delivery:
    out = ipb.Delivery(
        user_ids=list(x.user_ids),
        thread_id=x.thread_id,
        exclude_device_id=x.exclude_device_id,
        exclude_user_id=x.exclude_user_id,
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
    elif isinstance(ev, d.ThreadMute):
        out.thread_mute.CopyFrom(thread_mute(ev))
    elif isinstance(ev, d.UserChange):
        out.user_change.CopyFrom(user_change(ev))
    elif isinstance(ev, d.ProfileChanged):
        out.profile_changed.user.CopyFrom(user(ev.user))
    else:
        out.revoked_device_id = ev.device_id
    return out


def delivery_of(p: ipb.Delivery) -> d.Delivery | None:
    """None when the event is none this build knows (a newer peer's): it has nothing to push."""
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
    elif which == "thread_mute":
        ev = thread_mute_of(p.thread_mute)
    elif which == "user_change":
        ev = user_change_of(p.user_change)
    elif which == "profile_changed":
        ev = d.ProfileChanged(user_of(p.profile_changed.user))
    else:
        return None
    return d.Delivery(ev, tuple(p.user_ids), p.thread_id, p.exclude_device_id, p.exclude_user_id)


def deliveries_of(ps: Iterable[ipb.Delivery]) -> list[d.Delivery]:
    """A batch from a peer; events this build does not know are left out, the rest go on.

    What is left out is not lost: messages are in the store, and devices get them by sync.
    """
    return [x for x in map(delivery_of, ps) if x is not None]


def send(r: d.SendRequest) -> spb.Send:
    out = spb.Send(
        client_msg_id=r.client_msg_id,
        text=r.text,
        attachment_ids=list(r.attachment_ids),
        reply_to_seq=r.reply_to_seq,
    )
    if r.recipient:
        out.recipient = r.recipient
    else:
        out.thread_id = r.thread_id
    c = r.change
    if isinstance(c, d.React):
        out.react.CopyFrom(spb.React(seq=c.seq, emoji=c.emoji))
    elif isinstance(c, d.Edit):
        out.edit.CopyFrom(spb.Edit(seq=c.seq))
    elif isinstance(c, d.Delete):
        out.delete.CopyFrom(spb.Delete(seq=c.seq))
    elif isinstance(c, d.Forward):
        out.forward.CopyFrom(spb.Forward(thread_id=c.thread_id, seq=c.seq))
    return out


def send_request_of(p: spb.Send) -> d.SendRequest:
    """A Send frame as a request; the target is checked by message_svc (NO_TARGET)."""
    which = p.WhichOneof("target")
    change: d.Change | None = None
    kind = p.WhichOneof("change")
    if kind == "react":
        change = d.React(p.react.seq, p.react.emoji)
    elif kind == "edit":
        change = d.Edit(p.edit.seq)
    elif kind == "delete":
        change = d.Delete(p.delete.seq)
    elif kind == "forward":
        change = d.Forward(p.forward.thread_id, p.forward.seq)
    return d.SendRequest(
        client_msg_id=p.client_msg_id,
        text=p.text,
        thread_id=p.thread_id if which == "thread_id" else 0,
        recipient=p.recipient if which == "recipient" else "",
        attachment_ids=tuple(p.attachment_ids),
        reply_to_seq=p.reply_to_seq,
        change=change,
    )


def send_result(r: d.SendResult) -> spb.SendResult:
    out = spb.SendResult(
        client_msg_id=r.client_msg_id,
        msg_id=r.msg_id,
        thread_id=r.thread_id,
        seq=r.seq,
        create_time=ts(r.create_time),
    )
    if r.message is not None:
        out.message.CopyFrom(message(r.message))
    return out


def send_result_of(p: spb.SendResult) -> d.SendResult:
    return d.SendResult(
        p.client_msg_id,
        p.msg_id,
        p.thread_id,
        p.seq,
        from_ts(p.create_time),
        message_of(p.message) if p.HasField("message") else None,
    )


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


# -- push targets --------------------------------------------------------------------------


def push_target(x: d.PushTarget) -> pspb.PushTarget:
    """A registered target as its device sees it: the browser's keys are never sent back."""
    out = pspb.PushTarget(create_time=ts(x.create_time))
    if x.kind is d.PushKind.WEB_PUSH:
        out.web_push.CopyFrom(pspb.WebPushSubscription(endpoint=x.endpoint))
    elif x.kind is d.PushKind.GATEWAY:
        out.gateway.CopyFrom(
            pspb.GatewayTarget(gateway_url=x.endpoint, app_id=x.app_id, pushkey=x.pushkey)
        )
    return out


def requested_push_target(p: pspb.SetPushTargetRequest, who: d.Principal) -> d.PushTarget:
    """The target a device asks to register (checked by push_svc); none is INVALID_ARGUMENT."""
    which = p.WhichOneof("target")
    base = (who.device_id, who.user.user_id)
    if which == "web_push":
        w = p.web_push
        return d.PushTarget(*base, d.PushKind.WEB_PUSH, w.endpoint, w.p256dh, w.auth)
    if which == "gateway":
        g = p.gateway
        return d.PushTarget(
            *base, d.PushKind.GATEWAY, g.gateway_url, app_id=g.app_id, pushkey=g.pushkey
        )
    raise InvalidArgument("a push target needs web_push or gateway", "NO_PUSH_TARGET")
