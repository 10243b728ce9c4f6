"""Reconnect catch-up: time from connect to SyncDone for a device N messages behind."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench import echo, flame
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


async def run_sync(
    server: BenchServer,
    messages: int,
    inflight: int,
    rounds_wanted: int = 1,
    pyspy: Path | None = None,
    client_pyspy: Path | None = None,
) -> list[SyncResult]:
    """Fill a device's thread while it is away, then reconnect it `rounds_wanted` times.

    Each round connects with the cursors the device kept before the fill (Hello's cursors
    win over the stored ones), so every round replays the same messages.
    """
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

    rounds = []
    for _ in range(max(1, rounds_wanted)):
        rounds.append(await _catch_up(server, recipient, cursors, messages, pyspy, client_pyspy))
    await sender.close()
    await recipient.close()
    return [replace(r, fill_seconds=fill_seconds) for r in rounds]


async def _catch_up(
    server: BenchServer,
    recipient: Client,
    cursors: dict[int, int],
    messages: int,
    pyspy: Path | None,
    client_pyspy: Path | None,
) -> SyncResult:
    """Back online with the cursors it kept: time until SyncDone and every message."""
    samplers = []
    if pyspy is not None and server.pid is not None:
        samplers.append(flame.start(server.pid, pyspy, rate=1000))
    if client_pyspy is not None:
        samplers.append(flame.start(os.getpid(), client_pyspy, rate=1000))
    if samplers:
        await asyncio.sleep(1.0)  # py-spy attaches before the window opens
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
    for sampler in samplers:
        await asyncio.to_thread(flame.stop, sampler)
    await conn.close()
    return SyncResult(
        messages=messages,
        fill_seconds=0.0,
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
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="reconnect this many times, each replaying the same messages; the median "
        "round is reported (default 1)",
    )
    p.add_argument(
        "--client-py-spy",
        dest="client_pyspy",
        type=Path,
        help="sample this process (the SDK client) with py-spy during the catch-ups, "
        "print where its CPU went",
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
    # --py-spy samples the server during the catch-ups only, not while the thread fills.
    server = server_from(args, count_fsyncs=False, env=env, sample_whole_run=False)
    hot = ""
    try:
        runs = asyncio.run(
            run_sync(
                server, args.messages, args.inflight, args.rounds, args.pyspy, args.client_pyspy
            )
        )
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        if server.own:
            server.stop()
            hot = server.hot_spots()
            server.cleanup()
    r = sorted(runs, key=lambda x: x.sync_done_seconds)[len(runs) // 2]
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
    if len(runs) > 1:
        rows.insert(
            1,
            (
                "rounds (median shown), SyncDone s",
                ", ".join(f"{x.sync_done_seconds:.3f}" for x in runs)
                + f"  (median {statistics.median(x.sync_done_seconds for x in runs):.3f})",
            ),
        )
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
    if args.pyspy is not None and args.pyspy.exists():
        print(f"server, {len(runs)} catch-up(s):\n{flame.summary(args.pyspy)}\n")
    if args.client_pyspy is not None and args.client_pyspy.exists():
        print(f"client, {len(runs)} catch-up(s):\n{flame.summary(args.client_pyspy)}\n")
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
            + f", client {r.client_cpu / r.received * 1e3:.3f} CPU-ms/msg"
        )
        params = (
            f"{r.messages:,} behind"
            + ("" if store == "sqlite" else f", store {store}")
            + (", external server" if args.server else "")
            + (", cProfile" if args.profile else "")
            + (f", median of {len(runs)} rounds" if len(runs) > 1 else "")
        )
        ceiling_text = (
            "n/a"
            if ceiling is None
            else f"push {ceiling.count:,} x 64 B: {ceiling.seconds:.3f} s "
            f"({fmt(ceiling.rate)} msg/s)"
        )
        append_result("sync", params, figures, ceiling_text, ratio)
    lost, duplicates = sum(x.lost for x in runs), sum(x.duplicates for x in runs)
    if lost or duplicates:
        raise SystemExit(f"FAILED: lost {lost}, duplicates {duplicates}")


if __name__ == "__main__":
    main()
