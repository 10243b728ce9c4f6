"""Reconnect catch-up: time from connect to SyncDone for a device N messages behind."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bench import echo
from bench.chat import TEXT_BYTES
from bench.common import (
    PASSWORD,
    BenchServer,
    add_server_arguments,
    append_result,
    fmt,
    print_table,
    server_from,
)
from bench.stores import add_store_argument, store_servers, stores_of
from natter import domain as d
from natter.sdk import Client, Connected, Connection, SyncDone


@dataclass(frozen=True, slots=True)
class SyncResult:
    messages: int
    fill_seconds: float
    welcome_seconds: float
    sync_done_seconds: float
    all_seconds: float
    replayed: int
    received: int
    duplicates: int  # messages that came more than once (by msg_id)
    server_cpu: float | None
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.received / self.all_seconds

    @property
    def lost(self) -> int:
        return self.messages - self.received


async def _login(address: str, username: str, register: bool = True) -> Client:
    client = Client(address, timeout=60.0)
    if register:
        await client.register(username, PASSWORD)
    await client.login(username, PASSWORD, "bench")
    return client


async def run_sync(server: BenchServer, messages: int, inflight: int) -> SyncResult:
    tag = "y" + uuid.uuid4().hex[:8]
    sender = await _login(server.address, f"{tag}s")
    recipient = await _login(server.address, f"{tag}r")
    peer = f"{tag}r"
    out = await Connection(sender).start()

    async def drain_own() -> None:
        while True:
            await out.events.get()

    own = asyncio.create_task(drain_own())
    # One message while the device is online, so it holds (and has acked) a cursor.
    first = await Connection(recipient).start()
    await out.send("hello", recipient=peer)
    while not isinstance(await first.next_event(10), d.Message):
        pass
    await first.close()
    cursors = first.cursors

    # The device is away: fill its thread.
    text = "x" * TEXT_BYTES
    todo = iter(range(messages))

    async def fill() -> None:
        for _ in todo:
            await out.send(text, recipient=peer, timeout=60)

    t0 = time.perf_counter()
    await asyncio.gather(*(fill() for _ in range(inflight)))
    fill_seconds = time.perf_counter() - t0
    own.cancel()
    await out.close()

    # Back online: connect with the cursors it kept, time until SyncDone and every message.
    cpu0, ccpu0 = server.cpu(), time.process_time()
    t0 = time.perf_counter()
    conn = Connection(recipient, cursors=cursors)
    await conn.start(wait_synced=False)
    welcome = sync_done = 0.0
    replayed = received = duplicates = 0
    seen: set[str] = set()
    while received < messages or not sync_done:
        ev = await conn.next_event(60)
        if isinstance(ev, d.Message):
            if ev.msg_id in seen:
                duplicates += 1
                continue
            seen.add(ev.msg_id)
            received += 1
        elif isinstance(ev, Connected) and not welcome:
            welcome = time.perf_counter() - t0
        elif isinstance(ev, SyncDone):
            sync_done = time.perf_counter() - t0
            replayed = ev.replayed
    all_seconds = time.perf_counter() - t0
    cpu1, ccpu1 = server.cpu(), time.process_time()
    await conn.close()
    await sender.close()
    await recipient.close()
    return SyncResult(
        messages=messages,
        fill_seconds=fill_seconds,
        welcome_seconds=welcome,
        sync_done_seconds=sync_done,
        all_seconds=all_seconds,
        replayed=replayed,
        received=received,
        duplicates=duplicates,
        server_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu=ccpu1 - ccpu0,
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sync", description=__doc__)
    p.add_argument("--messages", type=int, default=10_000, help="how far behind (default 10000)")
    p.add_argument(
        "--inflight", type=int, default=32, help="sends in flight while filling (default 32)"
    )
    add_server_arguments(p)
    p.add_argument("--no-ceiling", action="store_true", help="skip the bare-gRPC push ceiling")
    add_store_argument(p)
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)

    ceiling = None if args.no_ceiling else echo.measure_push(args.messages)
    with store_servers() as servers:
        for store in stores_of(args):
            _run_one(args, ceiling, store, servers.env(store))


def _run_one(
    args: argparse.Namespace,
    ceiling: echo.PushResult | None,
    store: str,
    env: dict[str, str],
) -> None:
    server = server_from(args, count_fsyncs=False, env=env)
    hot = ""
    try:
        r = asyncio.run(run_sync(server, args.messages, args.inflight))
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        if server.own:
            server.stop()
            hot = server.hot_spots()
            server.cleanup()
    rows = [
        (
            "messages behind",
            f"{r.messages:,} (filled at {fmt(r.messages / r.fill_seconds)} msg/s, "
            f"{args.inflight} in flight)",
        ),
        ("connect -> welcome", f"{r.welcome_seconds * 1e3:.1f} ms"),
        ("connect -> SyncDone", f"{r.sync_done_seconds:.3f} s  (server replayed {r.replayed:,})"),
        (
            "connect -> all received",
            f"{r.all_seconds:.3f} s  ({r.received:,} messages, lost {r.lost}, "
            f"duplicates {r.duplicates})",
        ),
        ("catch-up rate", f"{fmt(r.rate)} msg/s"),
        (
            "server CPU per message",
            "n/a" if r.server_cpu is None else f"{r.server_cpu / r.received * 1e3:.3f} ms",
        ),
        ("client CPU per message", f"{r.client_cpu / r.received * 1e3:.3f} ms"),
    ]
    ratio = "n/a"
    if ceiling is not None:
        ratio = f"{r.rate / ceiling.rate:.2f}"
        rows += [
            (
                f"ceiling: bare gRPC push of {ceiling.count:,} x 64 B",
                f"{ceiling.seconds:.3f} s  ({fmt(ceiling.rate)} msg/s)",
            ),
            ("natter catch-up rate / ceiling", ratio),
        ]
    print_table(f"natter sync: reconnect {r.messages:,} messages behind, store {store}", rows)
    if args.profile is not None:
        print(hot)
    if not args.no_record:
        figures = (
            f"SyncDone {r.sync_done_seconds:.3f} s, all {r.all_seconds:.3f} s "
            f"({fmt(r.rate)} msg/s), welcome {r.welcome_seconds * 1e3:.1f} ms, "
            f"lost {r.lost}, duplicates {r.duplicates}"
            + (
                ""
                if r.server_cpu is None
                else f", server {r.server_cpu / r.received * 1e3:.3f} CPU-ms/msg"
            )
        )
        params = (
            f"{r.messages:,} behind"
            + ("" if store == "sqlite" else f", store {store}")
            + (", external server" if args.server else "")
            + (", cProfile" if args.profile else "")
        )
        ceiling_text = (
            "n/a"
            if ceiling is None
            else f"push {ceiling.count:,} x 64 B: {ceiling.seconds:.3f} s "
            f"({fmt(ceiling.rate)} msg/s)"
        )
        append_result("sync", params, figures, ceiling_text, ratio)
    if r.lost or r.duplicates:
        raise SystemExit(f"FAILED: lost {r.lost}, duplicates {r.duplicates}")


if __name__ == "__main__":
    main()
