"""Search latency over a large store: fills one directly (the real append path, index and
all), then times SearchMessages-shaped queries for random users, by how common the word is.

    python -m bench.search                      # 1,000,000 messages on SQLite (minutes)
    python -m bench.search --messages 20000     # small, as the test suite runs it
    python -m bench.search --database-url postgresql+asyncpg://...   # another engine
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import append_result, fmt, percentile, print_table
from message_svc.sqlstore import SqlStore
from message_svc.store import NewMessage
from natter.domain import MessageKind, User

SYLLABLES = [a + b for a in "bcdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words, key=lambda w: rng.random())


class Zipf:
    """Word ranks drawn with probability ~ 1/rank^s, as words are in real text."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        weights = [1 / (r**s) for r in range(1, n + 1)]
        total = sum(weights)
        acc, self.cdf = 0.0, []
        for w in weights:
            acc += w / total
            self.cdf.append(acc)
        self.rng = rng

    def draw(self) -> int:
        import bisect

        return min(len(self.cdf) - 1, bisect.bisect_left(self.cdf, self.rng.random()))


async def fill(
    store: SqlStore, messages: int, users: int, threads: int, words: list[str], rng: random.Random
) -> tuple[dict[int, list[int]], float]:
    """Users, direct and group threads, then messages in batches through append_messages."""
    from natter.domain import SystemEvent, SystemKind

    people = []
    for i in range(users):
        row = await store.create_user(f"u{i}", f"User {i}", None, "x")
        dev = await store.create_device(row.user_id, "bench", f"tok-{i}-{rng.random()}")
        people.append((User(row.user_id, row.username, row.display_name), dev.device_id))
    members: dict[int, list[int]] = {}
    groups = threads // 5
    for _ in range(threads - groups):
        a, b = rng.sample(range(users), 2)
        tid = await store.direct_thread(people[a][0].user_id, people[b][0].user_id)
        members[tid] = [a, b]
    for _ in range(groups):
        size = rng.randint(5, 20)
        who = rng.sample(range(users), size)
        creator = people[who[0]][0]
        event = NewMessage(
            0,
            creator,
            people[who[0]][1],
            f"g{rng.random()}",
            MessageKind.SYSTEM,
            "",
            SystemEvent(SystemKind.GROUP_CREATED, creator),
        )
        tid, _ = await store.create_group(
            "g", creator.user_id, [people[w][0].user_id for w in who[1:]], event
        )
        members[tid] = who
    zipf = Zipf(len(words), 1.07, rng)
    tids = list(members)
    start = time.perf_counter()
    batch: list[NewMessage] = []
    for n in range(messages):
        tid = rng.choice(tids)
        sender, device = people[rng.choice(members[tid])]
        text = " ".join(words[zipf.draw()] for _ in range(rng.randint(4, 14)))
        batch.append(NewMessage(tid, sender, device, f"m{n}", MessageKind.TEXT, text))
        if len(batch) == 2000:
            await store.append_messages(batch)
            batch = []
    if batch:
        await store.append_messages(batch)
    return {
        t: [people[i][0].user_id for i in m] for t, m in members.items()
    }, time.perf_counter() - start


def _stored_messages(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def _db_size(folder: Path) -> int:
    return sum(os.path.getsize(p) for p in folder.glob("natter.db*"))


async def measure(args: argparse.Namespace) -> list[tuple[str, str]]:
    rng = random.Random(args.seed)
    keep: Path | None = getattr(args, "keep", None)
    folder = keep or Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="natter-search-"))
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    url = args.database_url or f"sqlite+aiosqlite:///{folder / 'natter.db'}"
    reuse = keep is not None and not args.database_url and (folder / "natter.db").exists()
    store = SqlStore(url)
    await store.open()
    try:
        words = vocabulary(args.vocabulary, rng)
        if reuse:  # filled by an earlier run with the same arguments
            stored = await asyncio.to_thread(_stored_messages, folder / "natter.db")
            if stored != args.messages:  # an interrupted fill, or other arguments
                raise SystemExit(f"{folder} holds {stored:,} messages, not {args.messages:,}")
            members, seconds = {0: list(range(1, args.users + 1))}, float("nan")
            members.update({t: [] for t in range(1, args.threads)})
        else:
            members, seconds = await fill(
                store, args.messages, args.users, args.threads, words, rng
            )
        user_ids = sorted({u for us in members.values() for u in us})
        rows: list[tuple[str, str]] = [
            ("store", store.url.get_backend_name()),
            (
                "messages stored",
                f"{args.messages:,} (reused from {folder})"
                if reuse
                else f"{args.messages:,} in {seconds:.1f} s ({fmt(args.messages / seconds)}/s, "
                "index kept by the store)",
            ),
            (
                "users / threads / vocabulary",
                f"{args.users:,} / {len(members):,} / {len(words):,} words (Zipf)",
            ),
        ]
        if store.sqlite and url.startswith("sqlite"):
            size = await asyncio.to_thread(_db_size, folder)
            rows.append(("database size", f"{size / 1e6:.0f} MB"))
        every: list[float] = []
        for rank in (5, 50, 500, 5000):
            word = words[min(rank, len(words) - 1)]
            lat: list[float] = []
            hits = 0
            for _ in range(args.queries):
                uid = rng.choice(user_ids)
                t0 = time.perf_counter()
                found = await store.search_messages(uid, [word], 0, 0, 20)
                lat.append(time.perf_counter() - t0)
                hits += len(found)
            lat.sort()
            every += lat
            rows.append(
                (
                    f"word of rank {rank}: p50 / p99",
                    f"{percentile(lat, 50) * 1e3:.1f} / {percentile(lat, 99) * 1e3:.1f} ms  ({hits / args.queries:.1f} hits/query)",
                )
            )
        two = []
        for _ in range(args.queries):
            uid = rng.choice(user_ids)
            q = [words[rng.randint(0, 200)], words[rng.randint(200, 2000)]]
            t0 = time.perf_counter()
            await store.search_messages(uid, q, 0, 0, 20)
            two.append(time.perf_counter() - t0)
        two.sort()
        every += two
        every.sort()
        rows.append(
            (
                "two words: p50 / p99",
                f"{percentile(two, 50) * 1e3:.1f} / {percentile(two, 99) * 1e3:.1f} ms",
            )
        )
        rows.append(
            (
                "all queries: p50 / p99",
                f"{percentile(every, 50) * 1e3:.1f} / {percentile(every, 99) * 1e3:.1f} ms",
            )
        )
        return rows
    finally:
        await store.close()
        if keep is None:
            import shutil

            await asyncio.to_thread(shutil.rmtree, folder, True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    p.add_argument(
        "--messages", type=int, default=1_000_000, help="messages to store (default 1,000,000)"
    )
    p.add_argument("--users", type=int, default=2000, help="users (default 2000)")
    p.add_argument(
        "--threads",
        type=int,
        default=10_000,
        help="threads, a fifth of them groups (default 10,000)",
    )
    p.add_argument("--vocabulary", type=int, default=20_000, help="distinct words (default 20,000)")
    p.add_argument("--queries", type=int, default=200, help="queries per word class (default 200)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--database-url", help="a PostgreSQL or MariaDB URL (default: SQLite in a temporary folder)"
    )
    p.add_argument(
        "--keep",
        type=Path,
        help="keep the filled SQLite store in this folder, and reuse it when it is there",
    )
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)
    rows = asyncio.run(measure(args))
    print_table(f"natter search over {args.messages:,} messages", rows)
    if not args.no_record:
        figures = "; ".join(f"{k}: {v}" for k, v in rows[3:])
        append_result(
            "search",
            f"{args.messages:,} messages, {args.users} users, {args.threads} threads, {rows[0][1]}",
            figures,
            "n/a",
            "n/a",
        )


if __name__ == "__main__":
    main()
