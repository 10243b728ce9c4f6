"""The split store: the message log in MongoDB, everything else (and the thread rows) in SQL.

`SplitStore` is a `SqlStore` whose appends go through a `MongoMessageLog` first:

1. SQL checks (membership, blocks, a deleted peer, the rich-message rules), read in SQL;
   the texts a reply quotes or a forward copies are read from the log just before;
2. the log append: gap-free seqs, idempotent by (sender, client_msg_id) forever, durable
   (write concern majority, journaled) before it returns;
3. one SQL transaction that moves `threads.last_seq` over what the log holds, writing for
   exactly the seqs it moves over a narrow row per entry (ids, sender, kind, time, target:
   no text, system event or payload), the folded state of events (edit and delete seqs,
   reactions), attachment links, member rows touched and push jobs queued.

Reads take the bodies from the log: history pages and sync read the entries there (bounded
by the thread row) and fold in SQL's rows; the thread list's previews, a send's answer and
search hits get theirs by `_id`. Search filters the log within what the user may see.

The log is the truth; everything step 3 writes is derived from it and rebuilt from it: at
start (`repair`) and whenever an append finds the thread row behind the log, the missing
span is read back from the log and applied in seq order. A crash between steps 2 and 3
therefore loses nothing acknowledged (the sender was not answered; a retry finds its key
in the log and runs step 3), and a thread row never points past the log (it only moves up
to seqs read from it). docs/architecture.md, "The message log on MongoDB", has the why.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from message_svc import schema as t
from message_svc.mongolog import Logged, MongoMessageLog
from message_svc.sqlstore import (
    _SENT,
    _SEQ_FOR_UPDATE,
    _TOUCH,
    SqlStore,
    _active,
    _barred,
    _check_group,
    _fold,
    _message,
    _message_select,
    _pairs,
    _payload_of,
    _Prepared,
    _queue_pushes,
    _Rich,
    member_changes,
    utcnow,
)
from message_svc.store import (
    DELETED_NAME,
    Appended,
    LogEntry,
    MemberChange,
    NewMessage,
    Refusal,
    Refused,
    ThreadSummary,
)
from natter.domain import Message, MessageKind, Role, ThreadKind, User
from natter.errors import FailedPrecondition, NotFound
from natter.metrics import NO_METRICS, Metrics

logger = logging.getLogger(__name__)

# Where a member change takes effect before its system message has a seq: the rows are
# written with it and set to the seq the log gave, in the same SQL transaction.
_PENDING = -1
Key = tuple[int, str]


class SplitStore(SqlStore):
    """A SqlStore whose message log is a MongoDB collection; SQL holds what derives from it.

    The bodies of messages are in the log only; prune_messages (the canary's) removes SQL's
    rows and leaves the append-only log as it is (reads skip entries without a row).

    `kill_after_appends`: a fault hook for the crash tests, n > 0 makes the process SIGKILL
    itself after its n-th log append and before the SQL transaction that follows it.
    """

    def __init__(
        self,
        url: str,
        log: MongoMessageLog,
        *,
        pool_size: int = 5,
        metrics: Metrics = NO_METRICS,
        kill_after_appends: int = 0,
    ) -> None:
        super().__init__(url, pool_size=pool_size, metrics=metrics)
        self.log = log
        self._kill_after = kill_after_appends
        self._appends = 0

    async def open(self) -> None:
        await super().open()
        try:
            await self.log.open()
            repaired = await self.repair()
        except BaseException:
            await self.close()
            raise
        if repaired:
            logger.warning("moved %d thread rows up to the message log", len(repaired))

    async def close(self) -> None:
        await self.log.close()
        await super().close()

    # -- consistency -------------------------------------------------------------------

    async def repair(self) -> dict[int, tuple[int, int]]:
        """Move every thread row behind the log up to it; {thread: (from, to)} moved."""
        heads = await self.log.heads()
        th = t.threads
        async with self._read() as conn:
            rows = (await conn.execute(sa.select(th.c.id, th.c.last_seq))).all()
        ahead = [int(tid) for tid, last in rows if int(last) > heads.get(int(tid), 0)]
        if ahead:
            # Never serve on such a pair: the log would hand out seqs SQL has already used.
            raise FailedPrecondition(
                f"{len(ahead)} threads (first: {ahead[:5]}) are further in SQL than in the "
                f"message log {self.log.url}: not the log this database was written with",
                "MESSAGE_LOG_BEHIND",
            )
        moved: dict[int, tuple[int, int]] = {}
        for tid, last in rows:
            head = heads.get(int(tid), 0)
            if head > int(last):
                await self._catch_up({int(tid): (int(last), head, [])})
                moved[int(tid)] = (int(last), head)
        return moved

    async def _catch_up(
        self, spans: dict[int, tuple[int, int, Sequence[Logged]]], answers: Sequence[Key] = ()
    ) -> dict[Key, Message]:
        """Apply the log to SQL, one transaction for every thread of `spans`.

        `spans`: thread -> (its row's last seq read before, the seq to move it to, the
        entries just appended, not read back). What lies between the row and those entries
        is read from the log. The row only moves up, so what the transaction finds is never
        lower than what was read before. Returns the stored form of the entries and of the
        `answers` keys (shaped and folded as the SQL store answers).
        """
        work: dict[int, tuple[list[Logged], int]] = {}
        for tid, (known_last, upto, fresh) in spans.items():
            lo = min((e.message.seq for e in fresh), default=upto + 1)
            gap = await self.log.read_logged(tid, known_last, lo - 1)
            work[tid] = (sorted([*gap, *fresh], key=lambda e: e.message.seq), upto)
        want = {
            (e.message.sender.user_id, e.message.client_msg_id)
            for es, _ in work.values()
            for e in es
        }
        want.update(answers)
        stored = await self._retry(lambda: self._write(lambda conn: _project(conn, work, want)))
        known = {(e.message.thread_id, e.message.seq): e for es, _ in work.values() for e in es}
        return await self._answers(stored, known)

    async def _answers(
        self, stored: dict[Key, Message], known: Mapping[tuple[int, int], Logged]
    ) -> dict[Key, Message]:
        """The stored rows of answered keys with their bodies (the entries at hand, else the log)."""
        filled = await self._bodies(list(stored.values()), known)
        return {(m.sender.user_id, m.client_msg_id): m for m in filled}

    def _fault(self) -> None:
        self._appends += 1
        if self._kill_after and self._appends >= self._kill_after:
            # Straight to the file descriptor: a buffered log line would die with the process.
            os.write(2, f"fault hook: SIGKILL after log append {self._appends}\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)

    # -- messages ----------------------------------------------------------------------

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended | Refused]:
        keys = list(dict.fromkeys((n.sender.user_id, n.client_msg_id) for n in batch))
        existing = await self.log.find_keys(keys)
        # What replies quote and forwards copy: their current text is in the log.
        quoted = {
            k
            for n in batch
            if (n.sender.user_id, n.client_msg_id) not in existing
            for k in (
                *([(n.thread_id, n.reply_to_seq)] if n.reply_to_seq else []),
                *([n.forward] if n.forward is not None else []),
            )
        }
        bodies = await self._full(quoted)
        async with self._read() as conn:
            checked = await conn.run_sync(lambda c: _check(c, batch, existing, bodies))
        entries: list[LogEntry] = []
        where: list[int] = []
        for i, (n, c) in enumerate(zip(batch, checked, strict=True)):
            if isinstance(c, Refused):
                continue
            entries.append(_entry(n, c))
            where.append(i)
        out: list[Appended | Refused | None] = [
            c if isinstance(c, Refused) else None for c in checked
        ]
        if not entries:
            return [x for x in out if x is not None]
        appended = await self.log.append(entries, existing=existing)
        self._fault()
        # Which threads the SQL step moves, and how far: every seq the answers name (a
        # duplicate's too: its first send may have died before its SQL step).
        per_thread: dict[int, list[Logged]] = defaultdict(list)
        upto: dict[int, int] = {}
        for e, a in zip(entries, appended, strict=True):
            m = a.message
            upto[m.thread_id] = max(upto.get(m.thread_id, 0), m.seq)
            if not a.duplicate:
                per_thread[m.thread_id].append(Logged(m, e.payload, e.notify))
        lasts = await self._last_seqs(list(upto))
        answers = [(a.message.sender.user_id, a.message.client_msg_id) for a in appended]
        stored = await self._catch_up(
            {tid: (lasts.get(tid, 0), upto[tid], per_thread[tid]) for tid in upto}, answers
        )
        for i, a in zip(where, appended, strict=True):
            key = (a.message.sender.user_id, a.message.client_msg_id)
            out[i] = Appended(stored.get(key, a.message), a.duplicate)
        return [x for x in out if x is not None]

    # -- reads: entries from the log, what SQL keeps per message folded in ---------------

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
        """A history page read from the log (`thread_seq`), up to the thread row's last seq.

        The row bounds it: entries the log holds past it (a send whose SQL step has not run)
        are not shown until it has, as the SQL store would not show them.
        """
        last = (await self._last_seqs([thread_id])).get(thread_id, 0)
        if before_seq <= 0 or before_seq > last + 1:
            before_seq = last + 1
        skip = [k for k in MessageKind if k.is_event] if folded else []
        entries = await self.log.read_page(
            thread_id, after_seq, before_seq, limit, newest, skip_kinds=skip
        )
        return await self._fold_log(entries, viewer)

    async def messages_after(
        self, ranges: Sequence[tuple[int, int, int]], limit: int, *, viewer: int = 0
    ) -> list[Message]:
        """Sync read from the log: each range up to its thread row's last seq, in order."""
        last = await self._last_seqs([r[0] for r in ranges])
        capped = [
            (tid, after, min(upto, last.get(tid, 0)))
            for tid, after, upto in ranges
            if last.get(tid, 0) > after
        ]
        entries = await self.log.read_spans(capped, limit)
        return await self._fold_log(entries, viewer)

    async def list_threads(
        self, user_id: int, before: tuple[datetime, int] | None, limit: int
    ) -> list[ThreadSummary]:
        """The SQL store's page; each preview's text comes from the log by `_id`."""
        page = await super().list_threads(user_id, before, limit)
        lasts = [s.last_message for s in page if s.last_message is not None]
        if not lasts:
            return page
        filled = {(m.thread_id, m.seq): m for m in await self._bodies(lasts)}
        return [
            replace(s, last_message=filled[(m.thread_id, m.seq)])
            if (m := s.last_message) is not None
            else s
            for s in page
        ]

    async def search_messages(
        self, user_id: int, words: Sequence[str], thread_id: int, offset: int, limit: int
    ) -> list[Message]:
        """Search the log: every word's prefix, in what the user may see, newest first.

        SQL no longer holds the texts to index, so the log is searched: a filter over the
        user's threads and the seq ranges they may see there, then SQL says which hits are
        current (not deleted, hidden by the user, or replaced by a later edit; an edit's
        hit stands for its target).
        """
        if not words:
            return []
        m, th = t.thread_members, t.threads
        q = (
            sa.select(m.c.thread_id, m.c.first_seq, m.c.left_seq, th.c.last_seq)
            .join(th, th.c.id == m.c.thread_id)
            .where(m.c.owner_id == user_id)
        )
        if thread_id:
            q = q.where(m.c.thread_id == thread_id)
        async with self._read() as conn:
            spans = [
                (
                    int(r.thread_id),
                    int(r.first_seq),
                    min(int(r.last_seq), int(r.left_seq or r.last_seq)),
                )
                for r in await conn.execute(q)
            ]
        spans = [(tid, lo, hi) for tid, lo, hi in spans if hi >= max(lo, 1)]
        kinds = [MessageKind.TEXT.value, MessageKind.ATTACHMENT.value, MessageKind.EDIT.value]
        found = await self.log.search(spans, [w.lower() for w in words], kinds)
        hits = {(e.message.thread_id, e.message.seq): e for e in found}
        targets = {
            (
                e.message.thread_id,
                e.message.target_seq if e.message.kind is MessageKind.EDIT else e.message.seq,
            )
            for e in found
        }
        async with self._read() as conn:
            rows = await _rows(conn, targets)
            rows = await _fold(conn, rows, user_id)
        current = sorted(
            (
                r
                for r in rows
                if not r.deleted
                and not r.hidden
                and r.kind in (MessageKind.TEXT, MessageKind.ATTACHMENT)
                and (r.thread_id, r.edit_seq or r.seq) in hits
            ),
            key=lambda r: (r.thread_id, r.seq),
            reverse=True,
        )
        return await self._bodies(current[offset : offset + limit], hits)

    async def _fold_log(self, entries: Sequence[Logged], viewer: int) -> list[Message]:
        """Log entries with what SQL keeps of them: names, edits, deletes, reactions, hiding.

        An entry without its SQL row (a canary message pruned there) is left out.
        """
        if not entries:
            return []
        keys = [(e.message.thread_id, e.message.seq) for e in entries]
        async with self._read() as conn:
            rows = await _rows(conn, set(keys))
            rows = await _fold(conn, rows, viewer)
        by_key = {(r.thread_id, r.seq): r for r in rows}
        ordered = [by_key[k] for k in keys if k in by_key]
        return await self._bodies(ordered, {k: e for k, e in zip(keys, entries, strict=True)})

    async def _bodies(
        self, rows: Sequence[Message], known: Mapping[tuple[int, int], Logged] | None = None
    ) -> list[Message]:
        """SQL's rows of messages (no text) with their bodies from the log.

        The text is the entry's own, or its last edit's (`edit_seq`, one more `_id`
        lookup); a deleted message, and an edit of one, has none, as in the SQL store.
        """
        got: dict[tuple[int, int], Logged] = dict(known or {})
        want = {(r.thread_id, r.seq) for r in rows}
        want |= {(r.thread_id, r.edit_seq) for r in rows if r.edit_seq and not r.deleted}
        missing = sorted(want - got.keys())
        if missing:
            got.update(await self.log.read_ids(missing))
        edited = {(r.thread_id, r.target_seq) for r in rows if r.kind is MessageKind.EDIT}
        gone: set[tuple[int, int]] = set()
        if edited:
            async with self._read() as conn:
                gone = {(r.thread_id, r.seq) for r in await _rows(conn, edited) if r.deleted}
        out: list[Message] = []
        for r in rows:
            e = got.get((r.thread_id, r.seq))
            if e is None:
                out.append(r)
                continue
            edit = got.get((r.thread_id, r.edit_seq)) if r.edit_seq else None
            out.append(_body(r, e, edit, (r.thread_id, r.target_seq) in gone))
        return out

    async def _full(self, keys: set[tuple[int, int]]) -> dict[tuple[int, int], Message]:
        """Messages with their current text, by (thread, seq): what a reply or forward copies."""
        if not keys:
            return {}
        async with self._read() as conn:
            rows = await _rows(conn, keys)
        return {(m.thread_id, m.seq): m for m in await self._bodies(rows)}

    async def _last_seqs(self, thread_ids: Sequence[int]) -> dict[int, int]:
        th = t.threads
        ids = list(dict.fromkeys(thread_ids))
        out: dict[int, int] = {}
        async with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(th.c.id, th.c.last_seq).where(th.c.id.in_(ids[start : start + 500]))
                )
                out.update((int(r.id), int(r.last_seq)) for r in rows)
        return out

    async def erase_user(self, user_id: int) -> list[int]:
        """Erase in SQL, then sign the account's log entries "Deleted account" too."""
        revoked = await super().erase_user(user_id)
        await self.log.resign(User(user_id, f"~deleted-{user_id}", DELETED_NAME))
        return revoked

    # -- groups ------------------------------------------------------------------------

    async def create_group(
        self, title: str, creator_id: int, member_ids: Sequence[int], event: NewMessage
    ) -> tuple[int, Message]:
        thread_id = await self._write(lambda conn: _new_group(conn, title, creator_id, member_ids))
        entry = _entry(replace(event, thread_id=thread_id), None)
        [appended] = await self.log.append([entry])
        self._fault()
        m = appended.message
        logged = Logged(m, entry.payload, entry.notify)
        stored = await self._catch_up({thread_id: (0, m.seq, [logged])})
        return thread_id, stored.get((m.sender.user_id, m.client_msg_id), m)

    async def change_group(
        self,
        thread_id: int,
        changes: Sequence[MemberChange],
        title: str | None,
        event: NewMessage,
        *,
        max_members: int | None = None,
    ) -> Message:
        """Check under the group's row lock, append the system message, then apply at its seq.

        One SQL transaction is held across the log append: it locks the thread row (changes
        to one group are serialised across processes), writes the changes with their seq
        pending and checks them (a refused change never reaches the log), then, once the
        log has given the system message its seq, sets that seq and moves the thread over
        everything up to it. The rows of a crash between the append and the commit are
        rolled back; the system message stays in the log and is applied on repair.
        """
        entry = replace(_entry(event, None), changes=tuple(changes), title=title)
        async with self._tx() as conn:
            last = await conn.run_sync(
                lambda c: _stage_changes(c, thread_id, changes, title, max_members)
            )
            [appended] = await self.log.append([entry])
            self._fault()
            m = appended.message
            gap = await self.log.read_logged(thread_id, last, m.seq - 1)
            entries = [*gap, Logged(m, entry.payload, entry.notify, entry.changes, title)]
            stored = await conn.run_sync(lambda c: _settle_changes(c, thread_id, m.seq, entries))
        known = {(e.message.thread_id, e.message.seq): e for e in entries}
        answers = await self._answers(stored, known)
        return answers.get((m.sender.user_id, m.client_msg_id), m)


async def _rows(conn: AsyncConnection, keys: set[tuple[int, int]]) -> list[Message]:
    """SQL's rows of messages by (thread, seq): sender, kind, edit and delete, no text."""
    msg = t.messages
    out: list[Message] = []
    todo = sorted(keys)
    for start in range(0, len(todo), 500):
        chunk = set(todo[start : start + 500])
        found = await conn.execute(
            _message_select().where(
                msg.c.thread_id.in_({k[0] for k in chunk}), msg.c.seq.in_({k[1] for k in chunk})
            )
        )
        out.extend(_message(r) for r in _pairs(found, chunk, "thread_id", "seq"))
    return out


def _body(row: Message, entry: Logged, edit: Logged | None, target_gone: bool) -> Message:
    """A message as the SQL store answers it: SQL's row, the log's text, system and payload."""
    m = entry.message
    if row.hidden:
        return replace(row, system=m.system)
    if row.deleted:
        return replace(row, system=m.system, text="", emoji="")
    atts, reply, forwarded = _payload_of(entry.payload)
    text = m.text
    if row.edit_seq and edit is not None:
        text = edit.message.text
    elif m.kind is MessageKind.EDIT and target_gone:
        text = ""
    return replace(
        row,
        text=text,
        emoji=m.emoji,
        system=m.system,
        attachments=atts,
        reply_to=reply,
        forwarded=forwarded,
    )


def _entry(n: NewMessage, prep: _Prepared | None) -> LogEntry:
    return LogEntry(
        thread_id=n.thread_id,
        sender=n.sender,
        sender_device_id=n.sender_device_id,
        client_msg_id=n.client_msg_id,
        kind=prep.kind if prep is not None else n.kind,
        text=prep.text if prep is not None else n.text,
        system=n.system,
        target_seq=n.target_seq,
        payload=prep.payload if prep is not None else None,
        notify=n.notify,
    )


def _check(
    conn: Connection,
    batch: Sequence[NewMessage],
    existing: dict[Key, Message],
    bodies: Mapping[tuple[int, int], Message],
) -> list[Refused | _Prepared | None]:
    """What SQL says of each entry before the log append: refused, prepared, plain or known.

    The same checks as the SQL store's own append, in batch order; a key stored before
    passes unchecked (its answer is the original).
    """
    pairs = list(
        {
            (n.sender.user_id, n.thread_id)
            for n in batch
            if (n.sender.user_id, n.client_msg_id) not in existing
        }
    )
    allowed = _active(conn, pairs)
    barred = _barred(conn, batch, existing, allowed)
    rich: _Rich | None = None
    seen: set[Key] = set()
    out: list[Refused | _Prepared | None] = []
    for n in batch:
        key = (n.sender.user_id, n.client_msg_id)
        if key in existing or key in seen:
            out.append(None)
        elif (n.sender.user_id, n.thread_id) not in allowed:
            out.append(Refused(n.thread_id))
        elif n.peer_id and (n.sender.user_id, n.peer_id) in barred:
            out.append(Refused(n.thread_id, barred[(n.sender.user_id, n.peer_id)]))
        elif n.plain:
            seen.add(key)
            out.append(None)
        else:
            rich = rich or _Rich(conn, bodies)
            prep = rich.prepare(n)
            if isinstance(prep, Refusal):
                out.append(Refused(n.thread_id, prep))
            else:
                seen.add(key)
                out.append(prep)
    return out


def _project(
    conn: Connection, work: dict[int, tuple[list[Logged], int]], want: set[Key]
) -> dict[Key, Message]:
    """Move thread rows over the log's entries, each up to its seq, deriving their rows.

    Threads are locked in id order (concurrent batches cannot deadlock); entries at or
    below a row's last seq were applied by someone else and are skipped. Returns the stored
    form of the `want` keys, as the SQL store answers them.
    """
    now = utcnow()
    for thread_id, (entries, upto) in sorted(work.items()):
        last = conn.execute(_SEQ_FOR_UPDATE, {"tid": thread_id}).scalar_one_or_none()
        if last is None:
            raise NotFound(f"thread {thread_id} does not exist")
        _apply(conn, thread_id, int(last), entries, upto, now)
    return _stored(conn, want)


def _apply(
    conn: Connection,
    thread_id: int,
    last: int,
    entries: Sequence[Logged],
    upto: int,
    now: datetime,
    staged: int = 0,
) -> None:
    """Derive the rows of the entries (last, upto] in seq order; `staged`: a change applied."""
    todo = [e for e in entries if last < e.message.seq <= upto]
    if not todo:
        return
    seqs = [e.message.seq for e in todo]
    if seqs != list(range(last + 1, last + 1 + len(todo))):
        raise AssertionError(f"thread {thread_id}: log entries {seqs} do not follow {last}")
    conn.execute(
        t.messages.insert(),
        [
            dict(
                thread_id=thread_id,
                seq=m.seq,
                msg_id=m.msg_id,
                sender_id=m.sender.user_id,
                sender_device_id=m.sender_device_id,
                client_msg_id=m.client_msg_id,
                kind=m.kind.value,
                # No body: the text, the system event and the payload are the log's.
                text="",
                system=None,
                create_time=m.create_time,
                target_seq=m.target_seq or None,
                payload=None,
            )
            for e in todo
            for m in (e.message,)
        ],
    )
    rich = _Rich(conn, {})
    notify: tuple[int, int] | None = None
    touched = False
    for e in todo:
        m = e.message
        if (e.changes or e.title is not None) and m.seq != staged:
            # A group change whose own transaction died after its append: replayed here.
            member_changes(conn, thread_id, e.changes, e.title, m.seq, now)
        touched = touched or m.kind.is_content
        if e.notify:
            notify = (notify[0] if notify else m.seq, m.seq)
        if not (m.kind.is_event or e.payload):
            continue
        if m.kind.is_event and _target_deleted(conn, thread_id, m.target_seq):
            continue  # a change that lost a race with a delete: an event that changes nothing
        atts, _, _ = _payload_of(e.payload)
        n = NewMessage(
            thread_id=thread_id,
            sender=m.sender,
            sender_device_id=m.sender_device_id,
            client_msg_id=m.client_msg_id,
            kind=m.kind,
            text=m.emoji if m.kind is MessageKind.REACTION else m.text,
            target_seq=m.target_seq,
        )
        rich.apply(_Prepared(m.kind, n.text, attachments=atts), n, m.seq, m.create_time)
    th = t.threads
    conn.execute(
        th.update()
        .where(th.c.id == thread_id, th.c.last_seq < seqs[-1])
        .values(last_seq=seqs[-1], update_time=now)
    )
    if touched:
        conn.execute(_TOUCH, {"threads": [thread_id], "now": now})
    if notify is not None:
        _queue_pushes(conn, {thread_id: notify}, now)


def _target_deleted(conn: Connection, thread_id: int, seq: int) -> bool:
    msg = t.messages
    row = conn.execute(
        sa.select(msg.c.delete_seq).where(msg.c.thread_id == thread_id, msg.c.seq == seq)
    ).first()
    return row is not None and row.delete_seq is not None


def _stored(conn: Connection, keys: set[Key]) -> dict[Key, Message]:
    out: dict[Key, Message] = {}
    todo = sorted(keys)
    for start in range(0, len(todo), 300):
        chunk = set(todo[start : start + 300])
        rows = conn.execute(
            _SENT, {"senders": list({k[0] for k in chunk}), "keys": list({k[1] for k in chunk})}
        )
        for r in _pairs(rows, chunk, "sender_id", "client_msg_id"):
            m = _message(r)
            out[(m.sender.user_id, m.client_msg_id)] = m
    return out


def _new_group(conn: Connection, title: str, creator_id: int, member_ids: Sequence[int]) -> int:
    """The group's rows at seq 0: its creation message comes from the log next."""
    th, m = t.threads, t.thread_members
    now = utcnow()
    res = conn.execute(
        th.insert().values(
            kind=ThreadKind.GROUP.value,
            title=title,
            last_seq=0,
            direct_key=None,
            create_time=now,
            update_time=now,
        )
    )
    thread_id = int(res.inserted_primary_key[0])  # type: ignore[index]
    conn.execute(
        m.insert(),
        [
            dict(
                owner_id=uid,
                thread_id=thread_id,
                role=(Role.ADMIN if uid == creator_id else Role.MEMBER).value,
                nickname="",
                first_seq=1,
                left_seq=None,
                delivered_seq=0,
                read_seq=0,
                create_time=now,
                update_time=now,
            )
            for uid in dict.fromkeys([creator_id, *member_ids])
        ],
    )
    return thread_id


def _stage_changes(
    conn: Connection,
    thread_id: int,
    changes: Sequence[MemberChange],
    title: str | None,
    max_members: int | None,
) -> int:
    """Lock the group, write its changes with the seq pending, check them; the row's last seq."""
    last = conn.execute(_SEQ_FOR_UPDATE, {"tid": thread_id}).scalar_one_or_none()
    if last is None:
        raise NotFound(f"thread {thread_id} does not exist")
    member_changes(conn, thread_id, changes, title, _PENDING, utcnow())
    _check_group(conn, thread_id, max_members)
    return int(last)


def _settle_changes(
    conn: Connection, thread_id: int, seq: int, entries: Sequence[Logged]
) -> dict[Key, Message]:
    m = t.thread_members
    conn.execute(
        m.update()
        .where(m.c.thread_id == thread_id, m.c.first_seq == _PENDING)
        .values(first_seq=seq)
    )
    conn.execute(
        m.update().where(m.c.thread_id == thread_id, m.c.left_seq == _PENDING).values(left_seq=seq)
    )
    now = utcnow()
    last = conn.execute(_SEQ_FOR_UPDATE, {"tid": thread_id}).scalar_one()
    _apply(conn, thread_id, int(last), entries, seq, now, staged=seq)
    conn.execute(
        m.update().where(m.c.thread_id == thread_id, m.c.left_seq.is_(None)).values(update_time=now)
    )
    return _stored(conn, {(e.message.sender.user_id, e.message.client_msg_id) for e in entries})
