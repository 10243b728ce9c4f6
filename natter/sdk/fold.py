"""Folding a thread's log into what people see: edits, deletes and reactions onto messages.

Every entry of a thread's log reaches a device once, in order, but history pages and
replays can bring a message after the events that changed it, or a message already folded
by the server (ListMessages, sync) together with those events. So the fold does not depend
on arrival order: each change carries the seq of the event that made it, and the newest
wins — an edit with a higher seq than the text's, one reaction per member (the one with the
highest seq; an empty emoji removes it), a delete for good. Feeding the same entry twice,
or in any order, gives the same view.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from natter.domain import (
    Attachment,
    Message,
    MessageKind,
    ReplyTo,
    User,
    UserChange,
    UserChangeKind,
)


@dataclass(frozen=True, slots=True)
class View:
    """A message as it stands now, for display."""

    message: Message
    text: str
    attachments: tuple[Attachment, ...]
    edited: bool
    edit_time: datetime | None
    deleted: bool
    hidden: bool
    reactions: dict[int, tuple[User, str]]

    @property
    def thread_id(self) -> int:
        return self.message.thread_id

    @property
    def seq(self) -> int:
        return self.message.seq

    @property
    def kind(self) -> MessageKind:
        return self.message.kind

    @property
    def sender(self) -> User:
        return self.message.sender

    @property
    def reply_to(self) -> ReplyTo | None:
        return self.message.reply_to

    @property
    def forwarded(self) -> bool:
        return self.message.forwarded

    @property
    def counts(self) -> dict[str, int]:
        """How many members reacted with each emoji, most first."""
        return dict(Counter(e for _, e in self.reactions.values()).most_common())


@dataclass
class _Entry:
    base: Message | None = None
    text: tuple[int, str, datetime | None] | None = None  # (edit seq, text, time)
    deleted: bool = False
    reactions: dict[int, tuple[int, User, str]] = field(default_factory=dict)  # by user id
    hidden: bool = False


class Fold:
    """The folded state of every thread a device has seen; feed it every entry it gets."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], _Entry] = {}

    def _entry(self, thread_id: int, seq: int) -> _Entry:
        return self._entries.setdefault((thread_id, seq), _Entry())

    def apply(self, m: Message) -> tuple[int, int] | None:
        """Take one entry of a log; returns the message whose view it changed (if any)."""
        if m.kind.is_event:
            e = self._entry(m.thread_id, m.target_seq)
            if m.kind is MessageKind.EDIT:
                if e.text is None or m.seq > e.text[0]:
                    e.text = (m.seq, m.text, m.create_time)
            elif m.kind is MessageKind.DELETE:
                e.deleted = True
            elif m.kind is MessageKind.REACTION:
                self._react(e, m.sender, m.emoji, m.seq)
            return (m.thread_id, m.target_seq)
        e = self._entry(m.thread_id, m.seq)
        e.base = m if e.base is None or _fresher(m, e.base) else e.base
        if m.edit_seq and (e.text is None or m.edit_seq > e.text[0]):
            e.text = (m.edit_seq, m.text, m.edit_time)
        e.deleted = e.deleted or m.deleted
        e.hidden = e.hidden or m.hidden
        for r in m.reactions:
            self._react(e, r.user, r.emoji, r.seq)
        return (m.thread_id, m.seq)

    @staticmethod
    def _react(e: _Entry, user: User, emoji: str, seq: int) -> None:
        have = e.reactions.get(user.user_id)
        if have is None or seq > have[0]:
            e.reactions[user.user_id] = (seq, user, emoji)

    def change(self, c: UserChange) -> tuple[int, int] | None:
        """Take an entry of the user's own log (delete for me)."""
        if c.kind is not UserChangeKind.HIDE_MESSAGE:
            return None
        self._entry(c.message.thread_id, c.message.seq).hidden = True
        return (c.message.thread_id, c.message.seq)

    def view(self, thread_id: int, seq: int) -> View | None:
        """A message as it stands now; None until the message itself has arrived."""
        e = self._entries.get((thread_id, seq))
        if e is None or e.base is None:
            return None
        base = e.base
        text, edit_time = base.text, base.edit_time
        if e.text is not None and e.text[0] >= base.edit_seq:
            text, edit_time = e.text[1], e.text[2]
        edited = e.text is not None or base.edit_seq > 0
        if e.deleted:
            return View(base, "", (), edited, edit_time, True, e.hidden, {})
        if e.hidden:
            return View(base, "", (), edited, edit_time, False, True, {})
        reactions = {uid: (u, emoji) for uid, (_, u, emoji) in e.reactions.items() if emoji}
        return View(base, text, base.attachments, edited, edit_time, False, False, reactions)

    def thread(self, thread_id: int) -> list[View]:
        """The thread's messages as they stand, in seq order (hidden ones left out)."""
        out = []
        for (t, s), _ in sorted(self._entries.items()):
            if t != thread_id:
                continue
            v = self.view(t, s)
            if v is not None and not v.hidden:
                out.append(v)
        return out


def _fresher(new: Message, old: Message) -> bool:
    """Of two copies of one message, the one folded later (or the first)."""
    return (new.edit_seq, new.delete_seq, len(new.reactions)) >= (
        old.edit_seq,
        old.delete_seq,
        len(old.reactions),
    )
