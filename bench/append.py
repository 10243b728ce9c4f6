"""The SQLite group commit alone: statements, executions and CPU per message of append_messages."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from typing import Any

import sqlalchemy as sa

from message_svc.sqlstore import SqlStore
from message_svc.store import NewMessage
from natter.domain import MessageKind, User


async def measure(pairs: int, batch: int, rounds: int) -> dict[str, float]:
    """`rounds` batches of `batch` 64-byte texts over `pairs` direct threads, as a send pays."""
    folder = tempfile.mkdtemp(prefix="natter-append-")
    store = SqlStore(f"sqlite+aiosqlite:///{folder}/natter.db")
    await store.open()
    try:
        users = []
        for i in range(2 * pairs):
            row = await store.create_user(f"u{i}", f"u{i}", None, "x")
            users.append(User(row.user_id, row.username, row.display_name))
        threads = [
            await store.direct_thread(users[2 * i].user_id, users[2 * i + 1].user_id)
            for i in range(pairs)
        ]
        made = 0

        def next_batch() -> list[NewMessage]:
            nonlocal made
            out = []
            for k in range(batch):
                i = k % pairs
                made += 1
                out.append(
                    NewMessage(
                        threads[i],
                        users[2 * i],
                        1,
                        f"c{made}",
                        MessageKind.TEXT,
                        "x" * 64,
                        notify=True,
                        peer_id=users[2 * i + 1].user_id,
                    )
                )
            return out

        for _ in range(20):  # warm: statements compiled, pages cached
            await store.append_messages(next_batch())
        counts = {"statements": 0, "executions": 0}
        assert store._sync_engine is not None, "the writer thread needs a file database"

        def count(*args: Any) -> None:
            parameters, executemany = args[3], args[5]
            counts["statements"] += 1
            counts["executions"] += len(parameters) if executemany else 1

        sa.event.listen(store._sync_engine, "before_cursor_execute", count)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            await store.append_messages(next_batch())
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {
            "statements per batch": counts["statements"] / rounds,
            "executions per batch": counts["executions"] / rounds,
            "CPU-ms per message": cpu / (rounds * batch) * 1e3,
            "wall-ms per batch": wall / rounds * 1e3,
        }
    finally:
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=20, help="direct threads (default 20)")
    p.add_argument("--batch", type=int, default=40, help="messages per commit (default 40)")
    p.add_argument("--rounds", type=int, default=200, help="commits measured (default 200)")
    args = p.parse_args(argv)
    figures = asyncio.run(measure(args.pairs, args.batch, args.rounds))
    for name, value in figures.items():
        print(f"{name:<24} {value:.3f}")


if __name__ == "__main__":
    main()
