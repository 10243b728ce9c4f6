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


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: int
    user_id: int
    name: str
    create_time: datetime
    last_active_time: datetime | None


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


@dataclass(frozen=True, slots=True)
class Refused:
    """Not stored: why is `reason`.

    The sender is not an active member of the thread (or it does not exist), or what an
    event or a rich message refers to does not allow it.
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


class UserStore(Protocol):
    async def create_user(
        self, username: str, display_name: str, phone: str | None, password_hash: str
    ) -> UserRow: ...
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


class DeviceStore(Protocol):
    async def create_device(self, user_id: int, name: str, token_hash: str) -> DeviceRow: ...
    async def device_by_token(self, token_hash: str) -> tuple[UserRow, DeviceRow] | None: ...
    async def revoke_device(self, device_id: int) -> bool:
        """Revoke the device's token and remove its push target, in one transaction."""
        ...

    async def list_devices(self, user_id: int) -> list[DeviceRow]: ...
    async def touch_devices(self, device_ids: Sequence[int], when: datetime) -> None: ...


class ContactStore(Protocol):
    async def add_contact(self, owner_id: int, contact_id: int, alias: str) -> None: ...
    async def remove_contact(self, owner_id: int, contact_id: int) -> bool: ...
    async def list_contacts(
        self, owner_id: int, after_username: str, limit: int
    ) -> list[tuple[UserRow, str]]: ...
    async def watchers(self, user_ids: Sequence[int]) -> dict[int, list[int]]: ...
    async def contacts_among(self, owner_id: int, user_ids: Sequence[int]) -> set[int]: ...


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
    Protocol,
):
    """Everything message_svc keeps; one implementation per engine family."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
