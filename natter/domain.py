"""Values every service and the SDK share: users, messages, threads, receipts, deliveries."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

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
    UNKNOWN = 0
    TEXT = 1
    SYSTEM = 2


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


@dataclass(frozen=True, slots=True)
class User:
    user_id: int
    username: str
    display_name: str


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
class Message:
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


Event = Message | Receipt | Presence | Typing | ReadCursor | DeviceRevoked


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event for the connected devices of some users, or of a group thread's members."""

    event: Event
    user_ids: Sequence[int] = ()
    thread_id: int = 0
    exclude_device_id: int = 0


@dataclass(frozen=True, slots=True)
class SendRequest:
    client_msg_id: str
    text: str
    thread_id: int = 0
    recipient: str = ""


@dataclass(frozen=True, slots=True)
class SendResult:
    client_msg_id: str
    msg_id: str
    thread_id: int
    seq: int
    create_time: datetime


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


@dataclass(frozen=True, slots=True)
class Me:
    user: User
    device_id: int
    phone: str
    hide_last_seen: bool
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class SyncPage:
    messages: list[Message] = field(default_factory=list)
    more: bool = False
