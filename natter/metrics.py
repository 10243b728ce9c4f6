"""The Prometheus metrics of one natter process, or do-nothing stand-ins when metrics are off.

Every process builds one `Metrics` (its own registry, so several servers in one test process
do not mix) and hands it to the parts it assembles. Instruments are the standard client
library's; with `enabled=False` each is a stand-in whose methods do nothing, so the cost of
instrumentation can be measured by turning it off (`metrics_enabled`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "NO_METRICS", "GaugeFamily", "Metrics", "gauge"]

GaugeFamily = GaugeMetricFamily

# Latencies from a millisecond to half a minute.
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One hop of the send path: from a fifth of a millisecond (a queue that is not waited in).
HOPS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# The hops `hop_seconds` times, in the order a message passes them (docs/architecture.md).
HOP_NAMES = (
    "edge_queue",
    "send_call",
    "send_prepare",
    "commit_queue",
    "commit",
    "fanout",
    "push_queue",
)
# Counts of things per operation: messages per commit, servers or devices per group event.
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _Null:
    """An instrument that records nothing: what every metric is when metrics are off."""

    def labels(self, *args: Any, **kwargs: Any) -> _Null:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def set_function(self, f: Callable[[], float]) -> None:
        pass


NULL: Any = _Null()


class _Gauges(Collector):
    """Gauges computed when scraped, from callbacks the parts register (sessions, pools)."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[GaugeMetricFamily]]] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for source in list(self.sources):
            yield from source()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class Metrics:
    """The instruments of one process; `enabled=False` makes every one a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauges = _Gauges()
        if enabled:
            self.registry.register(self._gauges)

        def make(kind: Any, name: str, doc: str, labels: Sequence[str] = (), **kw: Any) -> Any:
            if not enabled:
                return NULL
            return kind(name, doc, labels, registry=self.registry, **kw)

        # -- the edge: device streams ---------------------------------------------------
        self.streams = make(
            Gauge,
            "natter_streams",
            "Device streams open on this socket server, by transport and by whether they "
            "have said Hello yet (pending) or run a session (open)",
            ("transport", "state"),
        )
        self.send_ack_seconds = make(
            Histogram,
            "natter_send_ack_seconds",
            "Time from a Send frame's arrival to its SendResult being queued for the device "
            "(stored durably in between)",
            buckets=LATENCY,
        )
        self.deliver_seconds = make(
            Histogram,
            "natter_deliver_seconds",
            "Time from a message's commit to its live push being written to a recipient's "
            "stream (server side; replays are not counted)",
            buckets=LATENCY,
        )
        self.hop_seconds = make(
            Histogram,
            "natter_hop_seconds",
            "Time one message spends in each hop of the send path, in the process that "
            "holds it: edge_queue (Send frame read to handed to message_svc, behind the "
            "device's run in flight), send_call (the whole call to message_svc, as the socket "
            "server sees it), send_prepare (message_svc: call received to joining the group "
            "commit), commit_queue (waiting for the transaction before), commit (its own "
            "transaction), fanout (the push to the socket servers, their answer included), "
            "push_queue (a socket server: delivery received to written to the device's stream)",
            ("hop",),
            buckets=HOPS,
        )
        # Bound once: a labels() lookup per message would cost more than the observation.
        self.hops: dict[str, Any] = {name: self.hop_seconds.labels(name) for name in HOP_NAMES}
        self.group_fanout_devices = make(
            Histogram,
            "natter_group_fanout_devices",
            "Devices on this socket server reached by one group event",
            buckets=SIZES,
        )
        self.deliver_calls = make(
            Counter,
            "natter_deliver_calls_total",
            "Deliver calls this socket server received from message, channel and presence "
            "nodes, by whether they carried a message (or only receipts, presence and the like)",
            ("carries",),
        )
        self.deliver_messages = make(
            Counter,
            "natter_deliver_messages_total",
            "Messages carried by the Deliver calls this socket server received (a sender's "
            "own copies are pushed by the sender's socket server and are not among them)",
        )
        self.rate_limited = make(
            Counter,
            "natter_rate_limited_total",
            "Requests and frames refused by a rate limit, by limit",
            ("limit",),
        )
        # -- message_svc ------------------------------------------------------------------
        self.sends = make(
            Counter,
            "natter_sends_total",
            "Sends answered by message_svc, by outcome (stored, duplicate: a retry answered "
            "with the original, refused: a verdict on the request, failed: try again)",
            ("outcome",),
        )
        self.commit_batch = make(
            Histogram,
            "natter_commit_batch_messages",
            "Messages per group commit (one transaction)",
            buckets=SIZES,
        )
        self.commit_seconds = make(
            Histogram,
            "natter_commit_seconds",
            "Duration of one group commit's transaction, from submission to durable",
            buckets=LATENCY,
        )
        self.db_commit_seconds = make(
            Histogram,
            "natter_db_commit_seconds",
            "Duration of the COMMIT of write transactions (on SQLite, the fsync of the WAL)",
            buckets=LATENCY,
        )
        self.logins = make(
            Counter, "natter_logins_total", "Login attempts by outcome", ("outcome",)
        )
        # -- channel_svc and presence_svc -------------------------------------------------
        self.group_fanout_nodes = make(
            Histogram,
            "natter_group_fanout_nodes",
            "Socket servers one group event is forwarded to by channel_svc",
            buckets=SIZES,
        )
        self.presence_changes = make(
            Counter,
            "natter_presence_changes_total",
            "Users coming online or going offline",
            ("state",),
        )
        # -- the delivery canary ----------------------------------------------------------
        self.canary_probes = make(
            Counter,
            "natter_canary_probes_total",
            "Delivery canary probes by result (ok, failed: not acknowledged, lost: "
            "acknowledged but not delivered in time)",
            ("result",),
        )
        self.canary_seconds = make(
            Histogram,
            "natter_canary_latency_seconds",
            "Delivery canary: send to arrival on its other device, end to end",
            buckets=LATENCY,
        )
        self.canary_last_success = make(
            Gauge,
            "natter_canary_last_success_timestamp_seconds",
            "Unix time of the delivery canary's last successful probe",
        )

    def watch_collector(self) -> None:
        """Time every pass of Python's cyclic garbage collector in this process.

        A pass stops the whole process (event loop and threads alike) for as long as it
        walks the generation it collects, so a slow one shows in every latency at once.
        Process-wide: call it once per process, for the metrics the process exposes.
        """
        if not self.enabled:
            return
        pauses = Histogram(
            "natter_gc_pause_seconds",
            "Time the process stood still in one pass of Python's cyclic garbage collector, "
            "by the oldest generation the pass collected (2 is a full collection)",
            ("generation",),
            registry=self.registry,
            buckets=HOPS,
        )
        by_generation = [pauses.labels(str(g)) for g in range(3)]
        started = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                by_generation[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(timed)
        self.gauges(
            lambda: [
                gauge(
                    "natter_gc_frozen_objects",
                    "Objects built at start-up and moved out of the collector's reach",
                    gc.get_freeze_count(),
                )
            ]
        )

    def gauges(self, source: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Register gauges computed at each scrape (no cost between scrapes)."""
        if self.enabled:
            self._gauges.sources.append(source)

    def forget(self, source: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        if source in self._gauges.sources:
            self._gauges.sources.remove(source)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything registered."""
        return generate_latest(self.registry)


def gauge(
    name: str, doc: str, value: float, labels: dict[str, str] | None = None
) -> GaugeMetricFamily:
    """One gauge sample for a `Metrics.gauges` source."""
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def since(start: float) -> float:
    """Seconds since a `time.perf_counter()` reading."""
    return time.perf_counter() - start


NO_METRICS = Metrics(enabled=False)
