"""Who a burst notifies and with what: one notification per member per thread, by the rules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from natter.domain import (
    Message,
    NotificationPreview,
    PushContext,
    ThreadKind,
    notifies,
)


@dataclass(frozen=True, slots=True)
class Notification:
    """What one member is told about a thread's burst: the newest message and how many."""

    user_id: int
    thread_id: int
    thread_kind: ThreadKind
    title: str
    latest: Message
    count: int
    preview: NotificationPreview


def notifications(
    ctx: PushContext, now: datetime, after_user: int = 0, only_user: int = 0
) -> Iterator[Notification]:
    """The members a burst notifies, by user id, with what to show each.

    A member is skipped when the thread is muted for them, when nothing in the burst is for
    them (their own messages, events about others, kinds that notify nobody), or when they
    have read past it already (on another device, during the grace period). Members up to
    `after_user` were handled before; `only_user` narrows a retry to one member.
    """
    for r in ctx.recipients:
        if r.user_id <= after_user or (only_user and r.user_id != only_user):
            continue
        if r.muted(now):
            continue
        mine = [
            m
            for m in ctx.messages
            if r.sees(m.seq) and m.seq > r.read_seq and notifies(m, r.user_id)
        ]
        if not mine:
            continue
        preview = (
            r.preview if r.preview is not NotificationPreview.UNKNOWN else NotificationPreview.FULL
        )
        yield Notification(
            r.user_id, ctx.thread_id, ctx.kind, ctx.title, mine[-1], len(mine), preview
        )
