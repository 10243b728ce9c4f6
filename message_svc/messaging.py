"""Threads and messages: durable idempotent sends, routing, history, sync, receipts, typing."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from message_svc import rules
from message_svc.accounts import public
from message_svc.committer import GroupCommitter
from message_svc.contacts import Contacts
from message_svc.ports import Fanout
from message_svc.store import (
    Advance,
    Appended,
    MemberRow,
    NewMessage,
    Refusal,
    Refused,
    Store,
    ThreadRow,
    ThreadSummary,
)
from natter.domain import (
    MUTED_FOREVER,
    Cursor,
    Delete,
    Delivery,
    DeviceAck,
    Edit,
    Forward,
    Member,
    Message,
    MessageKind,
    MessageState,
    Principal,
    React,
    ReadCursor,
    Receipt,
    ReceiptKind,
    SendRequest,
    SendResult,
    SyncPage,
    Thread,
    ThreadKind,
    ThreadMute,
    Typing,
    User,
    UserChange,
    queues_push,
)
from natter.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NatterError,
    NotFound,
    PermissionDenied,
    transient,
)
from natter.metrics import NO_METRICS, Metrics
from natter.settings import Settings

logger = logging.getLogger(__name__)

UNBOUNDED = 1 << 62
K = TypeVar("K")
V = TypeVar("V")


def _encode_token(when: datetime, thread_id: int) -> str:
    return base64.urlsafe_b64encode(f"{when.isoformat()}|{thread_id}".encode()).decode()


def _decode_token(token: str) -> tuple[datetime, int]:
    try:
        when, tid = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(when), int(tid)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument("page_token is not one this server issued", "BAD_PAGE_TOKEN") from e


class Messaging:
    """The system of record's rules for threads and messages."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        fanout: Fanout,
        contacts: Contacts,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.fanout = fanout
        self.contacts = contacts
        self.metrics = metrics
        # Bound once: a labels() lookup costs more than the increment itself.
        self._outcomes = {
            o: metrics.sends.labels(o) for o in ("stored", "duplicate", "refused", "failed")
        }
        self.committer: GroupCommitter[NewMessage, Appended | Refused] = GroupCommitter(
            store.append_messages, metrics=metrics
        )
        # Direct threads never change members, so their pair is cached for routing.
        self._direct: dict[int, tuple[int, int]] = {}
        self._ids: dict[str, int] = {}
        self._pairs: dict[tuple[int, int], int] = {}
        self._kinds: dict[int, ThreadKind] = {}
        self._acting: dict[int, tuple[float, User]] = {}

    # -- membership ----------------------------------------------------------------------

    async def member(self, who: Principal, thread_id: int) -> tuple[ThreadRow, MemberRow]:
        if thread_id <= 0:
            raise InvalidArgument("thread_id must be positive", "BAD_THREAD")
        thread = await self.store.get_thread(thread_id)
        if thread is None:
            raise NotFound(f"thread {thread_id} does not exist", "THREAD_NOT_FOUND")
        row = await self.store.get_member(thread_id, who.user.user_id)
        if row is None:
            raise PermissionDenied(f"you are not a member of thread {thread_id}", "NOT_A_MEMBER")
        return thread, row

    async def active_member(self, who: Principal, thread_id: int) -> tuple[ThreadRow, MemberRow]:
        thread, row = await self.member(who, thread_id)
        if not row.active:
            raise PermissionDenied(
                f"you are no longer a member of thread {thread_id}", "NOT_A_MEMBER"
            )
        return thread, row

    async def audience(self, thread_id: int, kind: ThreadKind) -> list[int]:
        """Active member ids of a thread."""
        if kind is ThreadKind.DIRECT:
            pair = self._direct.get(thread_id)
            if pair is None:
                ids = await self.store.active_member_ids(thread_id)
                pair = (ids[0], ids[-1])
                self._direct[thread_id] = pair
            return list(dict.fromkeys(pair))
        return await self.store.active_member_ids(thread_id)

    # -- sending -------------------------------------------------------------------------

    async def send(self, who: Principal, req: SendRequest) -> SendResult:
        [outcome] = await self.send_many(who, [req])
        if isinstance(outcome, NatterError):
            raise outcome
        return outcome

    async def send_many(
        self, who: Principal, reqs: Sequence[SendRequest], origin: str = ""
    ) -> list[SendResult | NatterError]:
        """Store a run of one device's sends; within each thread their seqs follow its order.

        Targets are resolved one after another, in order; then every send that is fine joins
        the group commit as one run (one transaction, after everything submitted before it).
        Each send is answered on its own: a bad one fails alone. After a transient failure
        (say the store is unreachable while a recipient is looked up) the rest of the run is
        not tried and fails the same way, since storing a later send while an earlier one
        must be retried would put them out of order.

        `origin` is the calling socket server (as the fan-out names it) when it pushes the
        sender's own copies to the devices it holds once answered: they are pushed here only
        to another server owning the sender (docs/architecture.md, "The sender's own copies").
        """
        if len(reqs) > MAX_SENDS_PER_CALL:
            raise InvalidArgument(
                f"at most {MAX_SENDS_PER_CALL} sends per call, got {len(reqs)}", "TOO_MANY_SENDS"
            )
        out: list[SendResult | NatterError | None] = [None] * len(reqs)
        todo: list[tuple[int, NewMessage]] = []
        now = datetime.now(UTC)
        received = time.perf_counter()
        for i, req in enumerate(reqs):
            try:
                thread_id = await self._target(who, req)
                peer = await self._peer(who.user.user_id, thread_id)
                new = self._entry(who, req, thread_id, now)
                new = replace(new, notify=queues_push(new.kind), peer_id=peer)
            except NatterError as e:
                out[i] = e
                self._count(e)
                if transient(e):
                    out[i:] = [e] * (len(reqs) - i)
                    self._outcomes["failed"].inc(len(reqs) - i - 1)
                    break
                continue
            todo.append((i, new))
        hops = self.metrics.hops
        if self.metrics.enabled and todo:
            prepared = time.perf_counter() - received
            for _ in todo:
                hops["send_prepare"].observe(prepared)
        try:
            appended = await self.committer.submit_many([new for _, new in todo])
        except BaseException:
            self._outcomes["failed"].inc(len(todo))
            raise
        stored: list[tuple[Message, ThreadKind]] = []
        for (i, new), a in zip(todo, appended, strict=True):
            try:
                message = await self._stored(who, new, a)
                kind = await self._kind(message.thread_id)
            except NatterError as e:
                out[i] = e
                self._count(e)
                continue
            self._outcomes[
                "duplicate" if isinstance(a, Appended) and a.duplicate else "stored"
            ].inc()
            stored.append((message, kind))
            out[i] = SendResult(
                new.client_msg_id,
                message.msg_id,
                message.thread_id,
                message.seq,
                message.create_time,
                # The device knows what it sent as plain text; anything else comes back whole.
                None if new.plain and new.kind is MessageKind.TEXT else message,
            )
        # A retry is pushed again: the replica that stored the original may have died
        # before pushing it. Devices drop what they already have (by thread and seq).
        pushing = time.perf_counter()
        await self.publish_many(stored, exclude_device_id=who.device_id, origin=origin)
        if self.metrics.enabled and stored:
            pushed = time.perf_counter() - pushing
            for _ in stored:
                hops["fanout"].observe(pushed)
        return [o for o in out if o is not None]

    async def _target(self, who: Principal, req: SendRequest) -> int:
        """The thread a send goes to (its content is checked by `_entry`)."""
        rules.client_msg_id(req.client_msg_id)
        if req.change is None and not req.attachment_ids:
            rules.text(req.text, self.settings.max_text_bytes)  # before any lookup
        if req.recipient:
            return await self._direct_with(who.user.user_id, req.recipient)
        if req.thread_id > 0:
            return req.thread_id
        if req.thread_id < 0:
            raise InvalidArgument("thread_id must be positive", "BAD_THREAD")
        raise InvalidArgument("send needs a thread_id or a recipient", "NO_TARGET")

    def _entry(self, who: Principal, req: SendRequest, thread_id: int, now: datetime) -> NewMessage:
        """What a send appends: a message, or an event changing one (checked by the store)."""
        cap = self.settings.max_text_bytes
        base = NewMessage(
            thread_id, who.user, who.device_id, req.client_msg_id, MessageKind.TEXT, ""
        )
        change = req.change
        if change is not None and (req.attachment_ids or req.reply_to_seq):
            raise InvalidArgument(
                "a reaction, edit, delete or forward carries no attachments or reply",
                "BAD_CHANGE",
            )
        if isinstance(change, React | Edit | Delete) and change.seq <= 0:
            raise InvalidArgument("the message to change needs a positive seq", "BAD_SEQ")
        if isinstance(change, React):
            return replace(
                base,
                kind=MessageKind.REACTION,
                text=rules.emoji(change.emoji),
                target_seq=change.seq,
            )
        if isinstance(change, Edit):
            window = timedelta(seconds=self.settings.edit_window_seconds)
            return replace(
                base,
                kind=MessageKind.EDIT,
                text=rules.text(req.text, cap),
                target_seq=change.seq,
                deadline=now - window,
            )
        if isinstance(change, Delete):
            window = timedelta(seconds=self.settings.delete_window_seconds)
            return replace(
                base, kind=MessageKind.DELETE, target_seq=change.seq, deadline=now - window
            )
        if isinstance(change, Forward):
            if change.thread_id <= 0 or change.seq <= 0:
                raise InvalidArgument("a forward names a thread and a seq", "BAD_FORWARD")
            return replace(base, forward=(change.thread_id, change.seq))
        if req.reply_to_seq < 0:
            raise InvalidArgument("reply_to_seq must be positive", "BAD_SEQ")
        if req.attachment_ids:
            ids = tuple(dict.fromkeys(req.attachment_ids))
            if len(ids) > rules.MAX_ATTACHMENTS:
                raise InvalidArgument(
                    f"at most {rules.MAX_ATTACHMENTS} attachments per message",
                    "TOO_MANY_ATTACHMENTS",
                )
            if any(not i or len(i) > 26 for i in ids):
                raise InvalidArgument("attachment ids come from uploads", "BAD_ATTACHMENT_ID")
            return replace(
                base,
                kind=MessageKind.ATTACHMENT,
                text=rules.caption(req.text, cap),
                attachment_ids=ids,
                reply_to_seq=req.reply_to_seq,
            )
        return replace(base, text=rules.text(req.text, cap), reply_to_seq=req.reply_to_seq)

    def _count(self, error: NatterError) -> None:
        self._outcomes["failed" if transient(error) else "refused"].inc()

    async def _peer(self, user_id: int, thread_id: int) -> int:
        """The other member of a direct thread (the sender for a thread with oneself), else 0."""
        try:
            kind = await self._kind(thread_id)
        except NotFound:
            return 0  # refused at the commit, which says why
        if kind is not ThreadKind.DIRECT:
            return 0
        pair = await self.audience(thread_id, kind)
        return next((u for u in pair if u != user_id), user_id)

    async def _stored(self, who: Principal, new: NewMessage, a: Appended | Refused) -> Message:
        """The message a send stored (or had stored before), or why it was refused."""
        if isinstance(a, Refused) and a.reason is Refusal.BLOCKING_PEER:
            raise FailedPrecondition(
                "you blocked this person: unblock them to send them messages", "YOU_BLOCKED"
            )
        if isinstance(a, Refused) and a.reason in (Refusal.BLOCKED_BY_PEER, Refusal.PEER_DELETED):
            # Worded the same either way: the sender does not learn they were blocked.
            raise PermissionDenied(
                "this message cannot be delivered: the recipient does not take messages from you",
                "RECIPIENT_UNAVAILABLE",
            )
        if isinstance(a, Refused):
            if a.reason is Refusal.NOT_A_MEMBER:
                await self.active_member(who, new.thread_id)  # raises the precise error
                raise PermissionDenied(
                    f"you are not a member of thread {new.thread_id}", "NOT_A_MEMBER"
                )
            raise self._refusal(new, a.reason)
        message = a.message
        if a.duplicate and not _same(message, new):
            raise reused(new.client_msg_id)
        return message

    def _refusal(self, new: NewMessage, reason: Refusal) -> NatterError:
        seq = new.target_seq or new.reply_to_seq
        what = f"message {new.thread_id}:{seq}"
        verb = {
            MessageKind.REACTION: "react to",
            MessageKind.EDIT: "edit",
            MessageKind.DELETE: "delete",
        }.get(new.kind, "reply to")
        if reason is Refusal.MESSAGE_NOT_FOUND:
            return NotFound(f"{what} does not exist", "MESSAGE_NOT_FOUND")
        if reason is Refusal.NOT_AUTHOR:
            who = "its sender or a group admin" if new.kind is MessageKind.DELETE else "its sender"
            return PermissionDenied(f"only {who} may {verb} {what}", "NOT_AUTHOR")
        if reason is Refusal.WINDOW_CLOSED:
            edit = new.kind is MessageKind.EDIT
            limit = (
                self.settings.edit_window_seconds if edit else self.settings.delete_window_seconds
            )
            return FailedPrecondition(
                f"{what} is older than the {_span(limit)} a message may be "
                f"{'edited' if edit else 'deleted'} in",
                "EDIT_WINDOW_CLOSED" if edit else "DELETE_WINDOW_CLOSED",
            )
        if reason is Refusal.MESSAGE_DELETED:
            return FailedPrecondition(f"{what} was deleted", "MESSAGE_DELETED")
        if reason is Refusal.NOT_EDITABLE:
            return FailedPrecondition(
                f"only text and attachment messages can be changed; {what} is neither",
                "NOT_EDITABLE",
            )
        if reason is Refusal.ATTACHMENT_NOT_FOUND:
            return NotFound(
                "an attachment does not exist or is not one you uploaded (forward a message "
                "to send someone else's)",
                "ATTACHMENT_NOT_FOUND",
            )
        assert new.forward is not None
        return PermissionDenied(
            f"message {new.forward[0]}:{new.forward[1]} is not one you can see", "NOT_A_MEMBER"
        )

    async def _direct_with(self, user_id: int, identifier: str) -> int:
        """The direct thread with a user; ids, names and pairs never change, so all are cached."""
        peer_id = self._ids.get(identifier)
        if peer_id is None:
            peer_id = (await self.contacts.resolve(identifier)).user_id
            _remember(self._ids, identifier, peer_id)
        pair = (min(user_id, peer_id), max(user_id, peer_id))
        thread_id = self._pairs.get(pair)
        if thread_id is None:
            thread_id = await self.store.direct_thread(user_id, peer_id)
            _remember(self._pairs, pair, thread_id)
            _remember(self._kinds, thread_id, ThreadKind.DIRECT)
        return thread_id

    async def _kind(self, thread_id: int) -> ThreadKind:
        kind = self._kinds.get(thread_id)
        if kind is None:
            thread = await self.store.get_thread(thread_id)
            if thread is None:
                raise NotFound(f"thread {thread_id} does not exist", "THREAD_NOT_FOUND")
            kind = thread.kind
            _remember(self._kinds, thread_id, kind)
        return kind

    async def publish(
        self,
        message: Message,
        kind: ThreadKind,
        exclude_device_id: int = 0,
        extra_users: Iterable[int] = (),
    ) -> None:
        """Push a stored message; failures only delay it until the devices sync."""
        await self.publish_many([(message, kind)], exclude_device_id, extra_users)

    async def publish_many(
        self,
        messages: Sequence[tuple[Message, ThreadKind]],
        exclude_device_id: int = 0,
        extra_users: Iterable[int] = (),
        origin: str = "",
    ) -> None:
        """Push stored messages in the order given, in one hand-over to the fan-out.

        With an `origin` (the sender's socket server, which pushes the sender's other devices
        itself) the sender's copy is a delivery of its own that the fan-out hands only to
        another owner of the sender; the others' copies skip the sender's devices.
        """
        if not messages:
            return
        extra = tuple(extra_users)
        try:
            deliveries: list[Delivery] = []
            for message, kind in messages:
                sender = message.sender.user_id
                if kind is ThreadKind.DIRECT:
                    users = await self.audience(message.thread_id, kind)
                    if origin:
                        users = [u for u in users if u != sender]
                    if users:
                        skip = 0 if origin else exclude_device_id
                        deliveries.append(Delivery(message, user_ids=users, exclude_device_id=skip))
                else:
                    deliveries.append(
                        Delivery(
                            message,
                            thread_id=message.thread_id,
                            exclude_device_id=exclude_device_id,
                            exclude_user_id=sender if origin else 0,
                        )
                    )
                    if extra:
                        deliveries.append(Delivery(message, user_ids=extra))
                if origin:
                    deliveries.append(
                        Delivery(
                            message,
                            user_ids=(sender,),
                            exclude_device_id=exclude_device_id,
                            pushed_by=origin,
                        )
                    )
            await self.fanout.deliver(deliveries)
        except Exception:  # the store is the truth; devices catch up by sync
            first, last = messages[0][0], messages[-1][0]
            logger.warning(
                "push of %s/%s..%s/%s failed",
                first.thread_id,
                first.seq,
                last.thread_id,
                last.seq,
                exc_info=True,
            )

    # -- mutes ---------------------------------------------------------------------------

    async def mute(self, who: Principal, thread_id: int, duration: timedelta | None) -> Thread:
        """No push notifications of a thread for this member, for `duration` or (None) forever.

        Per member, so every device of theirs follows it; the other connected devices are
        told at once (ThreadMute), the rest see it in the thread list.
        """
        if duration is not None and not MIN_MUTE <= duration <= MAX_MUTE:
            raise InvalidArgument(
                "a mute lasts from 1 second to 10 years; use forever for longer", "BAD_MUTE"
            )
        until = MUTED_FOREVER if duration is None else datetime.now(UTC) + duration
        return await self._set_mute(who, thread_id, until)

    async def unmute(self, who: Principal, thread_id: int) -> Thread:
        return await self._set_mute(who, thread_id, None)

    async def _set_mute(self, who: Principal, thread_id: int, until: datetime | None) -> Thread:
        await self.member(who, thread_id)
        await self.store.set_mute(who.user.user_id, thread_id, until)
        view, _ = await self.get_thread(who, thread_id)
        event = ThreadMute(thread_id, view.muted, view.mute_end_time)
        try:
            await self.fanout.deliver(
                [Delivery(event, user_ids=(who.user.user_id,), exclude_device_id=who.device_id)]
            )
        except Exception:  # the thread list has it; only the live update is late
            logger.warning("push of a mute of thread %s failed", thread_id, exc_info=True)
        return view

    # -- reading -------------------------------------------------------------------------

    async def list_threads(
        self, who: Principal, page_size: int, token: str
    ) -> tuple[list[Thread], str]:
        size = 50 if page_size <= 0 else min(page_size, 500)
        before = _decode_token(token) if token else None
        rows = await self.store.list_threads(who.user.user_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        peer_rows = await self.store.get_users([r.peer_id for r in rows if r.peer_id])
        peers = await self.contacts.profiles.shown(who.user.user_id, peer_rows.values())
        threads = [self._thread_view(r, peers) for r in rows]
        nxt = _encode_token(rows[-1].member.update_time, rows[-1].thread.thread_id) if more else ""
        return threads, nxt

    def _thread_view(self, s: ThreadSummary, peers: Mapping[int, User]) -> Thread:
        peer = peers.get(s.peer_id) if s.peer_id else None
        hi = s.member.last_visible(s.thread.last_seq)
        title = (
            s.thread.title
            if s.thread.kind is ThreadKind.GROUP
            else (peer.display_name if peer else "")
        )
        return Thread(
            thread_id=s.thread.thread_id,
            kind=s.thread.kind,
            title=title,
            last_seq=hi,
            read_seq=s.member.read_seq,
            unread_count=s.unread_count,
            update_time=s.member.update_time,
            role=s.member.role,
            member_count=s.member_count,
            active=s.member.active,
            peer=peer,
            last_message=s.last_message,
            muted=_muted(s.member),
            mute_end_time=_mute_end(s.member),
        )

    async def get_thread(self, who: Principal, thread_id: int) -> tuple[Thread, list[Member]]:
        thread, me = await self.member(who, thread_id)
        members = await self.store.list_members(thread_id)
        rows = await self.store.get_users([m.user_id for m in members])
        users = await self.contacts.profiles.shown(who.user.user_id, rows.values())
        active = [m for m in members if m.active]
        peer = None
        if thread.kind is ThreadKind.DIRECT:
            other = next((m for m in members if m.user_id != who.user.user_id), me)
            peer = users[other.user_id]
        hi = me.last_visible(thread.last_seq)
        view = Thread(
            thread_id=thread.thread_id,
            kind=thread.kind,
            title=thread.title
            if thread.kind is ThreadKind.GROUP
            else (peer.display_name if peer else ""),
            last_seq=hi,
            read_seq=me.read_seq,
            unread_count=0,
            update_time=me.update_time,
            role=me.role,
            member_count=len(active),
            active=me.active,
            peer=peer,
            muted=_muted(me),
            mute_end_time=_mute_end(me),
        )
        shown = [
            Member(users[m.user_id], m.role, m.delivered_seq, m.read_seq, m.create_time)
            for m in active
        ]
        return view, shown

    async def direct_thread(self, who: Principal, identifier: str) -> Thread:
        peer = await self.contacts.resolve(identifier)
        thread_id = await self.store.direct_thread(who.user.user_id, peer.user_id)
        view, _ = await self.get_thread(who, thread_id)
        return view

    async def list_messages(
        self,
        who: Principal,
        thread_id: int,
        before_seq: int,
        after_seq: int,
        limit: int,
        forward: bool = False,
        folded: bool = False,
    ) -> tuple[list[Message], bool]:
        if before_seq < 0 or after_seq < 0:
            raise InvalidArgument("before_seq and after_seq must not be negative", "BAD_CURSOR")
        size = 50 if limit <= 0 else min(limit, 1000)
        thread, me = await self.member(who, thread_id)
        lo = max(after_seq, me.first_seq - 1)
        hi_incl = me.last_visible(thread.last_seq)
        newest = before_seq > 0 or (after_seq == 0 and not forward)
        upper = min(before_seq, hi_incl + 1) if before_seq > 0 else hi_incl + 1
        rows = await self.store.list_messages(
            thread_id, lo, upper, size + 1, newest, viewer=who.user.user_id, folded=folded
        )
        more = len(rows) > size
        rows = rows[1:] if (more and newest) else rows[:size]
        return await self._with_state(who, thread, rows), more

    async def _with_state(
        self, who: Principal, thread: ThreadRow, rows: list[Message]
    ) -> list[Message]:
        mine = [m for m in rows if m.sender.user_id == who.user.user_id]
        if not mine:
            return rows
        others = [
            m
            for m in await self.store.list_members(thread.thread_id)
            if m.active and m.user_id != who.user.user_id
        ]
        delivered = min((m.delivered_seq for m in others), default=UNBOUNDED)
        read = min((m.read_seq for m in others), default=UNBOUNDED)

        def state(m: Message) -> Message:
            if m.sender.user_id != who.user.user_id or not m.kind.notifies:
                return m
            s = (
                MessageState.READ
                if m.seq <= read
                else MessageState.DELIVERED
                if m.seq <= delivered
                else MessageState.SENT
            )
            return replace(m, state=s)

        return [state(m) for m in rows]

    # -- sync ----------------------------------------------------------------------------

    async def sync_device(
        self, who: Principal, cursors: Sequence[Cursor], skip_replay: bool, limit: int
    ) -> tuple[SyncPage, list[Cursor]]:
        """Messages after the device's cursors (stored, or given), in thread then seq order."""
        size = 500 if limit <= 0 else min(limit, 2000)
        memberships = await self.store.user_threads(who.user.user_id)
        stored = await self.store.device_cursors(who.device_id)
        given = {c.thread_id: c.seq for c in cursors}
        starts: list[Cursor] = []
        ranges: list[tuple[int, int, int]] = []
        lasts: dict[int, int] = {}
        if skip_replay:
            for m in memberships:
                if m.thread_id not in given and m.thread_id not in stored:
                    thread = await self.store.get_thread(m.thread_id)
                    lasts[m.thread_id] = thread.last_seq if thread else 0
        for m in sorted(memberships, key=lambda r: r.thread_id):
            base = given.get(m.thread_id, stored.get(m.thread_id, lasts.get(m.thread_id, 0)))
            start = max(base, m.first_seq - 1)
            upto = m.last_visible(UNBOUNDED)
            starts.append(Cursor(m.thread_id, start))
            if start < upto:
                ranges.append((m.thread_id, start, upto))
        rows = await self.store.messages_after(ranges, size + 1, viewer=who.user.user_id)
        more = len(rows) > size
        return SyncPage(rows[:size], more), starts

    async def messages_between(
        self, who: Principal, thread_id: int, after_seq: int, before_seq: int
    ) -> list[Message]:
        """The gap (after_seq, before_seq) of a thread, as far as this member may see it."""
        _, me = await self.member(who, thread_id)
        lo = max(after_seq, me.first_seq - 1)
        hi = me.last_visible(before_seq - 1) + 1  # exclusive, like before_seq
        if hi - lo <= 1:
            return []
        return await self.store.list_messages(
            thread_id, lo, hi, hi - lo, False, viewer=who.user.user_id
        )

    # -- search --------------------------------------------------------------------------

    async def search(
        self, who: Principal, query: str, thread_id: int, page_size: int, token: str
    ) -> tuple[list[Message], str]:
        """What the user can see that holds every word, best first, a page at a time."""
        words = rules.search_words(query)
        if thread_id < 0:
            raise InvalidArgument("thread_id must not be negative", "BAD_THREAD")
        if thread_id:
            await self.member(who, thread_id)
        size = 20 if page_size <= 0 else min(page_size, 100)
        offset = _decode_offset(token) if token else 0
        rows = await self.store.search_messages(
            who.user.user_id, words, thread_id, offset, size + 1
        )
        more = len(rows) > size
        return rows[:size], _encode_offset(offset + size) if more else ""

    # -- the user's own state ------------------------------------------------------------

    async def hide(self, who: Principal, thread_id: int, seqs: Sequence[int]) -> list[UserChange]:
        """Delete for me: hidden on every device of the user, for nobody else.

        Recorded in the user's own change log (a seq of its own, not the thread's), which
        their devices replay from the cursor they pass in Hello and get pushed live.
        """
        if not seqs:
            raise InvalidArgument("name the messages to delete for you", "NO_SEQS")
        if len(seqs) > 1000:
            raise InvalidArgument("at most 1000 messages at a time", "TOO_MANY_SEQS")
        thread, me = await self.member(who, thread_id)
        hi = me.last_visible(thread.last_seq)
        for seq in seqs:
            if not me.first_seq <= seq <= hi:
                raise NotFound(f"message {thread_id}:{seq} does not exist", "MESSAGE_NOT_FOUND")
        changes = await self.store.hide_messages(who.user.user_id, thread_id, seqs)
        if changes:
            try:
                await self.fanout.deliver(
                    [Delivery(c, user_ids=(who.user.user_id,)) for c in changes]
                )
            except Exception:  # devices replay the log on their next connect
                logger.warning("push of user changes failed", exc_info=True)
        return changes

    async def user_changes(
        self, who: Principal, after_seq: int, limit: int
    ) -> tuple[list[UserChange], bool]:
        if after_seq < 0:
            raise InvalidArgument("after_seq must not be negative", "BAD_CURSOR")
        size = 500 if limit <= 0 else min(limit, 5000)
        rows = await self.store.user_changes(who.user.user_id, after_seq, size + 1)
        return rows[:size], len(rows) > size

    # -- receipts ------------------------------------------------------------------------

    async def check_member(self, who: Principal, thread_id: int) -> None:
        """PermissionDenied unless the user is, or once was, a member of the thread."""
        if thread_id <= 0 or await self.store.get_member(thread_id, who.user.user_id) is None:
            raise PermissionDenied(f"thread {thread_id} is not one of your threads", "NOT_A_MEMBER")

    async def ack(self, acks: Sequence[DeviceAck]) -> None:
        """Delivered cursors; the store clamps each to the last seq its member may see."""
        advances = await self.store.advance_delivered(acks)
        if not advances:
            return
        # One look at each thread's members per flush, not one per member that acked: a
        # group's flush holds an advance from nearly every member. Large groups have no
        # receipt audience, and their members' profiles are not read at all.
        members: dict[int, list[int]] = {}
        told: list[tuple[Advance, list[int]]] = []
        for a in advances:
            ids = members.get(a.thread_id)
            if ids is None:
                ids = members[a.thread_id] = await self._receipt_members(a.thread_id)
            audience = [i for i in ids if i != a.user_id]
            if audience:
                told.append((a, audience))
        if not told:
            return
        users = await self.store.get_users([a.user_id for a, _ in told])
        deliveries = [
            Delivery(
                Receipt(
                    a.thread_id,
                    public(users[a.user_id]),
                    ReceiptKind.DELIVERED,
                    a.seq,
                    datetime.now().astimezone(),
                ),
                user_ids=audience,
            )
            for a, audience in told
        ]
        await self.fanout.deliver(deliveries)

    async def _receipt_audience(self, thread_id: int, user_id: int) -> list[int]:
        return [i for i in await self._receipt_members(thread_id) if i != user_id]

    async def _receipt_members(self, thread_id: int) -> list[int]:
        """Who is told of a member's receipts in a thread (the member is left out by callers)."""
        try:
            kind = await self._kind(thread_id)
        except NotFound:
            return []
        ids = await self.audience(thread_id, kind)
        if kind is ThreadKind.GROUP and len(ids) > self.settings.presence_push_group_size:
            return []  # large groups: per-member receipts are read with GetThread
        return ids

    async def mark_read(self, who: Principal, cursor: Cursor) -> None:
        thread, me = await self.member(who, cursor.thread_id)
        hi = me.last_visible(thread.last_seq)
        if cursor.seq < 0 or cursor.seq > hi:
            raise InvalidArgument(
                f"read seq {cursor.seq} is outside thread {cursor.thread_id} (last is {hi})",
                "BAD_CURSOR",
            )
        # A read cursor never moves back: an older Read (from a slower device) is a no-op.
        if not await self.store.advance_read(who.user.user_id, cursor.thread_id, cursor.seq):
            return
        receipt = Receipt(
            cursor.thread_id, who.user, ReceiptKind.READ, cursor.seq, datetime.now().astimezone()
        )
        deliveries = [
            Delivery(
                ReadCursor(cursor), user_ids=(who.user.user_id,), exclude_device_id=who.device_id
            )
        ]
        audience = await self._receipt_audience(cursor.thread_id, who.user.user_id)
        if audience:
            deliveries.append(Delivery(receipt, user_ids=audience))
        await self.fanout.deliver(deliveries)

    # -- ephemeral -----------------------------------------------------------------------

    async def relay_typing(self, who: Principal, thread_id: int, active: bool) -> None:
        thread, _ = await self.active_member(who, thread_id)
        event = Typing(thread_id, who.user, active)
        if thread.kind is ThreadKind.DIRECT:
            others = [
                u for u in await self.audience(thread_id, thread.kind) if u != who.user.user_id
            ]
            if others:
                # Not to someone blocked or blocking, either way.
                links = await self.store.block_links([who.user.user_id])
                others = [u for u in others if u not in links.get(who.user.user_id, set())]
            if not others:
                return
            delivery = Delivery(event, user_ids=others)
        else:
            delivery = Delivery(event, thread_id=thread_id, exclude_device_id=who.device_id)
        await self.fanout.deliver([delivery])

    async def user_groups(self, user_id: int) -> list[int]:
        return await self.store.user_groups(user_id)

    async def users(self, ids: Sequence[int]) -> dict[int, User]:
        return {k: public(v) for k, v in (await self.store.get_users(ids)).items()}

    def forget_user(self, user_id: int) -> None:
        """An account was deleted: drop what is cached about it (its names, its face)."""
        self._acting.pop(user_id, None)
        for name in [k for k, v in self._ids.items() if v == user_id]:
            del self._ids[name]

    async def acting_user(self, user_id: int) -> User | None:
        """The user a socket server acts for, cached for a few seconds.

        Every internal call names its user by id; reading the row each time cost more than
        the send itself on PostgreSQL. A renamed user's new display name shows on their
        messages within ACTING_TTL seconds.
        """
        now = time.monotonic()
        hit = self._acting.get(user_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        user = (await self.users([user_id])).get(user_id)
        if user is not None:
            _remember(self._acting, user_id, (now + ACTING_TTL, user))
        return user


MIN_MUTE = timedelta(seconds=1)
MAX_MUTE = timedelta(days=3653)


def _muted(member: MemberRow) -> bool:
    return member.muted_until is not None and member.muted_until > datetime.now(UTC)


def _mute_end(member: MemberRow) -> datetime | None:
    """When a member's mute ends; None while muted forever, or not muted."""
    until = member.muted_until
    return until if _muted(member) and until is not None and until < MUTED_FOREVER else None


CACHE_LIMIT = 200_000
# A socket server hands over at most a few hundred sends of one device at a time.
MAX_SENDS_PER_CALL = 1000
ACTING_TTL = 5.0


def _remember(cache: dict[K, V], key: K, value: V) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _same(stored: Message, new: NewMessage) -> bool:
    """Whether a stored entry is what a send with its key asks for (a retry), or another."""
    if stored.thread_id != new.thread_id:
        return False
    if new.kind.is_event:
        return stored.kind is new.kind and stored.target_seq == new.target_seq
    if new.forward is not None:
        return stored.forwarded
    if new.attachment_ids:
        return tuple(a.attachment_id for a in stored.attachments) == new.attachment_ids
    # An edit or a delete may have changed the text since: the original key still matches.
    return stored.text == new.text or stored.edit_seq > 0 or stored.deleted


def _span(seconds: float) -> str:
    if seconds % 3600 == 0 and seconds >= 3600:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    if seconds % 60 == 0 and seconds >= 60:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode()


def _decode_offset(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
        if not raw.startswith("o"):
            raise ValueError(raw)
        offset = int(raw[1:])
        if offset < 0 or offset > 10_000:
            raise ValueError(raw)
        return offset
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument("page_token is not one this server issued", "BAD_PAGE_TOKEN") from e


def reused(client_msg_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"client_msg_id {client_msg_id!r} was already used for a different message; "
        "the original is kept",
        "CLIENT_MSG_ID_REUSED",
    )
