"""`natter move-to-log`: an SQL store's messages copied into an empty MongoDB message log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from message_svc.mongolog import Doc, MongoMessageLog, gap_doc, stored_doc
from message_svc.sqlstore import SqlStore
from natter.errors import FailedPrecondition

PAGE = 1000  # rows read and entries inserted at a time


@dataclass(frozen=True, slots=True)
class Moved:
    """What a move did: threads and entries copied, seqs of pruned rows filled, rows emptied."""

    threads: int
    entries: int
    gaps: int
    stripped: int


async def move_to_log(
    store: SqlStore, log: MongoMessageLog, progress: Callable[[int, int], None] | None = None
) -> Moved:
    """Copy every thread's entries into the log, then empty their bodies in SQL.

    Run with the server stopped. The log ends up as if the split store had written it: one
    entry per seq 1..last of each thread, with the rows' ids, times and bodies; seqs whose
    rows were pruned get an entry reads skip. A move that was cut off runs again from where
    it stopped (each page is inserted in order, so the log holds a prefix of each thread
    and the next run starts after it), and a log that is ahead
    of SQL for any thread belongs to another database: nothing is written then. The bodies
    are emptied in SQL only once every thread is in the log.
    """
    lasts = await store.thread_last_seqs()
    heads = await log.heads()
    ahead = [tid for tid, head in heads.items() if head > lasts.get(tid, 0)]
    if ahead:
        raise FailedPrecondition(
            f"the message log {log.url} is ahead of this database for {len(ahead)} threads "
            f"(first: {sorted(ahead)[:5]}): it belongs to another database",
            "MESSAGE_LOG_AHEAD",
        )
    entries = gaps = 0
    for done, (tid, last) in enumerate(sorted(lasts.items()), 1):
        head = heads.get(tid, 0)
        while head < last:
            rows = await store.stored_entries(tid, head, PAGE)
            docs: list[Doc] = []
            for m, payload in rows:
                docs.extend(gap_doc(tid, seq) for seq in range(head + 1, m.seq))
                gaps += m.seq - head - 1
                docs.append(stored_doc(m, payload))
                head = m.seq
            if not rows:  # the newest rows were pruned too
                docs = [gap_doc(tid, seq) for seq in range(head + 1, last + 1)]
                gaps += len(docs)
                head = last
            await _insert(log, docs)
            entries += len(rows)
        if progress is not None:
            progress(done, len(lasts))
    stripped = 0
    for tid in sorted(lasts):
        stripped += await store.strip_bodies(tid)
    return Moved(len(lasts), entries, gaps, stripped)


async def _insert(log: MongoMessageLog, docs: list[Doc]) -> None:
    """Insert in seq order: a move cut off leaves a prefix, which the next run starts after."""
    if docs:
        await log.collection.insert_many(docs, ordered=True)
