"""Push notifications: send → push request leaving natter for 1,000 offline group members,
and the pushes per second one natter process sustains.

The server is its own `natter serve` process (SQLite); the push service it posts to runs in
this process on loopback (devtools/pushservice.py, without decryption unless --decrypt, so
the far end is not what is measured). Every member has a Web Push subscription and no live
stream, so each message to the group is one encrypted, VAPID-signed push per member.

    python -m bench.push                 # 1,000 members, grace 0 s, 5 rounds, 10 bursts
    python -m bench.push --members 200 --rounds 2 --bursts 3 --no-record   # what CI runs

Latency is measured from just before the send to each request's arrival at the push
service, with the grace period set to 0 (a real server waits `push_grace_seconds` first on
purpose). Throughput: `--bursts` groups of the same members each get one message at once,
and the pushes are counted from the first arrival to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench.common import (
    LOAD_AT_START,
    PASSWORD,
    BenchServer,
    append_result,
    fmt,
    percentile,
    print_table,
)
from devtools.pushservice import PushService
from natter.sdk import Client, Connection


async def _members(address: str, ps: PushService, count: int, tag: str) -> list[str]:
    names = [f"{tag}-m{i}" for i in range(count)]

    async def make(chunk: list[str]) -> None:
        async with Client(address) as c:
            key = (await c.push_config()).vapid_public_key
            for name in chunk:
                await c.register(name, PASSWORD)
                await c.login(name, PASSWORD, "phone")
                sub = ps.subscribe(key)
                await c.set_web_push(sub.endpoint, sub.p256dh, sub.auth)

    await asyncio.gather(*(make(names[i::8]) for i in range(8)))
    return names


async def _wait(ps: PushService, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(ps.arrivals) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ps.arrivals)} of {want} pushes arrived in {timeout} s")
        await asyncio.sleep(0.01)


async def run(args: argparse.Namespace) -> None:
    async with PushService(decrypt=args.decrypt) as ps:
        os.environ.update(
            {
                "NATTER_PUSH_GRACE_SECONDS": str(args.grace),
                "NATTER_PUSH_POLL_SECONDS": "0.05",
                "NATTER_PUSH_ALLOW_HTTP": "1",
                "NATTER_WEB_PUSH_HOSTS": "127.0.0.1",
                "NATTER_VAPID_SUBJECT": "mailto:bench@natter.test",
                "NATTER_MAX_GROUP_MEMBERS": str(args.members + 8),
            }
        )
        server = BenchServer.start(count_fsyncs=False)
        try:
            tag = f"p{int(time.time()) % 100000}"
            names = await _members(server.address, ps, args.members, tag)
            sender = Client(server.address)
            await sender.register(f"{tag}-sender", PASSWORD)
            await sender.login(f"{tag}-sender", PASSWORD)
            groups = [
                (await sender.create_group(f"{tag} {g}", names)).thread_id
                for g in range(max(1, args.bursts))
            ]
            # Each member is told of each group once: wait for all of it, then measure.
            await _wait(ps, args.members * len(groups), 120)
            await asyncio.sleep(0.5)
            conn = Connection(sender)
            await conn.start()
            latencies: list[float] = []
            acks: list[float] = []
            for r in range(args.rounds):
                mark = len(ps.arrivals)
                t0 = time.monotonic()
                await conn.send(f"round {r}", thread_id=groups[0])
                acks.append(time.monotonic() - t0)
                await _wait(ps, mark + args.members, 120)
                latencies.extend(a - t0 for a in ps.arrivals[mark : mark + args.members])
                await asyncio.sleep(0.3)
            mark = len(ps.arrivals)
            cpu0 = server.cpu()
            await asyncio.gather(*(conn.send("burst", thread_id=g) for g in groups))
            want = args.members * len(groups)
            await _wait(ps, mark + want, 300)
            cpu1 = server.cpu()
            window = ps.arrivals[mark : mark + want]
            span = window[-1] - window[0]
            rate = want / span if span > 0 else float("nan")
            await conn.close()
            await sender.close()
        finally:
            server.cleanup()
    ordered = sorted(latencies)
    p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
    last = max(latencies)
    cpu_ms = (cpu1 - cpu0) * 1000 / want if cpu0 is not None and cpu1 is not None else float("nan")
    print_table(
        "push: send → request at the push service",
        [
            ("members (offline, Web Push)", fmt(args.members)),
            ("grace period", f"{args.grace:g} s"),
            ("send acknowledged (p50)", f"{percentile(sorted(acks), 50) * 1000:.1f} ms"),
            (
                "first push p50 / p99 / last",
                f"{p50 * 1000:.0f} / {p99 * 1000:.0f} / {last * 1000:.0f} ms",
            ),
            ("throughput", f"{fmt(rate)} pushes/s ({want} pushes, {len(groups)} bursts)"),
            ("server CPU", f"{cpu_ms:.2f} CPU-ms/push"),
            ("problems at the push service", str(len(ps.problems))),
        ],
    )
    if ps.problems:
        raise SystemExit(f"the push service refused pushes: {ps.problems[:3]}")
    if args.record:
        append_result(
            "push",
            f"{args.members} offline members, Web Push, grace {args.grace:g} s, "
            f"{args.rounds} rounds, {len(groups)} bursts, decrypt {'on' if args.decrypt else 'off'}",
            f"send→push p50/p99 {p50 * 1000:.0f}/{p99 * 1000:.0f} ms (last {last * 1000:.0f} ms); "
            f"{fmt(rate)} pushes/s; server {cpu_ms:.2f} CPU-ms/push",
            "n/a",
            "n/a",
        )
    print(f"load at start {LOAD_AT_START:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=1000, help="offline members (default 1000)")
    p.add_argument("--rounds", type=int, default=5, help="latency rounds (default 5)")
    p.add_argument("--bursts", type=int, default=10, help="groups for throughput (default 10)")
    p.add_argument("--grace", type=float, default=0.0, help="push_grace_seconds (default 0)")
    p.add_argument("--decrypt", action="store_true", help="decrypt at the push service too")
    p.add_argument(
        "--no-record", dest="record", action="store_false", help="do not append a result row"
    )
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
