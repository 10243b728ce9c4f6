"""Per-hop latency of the send path, from the servers' own histograms (`natter_hop_seconds`).

Each natter process times the hops a message passes inside it (see natter/metrics.py
HOP_NAMES). A snapshot sums every process's histograms; the difference between two
snapshots is what happened in between, whose mean and quantiles (interpolated within a
bucket, as Prometheus' histogram_quantile does) are reported per hop. Means add up along
the path; quantiles do not.

`python -m bench.hops --rate 500,1000` runs `bench.chat`'s paced load against an embedded
server of its own at each rate and prints the hops; `bench.cluster` reports them for a
whole cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench.common import BenchServer, fmt, print_table
from devtools.ports import free_port
from natter.metrics import HOP_NAMES

# Besides the hops, two end-to-end server-side figures every process already keeps.
WHOLE = {
    "natter_send_ack_seconds": "send->ack (socket edge)",
    "natter_deliver_seconds": "commit->written",
}
# And the Deliver calls socket servers receive (counters, kept as histograms of no buckets).
DELIVERS = ("natter_deliver_calls", "natter_deliver_messages")


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts by upper bound, with the sum and count of observations."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float

    def minus(self, before: Histogram | None) -> Histogram:
        if before is None:
            return self
        old = dict(before.buckets)
        return Histogram(
            tuple((le, n - old.get(le, 0.0)) for le, n in self.buckets),
            self.total - before.total,
            self.count - before.count,
        )

    def quantile(self, q: float) -> float:
        """Seconds below which a fraction `q` of the observations fell (nan when empty)."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, n in self.buckets:
            if n >= rank:
                if math.isinf(le):
                    return lower
                inside = n - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, n
        return lower

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


Snapshot = dict[str, Histogram]


def parse(text: str) -> Snapshot:
    """The hop and end-to-end histograms in one process's Prometheus text."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name in DELIVERS:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = family.name + "".join(f"_{v}" for v in sample.labels.values())
                    out[key] = Histogram((), sample.value, sample.value)
            continue
        if family.name not in ("natter_hop_seconds", *WHOLE):
            continue
        parts: dict[str, dict[str, object]] = {}
        for sample in family.samples:
            key = sample.labels.get("hop", WHOLE.get(family.name, family.name))
            part = parts.setdefault(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
            if sample.name.endswith("_bucket"):
                buckets = part["buckets"]
                assert isinstance(buckets, dict)
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                part["sum"] = sample.value
            elif sample.name.endswith("_count"):
                part["count"] = sample.value
        for key, part in parts.items():
            buckets = part["buckets"]
            assert isinstance(buckets, dict)
            total, count = part["sum"], part["count"]
            assert isinstance(total, float) and isinstance(count, float)
            out[key] = Histogram(tuple(sorted(buckets.items())), total, count)
    return out


def add(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Histograms of several processes summed per hop."""
    out: Snapshot = {}
    for snap in snapshots:
        for key, h in snap.items():
            have = out.get(key)
            if have is None:
                out[key] = h
                continue
            counts = dict(have.buckets)
            out[key] = Histogram(
                tuple((le, counts.get(le, 0.0) + n) for le, n in h.buckets),
                have.total + h.total,
                have.count + h.count,
            )
    return out


def scrape(addresses: Sequence[str], timeout: float = 5.0) -> Snapshot:
    """Every given /metrics listener's histograms, summed (an unreachable one is skipped)."""
    texts: list[Snapshot] = []
    for address in addresses:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as r,
        ):
            texts.append(parse(r.read().decode()))
    return add(texts)


def between(before: Snapshot, after: Snapshot) -> Snapshot:
    return {key: h.minus(before.get(key)) for key, h in after.items()}


def rows_of(window: Snapshot, messages: int) -> list[tuple[str, str]]:
    """One row per hop in path order, then the end-to-end figures, for `print_table`."""
    out: list[tuple[str, str]] = []
    for key in (*HOP_NAMES, *WHOLE.values()):
        h = window.get(key)
        if h is None or h.count <= 0:
            continue
        per = f", {h.count / max(1, messages):.2f} per message" if key in HOP_NAMES else ""
        out.append(
            (
                f"  {key}",
                f"mean {h.mean * 1e3:.2f} ms, p50 {h.quantile(0.5) * 1e3:.2f} ms, "
                f"p99 {h.quantile(0.99) * 1e3:.2f} ms ({h.count:.0f} observations{per})",
            )
        )
    delivers = deliver_summary(window, messages)
    if delivers:
        out.append(("  Deliver calls received", delivers))
    return out


def deliver_summary(window: Snapshot, messages: int) -> str:
    """Deliver calls the socket servers received per message sent (empty: not counted)."""
    calls = {k: h.count for k, h in window.items() if k.startswith("natter_deliver_calls")}
    if not calls:
        return ""
    n = max(1, messages)
    carrying = calls.get("natter_deliver_calls_messages", 0.0)
    pushed = window["natter_deliver_messages"].count if "natter_deliver_messages" in window else 0
    return (
        f"{sum(calls.values()) / n:.2f} per message, {carrying / n:.2f} carrying messages, "
        f"{pushed / n:.2f} messages in them per message"
    )


def summary(window: Snapshot) -> str:
    """The hops' means in one line, for docs/bench-results.md."""
    parts = [
        f"{key} {h.mean * 1e3:.2f}"
        for key in HOP_NAMES
        if (h := window.get(key)) is not None and h.count > 0
    ]
    return "hop means (ms): " + ", ".join(parts)


class HopServer(BenchServer):
    """An embedded server of our own whose hop histograms are read with its CPU time."""

    def __init__(self, server: BenchServer, metrics: str) -> None:
        super().__init__(server.address, server.pid)
        self.server = server
        self.metrics = metrics
        self.snapshots: list[Snapshot] = []

    def cpu(self) -> float | None:
        self.snapshots.append(scrape([self.metrics]))
        return self.server.cpu()

    def stop(self) -> None:
        """The server outlives one run; `main` stops it."""

    def window(self) -> Snapshot:
        if len(self.snapshots) < 2:
            return {}
        return between(self.snapshots[-2], self.snapshots[-1])


def main(argv: Sequence[str] | None = None) -> None:
    from bench.chat import run_chat  # its client processes are spawned, not forked

    p = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__)
    p.add_argument("--rate", default="300,750", help="paced total msg/s, comma-separated")
    p.add_argument("--pairs", type=int, default=20, help="sender/recipient pairs (default 20)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured window (default 8)")
    p.add_argument("--inflight", type=int, default=8, help="sends in flight per sender")
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    args = p.parse_args(argv)
    metrics = f"127.0.0.1:{free_port()}"
    own = BenchServer.start(count_fsyncs=False, env={"NATTER_METRICS_ADDR": metrics})
    server = HopServer(own, metrics)
    rows: list[tuple[str, str]] = []
    try:
        for rate in [float(x) for x in args.rate.split(",") if x.strip()]:
            r = run_chat(
                own.address, server, args.pairs, args.seconds, args.inflight, rate, args.procs
            )
            cpu = (
                "n/a"
                if r.server_cpu is None
                else f"{r.server_cpu / max(1, r.acked_in_window) * 1e3:.3f}"
            )
            rows.append(
                (
                    f"paced {fmt(rate)}/s (load {os.getloadavg()[0]:.1f})",
                    f"acked {fmt(r.acked_rate)}/s, p50/p99 {r.p50_ms:.1f}/{r.p99_ms:.1f} ms, "
                    f"server {cpu} CPU-ms/msg, lost {r.acked - r.delivered}, dup {r.duplicates}",
                )
            )
            rows += rows_of(server.window(), r.acked_in_window)
    finally:
        own.stop()
    print_table("natter embedded: hops of the send path", rows)


if __name__ == "__main__":
    main()
