"""A device 10,000 messages behind on the split store: filled on SQLite, moved, then caught up.

`python -m devtools.splitsync [--messages N] [--backend sqlite|pg]` fills a direct thread
on an embedded server over SQLite (fast: no message log yet), stops it, moves the messages
into a fresh MongoDB log on FerretDB (`natter move-to-log`'s code), serves the same data
folder with that log, and times the recipient's reconnect: connect → SyncDone and → every
message, with server and client CPU. Filling through a split server costs FerretDB v1 a
read of the whole thread per append (docs/deployment.md), which is why the fill goes
through SQLite. Everything lives in a temporary folder, removed at the end;
docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.common import PASSWORD, BenchServer
from devtools.dbservers import server_class
from devtools.ferretdb import FerretDbPgServer, FerretDbServer, MongoWireServer
from message_svc.mongolog import MongoMessageLog
from message_svc.movelog import move_to_log
from message_svc.sqlstore import SqlStore
from natter import domain as d
from natter.sdk import Client, Connection, SyncDone


async def _login(address: str, name: str, register: bool) -> Client:
    client = Client(address, timeout=60.0)
    if register:
        await client.register(name, PASSWORD)
    await client.login(name, PASSWORD, "bench")
    return client


async def _fill(address: str, messages: int, inflight: int) -> tuple[str, dict[int, int], float]:
    tag = "z" + uuid.uuid4().hex[:8]
    sender = await _login(address, f"{tag}s", True)
    recipient = await _login(address, f"{tag}r", True)
    out = await Connection(sender).start()
    drain = asyncio.create_task(_drain(out))
    first = await Connection(recipient).start()
    await out.send("hello", recipient=f"{tag}r")
    while not isinstance(await first.next_event(10), d.Message):
        pass
    await first.close()
    todo = iter(range(messages))

    async def one_lane() -> None:
        for i in todo:
            await out.send(f"message {i:06d} " + "x" * 50, recipient=f"{tag}r", timeout=60)

    t0 = time.perf_counter()
    await asyncio.gather(*(one_lane() for _ in range(inflight)))
    fill = time.perf_counter() - t0
    drain.cancel()
    await out.close()
    await sender.close()
    await recipient.close()
    return f"{tag}r", dict(first.cursors), fill


async def _drain(conn: Connection) -> None:
    while True:
        await conn.events.get()


async def _catch_up(
    server: BenchServer, name: str, cursors: dict[int, int], messages: int
) -> tuple[float, float, int, float | None, float]:
    client = await _login(server.address, name, False)
    cpu0, ccpu0 = server.cpu(), time.process_time()
    t0 = time.perf_counter()
    conn = Connection(client, cursors=cursors)
    await conn.start(wait_synced=False)
    sync_done = 0.0
    seen: set[str] = set()
    while len(seen) < messages or not sync_done:
        ev = await conn.next_event(300)
        if isinstance(ev, d.Message):
            seen.add(ev.msg_id)
        elif isinstance(ev, SyncDone):
            sync_done = time.perf_counter() - t0
    everything = time.perf_counter() - t0
    cpu1, ccpu1 = server.cpu(), time.process_time()
    await conn.close()
    await client.close()
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return sync_done, everything, len(seen), server_cpu, ccpu1 - ccpu0


async def run(messages: int, backend: str, inflight: int) -> None:
    with tempfile.TemporaryDirectory(prefix="natter-splitsync-") as tmp:
        pg = None
        mongo: MongoWireServer
        if backend == "pg":
            pg = server_class("postgresql")()
            await pg.start()
            mongo = FerretDbPgServer(await pg.create_database(), Path(tmp) / "ferretdb")
        else:
            mongo = FerretDbServer(Path(tmp) / "ferretdb")
        await mongo.start()
        try:
            url = await mongo.create_database()
            sql = BenchServer.start(count_fsyncs=False)
            try:
                name, cursors, fill = await _fill(sql.address, messages, inflight)
                print(f"filled {messages:,} messages through SQLite in {fill:.1f} s", flush=True)
            finally:
                sql.stop()
            folder = sql.folder
            assert folder is not None
            store = SqlStore(f"sqlite+aiosqlite:///{folder / 'data' / 'natter.db'}")
            log = MongoMessageLog(url)
            await store.open()
            try:
                await log.open()
                t0 = time.perf_counter()
                moved = await move_to_log(store, log)
                took = time.perf_counter() - t0
            finally:
                await log.close()
                await store.close()
            print(f"moved {moved.entries:,} entries into the log in {took:.1f} s", flush=True)
            split = BenchServer.start(
                count_fsyncs=False, env={"NATTER_MESSAGE_LOG": url}, folder=folder
            )
            try:
                done, everything, got, server_cpu, client_cpu = await _catch_up(
                    split, name, cursors, messages
                )
            finally:
                split.stop()
                split.cleanup()
            cpu = f"{server_cpu:.2f} s" if server_cpu is not None else "n/a"
            print(
                f"split store ({backend} FerretDB): {got:,} of {messages:,} behind; "
                f"connect -> SyncDone {done:.2f} s, -> every message {everything:.2f} s; "
                f"server CPU {cpu}, client CPU {client_cpu:.2f} s",
                flush=True,
            )
            if got != messages:
                raise SystemExit(f"{messages - got} messages missing")
        finally:
            mongo.remove()
            if pg is not None:
                pg.remove()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devtools.splitsync", description=__doc__)
    p.add_argument("--messages", type=int, default=10_000, help="how far behind (default 10000)")
    p.add_argument("--backend", choices=("sqlite", "pg"), default="sqlite", help="FerretDB's")
    p.add_argument("--inflight", type=int, default=32, help="sends in flight while filling")
    args = p.parse_args(argv)
    asyncio.run(run(args.messages, args.backend, args.inflight))


if __name__ == "__main__":
    main()
