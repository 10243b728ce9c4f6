"""Blocking and reporting: what a person does about someone they hear from and do not want to.

A block is one-sided and silent. The blocked person can no longer message the blocker in
a direct chat — their sends are refused with RECIPIENT_UNAVAILABLE, exactly as sends to a
deleted account are, so the refusal does not say "blocked" — cannot see the blocker's
online status or last seen (nor the blocker theirs), and cannot add the blocker to groups.
In groups both are in, messages of each still reach the other, as in WhatsApp: clients
hide them using the blocked list. A report copies the messages it is about, so the admins
see them as they were even if they change later.
"""

from __future__ import annotations

from collections.abc import Sequence

from message_svc.accounts import public
from message_svc.contacts import Contacts
from message_svc.limits import KeyedBuckets
from message_svc.messaging import Messaging
from message_svc.store import Store
from natter.domain import Message, MessageKind, Principal, User
from natter.errors import InvalidArgument, NotFound, ResourceExhausted
from natter.settings import Settings

# ReportReason numbers (proto/natter/v1/safety_service.proto): spam ... other.
REASONS = {1: "spam", 2: "harassment", 3: "sexual", 4: "scam", 5: "illegal", 6: "other"}
MAX_REPORT_SEQS = 100
MAX_REPORT_TEXT = 1000
REPORTS_PER_HOUR = 30
# How far back a report on a person looks for their messages in the thread.
REPORT_LOOKBACK = 500


class Safety:
    def __init__(
        self, store: Store, settings: Settings, contacts: Contacts, messaging: Messaging
    ) -> None:
        self.store = store
        self.settings = settings
        self.contacts = contacts
        self.messaging = messaging
        self.reports_per_user = KeyedBuckets(REPORTS_PER_HOUR, 3600.0)

    # -- blocks --------------------------------------------------------------------------

    async def block(self, who: Principal, identifier: str) -> User:
        row = await self.contacts.resolve(identifier)
        if row.user_id == who.user.user_id:
            raise InvalidArgument("you cannot block yourself", "SELF_BLOCK")
        await self.store.block(who.user.user_id, row.user_id)
        return public(row)

    async def unblock(self, who: Principal, identifier: str) -> None:
        row = await self.contacts.resolve(identifier)
        await self.store.unblock(who.user.user_id, row.user_id)

    async def blocked(self, who: Principal, page_size: int, token: str) -> tuple[list[User], str]:
        size = 100 if page_size <= 0 else min(page_size, 1000)
        rows = await self.store.list_blocked(who.user.user_id, token, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return [public(r) for r in rows], (rows[-1].username if more and rows else "")

    # -- reports -------------------------------------------------------------------------

    async def report(
        self,
        who: Principal,
        identifier: str,
        thread_id: int,
        seqs: Sequence[int],
        reason: int,
        text: str,
        block: bool,
    ) -> int:
        if reason not in REASONS:
            raise InvalidArgument(
                f"reason must be one of {', '.join(REASONS.values())} (1-6), not {reason}",
                "BAD_REASON",
            )
        words = text.strip()
        if len(words) > MAX_REPORT_TEXT:
            raise InvalidArgument(
                f"a report's text is at most {MAX_REPORT_TEXT} characters", "TOO_LONG"
            )
        if len(seqs) > MAX_REPORT_SEQS:
            raise InvalidArgument(
                f"at most {MAX_REPORT_SEQS} messages per report", "TOO_MANY_MESSAGES"
            )
        if seqs and thread_id <= 0:
            raise InvalidArgument("messages are named by thread_id and seqs", "NO_THREAD")
        if not identifier.strip() and not seqs:
            raise InvalidArgument("name the user or the messages reported", "NOTHING_REPORTED")
        if not self.reports_per_user.take(str(who.user.user_id)):
            raise ResourceExhausted("too many reports; try again later", "REPORT_RATE_LIMITED")
        messages: list[Message] = []
        if thread_id > 0:
            await self.messaging.member(who, thread_id)  # yours, or it is not reported
            if seqs:
                messages = await self._messages(who, thread_id, seqs)
        subject = await self._subject(who, identifier, messages)
        if thread_id > 0 and not seqs:
            messages = await self._latest_of(who, thread_id, subject.user_id)
        if subject.user_id == who.user.user_id:
            raise InvalidArgument("you cannot report yourself", "SELF_REPORT")
        report_id = await self.store.create_report(
            who.user.user_id, subject.user_id, thread_id, reason, words, messages
        )
        if block:
            await self.store.block(who.user.user_id, subject.user_id)
        return report_id

    async def _messages(self, who: Principal, thread_id: int, seqs: Sequence[int]) -> list[Message]:
        found: list[Message] = []
        for seq in sorted(set(seqs)):
            if seq <= 0:
                raise InvalidArgument("seqs must be positive", "BAD_SEQ")
            rows = await self.messaging.messages_between(who, thread_id, seq - 1, seq + 1)
            if not rows:
                raise NotFound(
                    f"thread {thread_id} has no message {seq} that you can see", "NO_SUCH_MESSAGE"
                )
            found.extend(rows)
        return found

    async def _subject(self, who: Principal, identifier: str, messages: list[Message]) -> User:
        if identifier.strip():
            return public(await self.contacts.resolve(identifier))
        senders = {m.sender.user_id: m.sender for m in messages if m.kind is MessageKind.TEXT}
        if len(senders) != 1:
            raise InvalidArgument(
                "these messages are from several people (or none): name the user reported",
                "NAME_THE_USER",
            )
        return next(iter(senders.values()))

    async def _latest_of(self, who: Principal, thread_id: int, user_id: int) -> list[Message]:
        rows, _ = await self.messaging.list_messages(who, thread_id, 0, 0, REPORT_LOOKBACK)
        theirs = [m for m in rows if m.sender.user_id == user_id and m.kind is MessageKind.TEXT]
        return theirs[-self.settings.report_max_messages :]
