"""The message log alone, SQL next to MongoDB (FerretDB): durable appends/s, p99, catch-up of 10,000.

`python -m bench.log [--logs sqlite,postgresql,ferretdb] [--seconds 8] [--writers 20]
[--batch 8] [--catchup 10000]` starts each store on a free port in a temporary folder,
then, per store in the same run: `writers` concurrent writers, each in its own direct
thread, append runs of `batch` one-line messages for `seconds` (an append returns once the
entries are durable: SQLite WAL with synchronous=FULL, PostgreSQL's commit, MongoDB wire
write concern majority + journal, which FerretDB meets by its SQLite backend's commit), and
one thread is read back after a cursor 10,000 behind, in sync's pages of 1,000. The SQL log
runs the whole SQL transaction (membership, thread row, member rows), as a send does.
A row per store goes to docs/bench-results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench.common import append_result, fmt, percentile, print_table
from devtools.dbservers import server_for
from devtools.ferretdb import FerretDbServer
from message_svc.mongolog import MongoMessageLog
from message_svc.sqllog import SqlMessageLog
from message_svc.sqlstore import SqlStore
from message_svc.store import LogEntry, MessageLog
from natter.domain import MessageKind, User

TEXT = "x" * 64
PAGE = 1000


@contextlib.asynccontextmanager
async def _opened(kind: str, tmp: Path) -> AsyncIterator[tuple[MessageLog, SqlStore]]:
    """The log under test, and the SQL store its threads and members live in."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sqlite":
            sql_url = f"sqlite+aiosqlite:///{tmp / 'natter.db'}"
        elif kind == "ferretdb":
            sql_url = f"sqlite+aiosqlite:///{tmp / 'threads.db'}"
        else:
            server = await stack.enter_async_context(server_for(kind))
            sql_url = await server.create_database()
        sql = SqlStore(sql_url, pool_size=10)
        await sql.open()
        stack.push_async_callback(sql.close)
        log: MessageLog
        if kind == "ferretdb":
            mongo = await stack.enter_async_context(FerretDbServer(tmp / "ferretdb"))
            log = MongoMessageLog(await mongo.create_database())
        else:
            log = SqlMessageLog(sql)
        await log.open()
        stack.push_async_callback(log.close)
        yield log, sql


async def _pairs(sql: SqlStore, n: int) -> list[tuple[User, int]]:
    out = []
    for i in range(n):
        a = await sql.create_user(f"a{i}", "A", None, "x")
        b = await sql.create_user(f"b{i}", "B", None, "x")
        thread = await sql.direct_thread(a.user_id, b.user_id)
        out.append((User(a.user_id, a.username, a.display_name), thread))
    return out


async def run_one(kind: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="natter-bench-log-") as tmp:
        async with _opened(kind, Path(tmp)) as (log, sql):
            pairs = await _pairs(sql, args.writers)
            latencies: list[float] = []
            stored = 0
            stop = time.perf_counter() + args.seconds

            async def writer(w: int, sender: User, thread: int) -> None:
                nonlocal stored
                i = 0
                while time.perf_counter() < stop:
                    run = [
                        LogEntry(thread, sender, 1, f"{w}-{i + k}", MessageKind.TEXT, TEXT)
                        for k in range(args.batch)
                    ]
                    i += args.batch
                    t0 = time.perf_counter()
                    await log.append(run)
                    latencies.append(time.perf_counter() - t0)
                    stored += len(run)

            t0 = time.perf_counter()
            await asyncio.gather(*(writer(w, s, t) for w, (s, t) in enumerate(pairs)))
            elapsed = time.perf_counter() - t0
            # Catch-up: one thread filled to `catchup` past a cursor, read in sync's pages.
            sender, thread = pairs[0]
            have = (await log.last_seqs([thread]))[thread]
            for start in range(0, args.catchup, 500):
                await log.append(
                    [
                        LogEntry(thread, sender, 1, f"c-{start + k}", MessageKind.TEXT, TEXT)
                        for k in range(min(500, args.catchup - start))
                    ]
                )
            t1 = time.perf_counter()
            after, upto, read = have, have + args.catchup, 0
            while after < upto:
                page = await log.read_after([(thread, after, upto)], PAGE)
                if not page:
                    break
                read += len(page)
                after = page[-1].seq
            catchup = time.perf_counter() - t1
            if read != args.catchup:
                raise SystemExit(f"{kind}: read back {read} of {args.catchup}")
    ordered = sorted(latencies)
    return {
        "rate": stored / elapsed,
        "p50": percentile(ordered, 50) * 1000,
        "p99": percentile(ordered, 99) * 1000,
        "catchup": catchup,
    }


async def main_async(args: argparse.Namespace) -> None:
    kinds = [k.strip() for k in args.logs.split(",") if k.strip()]
    results = {k: await run_one(k, args) for k in kinds}
    params = (
        f"{args.writers} writers x runs of {args.batch}, {args.seconds:g} s; "
        f"catch-up {args.catchup:,} in pages of {PAGE}"
    )
    rows = []
    base = results.get("sqlite", next(iter(results.values())))
    for kind, r in results.items():
        figures = (
            f"{kind}: {fmt(r['rate'])} durable msg/s, append p50/p99 "
            f"{r['p50']:.1f}/{r['p99']:.1f} ms; catch-up {r['catchup']:.3f} s "
            f"({fmt(args.catchup / r['catchup'])} msg/s)"
        )
        rows.append((kind, figures))
        if args.record:
            append_result(
                "log", params, figures, "SQLite log, same run", f"{r['rate'] / base['rate']:.2f}"
            )
    print_table(f"message log, {params}", rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--logs", default="sqlite,postgresql,ferretdb")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--writers", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--catchup", type=int, default=10_000)
    p.add_argument("--no-record", dest="record", action="store_false")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
