"""The `MessageLog` on the SQL store: today's transactional log, seen through the log's seam.

In the SQL store the log and the thread rows are one transaction (`SqlStore.append_messages`
bumps `threads.last_seq`, inserts, touches member rows); this adapter presents that same
code as a `MessageLog`, so the one log contract suite (tests/test_message_log.py) holds the
SQL log and the MongoDB log (message_svc/mongolog.py) to the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from message_svc.store import Appended, LogEntry, MessageStore, NewMessage, Refused, ThreadStore
from natter.domain import Message
from natter.errors import PermissionDenied


class SqlLogStore(MessageStore, ThreadStore, Protocol):
    """What the adapter needs of the SQL store."""


class SqlMessageLog:
    """Appends and reads through the SQL store's own methods (it is opened by its owner)."""

    def __init__(self, store: SqlLogStore) -> None:
        self.store = store

    async def open(self) -> None:
        """The SQL store is opened and closed by the server that owns it."""

    async def close(self) -> None:
        """See `open`."""

    async def append(self, entries: Sequence[LogEntry]) -> list[Appended]:
        batch = [
            NewMessage(
                thread_id=e.thread_id,
                sender=e.sender,
                sender_device_id=e.sender_device_id,
                client_msg_id=e.client_msg_id,
                kind=e.kind,
                text=e.text,
                system=e.system,
                target_seq=e.target_seq,
            )
            for e in entries
        ]
        out: list[Appended] = []
        for r in await self.store.append_messages(batch):
            if isinstance(r, Refused):
                raise PermissionDenied(f"thread {r.thread_id}: {r.reason.value}")
            out.append(r)
        return out

    async def read(
        self, thread_id: int, after_seq: int, before_seq: int, limit: int, newest: bool
    ) -> list[Message]:
        return await self.store.list_messages(thread_id, after_seq, before_seq, limit, newest)

    async def read_after(self, ranges: Sequence[tuple[int, int, int]], limit: int) -> list[Message]:
        return await self.store.messages_after(ranges, limit)

    async def last_seqs(self, thread_ids: Sequence[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for tid in dict.fromkeys(thread_ids):
            row = await self.store.get_thread(tid)
            out[tid] = row.last_seq if row is not None else 0
        return out
