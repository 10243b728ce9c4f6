"""The message log in MongoDB through PyMongo's AsyncMongoClient: gap-free seqs without transactions.

One collection, `messages`, one document per entry, with two unique indexes:

- `thread_seq` on (t, s): the sequence allocator. An entry is inserted with seq = the
  thread's last + 1; a concurrent writer that took that seq makes the insert fail with a
  duplicate key, and the writer reads the last seq again and retries. Nothing is reserved
  before the insert, so a crash between reading the last seq and inserting leaves nothing
  behind: no counter ahead of the log, hence no gap; and the index forbids two entries
  with one seq, hence no duplicate.
- `sender_key` on (u, c): a (sender, client_msg_id) is stored once, forever; a retried send
  finds the original.

A run of one thread is one ordered `insert_many`: on a crash a prefix of it is stored (the
seqs still gap-free), and the caller's retry with the same keys finds that prefix and
appends the rest. Writes use write concern majority with journaling: an entry is
acknowledged only once a majority of the replica set has it on disk (FerretDB, which the
tests run, ignores write concern; its backend's fsync is its durability).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern

from message_svc.store import Appended, LogEntry, MemberChange
from natter.domain import Message, MessageKind, Role, SystemEvent, SystemKind, User
from natter.ids import new_msg_id

DUPLICATE_KEY = 11000
NOT_IMPLEMENTED = 238
# A hook the crash tests use: awaited after the last seq is read and before the insert.
AllocateHook = Callable[[int, int], Awaitable[None]]
Doc = dict[str, Any]


def _now() -> datetime:
    """Now, to the millisecond BSON keeps, so what is returned equals what is read back."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _user_doc(u: User) -> Doc:
    # A subdocument, not an array: FerretDB v1 stores no arrays nested in arrays.
    return {"i": u.user_id, "n": u.username, "d": u.display_name}


def _user_of(d: Doc) -> User:
    return User(d["i"], d["n"], d["d"])


def _system_doc(event: SystemEvent | None) -> Doc | None:
    if event is None:
        return None
    return {
        "kind": event.kind.value,
        "actor": _user_doc(event.actor),
        "users": [_user_doc(u) for u in event.users],
        "title": event.title,
    }


def _system_of(doc: Doc | None) -> SystemEvent | None:
    if not doc:
        return None
    return SystemEvent(
        kind=SystemKind(doc["kind"]),
        actor=_user_of(doc["actor"]),
        users=tuple(_user_of(u) for u in doc["users"]),
        title=doc["title"],
    )


def entry_id(thread_id: int, seq: int) -> str:
    """An entry's `_id`, "thread:seq": unique like `thread_seq`, and what FerretDB v1 seeks on.

    FerretDB v1 uses no secondary index, and of filters pushes down to its backend only
    equality on a string or ObjectId `_id`: reads of known entries (a thread list's
    previews, the texts of edits, a send's answer) go by `_id` (docs/deployment.md).
    """
    return f"{thread_id}:{seq}"


def _doc(e: LogEntry, seq: int, now: datetime) -> Doc:
    return {
        "_id": entry_id(e.thread_id, seq),
        "t": e.thread_id,
        "s": seq,
        "m": new_msg_id(int(now.timestamp() * 1000)),
        "u": e.sender.user_id,
        "un": e.sender.username,
        "dn": e.sender.display_name,
        "d": e.sender_device_id,
        "c": e.client_msg_id,
        "k": e.kind.value,
        "x": e.text,
        "y": _system_doc(e.system),
        "g": e.target_seq,
        "p": e.payload,
        "n": e.notify,
        "mc": [_change_doc(ch) for ch in e.changes],
        "gt": e.title,
        "ts": now,
    }


def stored_doc(m: Message, payload: str | None) -> Doc:
    """The log's entry for a message an SQL store already holds (`natter move-to-log`).

    Its id, time and body are the stored row's; it queues no push and carries no group
    change (the SQL side applied both when the message was sent).
    """
    return {
        "_id": entry_id(m.thread_id, m.seq),
        "t": m.thread_id,
        "s": m.seq,
        "m": m.msg_id,
        "u": m.sender.user_id,
        "un": m.sender.username,
        "dn": m.sender.display_name,
        "d": m.sender_device_id,
        "c": m.client_msg_id,
        "k": m.kind.value,
        "x": m.emoji if m.kind is MessageKind.REACTION else m.text,
        "y": _system_doc(m.system),
        "g": m.target_seq,
        "p": payload,
        "n": False,
        "mc": [],
        "gt": None,
        "ts": m.create_time.replace(microsecond=m.create_time.microsecond // 1000 * 1000),
    }


def gap_doc(thread_id: int, seq: int) -> Doc:
    """An entry standing for a seq whose SQL row was pruned: the log's seqs have no gap.

    Reads skip it, as they skip every entry without an SQL row.
    """
    return {
        "_id": entry_id(thread_id, seq),
        "t": thread_id,
        "s": seq,
        "m": "",
        "u": 0,
        "un": "",
        "dn": "",
        "d": 0,
        "c": f"pruned:{thread_id}:{seq}",
        "k": MessageKind.SYSTEM.value,
        "x": "",
        "y": None,
        "g": 0,
        "p": None,
        "n": False,
        "mc": [],
        "gt": None,
        "ts": _now(),
    }


def _change_doc(ch: MemberChange) -> Doc:
    role = ch.role.value if ch.role is not None else None
    return {"u": ch.user_id, "r": role, "j": ch.join, "l": ch.leave, "f": ch.full_history}


def _change_of(d: Doc) -> MemberChange:
    role = Role(d["r"]) if d.get("r") is not None else None
    return MemberChange(d["u"], role=role, join=d["j"], leave=d["l"], full_history=d["f"])


@dataclass(frozen=True, slots=True)
class Logged:
    """An entry as the log holds it: the message, and what the SQL side derives from it."""

    message: Message
    payload: str | None
    notify: bool
    changes: tuple[MemberChange, ...] = ()
    title: str | None = None


def logged_of(d: Doc) -> Logged:
    changes = tuple(_change_of(c) for c in d.get("mc") or ())
    return Logged(message_of(d), d.get("p"), bool(d.get("n")), changes, d.get("gt"))


def message_of(d: Doc) -> Message:
    kind = MessageKind(d["k"])
    text, emoji = (d["x"], "") if kind is not MessageKind.REACTION else ("", d["x"])
    created: datetime = d["ts"]
    return Message(
        thread_id=d["t"],
        seq=d["s"],
        msg_id=d["m"],
        sender=User(d["u"], d["un"], d["dn"]),
        sender_device_id=d["d"],
        client_msg_id=d["c"],
        kind=kind,
        text=text,
        create_time=created.astimezone(UTC),
        system=_system_of(d.get("y")),
        target_seq=d.get("g", 0),
        emoji=emoji,
    )


class MongoMessageLog:
    """The `MessageLog` on a MongoDB (or MongoDB-wire) server; the database is the URL's."""

    def __init__(
        self, url: str, *, database: str = "natter", after_allocate: AllocateHook | None = None
    ) -> None:
        self.url = url
        self._database = database
        self._after_allocate = after_allocate
        self._client: AsyncMongoClient[Doc] | None = None
        self._coll: AsyncCollection[Doc] | None = None
        self._ferretdb = False

    async def open(self) -> None:
        client: AsyncMongoClient[Doc] = AsyncMongoClient(
            self.url, tz_aware=True, serverSelectionTimeoutMS=10_000
        )
        db = client.get_default_database(self._database)
        coll = db.get_collection(
            "messages",
            codec_options=CodecOptions(tz_aware=True, tzinfo=UTC),
            write_concern=WriteConcern(w="majority", j=True),
        )
        await coll.create_index(
            [("t", ASCENDING), ("s", ASCENDING)], unique=True, name="thread_seq"
        )
        await coll.create_index(
            [("u", ASCENDING), ("c", ASCENDING)], unique=True, name="sender_key"
        )
        info = await db.command("buildInfo")
        self._ferretdb = "ferretdbVersion" in info
        self._client, self._coll = client, coll

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = self._coll = None

    @property
    def collection(self) -> AsyncCollection[Doc]:
        assert self._coll is not None, "MongoMessageLog is not open"
        return self._coll

    # -- writes ----------------------------------------------------------------------------

    async def append(
        self,
        entries: Sequence[LogEntry],
        *,
        existing: dict[tuple[int, str], Message] | None = None,
    ) -> list[Appended]:
        """Append; `existing`: the keys' stored originals, when the caller looked them up.

        A key stored by a concurrent writer after that lookup still answers with the
        original: the insert meets `sender_key` and `_resolve_conflict` finds it.
        """
        out: list[Appended | None] = [None] * len(entries)
        if existing is None:
            keys = list(dict.fromkeys((e.sender.user_id, e.client_msg_id) for e in entries))
            existing = await self.find_keys(keys)
        first: dict[tuple[int, str], int] = {}
        per_thread: dict[int, list[int]] = defaultdict(list)
        for i, e in enumerate(entries):
            key = (e.sender.user_id, e.client_msg_id)
            if key in existing:
                out[i] = Appended(existing[key], True)
            elif key not in first:
                first[key] = i
                per_thread[e.thread_id].append(i)
        for thread_id, idxs in sorted(per_thread.items()):
            stored = await self._append_run(thread_id, [entries[i] for i in idxs])
            for i, a in zip(idxs, stored, strict=True):
                out[i] = a
        for i, e in enumerate(entries):
            if out[i] is None:  # repeated inside this run: the first one's answer
                original = out[first[(e.sender.user_id, e.client_msg_id)]]
                assert original is not None
                out[i] = Appended(original.message, True)
        return [a for a in out if a is not None]

    async def _append_run(self, thread_id: int, pending: list[LogEntry]) -> list[Appended]:
        """Insert one thread's entries at last + 1, …; retry what a conflict stopped."""
        coll = self.collection
        done: list[Appended] = []
        while pending:
            last = await self._last_seq(thread_id)
            if self._after_allocate is not None:
                await self._after_allocate(thread_id, last + 1)
            now = _now()
            docs = [_doc(e, last + 1 + k, now) for k, e in enumerate(pending)]
            try:
                await coll.insert_many(docs, ordered=True)
            except BulkWriteError as err:
                inserted = int(err.details.get("nInserted", 0))
                errors = err.details.get("writeErrors") or [{}]
                if errors[0].get("code") != DUPLICATE_KEY:
                    raise
                done += [Appended(message_of(d), False) for d in docs[:inserted]]
                pending = pending[inserted:]
                await self._resolve_conflict(pending, done)
                continue
            except DuplicateKeyError:
                await self._resolve_conflict(pending, done)
                continue
            done += [Appended(message_of(d), False) for d in docs]
            pending = []
        return done

    async def _resolve_conflict(self, pending: list[LogEntry], done: list[Appended]) -> None:
        """The first pending entry hit a unique index: its key stored already, or its seq taken.

        A stored key (another writer's copy of a retried send) answers as a duplicate; a
        taken seq needs nothing: the next round reads the last seq again.
        """
        e = pending[0]
        found = await self.collection.find_one({"u": e.sender.user_id, "c": e.client_msg_id})
        if found is not None:
            done.append(Appended(message_of(found), True))
            del pending[0]
        else:
            await asyncio.sleep(0)  # let the writer that took the seq go on

    async def find_keys(self, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], Message]:
        """The stored originals of (sender, client_msg_id) keys."""
        out: dict[tuple[int, str], Message] = {}
        by_sender: dict[int, list[str]] = defaultdict(list)
        for sender, cmid in keys:
            by_sender[sender].append(cmid)
        for sender, cmids in by_sender.items():
            for start in range(0, len(cmids), 500):
                query = {"u": sender, "c": {"$in": cmids[start : start + 500]}}
                async for d in self.collection.find(query):
                    m = message_of(d)
                    out[(m.sender.user_id, m.client_msg_id)] = m
        return out

    async def resign(self, user: User) -> None:
        """Sign a user's entries with their current name (a deleted account's, on erasure)."""
        await self.collection.update_many(
            {"u": user.user_id}, {"$set": {"un": user.username, "dn": user.display_name}}
        )

    # -- reads -----------------------------------------------------------------------------

    async def _last_seq(self, thread_id: int) -> int:
        d = await self.collection.find_one(
            {"t": thread_id}, projection={"s": 1}, sort=[("s", DESCENDING)]
        )
        return int(d["s"]) if d is not None else 0

    async def last_seqs(self, thread_ids: Sequence[int]) -> dict[int, int]:
        return {tid: await self._last_seq(tid) for tid in dict.fromkeys(thread_ids)}

    async def heads(self) -> dict[int, int]:
        """Every thread's last seq in the log, in one pass (the repair at start).

        `$max` of the seqs; a server without that accumulator (FerretDB v1) counts the
        entries instead, which is the same number: seqs are 1..n with no gap and the log
        never drops an entry.
        """
        for acc in ({"$max": "$s"}, {"$sum": 1}):
            try:
                cursor = await self.collection.aggregate([{"$group": {"_id": "$t", "s": acc}}])
                return {int(d["_id"]): int(d["s"]) async for d in cursor}
            except OperationFailure as err:
                if err.code != NOT_IMPLEMENTED:
                    raise
        raise AssertionError("unreachable")

    async def read_logged(self, thread_id: int, after_seq: int, upto_seq: int) -> list[Logged]:
        """Entries (after, upto] of one thread with what SQL derives from them, in seq order."""
        if upto_seq <= after_seq:
            return []
        cursor = self.collection.find(
            {"t": thread_id, "s": {"$gt": after_seq, "$lte": upto_seq}}
        ).sort([("t", ASCENDING), ("s", ASCENDING)])
        return [logged_of(d) async for d in cursor]

    async def read(
        self, thread_id: int, after_seq: int, before_seq: int, limit: int, newest: bool
    ) -> list[Message]:
        rows = await self.read_page(thread_id, after_seq, before_seq, limit, newest)
        return [e.message for e in rows]

    async def read_page(
        self,
        thread_id: int,
        after_seq: int,
        before_seq: int,
        limit: int,
        newest: bool,
        *,
        skip_kinds: Sequence[MessageKind] = (),
    ) -> list[Logged]:
        """A history page: (after, before) of one thread, `limit` from either end, in seq order.

        A seek on `thread_seq` (t, s), forwards or backwards; `skip_kinds` (events, for a
        folded page) is a filter on the entries the seek walks.
        """
        if limit <= 0:
            return []
        seq: Doc = {"$gt": after_seq}
        if before_seq > 0:
            seq["$lt"] = before_seq
        query: Doc = {"t": thread_id, "s": seq}
        if skip_kinds:
            query["k"] = {"$nin": [k.value for k in skip_kinds]}
        cursor = (
            self.collection.find(query)
            .sort([("t", ASCENDING), ("s", DESCENDING if newest else ASCENDING)])
            .limit(limit)
        )
        rows = [logged_of(d) async for d in cursor]
        if newest:
            rows.reverse()
        return rows

    async def read_after(self, ranges: Sequence[tuple[int, int, int]], limit: int) -> list[Message]:
        return [e.message for e in await self.read_spans(ranges, limit)]

    async def read_spans(self, ranges: Sequence[tuple[int, int, int]], limit: int) -> list[Logged]:
        """Sync: (after, upto] of each (thread, after, upto), in order, `limit` in all."""
        out: list[Logged] = []
        for thread_id, after, upto in ranges:
            if len(out) >= limit:
                break
            if upto <= after:
                continue
            cursor = (
                self.collection.find({"t": thread_id, "s": {"$gt": after, "$lte": upto}})
                .sort([("t", ASCENDING), ("s", ASCENDING)])
                .limit(limit - len(out))
            )
            out.extend([logged_of(d) async for d in cursor])
        return out

    async def read_ids(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Logged]:
        """Known entries by (thread, seq), by `_id`.

        MongoDB: `$in`, 500 to a query (the `_id` index). FerretDB v1 pushes down `_id`
        equality but not `$in` (it would decode the whole collection), so there it is one
        equality lookup per entry, 50 at a time.
        """
        ids = sorted({entry_id(tid, seq) for tid, seq in keys})
        docs: list[Doc] = []
        coll = self.collection
        if self._ferretdb:
            for start in range(0, len(ids), 50):
                found = await asyncio.gather(
                    *(coll.find_one({"_id": i}) for i in ids[start : start + 50])
                )
                docs.extend(d for d in found if d is not None)
        else:
            for start in range(0, len(ids), 500):
                docs.extend(
                    [d async for d in coll.find({"_id": {"$in": ids[start : start + 500]}})]
                )
        out: dict[tuple[int, int], Logged] = {}
        for d in docs:
            e = logged_of(d)
            out[(e.message.thread_id, e.message.seq)] = e
        # Entries written before `_id` named (thread, seq) have an ObjectId: by `thread_seq`.
        missing: dict[int, list[int]] = defaultdict(list)
        for tid, seq in keys:
            if (tid, seq) not in out:
                missing[tid].append(seq)
        for tid, seqs in missing.items():
            async for d in coll.find({"t": tid, "s": {"$in": sorted(set(seqs))}}):
                e = logged_of(d)
                out[(e.message.thread_id, e.message.seq)] = e
        return out

    async def search(
        self, spans: Sequence[tuple[int, int, int]], words: Sequence[str], kinds: Sequence[int]
    ) -> list[Logged]:
        """Entries of `kinds` in the (thread, first, last) spans holding every word's prefix.

        Words match at the start of a word, case-insensitively, as the SQL indexes match a
        prefix. The scan is restricted to the spans' threads (the `t` prefix of
        `thread_seq` on MongoDB) and their seq ranges; FerretDB v1 scans the collection.
        """
        if not spans or not words:
            return []
        pattern = [{"x": {"$regex": r"(^|[^\w])" + re.escape(w), "$options": "i"}} for w in words]
        either = [{"t": tid, "s": {"$gte": lo, "$lte": hi}} for tid, lo, hi in spans]
        out: list[Logged] = []
        for start in range(0, len(either), 200):
            query: Doc = {
                "$or": either[start : start + 200],
                "k": {"$in": list(kinds)},
                "$and": pattern,
            }
            out.extend([logged_of(d) async for d in self.collection.find(query)])
        return out

    async def explain_read(self, thread_id: int, after_seq: int) -> Doc:
        """The server's plan for a history/sync read (tests check it uses `thread_seq`)."""
        cursor = (
            self.collection.find({"t": thread_id, "s": {"$gt": after_seq}})
            .sort([("t", ASCENDING), ("s", ASCENDING)])
            .limit(50)
        )
        return await cursor.explain()

    async def explain(self, read: str, thread_id: int) -> Doc:
        """The server's plan for one of the reads the split store makes (tests check them).

        `read`: "newest" (the last history page), "folded" (a page without events),
        "ids" (entries by `_id`), "search" (a word in one thread's span).
        """
        coll = self.collection
        if read == "newest":
            cursor = coll.find({"t": thread_id, "s": {"$gt": 0}}).sort(
                [("t", ASCENDING), ("s", DESCENDING)]
            )
        elif read == "folded":
            cursor = coll.find(
                {"t": thread_id, "s": {"$gt": 0}, "k": {"$nin": [MessageKind.EDIT.value]}}
            ).sort([("t", ASCENDING), ("s", ASCENDING)])
        elif read == "ids":
            ids = [entry_id(thread_id, 1), entry_id(thread_id, 2)]
            cursor = coll.find({"_id": ids[0] if self._ferretdb else {"$in": ids}})
        elif read == "search":
            cursor = coll.find(
                {
                    "$or": [{"t": thread_id, "s": {"$gte": 1, "$lte": 1 << 30}}],
                    "k": {"$in": [MessageKind.TEXT.value]},
                    "$and": [{"x": {"$regex": "(^|[^\\w])word", "$options": "i"}}],
                }
            )
        else:
            raise ValueError(read)
        return await cursor.limit(50).explain()
