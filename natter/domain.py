"""Values every service and the SDK share: users, messages, threads, receipts, deliveries."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

# Every enum has UNKNOWN = 0: what a value this build does not know (sent by a newer server
# or peer) becomes, so it is shown as unsupported instead of failing; natter/convert.py maps
# numbers both ways. UNKNOWN never reaches the store: requests with it are INVALID_ARGUMENT.


class ThreadKind(enum.Enum):
    UNKNOWN = 0
    DIRECT = 1
    GROUP = 2


class Role(enum.Enum):
    UNKNOWN = 0
    MEMBER = 1
    ADMIN = 2


class MessageKind(enum.Enum):
    """What an entry of a thread's log is.

    Content (TEXT, ATTACHMENT, SYSTEM) is an entry of its own in the conversation: it counts
    as unread and is the thread list's preview. Events (REACTION, EDIT, DELETE) change an
    earlier message (`Message.target_seq`): they have a seq like any entry, so every device
    gets them the same way, but they are folded onto their target, never shown on their own,
    never unread, and never a notification (`notifies`: what a push worker should tell a
    person about).
    """

    UNKNOWN = 0
    TEXT = 1
    SYSTEM = 2
    ATTACHMENT = 3
    REACTION = 4
    EDIT = 5
    DELETE = 6

    @property
    def is_event(self) -> bool:
        """Folds onto the message target_seq names: not content of its own."""
        return self in _EVENT_KINDS

    @property
    def is_content(self) -> bool:
        """An entry of its own: counts as unread, is the thread list's preview."""
        return self in _CONTENT_KINDS

    @property
    def notifies(self) -> bool:
        """What people wrote or sent (text, attachments): worth a notification."""
        return self in _NOTIFYING_KINDS

    @property
    def editable(self) -> bool:
        """Whose text its author may change, and that may be deleted, replied to, reacted to."""
        return self in _NOTIFYING_KINDS


_EVENT_KINDS = frozenset({MessageKind.REACTION, MessageKind.EDIT, MessageKind.DELETE})
_CONTENT_KINDS = frozenset({MessageKind.TEXT, MessageKind.SYSTEM, MessageKind.ATTACHMENT})
_NOTIFYING_KINDS = frozenset({MessageKind.TEXT, MessageKind.ATTACHMENT})


class MessageState(enum.Enum):
    UNKNOWN = 0
    SENT = 1
    DELIVERED = 2
    READ = 3


class SystemKind(enum.Enum):
    UNKNOWN = 0
    GROUP_CREATED = 1
    MEMBERS_ADDED = 2
    MEMBERS_REMOVED = 3
    MEMBER_LEFT = 4
    TITLE_CHANGED = 5
    ADMINS_PROMOTED = 6
    ADMINS_DEMOTED = 7


class ReceiptKind(enum.Enum):
    UNKNOWN = 0
    DELIVERED = 1
    READ = 2


class NotificationPreview(enum.Enum):
    """How much a push notification shows: a user's privacy mode."""

    UNKNOWN = 0
    FULL = 1
    SENDER_ONLY = 2
    HIDDEN = 3


class PushKind(enum.Enum):
    UNKNOWN = 0
    WEB_PUSH = 1
    GATEWAY = 2


# A mute without an end is stored with this end: later than any real one on every engine.
MUTED_FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class User:
    user_id: int
    username: str
    display_name: str
    # The profile, filled only where it is shown to someone who may see it (ProfileChanged,
    # contacts, thread peers and members, lookups, GetMe): the status line and the picture's
    # attachment id, empty otherwise.
    about: str = ""
    picture_id: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated device acting for a user."""

    user: User
    device_id: int


@dataclass(frozen=True, slots=True)
class SystemEvent:
    kind: SystemKind
    actor: User
    users: tuple[User, ...] = ()
    title: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A stored file a message refers to; its bytes are behind the blob store, by sha256."""

    attachment_id: str
    mime_type: str
    size: int
    name: str
    sha256: str
    width: int = 0
    height: int = 0
    duration_ms: int = 0
    blurhash: str = ""
    has_thumbnail: bool = False
    voice_note: bool = False


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """An attachment as stored: who uploaded it and when (a message refers to it by id)."""

    attachment: Attachment
    owner_id: int
    create_time: datetime


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """The quoted message of a reply, as it was when the reply was sent."""

    seq: int
    sender: User
    snippet: str
    kind: MessageKind


@dataclass(frozen=True, slots=True)
class Reaction:
    """One member's current reaction, and the seq of the event that set it."""

    user: User
    emoji: str
    seq: int
    time: datetime


@dataclass(frozen=True, slots=True)
class Message:
    """An entry of a thread's log; the folded fields say what later events did to it."""

    thread_id: int
    seq: int
    msg_id: str
    sender: User
    sender_device_id: int
    client_msg_id: str
    kind: MessageKind
    text: str
    create_time: datetime
    system: SystemEvent | None = None
    state: MessageState = MessageState.UNKNOWN
    attachments: tuple[Attachment, ...] = ()
    reply_to: ReplyTo | None = None
    forwarded: bool = False
    # Events (reaction, edit, delete): the message they change; a reaction's emoji.
    target_seq: int = 0
    emoji: str = ""
    # Folded state of content messages.
    edit_time: datetime | None = None
    edit_seq: int = 0
    deleted: bool = False
    delete_seq: int = 0
    reactions: tuple[Reaction, ...] = ()
    # The reader deleted it for themselves.
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    thread_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Receipt:
    thread_id: int
    user: User
    kind: ReceiptKind
    seq: int
    time: datetime


@dataclass(frozen=True, slots=True)
class Presence:
    user: User
    online: bool
    last_seen_time: datetime | None


@dataclass(frozen=True, slots=True)
class PresenceUser:
    """A user as presence sees them: who, whether they hide last seen, the stored last seen."""

    user: User
    hide_last_seen: bool
    last_seen_time: datetime | None


@dataclass(frozen=True, slots=True)
class Typing:
    thread_id: int
    user: User
    active: bool


@dataclass(frozen=True, slots=True)
class ReadCursor:
    """The user read a thread on one device; their other devices clear unread."""

    cursor: Cursor


@dataclass(frozen=True, slots=True)
class DeviceRevoked:
    device_id: int


@dataclass(frozen=True, slots=True)
class ThreadMute:
    """A member muted or unmuted a thread; `end_time` None while muted forever."""

    thread_id: int
    muted: bool
    end_time: datetime | None = None


class UserChangeKind(enum.Enum):
    UNKNOWN = 0
    HIDE_MESSAGE = 1


@dataclass(frozen=True, slots=True)
class UserChange:
    """An entry of one user's own change log (delete for me), synced to their devices only."""

    seq: int
    kind: UserChangeKind
    message: Cursor
    time: datetime


@dataclass(frozen=True, slots=True)
class ProfileChanged:
    """A user's display name, about or picture changed, as the receiver may see it now."""

    user: User


Event = (
    Message
    | Receipt
    | Presence
    | Typing
    | ReadCursor
    | DeviceRevoked
    | ThreadMute
    | UserChange
    | ProfileChanged
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event for the connected devices of some users, or of a group thread's members."""

    event: Event
    user_ids: Sequence[int] = ()
    thread_id: int = 0
    exclude_device_id: int = 0
    # Skip every device of this user: its own socket server pushes them (a sender's copies).
    exclude_user_id: int = 0
    # The socket server (as the fan-out knows it) that pushes these users' devices itself:
    # routing hands the delivery only to the users' other owners. Not sent on the wire.
    pushed_by: str = ""


@dataclass(frozen=True, slots=True)
class React:
    """Set the sender's reaction to message seq (empty emoji: remove it)."""

    seq: int
    emoji: str


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace the text of the sender's message seq with the send's text."""

    seq: int


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete message seq for everyone."""

    seq: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Copy message seq of thread_id into the send's target."""

    thread_id: int
    seq: int


Change = React | Edit | Delete | Forward


@dataclass(frozen=True, slots=True)
class SendRequest:
    client_msg_id: str
    text: str
    thread_id: int = 0
    recipient: str = ""
    attachment_ids: tuple[str, ...] = ()
    reply_to_seq: int = 0
    change: Change | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    client_msg_id: str
    msg_id: str
    thread_id: int
    seq: int
    create_time: datetime
    # The stored message, when the server added to what was sent (not for plain text).
    message: Message | None = None


@dataclass(frozen=True, slots=True)
class DeviceAck:
    user_id: int
    device_id: int
    cursors: tuple[Cursor, ...]


@dataclass(frozen=True, slots=True)
class Device:
    device_id: int
    name: str
    create_time: datetime
    last_active_time: datetime | None
    current: bool = False
    platform: str = ""
    expire_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    user: User
    alias: str = ""


@dataclass(frozen=True, slots=True)
class Member:
    user: User
    role: Role
    delivered_seq: int
    read_seq: int
    join_time: datetime


@dataclass(frozen=True, slots=True)
class Thread:
    """A thread as one member sees it."""

    thread_id: int
    kind: ThreadKind
    title: str
    last_seq: int
    read_seq: int
    unread_count: int
    update_time: datetime
    role: Role
    member_count: int
    active: bool
    peer: User | None = None
    last_message: Message | None = None
    muted: bool = False
    # When the mute ends; None while muted forever (or not muted).
    mute_end_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Me:
    user: User
    device_id: int
    phone: str
    hide_last_seen: bool
    notification_preview: NotificationPreview = NotificationPreview.FULL
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class SyncPage:
    messages: list[Message] = field(default_factory=list)
    more: bool = False


# -- push notifications (message_svc stores them, push_svc sends them) ----------------------


# Group events that concern the users they name: those users are notified. Everything else
# (a rename, someone leaving, and any kind this build does not know) notifies nobody.
NOTIFYING_EVENTS = frozenset(
    {
        SystemKind.GROUP_CREATED,
        SystemKind.MEMBERS_ADDED,
        SystemKind.MEMBERS_REMOVED,
        SystemKind.ADMINS_PROMOTED,
    }
)


def queues_push(kind: MessageKind, event: SystemEvent | None = None) -> bool:
    """Whether storing a message of this kind queues a push notification at all.

    Only kinds marked here do: what people write or send (`MessageKind.notifies`: text and
    attachments), and the group events above. A new kind (a reaction, an edit) pushes
    nothing until it is added.
    """
    if kind.notifies:
        return True
    return kind is MessageKind.SYSTEM and event is not None and event.kind in NOTIFYING_EVENTS


def notifies(message: Message, user_id: int) -> bool:
    """Whether this message notifies this member (who may see it): never for their own."""
    if message.sender.user_id == user_id or not queues_push(message.kind, message.system):
        return False
    if message.kind is MessageKind.SYSTEM:
        assert message.system is not None
        return user_id in {u.user_id for u in message.system.users}
    return True


@dataclass(frozen=True, slots=True)
class PushTarget:
    """Where one device is reached without a live stream: a Web Push subscription or a token.

    For WEB_PUSH, `endpoint` is the push service URL and `p256dh`/`auth` the browser's keys;
    for GATEWAY, `endpoint` is the gateway's notify URL and `app_id`/`pushkey` the token.
    """

    device_id: int
    user_id: int
    kind: PushKind
    endpoint: str
    p256dh: str = ""
    auth: str = ""
    app_id: str = ""
    pushkey: str = ""
    create_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class PushJob:
    """A queued burst of one thread's messages, `first_seq..last_seq`, to notify about.

    `device_id` 0 means every recipient; otherwise it is a retry for that device only.
    `done_user` is how far (by user id) a worker got before it lost the job: recipients
    up to it were handled. `lease_owner` is the worker holding it.
    """

    job_id: int
    thread_id: int
    first_seq: int
    last_seq: int
    create_time: datetime
    device_id: int = 0
    attempts: int = 0
    done_user: int = 0
    lease_owner: str = ""


@dataclass(frozen=True, slots=True)
class PushRecipient:
    """A thread member as the push worker sees them."""

    user_id: int
    first_seq: int
    left_seq: int | None
    read_seq: int
    muted_until: datetime | None
    preview: NotificationPreview

    def sees(self, seq: int) -> bool:
        return self.first_seq <= seq and (self.left_seq is None or seq <= self.left_seq)

    def muted(self, now: datetime) -> bool:
        return self.muted_until is not None and self.muted_until > now


@dataclass(frozen=True, slots=True)
class PushContext:
    """Everything a worker needs to notify about one burst: the thread, its messages, members."""

    thread_id: int
    kind: ThreadKind
    title: str
    messages: list[Message]
    recipients: list[PushRecipient]
