"""Cluster mode: msg/s, p99 and CPU per message with 1, 2 and 3 socket servers, and failover.

Each configuration is a whole local cluster (`scripts/cluster`'s launcher: etcd, PostgreSQL,
two message_svc, channel_svc, presence_svc and N socket servers, every one its own process)
driven by `bench.chat`'s client processes through the front door. CPU is every cluster
process's (PostgreSQL's backends and etcd included) over the measured window, divided by
the messages acknowledged in it. The paced run also reports where a message spends its
time, hop by hop (`bench.hops`: every natter process's own histograms over the window),
and the CPU per message of each role. Then, with three socket servers, the one holding the
most connected users is SIGKILLed, and the time until each of its users is connected to its new
owner is measured (this is bounded by the lease TTL: the dead node stays on the ring until
etcd expires its lease).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench import echo, hops
from bench.chat import ChatResult, run_chat
from bench.common import (
    OWN_SERVER_ENV,
    PASSWORD,
    BenchServer,
    append_result,
    cpu_seconds,
    fmt,
    percentile,
    print_table,
)
from devtools import cluster as cluster_local
from natter.sdk import Client, Connected, Connection


def rss_bytes(pid: int) -> int:
    """Resident memory of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (PostgreSQL forks a backend each)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


class ClusterCpu(BenchServer):
    """What `run_chat` reads the server's CPU from: here, the sum over the whole cluster."""

    def __init__(self, address: str, procs: Sequence[cluster_local.Proc]) -> None:
        super().__init__(address)
        self.procs = list(procs)
        # The hop histograms and CPU by role at each `cpu()` call: `run_chat` reads CPU at
        # the window's ends.
        self.snapshots: list[hops.Snapshot] = []
        self.by_role: list[dict[str, float]] = []

    def cpu(self) -> float | None:
        roles: dict[str, float] = {}
        for p in self.procs:
            roles[p.role] = roles.get(p.role, 0.0) + tree_cpu(p.pid)
        self.by_role.append(roles)
        self.snapshots.append(hops.scrape([p.metrics for p in self.procs if p.metrics]))
        return sum(roles.values())

    def roles(self, messages: int) -> str:
        """CPU-ms per message of each role over the last measured window."""
        if len(self.by_role) < 2:
            return "n/a"
        before, after = self.by_role[-2], self.by_role[-1]
        per = max(1, messages)
        return ", ".join(
            f"{role} {(after[role] - before.get(role, 0.0)) / per * 1e3:.2f}" for role in after
        )

    def window(self) -> hops.Snapshot:
        """The hop histograms of the last measured window."""
        if len(self.snapshots) < 2:
            return {}
        return hops.between(self.snapshots[-2], self.snapshots[-1])

    def stop(self) -> None:
        """The cluster outlives one run; `measure` takes it down."""


def _front(procs: Sequence[cluster_local.Proc]) -> str:
    return next(p.public for p in procs if p.role == "message")


def measure(
    sockets: int, args: argparse.Namespace, base: int
) -> tuple[ChatResult | None, ChatResult, hops.Snapshot, str]:
    """Flat-out (unless `--paced-only`) and paced chat against a fresh cluster.

    With the paced run's hop histograms and its CPU-ms per message by role."""
    with tempfile.TemporaryDirectory(prefix="natter-bench-cluster-") as tmp:
        folder = Path(tmp)
        procs = cluster_local.up(folder, base, sockets=sockets, env=OWN_SERVER_ENV)
        try:
            front = _front(procs)
            flat = None
            if not args.paced_only:
                flat = run_chat(
                    front,
                    ClusterCpu(front, procs),
                    args.pairs,
                    args.seconds,
                    args.inflight,
                    0.0,
                    args.procs,
                )
            cpu = ClusterCpu(front, procs)
            paced = run_chat(
                front, cpu, args.pairs, args.seconds, args.inflight, args.rate, args.procs
            )
        finally:
            cluster_local.down(folder, wipe=True, quiet=True)
    return flat, paced, cpu.window(), cpu.roles(paced.acked_in_window)


async def _reconnect(
    front: str, procs: Sequence[cluster_local.Proc], users: int, ttl: int
) -> tuple[str, int, list[float], float]:
    gate = asyncio.Semaphore(16)
    sockets = [p.pid for p in procs if p.role == "socket"]
    rss0 = sum(rss_bytes(pid) for pid in sockets)
    nodes: dict[str, list[tuple[float, str]]] = {}
    conns: list[Connection] = []
    clients: list[Client] = []

    async def one(i: int) -> None:
        async with gate:
            name = f"rc{os.getpid()}u{i}"
            client = Client(front, timeout=30.0)
            clients.append(client)
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD, "bench")
            conn = Connection(client)
            conns.append(conn)
            seen: list[tuple[float, str]] = []
            nodes[name] = seen

            async def watch() -> None:
                while True:
                    ev = await conn.next_event()
                    if isinstance(ev, Connected):
                        seen.append((time.monotonic(), ev.node_id))

            asyncio.get_running_loop().create_task(watch())
            await conn.start(timeout=60)

    await asyncio.gather(*(one(i) for i in range(users)))
    per_conn = (sum(rss_bytes(pid) for pid in sockets) - rss0) / max(1, users)
    victim, count = Counter(s[-1][1] for s in nodes.values()).most_common(1)[0]
    moved = [s for s in nodes.values() if s[-1][1] == victim]
    pid = next(p.pid for p in procs if p.name == victim)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed + ttl + 30
    delays: list[float] = []
    while time.monotonic() < deadline:
        delays = [
            next((t - killed for t, n in s if t > killed and n != victim), -1.0) for s in moved
        ]
        if all(x >= 0 for x in delays):
            break
        await asyncio.sleep(0.02)
    for conn in conns:
        with contextlib.suppress(Exception):
            await conn.close()
    for client in clients:
        await client.close()
    done = sorted(x for x in delays if x >= 0)
    return victim, count, done + [x for x in delays if x < 0], per_conn


def reconnect(users: int, ttl: int, base: int) -> tuple[str, int, list[float], float]:
    with tempfile.TemporaryDirectory(prefix="natter-bench-cluster-") as tmp:
        folder = Path(tmp)
        env = {**OWN_SERVER_ENV, "NATTER_LEASE_TTL_SECONDS": str(ttl)}
        procs = cluster_local.up(folder, base, sockets=3, env=env)
        try:
            return asyncio.run(_reconnect(_front(procs), procs, users, ttl))
        finally:
            cluster_local.down(folder, wipe=True, quiet=True)


def _figures(r: ChatResult, seconds: float) -> str:
    per = max(1, r.acked_in_window)
    cpu = (
        "n/a"
        if r.server_cpu is None
        else (f"{r.server_cpu / per * 1e3:.2f} CPU-ms/msg ({r.server_cpu / seconds:.0%} of a core)")
    )
    return (
        f"acked {fmt(r.acked_rate)}/s, delivered {fmt(r.delivered_rate)}/s, "
        f"p50/p99 {r.p50_ms:.1f}/{r.p99_ms:.1f} ms, cluster {cpu}, "
        f"lost {r.acked - r.delivered}, dup {r.duplicates}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sockets", default="1,2,3", help="socket server counts (default 1,2,3)")
    p.add_argument("--pairs", type=int, default=20, help="sender/recipient pairs (default 20)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured window (default 8)")
    p.add_argument("--inflight", type=int, default=8, help="sends in flight per sender")
    p.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="the paced run's total msg/s, for latency below saturation (300)",
    )
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument(
        "--paced-only", action="store_true", help="skip the flat-out run (latency and hops only)"
    )
    p.add_argument("--users", type=int, default=60, help="connected users in the kill test")
    p.add_argument("--ttl", type=int, default=5, help="lease TTL in the kill test (default 5)")
    p.add_argument("--base-port", type=int, default=17100, help="cluster ports from here")
    p.add_argument(
        "--ceiling-seconds",
        type=float,
        default=3.0,
        help="seconds of bare-gRPC echo measured first (0 to skip)",
    )
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)

    ceiling: echo.EchoResult | None = None
    if args.ceiling_seconds > 0:
        ceiling = echo.measure([(args.pairs, args.inflight)], args.ceiling_seconds)[0]
    ceiling_text = "n/a" if ceiling is None else f"echo {ceiling.shape}: {fmt(ceiling.rate)} rt/s"
    rows: list[tuple[str, str]] = []
    for n in [int(x) for x in args.sockets.split(",") if x.strip()]:
        flat, paced, window, roles = measure(n, args, args.base_port)
        params = (
            f"{n} socket servers, 2 message, 1 channel, 1 presence, PostgreSQL; "
            f"{args.pairs} pairs x {args.inflight}, {args.seconds:g} s"
        )
        if flat is not None:
            ratio = "n/a" if ceiling is None else f"{flat.acked_rate / ceiling.rate:.2f}"
            rows.append((f"{n} socket server(s), flat out", _figures(flat, args.seconds)))
            if not args.no_record:
                append_result(
                    "cluster",
                    params + ", flat out",
                    _figures(flat, args.seconds),
                    ceiling_text,
                    ratio,
                )
        rows.append(
            (f"{n} socket server(s), paced {fmt(args.rate)}/s", _figures(paced, args.seconds))
        )
        rows.append(("  CPU-ms/msg by role", roles))
        acked = paced.acked_in_window
        rows += hops.rows_of(window, acked)
        if not args.no_record:
            append_result(
                "cluster",
                params + f", paced {fmt(args.rate)}/s",
                _figures(paced, args.seconds)
                + f"; CPU-ms/msg by role: {roles}; "
                + hops.summary(window)
                + (f"; Deliver calls: {d}" if (d := hops.deliver_summary(window, acked)) else ""),
                ceiling_text,
                "n/a",
            )
    if args.users > 0:
        victim, count, delays, per_conn = reconnect(args.users, args.ttl, args.base_port)
        done = [x for x in delays if x >= 0]
        text = (
            f"{len(done)}/{count} users of {victim} reconnected; p50 "
            f"{percentile(done, 50):.2f} s, max {max(done, default=float('nan')):.2f} s "
            f"after SIGKILL (lease TTL {args.ttl} s); socket server memory "
            f"{per_conn / 1024:.0f} KiB per connected device"
        )
        rows.append(("socket server killed", text))
        if not args.no_record:
            append_result(
                "cluster-failover",
                f"{args.users} users on 3 socket servers, TTL {args.ttl} s",
                text,
                "n/a",
                "n/a",
            )
    if ceiling is not None:
        rows += echo.echo_rows([ceiling])
    print_table("natter cluster", rows)


if __name__ == "__main__":
    main()
