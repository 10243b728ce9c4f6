"""The storage port of message_svc: a small Protocol grouped by resource, plus its rows."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from natter.domain import (
    AttachmentRecord,
    DeviceAck,
    Message,
    MessageKind,
    NotificationPreview,
    Role,
    SystemEvent,
    ThreadKind,
    User,
    UserChange,
)

# What a deleted account is called from then on; its username is "~deleted-<id>", which
# no one can register.
DELETED_NAME = "Deleted account"


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: int
    username: str
    display_name: str
    phone: str | None
    password_hash: str
    hide_last_seen: bool
    last_seen_time: datetime | None
    notification_preview: NotificationPreview = NotificationPreview.FULL
    is_admin: bool = False
    is_system: bool = False
    disable_time: datetime | None = None
    delete_time: datetime | None = None
    create_time: datetime | None = None
    about: str = ""
    picture_id: str | None = None

    @property
    def disabled(self) -> bool:
        return self.disable_time is not None

    @property
    def deleted(self) -> bool:
        return self.delete_time is not None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: int
    user_id: int
    name: str
    create_time: datetime
    last_active_time: datetime | None
    platform: str = ""
    expire_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A login's device: at most `max_devices` active ones per user (expired ones do not count).

    With `replace_oldest`, a user at the cap loses the least recently active device instead
    of being refused.
    """

    user_id: int
    name: str
    token_hash: str
    platform: str
    expire_time: datetime
    max_devices: int
    replace_oldest: bool = False


@dataclass(frozen=True, slots=True)
class AddedDevice:
    device: DeviceRow
    replaced: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ThreadRow:
    thread_id: int
    kind: ThreadKind
    title: str
    last_seq: int
    update_time: datetime


@dataclass(frozen=True, slots=True)
class MemberRow:
    thread_id: int
    user_id: int
    role: Role
    first_seq: int
    left_seq: int | None
    delivered_seq: int
    read_seq: int
    create_time: datetime
    update_time: datetime
    # No push notifications until then (natter.domain.MUTED_FOREVER: until unmuted).
    muted_until: datetime | None = None

    @property
    def active(self) -> bool:
        return self.left_seq is None

    def last_visible(self, thread_last_seq: int) -> int:
        """The last seq this member may see: the thread's last, or the one that removed them."""
        if self.left_seq is None:
            return thread_last_seq
        return min(thread_last_seq, self.left_seq)

    def visible(self, seq: int) -> bool:
        return self.first_seq <= seq <= self.last_visible(seq)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One entry to append; events and rich messages are checked in its transaction.

    The store checks against the log, in the transaction that appends them, that the target
    exists, is visible, is not deleted, and so on.

    - `attachment_ids`: the sender's uploads, referenced by the message (ATTACHMENT);
    - `reply_to_seq`: the quoted message of the same thread;
    - `target_seq`: what a REACTION (emoji in `text`, empty removes), EDIT (new `text`) or
      DELETE changes;
    - `forward`: (thread, seq) of a message to copy, attachments by reference;
    - `deadline`: for EDIT and DELETE, the target must be created at or after it (the
      window); a group admin's DELETE is not bound by it.
    """

    thread_id: int
    sender: User
    sender_device_id: int
    client_msg_id: str
    kind: MessageKind
    text: str
    system: SystemEvent | None = None
    # Queue a push notification for the thread's members (docs/push.md). Off unless a kind
    # is marked for it: a new kind of message (a reaction, an edit) pushes nothing.
    notify: bool = False
    attachment_ids: tuple[str, ...] = ()
    reply_to_seq: int = 0
    target_seq: int = 0
    forward: tuple[int, int] | None = None
    deadline: datetime | None = None
    # The other member of a direct thread: the commit refuses the send if either blocked
    # the other or the peer's account is deleted. 0 for groups (and system messages).
    peer_id: int = 0

    @property
    def plain(self) -> bool:
        """Text or system with nothing to look up: the group commit's fast path."""
        return (
            self.kind in (MessageKind.TEXT, MessageKind.SYSTEM)
            and not self.reply_to_seq
            and self.forward is None
        )


@dataclass(frozen=True, slots=True)
class Appended:
    """The stored message; `duplicate` when an earlier send with the same key made it."""

    message: Message
    duplicate: bool


class Refusal(enum.Enum):
    """Why the store did not append an entry (checked inside the appending transaction)."""

    NOT_A_MEMBER = "NOT_A_MEMBER"
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
    NOT_AUTHOR = "NOT_AUTHOR"
    WINDOW_CLOSED = "WINDOW_CLOSED"
    MESSAGE_DELETED = "MESSAGE_DELETED"
    NOT_EDITABLE = "NOT_EDITABLE"
    ATTACHMENT_NOT_FOUND = "ATTACHMENT_NOT_FOUND"
    FORWARD_NOT_VISIBLE = "FORWARD_NOT_VISIBLE"
    BLOCKED_BY_PEER = "BLOCKED_BY_PEER"
    BLOCKING_PEER = "BLOCKING_PEER"
    PEER_DELETED = "PEER_DELETED"


@dataclass(frozen=True, slots=True)
class Refused:
    """Not stored: why is `reason`.

    The sender is not an active member of the thread (or it does not exist); what an event
    or a rich message refers to does not allow it; or, in a direct thread, one of the two
    blocked the other or the peer's account is deleted.
    """

    thread_id: int
    reason: Refusal = Refusal.NOT_A_MEMBER


@dataclass(frozen=True, slots=True)
class MemberChange:
    """Applied in the same transaction as the system message that records it."""

    user_id: int
    role: Role | None = None
    join: bool = False
    leave: bool = False
    full_history: bool = False


@dataclass(frozen=True, slots=True)
class Advance:
    """A member's cursor moved forward."""

    thread_id: int
    user_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    thread: ThreadRow
    member: MemberRow
    member_count: int
    peer_id: int | None
    last_message: Message | None
    unread_count: int


@dataclass(frozen=True, slots=True)
class ReportRow:
    report_id: int
    reporter: User
    subject: User
    thread_id: int
    reason: int
    text: str
    create_time: datetime
    resolve_time: datetime | None
    resolver_id: int | None
    resolution: str
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True)
class InviteRow:
    hint: str
    creator_id: int | None
    note: str
    create_time: datetime
    expire_time: datetime
    use_time: datetime | None
    used_by_id: int | None
    revoke_time: datetime | None


@dataclass(frozen=True, slots=True)
class AuditRow:
    entry_id: int
    time: datetime
    actor_id: int | None
    actor: str
    action: str
    target: str
    detail: str


class UserStore(Protocol):
    async def create_user(
        self,
        username: str,
        display_name: str,
        phone: str | None,
        password_hash: str,
        *,
        first_becomes_admin: bool = False,
        is_admin: bool = False,
        is_system: bool = False,
        invite_hash: str = "",
    ) -> UserRow:
        """Insert an account, all in one transaction.

        `first_becomes_admin`: admin if no account was made the first admin before (the
        marker is set in the same transaction). `invite_hash`: the invite must be unused,
        unrevoked and unexpired, and is used up (PermissionDenied BAD_INVITE otherwise).
        """
        ...

    async def find_users(self, identifiers: Sequence[str]) -> dict[str, UserRow]: ...
    async def get_users(self, user_ids: Sequence[int]) -> dict[int, UserRow]: ...
    async def update_user(
        self,
        user_id: int,
        display_name: str | None,
        hide_last_seen: bool | None,
        notification_preview: NotificationPreview | None = None,
    ) -> None: ...
    async def set_last_seen(self, seen: Sequence[tuple[int, datetime]]) -> None: ...
    async def set_profile(self, user_id: int, about: str | None, picture_id: str | None) -> None:
        """Set the about line and the picture (an attachment id; "" removes it); None keeps."""
        ...

    async def set_password(self, user_id: int, password_hash: str) -> None: ...
    async def set_admin(self, user_id: int, is_admin: bool) -> bool: ...
    async def set_disabled(self, user_id: int, disabled: bool) -> bool: ...
    async def erase_user(self, user_id: int) -> list[int]:
        """Delete an account's own data; its messages stay, signed "Deleted account".

        The row keeps its id under an unusable name; devices are revoked (their ids are
        returned), contacts and blocks both ways and cursors are removed.
        """
        ...

    async def list_users(self, query: str, after_id: int, limit: int) -> list[UserRow]:
        """Accounts (not system ones, not deleted) by id; `query` matches name or phone."""
        ...

    async def get_config(self, key: str) -> str | None: ...
    async def set_config(self, key: str, value: str | None) -> None: ...


class DeviceStore(Protocol):
    async def create_device(self, user_id: int, name: str, token_hash: str) -> DeviceRow: ...
    async def add_device(self, new: NewDevice) -> AddedDevice:
        """Create a login's device within the user's cap, checked in the same transaction.

        ResourceExhausted TOO_MANY_DEVICES at the cap, unless `replace_oldest`.
        """
        ...

    async def device_by_token(self, token_hash: str) -> tuple[UserRow, DeviceRow] | None: ...
    async def revoke_device(self, device_id: int) -> bool: ...
    async def revoke_devices(
        self, user_id: int, device_ids: Sequence[int] | None, keep: int = 0
    ) -> list[int]:
        """Revoke the user's devices named (None: all of them but `keep`); return those revoked."""
        ...

    async def list_devices(self, user_id: int) -> list[DeviceRow]: ...
    async def touch_devices(self, device_ids: Sequence[int], when: datetime) -> None: ...
    async def renew_devices(
        self, device_ids: Sequence[int], now: datetime, expire_time: datetime
    ) -> set[int]:
        """The devices still usable, marked active now and renewed until expire_time.

        Usable: not revoked, not expired, their user neither disabled nor deleted.
        """
        ...


class SafetyStore(Protocol):
    async def block(self, blocker_id: int, blocked_id: int) -> bool: ...
    async def unblock(self, blocker_id: int, blocked_id: int) -> bool: ...
    async def list_blocked(
        self, blocker_id: int, after_username: str, limit: int
    ) -> list[UserRow]: ...
    async def blocked_by(self, user_id: int, among: Sequence[int]) -> set[int]:
        """Which of `among` have blocked user_id."""
        ...

    async def block_links(self, user_ids: Sequence[int]) -> dict[int, set[int]]:
        """For each user, everyone they blocked or who blocked them."""
        ...

    async def create_report(
        self,
        reporter_id: int,
        subject_id: int,
        thread_id: int,
        reason: int,
        text: str,
        messages: Sequence[Message],
    ) -> int: ...
    async def list_reports(self, open_only: bool, after_id: int, limit: int) -> list[ReportRow]: ...
    async def get_report(self, report_id: int) -> ReportRow | None: ...
    async def resolve_report(
        self, report_id: int, resolver_id: int | None, resolution: str
    ) -> bool: ...


class AdminStore(Protocol):
    async def create_invite(
        self, code_hash: str, hint: str, creator_id: int | None, note: str, expire_time: datetime
    ) -> None: ...
    async def list_invites(self, include_done: bool) -> list[InviteRow]: ...
    async def revoke_invite(self, hint: str) -> bool: ...
    async def audit(
        self, actor_id: int | None, actor: str, action: str, target: str, detail: str
    ) -> None: ...
    async def list_audit(self, after_id: int, limit: int) -> list[AuditRow]: ...


class ContactStore(Protocol):
    async def add_contact(self, owner_id: int, contact_id: int, alias: str) -> None: ...
    async def remove_contact(self, owner_id: int, contact_id: int) -> bool: ...
    async def list_contacts(
        self, owner_id: int, after_username: str, limit: int
    ) -> list[tuple[UserRow, str]]: ...
    async def watchers(self, user_ids: Sequence[int]) -> dict[int, list[int]]: ...
    async def contacts_among(self, owner_id: int, user_ids: Sequence[int]) -> set[int]: ...
    async def mutual_contacts(self, user_ids: Sequence[int]) -> dict[int, set[int]]:
        """For each user, the people they have as a contact who have them as a contact too."""
        ...

    async def mutual_contacts_among(self, owner_id: int, user_ids: Sequence[int]) -> set[int]: ...


class ThreadStore(Protocol):
    async def direct_thread(self, a: int, b: int) -> int: ...
    async def get_thread(self, thread_id: int) -> ThreadRow | None: ...
    async def get_member(self, thread_id: int, user_id: int) -> MemberRow | None: ...
    async def list_members(self, thread_id: int) -> list[MemberRow]: ...
    async def active_member_ids(self, thread_id: int) -> list[int]: ...
    async def list_threads(
        self, user_id: int, before: tuple[datetime, int] | None, limit: int
    ) -> list[ThreadSummary]: ...
    async def user_threads(self, user_id: int) -> list[MemberRow]: ...
    async def user_groups(self, user_id: int) -> list[int]:
        """The group threads the user is an active member of, in one query."""
        ...

    async def create_group(
        self, title: str, creator_id: int, member_ids: Sequence[int], event: NewMessage
    ) -> tuple[int, Message]: ...
    async def change_group(
        self,
        thread_id: int,
        changes: Sequence[MemberChange],
        title: str | None,
        event: NewMessage,
        *,
        max_members: int | None = None,
    ) -> Message:
        """Apply changes and record them as one system message, atomically.

        Changes to one group are serialised across processes; the change is refused (and
        nothing written) if the group would end with members but no admin, or with more
        than max_members members.
        """
        ...

    async def set_mute(self, user_id: int, thread_id: int, until: datetime | None) -> bool:
        """Mute (until a time) or unmute (None) a thread for a member; False if not a member."""
        ...

    async def thread_peers_among(self, user_id: int, user_ids: Sequence[int]) -> set[int]: ...
    async def small_thread_peers(
        self, user_ids: Sequence[int], max_members: int
    ) -> dict[int, set[int]]: ...


class MessageStore(Protocol):
    """The message log: append messages and their events, read ranges folded, search.

    This is what a document-store log would implement; the other parts stay SQL's.

    Reads return messages folded: the current text (edits applied), deletes, every
    member's current reaction; with `viewer`, what that user hid is marked and emptied.
    """

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended | Refused]: ...
    async def prune_messages(self, thread_id: int, below_seq: int) -> int: ...
    async def list_messages(
        self,
        thread_id: int,
        after_seq: int,
        before_seq: int,
        limit: int,
        newest: bool,
        *,
        viewer: int = 0,
        folded: bool = False,
    ) -> list[Message]:
        """A range of a thread; `folded` leaves events out (limit counts what is left)."""
        ...

    async def messages_after(
        self, ranges: Sequence[tuple[int, int, int]], limit: int, *, viewer: int = 0
    ) -> list[Message]: ...
    async def search_messages(
        self, user_id: int, words: Sequence[str], thread_id: int, offset: int, limit: int
    ) -> list[Message]:
        """Text and attachment messages with every word (or a word it begins), best first.

        Only what the user may see: their threads, from when they joined to when they left,
        not deleted, not hidden by them; ranked by the engine's own relevance.
        """
        ...


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry for a message log, already checked and shaped by message_svc's rules."""

    thread_id: int
    sender: User
    sender_device_id: int
    client_msg_id: str
    kind: MessageKind
    text: str
    system: SystemEvent | None = None
    target_seq: int = 0
    # What the SQL side derives from the entry when it moves the thread over it: the
    # shaped references (attachments, quoted message, forwarded mark) as the SQL store
    # keeps them, and whether the entry queues a push notification.
    payload: str | None = None
    notify: bool = False
    # A group change's system message carries the change itself, so the thread's rows can
    # be rebuilt from the log alone (a crash after the append rolls the SQL side back).
    changes: tuple[MemberChange, ...] = ()
    title: str | None = None


class MessageLog(Protocol):
    """The message log alone: what a document store (MongoDB) can hold apart from SQL.

    - `append`: each thread's new entries get the next sequence numbers, in the order
      given, with no gap and no duplicate, whatever crashes or concurrent writers do; a
      (sender, client_msg_id) stored before, ever, answers with the original
      (`duplicate`), never a second copy. It returns only once the entries are durable.
    - `read`: a range of one thread (history pages: `newest` takes the last `limit`).
    - `read_after`: sync after cursors, `(thread, after, upto)` ranges, in that order.
    - `last_seqs`: each thread's last seq in the log, from which SQL's thread rows are
      derived and repaired (docs/architecture.md, "The message log on MongoDB").
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def append(self, entries: Sequence[LogEntry]) -> list[Appended]: ...
    async def read(
        self, thread_id: int, after_seq: int, before_seq: int, limit: int, newest: bool
    ) -> list[Message]: ...
    async def read_after(
        self, ranges: Sequence[tuple[int, int, int]], limit: int
    ) -> list[Message]: ...
    async def last_seqs(self, thread_ids: Sequence[int]) -> dict[int, int]: ...


class UserLogStore(Protocol):
    """Each user's own state (delete for me) and the change log that syncs it."""

    async def hide_messages(
        self, user_id: int, thread_id: int, seqs: Sequence[int]
    ) -> list[UserChange]:
        """Hide messages for the user; one log entry per message not hidden before."""
        ...

    async def user_changes(self, user_id: int, after_seq: int, limit: int) -> list[UserChange]: ...


class AttachmentStore(Protocol):
    """Uploaded files' records (the bytes are in a blob store) and their collection."""

    async def add_attachment(self, record: AttachmentRecord, thumbnail: bytes | None) -> None:
        """Record an upload, and its blob (touched: its grace period starts again)."""
        ...

    async def get_attachment(self, attachment_id: str) -> AttachmentRecord | None: ...
    async def attachment_thumbnail(self, attachment_id: str) -> bytes | None: ...
    async def may_read_attachment(self, user_id: int, attachment_id: str) -> bool:
        """The uploader, or a member who may see a message that refers to it."""
        ...

    async def drop_unsent_attachments(self, before: datetime) -> int:
        """Forget uploads made before `before` that no message refers to; how many."""
        ...

    async def collectable_blobs(self, before: datetime, limit: int) -> list[str]:
        """Blobs no attachment refers to, untouched since before `before`."""
        ...

    async def collect_blob(
        self, sha256: str, before: datetime, delete: Callable[[], Awaitable[None]]
    ) -> bool:
        """Forget a blob if still collectable and run `delete` (the bytes) before commit.

        An upload of the same content waits for it, then stores the bytes again.
        """
        ...


class CursorStore(Protocol):
    async def device_cursors(self, device_id: int) -> dict[int, int]: ...
    async def advance_delivered(self, acks: Sequence[DeviceAck]) -> list[Advance]:
        """Move cursors forward, each clamped to the last seq its member may see.

        A cursor for a thread the user never was in is dropped; returns members' advances.
        """

    async def advance_read(self, user_id: int, thread_id: int, seq: int) -> bool: ...


class Store(
    UserStore,
    DeviceStore,
    ContactStore,
    ThreadStore,
    MessageStore,
    CursorStore,
    UserLogStore,
    AttachmentStore,
    SafetyStore,
    AdminStore,
    Protocol,
):
    """Everything message_svc keeps; one implementation per engine family."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
