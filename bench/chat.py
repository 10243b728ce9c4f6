"""Chat throughput and send-to-deliver latency: sender/recipient pairs over the SDK."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import time
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe

from bench import echo, loadgen
from bench.common import (
    PASSWORD,
    SPAWN,
    BenchServer,
    add_server_arguments,
    append_result,
    fmt,
    percentile,
    print_table,
    server_from,
)
from bench.stores import add_store_argument, store_servers, stores_of
from natter import domain as d
from natter.errors import NatterError
from natter.sdk import Client, Connection

TEXT_BYTES = 64  # the same size as the ceiling's echo messages
DRAIN_SECONDS = 15.0
STAMP_DIGITS = 20


@dataclass
class ProcResult:
    """What one client process saw; latencies in ns, send stamp to receipt by the recipient."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    acked_in_window: int = 0
    delivered: int = 0
    delivered_in_window: int = 0
    duplicates: int = 0
    cpu_window: float = 0.0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    errors: list[str] = field(default_factory=list)

    def received(self, msg_id: str, text: str, now: int, end_ns: int, seen: set[str]) -> bool:
        """Count one pushed message at `now` (ns); False for a duplicate, which is not delivered."""
        if msg_id in seen:
            self.duplicates += 1
            return False
        seen.add(msg_id)
        self.delivered += 1
        if now <= end_ns:
            self.delivered_in_window += 1
        self.latencies.append(now - int(text[:STAMP_DIGITS]))
        return True


def _text(stamp_ns: int) -> str:
    head = f"{stamp_ns:0{STAMP_DIGITS}d} "
    return head + "x" * (TEXT_BYTES - len(head))


async def _login(address: str, username: str) -> Client:
    client = Client(address, timeout=60.0)
    await client.register(username, PASSWORD)
    await client.login(username, PASSWORD, "bench")
    return client


@dataclass
class _Pair:
    sender: Client
    recipient: Client
    peer: str
    send_conn: Connection | None = None
    recv_conn: Connection | None = None


async def _warm_up(pair: _Pair) -> int:
    """One message per pair before the window: the first send creates the direct thread."""
    assert pair.send_conn is not None and pair.recv_conn is not None
    sent = await pair.send_conn.send("warm up", recipient=pair.peer, timeout=60.0)
    while not isinstance(await pair.recv_conn.next_event(60.0), d.Message):
        pass
    return sent.thread_id


async def _client(
    pipe: Pipe,
    address: str,
    tag: str,
    indices: Sequence[int],
    inflight: int,
    rate_per_sender: float,
    seconds: float,
    client: str = "sdk",
) -> None:
    res = ProcResult()
    gate = asyncio.Semaphore(8)

    async def make(i: int) -> _Pair:
        async with gate:
            peer = f"{tag}r{i}"
            return _Pair(await _login(address, f"{tag}s{i}"), await _login(address, peer), peer)

    pairs = await asyncio.gather(*(make(i) for i in indices))
    for pair in pairs:
        pair.send_conn = await Connection(pair.sender).start()
        pair.recv_conn = await Connection(pair.recipient).start()
    threads = await asyncio.gather(*(_warm_up(pair) for pair in pairs))
    # A full collection over everything imported and set up stops this client for tens of
    # milliseconds, which would show as the server's latency: freeze it, as `natter serve`
    # does its own start-up heap.
    gc.collect()
    gc.freeze()
    if client == "batch":
        for pair in pairs:
            assert pair.send_conn is not None and pair.recv_conn is not None
            await pair.send_conn.close()
            await pair.recv_conn.close()
        await loadgen.run_pairs(
            pipe,
            res,
            [
                (pair.sender.channel, pair.sender.token, pair.recipient.token, thread)
                for pair, thread in zip(pairs, threads, strict=True)
            ],
            inflight,
            rate_per_sender,
            seconds,
        )
        for pair in pairs:
            await pair.sender.close()
            await pair.recipient.close()
        pipe.send(res)
        return
    pipe.send("ready")
    start_at: float = await asyncio.to_thread(pipe.recv)  # time.monotonic() of the window start
    end_ns = int((start_at + seconds) * 1e9)
    loop = asyncio.get_running_loop()
    seen: set[str] = set()
    sending = True
    all_in = asyncio.Event()  # set once sending is over and every acked send was delivered

    async def drain_own(conn: Connection) -> None:
        while True:  # the sender's own copies: not deliveries, but the queue must not grow
            await conn.events.get()

    async def receive(conn: Connection) -> None:
        while True:
            ev = await conn.events.get()
            if not isinstance(ev, d.Message) or not ev.text[:STAMP_DIGITS].isdigit():
                continue
            if not res.received(ev.msg_id, ev.text, time.monotonic_ns(), end_ns, seen):
                continue
            if not sending and res.delivered >= res.acked:
                all_in.set()

    async def send_one(conn: Connection, peer: str, stamp_ns: int) -> None:
        res.sent += 1
        try:
            await conn.send(_text(stamp_ns), recipient=peer, timeout=30.0)
        except (NatterError, TimeoutError) as e:
            res.failed += 1
            if len(res.errors) < 5:
                res.errors.append(repr(e))
            return
        res.acked += 1
        if time.monotonic_ns() <= end_ns:
            res.acked_in_window += 1

    async def closed_loop(conn: Connection, peer: str) -> None:
        while time.monotonic_ns() < end_ns:
            await send_one(conn, peer, time.monotonic_ns())

    async def paced(conn: Connection, peer: str, offset: float) -> None:
        # Open loop: each send is stamped with its scheduled time, so a stall shows in latency.
        interval = 1.0 / rate_per_sender
        slots = asyncio.Semaphore(inflight)
        tasks: set[asyncio.Task[None]] = set()
        due = start_at + offset * interval
        while due * 1e9 < end_ns:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await slots.acquire()
            task = loop.create_task(send_one(conn, peer, int(due * 1e9)))
            task.add_done_callback(lambda _t: slots.release())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += interval
        if tasks:
            await asyncio.gather(*tasks)

    consumers = []
    for pair in pairs:
        assert pair.send_conn is not None and pair.recv_conn is not None
        consumers.append(loop.create_task(drain_own(pair.send_conn)))
        consumers.append(loop.create_task(receive(pair.recv_conn)))
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = time.process_time()
    senders: list[asyncio.Task[None]] = []
    for n, pair in enumerate(pairs):
        assert pair.send_conn is not None
        if rate_per_sender > 0:
            senders.append(
                loop.create_task(paced(pair.send_conn, pair.peer, n / max(1, len(pairs))))
            )
        else:
            senders.extend(
                loop.create_task(closed_loop(pair.send_conn, pair.peer)) for _ in range(inflight)
            )
    await asyncio.sleep(max(0.0, end_ns / 1e9 - time.monotonic()))
    res.cpu_window = time.process_time() - cpu0
    await asyncio.gather(*senders)
    sending = False
    if res.delivered >= res.acked:
        all_in.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), DRAIN_SECONDS)
    for task in consumers:
        task.cancel()
    for pair in pairs:
        for conn in (pair.send_conn, pair.recv_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        await pair.sender.close()
        await pair.recipient.close()
    pipe.send(res)


def _client_main(
    pipe: Pipe,
    address: str,
    tag: str,
    indices: Sequence[int],
    inflight: int,
    rate_per_sender: float,
    seconds: float,
    client: str = "sdk",
) -> None:
    try:
        asyncio.run(
            _client(pipe, address, tag, indices, inflight, rate_per_sender, seconds, client)
        )
    except BaseException as e:
        pipe.send(RuntimeError(f"client process failed: {e!r}"))  # gRPC errors do not pickle
        raise


# -- orchestration (no gRPC in this process) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatResult:
    sent: int
    acked: int
    failed: int
    delivered: int
    duplicates: int
    acked_rate: float
    delivered_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu: float | None
    client_cpu: float
    fsyncs: int | None
    acked_in_window: int
    errors: tuple[str, ...]


def run_chat(
    address: str,
    server: BenchServer,
    pairs: int,
    seconds: float,
    inflight: int,
    rate: float,
    procs: int,
    client: str = "sdk",
) -> ChatResult:
    """One run against `server`; `client` is "sdk" (natter.sdk, frame by frame as an app
    sends) or "batch" (bench/loadgen.py: raw streams, ready sends in one pre-encoded batch)."""
    tag = "b" + uuid.uuid4().hex[:8]
    groups = [list(range(p, pairs, procs)) for p in range(procs)]
    groups = [g for g in groups if g]
    children = []
    for group in groups:
        ours, theirs = SPAWN.Pipe()
        proc = SPAWN.Process(
            target=_client_main,
            daemon=True,
            args=(
                theirs,
                address,
                tag,
                group,
                inflight,
                rate / pairs if rate else 0.0,
                seconds,
                client,
            ),
        )
        proc.start()
        children.append((ours, proc))
    try:
        for pipe, _ in children:
            if not pipe.poll(180):
                raise RuntimeError("a client process did not get ready in 180 s")
            msg = pipe.recv()
            if isinstance(msg, BaseException):
                raise msg
        start_at = time.monotonic() + 0.5
        wall_start = time.time() + 0.5
        for pipe, _ in children:
            pipe.send(start_at)
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu0 = server.cpu()
        time.sleep(max(0.0, start_at + seconds - time.monotonic()))
        cpu1 = server.cpu()
        wall_end = wall_start + seconds
        results: list[ProcResult] = []
        for pipe, proc in children:
            got = pipe.recv()
            if isinstance(got, BaseException):
                raise got
            results.append(got)
            proc.join(10)
    finally:
        for _, proc in children:
            if proc.is_alive():
                proc.kill()
    server.stop()
    lat = sorted(x for r in results for x in r.latencies)
    acked_in_window = sum(r.acked_in_window for r in results)
    return ChatResult(
        sent=sum(r.sent for r in results),
        acked=sum(r.acked for r in results),
        failed=sum(r.failed for r in results),
        delivered=sum(r.delivered for r in results),
        duplicates=sum(r.duplicates for r in results),
        acked_rate=acked_in_window / seconds,
        delivered_rate=sum(r.delivered_in_window for r in results) / seconds,
        p50_ms=percentile(lat, 50) / 1e6,
        p95_ms=percentile(lat, 95) / 1e6,
        p99_ms=percentile(lat, 99) / 1e6,
        server_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu=sum(r.cpu_window for r in results),
        fsyncs=server.fsyncs_between(wall_start, wall_end),
        acked_in_window=acked_in_window,
        errors=tuple(e for r in results for e in r.errors),
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.chat", description=__doc__)
    p.add_argument("--pairs", type=int, default=20, help="sender/recipient pairs (default 20)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    p.add_argument(
        "--inflight",
        type=int,
        default=8,
        help="sends in flight per sender (default 8)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace all senders to this many msg/s in total (default: flat out)",
    )
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument(
        "--client",
        choices=["sdk", "batch", "both"],
        default="sdk",
        help="sdk: natter.sdk connections, frame by frame as an app sends (default); batch: "
        "bench/loadgen.py, raw streams sending each device's ready sends in one pre-encoded "
        "batch; both: sdk then batch, each on a fresh server, against the same ceiling",
    )
    add_server_arguments(p)
    p.add_argument(
        "--ceiling-seconds",
        type=float,
        default=5.0,
        help="seconds of bare-gRPC echo measured first (0 to skip)",
    )
    p.add_argument("--no-strace", action="store_true", help="do not count fsyncs with strace")
    p.add_argument(
        "--search-index",
        choices=["on", "off", "both"],
        default="on",
        help="keep the full-text index on the send path (default), drop its triggers from the "
        "server's SQLite store before the run (off), or run off, on, off, on in turn (both)",
    )
    add_store_argument(p)
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    p.add_argument(
        "--metrics-ab",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="measure the cost of metrics: ROUNDS pairs of runs, metrics on then off, "
        "each on a fresh server of its own (default: 0, one ordinary run)",
    )
    args = p.parse_args(argv)
    if args.metrics_ab:
        metrics_ab(args)
        return

    ceiling: echo.EchoResult | None = None
    if args.ceiling_seconds > 0:
        ceiling = echo.measure([(args.pairs, args.inflight)], args.ceiling_seconds)[0]
    modes = ["off", "on", "off", "on"] if args.search_index == "both" else [args.search_index]
    clients = ["sdk", "batch"] if args.client == "both" else [args.client]
    failed: list[str] = []
    with store_servers() as servers:
        for store in stores_of(args):
            for mode in modes:
                for client in clients:
                    r = _run_one(args, ceiling, mode, store, servers.env(store), client)
                    if r.acked != r.delivered or r.duplicates:
                        failed.append(
                            f"{store}, {client} client: lost {r.acked - r.delivered}, "
                            f"duplicates {r.duplicates}"
                        )
    if failed:
        raise SystemExit("FAILED: " + "; ".join(failed))


def drop_search_index(server: BenchServer) -> None:
    """The SQLite store without the triggers that keep the full-text index (bench only)."""
    import sqlite3

    if server.data_dir is None:
        raise SystemExit("--search-index off needs a server this bench starts")
    db = sqlite3.connect(server.data_dir / "natter.db")
    try:
        for name in ("messages_fts_insert", "messages_fts_update", "messages_fts_delete"):
            db.execute(f"DROP TRIGGER IF EXISTS {name}")
        db.commit()
    finally:
        db.close()


def _run_one(
    args: argparse.Namespace,
    ceiling: echo.EchoResult | None,
    mode: str,
    store: str = "sqlite",
    env: dict[str, str] | None = None,
    client: str = "sdk",
) -> ChatResult:
    server = server_from(args, count_fsyncs=not args.no_strace, env=env)
    if mode == "off":
        drop_search_index(server)
    if not server.own:
        print(
            "note: an external server keeps its own frame rate limit "
            "(default 200 frames/s per device)"
        )
    try:
        r = run_chat(
            server.address,
            server,
            args.pairs,
            args.seconds,
            args.inflight,
            args.rate,
            args.procs,
            client,
        )
    except BaseException:
        print(server.log_tail())
        raise
    finally:
        if server.own:
            server.cleanup()
    per_msg = max(1, r.acked_in_window)
    rows = [
        (
            "sent / acked / delivered",
            f"{r.sent:,} / {r.acked:,} / {r.delivered:,}"
            f"  (failed {r.failed}, duplicates {r.duplicates}, "
            f"undelivered {r.acked - r.delivered})",
        ),
        ("acked msg/s", fmt(r.acked_rate)),
        ("delivered msg/s", fmt(r.delivered_rate)),
        ("send->deliver p50 / p95 / p99", f"{r.p50_ms:.1f} / {r.p95_ms:.1f} / {r.p99_ms:.1f} ms"),
        (
            "server CPU per message",
            "n/a"
            if r.server_cpu is None
            else f"{r.server_cpu / per_msg * 1e3:.3f} ms  ({r.server_cpu / args.seconds:.0%} of a core)",
        ),
        (
            "client CPU per message",
            f"{r.client_cpu / per_msg * 1e3:.3f} ms  ({r.client_cpu / args.seconds:.0%} of a core, "
            f"{args.procs} procs)",
        ),
        (
            "fsyncs per message",
            "n/a"
            if r.fsyncs is None
            else f"{r.fsyncs / per_msg:.4f}  ({r.fsyncs:,} in the window)",
        ),
    ]
    if r.errors:
        rows.append(("first send errors", "; ".join(r.errors[:3])))
    ratio = "n/a"
    if ceiling is not None:
        rows += echo.echo_rows([ceiling])
        ratio = f"{r.acked_rate / ceiling.rate:.2f}"
        rows.append(("natter acked / echo ceiling", ratio))
    pace = f"paced {fmt(args.rate)} msg/s" if args.rate else "flat out"
    print_table(
        f"natter chat: {args.pairs} pairs x {args.inflight} in flight, {args.seconds:g} s, {pace}, "
        f"search index {mode}, store {store}, {client} client",
        rows,
    )
    if args.profile is not None:
        print(server.hot_spots())
    if args.pyspy is not None:
        print(server.flame_summary())
    if not args.no_record:
        figures = (
            f"acked {fmt(r.acked_rate)}/s, delivered {fmt(r.delivered_rate)}/s, "
            f"p50/p95/p99 {r.p50_ms:.1f}/{r.p95_ms:.1f}/{r.p99_ms:.1f} ms, "
            + (
                ""
                if r.server_cpu is None
                else f"server {r.server_cpu / per_msg * 1e3:.3f} CPU-ms/msg, "
            )
            + f"client {r.client_cpu / per_msg * 1e3:.3f} CPU-ms/msg"
            + ("" if r.fsyncs is None else f", {r.fsyncs / per_msg:.4f} fsyncs/msg")
            + f", lost {r.acked - r.delivered}"
        )
        params = (
            f"{args.pairs} pairs x {args.inflight} in flight, {args.seconds:g} s, {pace}, "
            f"{args.procs} client procs, search index {mode}"
            + ("" if client == "sdk" else f", {client} client")
            + ("" if store == "sqlite" else f", store {store}")
            + (", external server" if args.server else "")
            + (", cProfile" if args.profile else "")
            + (", py-spy" if args.pyspy else "")
        )
        ceiling_text = (
            "n/a" if ceiling is None else f"echo {ceiling.shape}: {fmt(ceiling.rate)} rt/s"
        )
        append_result("chat", params, figures, ceiling_text, ratio)
    return r


def metrics_ab(args: argparse.Namespace) -> None:
    """Interleaved runs with metrics on and off (metrics_enabled), in the same invocation.

    Alternating, each on its own fresh server, so drift in the machine's load hits both
    sides alike; the medians and their ratio are printed and recorded.
    """
    rates: dict[str, list[float]] = {"on": [], "off": []}
    p50s: dict[str, list[float]] = {"on": [], "off": []}
    cpus: dict[str, list[float]] = {"on": [], "off": []}  # server CPU-ms per message
    for round_ in range(args.metrics_ab):
        for mode in ("on", "off"):
            server = BenchServer.start(
                count_fsyncs=False, env={"NATTER_METRICS_ENABLED": "1" if mode == "on" else "0"}
            )
            try:
                r = run_chat(
                    server.address,
                    server,
                    args.pairs,
                    args.seconds,
                    args.inflight,
                    args.rate,
                    args.procs,
                )
            finally:
                server.cleanup()
            rates[mode].append(r.acked_rate)
            p50s[mode].append(r.p50_ms)
            cpu = (
                float("nan")
                if r.server_cpu is None
                else r.server_cpu / max(1, r.acked_in_window) * 1e3
            )
            cpus[mode].append(cpu)
            print(
                f"round {round_ + 1} metrics {mode:<3}: acked {fmt(r.acked_rate)}/s, "
                f"p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, server {cpu:.3f} CPU-ms/msg, "
                f"lost {r.acked - r.delivered}",
                flush=True,
            )

    def median(xs: list[float]) -> float:
        ordered = sorted(xs)
        return (
            ordered[len(ordered) // 2]
            if len(ordered) % 2
            else sum(ordered[len(ordered) // 2 - 1 : len(ordered) // 2 + 1]) / 2
        )

    on, off = median(rates["on"]), median(rates["off"])
    ratio = on / off if off else float("nan")
    rows = [
        ("acked msg/s, metrics on (median)", fmt(on)),
        ("acked msg/s, metrics off (median)", fmt(off)),
        ("on / off", f"{ratio:.3f}"),
        ("p50 ms on / off (median)", f"{median(p50s['on']):.1f} / {median(p50s['off']):.1f}"),
        (
            "server CPU-ms per message on / off (median)",
            f"{median(cpus['on']):.3f} / {median(cpus['off']):.3f}",
        ),
        ("rounds", str(args.metrics_ab)),
    ]
    print_table(f"metrics overhead: {args.pairs} pairs x {args.inflight} in flight", rows)
    if not args.no_record:
        params = (
            f"{args.pairs} pairs x {args.inflight} in flight, {args.seconds:g} s, "
            f"{args.metrics_ab} interleaved rounds on/off, {args.procs} client procs"
        )
        figures = (
            f"metrics on {fmt(on)}/s, off {fmt(off)}/s; server CPU-ms/msg on "
            f"{median(cpus['on']):.3f}, off {median(cpus['off']):.3f} (medians; each round: "
            + ", ".join(
                f"{fmt(a)}/{fmt(b)}" for a, b in zip(rates["on"], rates["off"], strict=True)
            )
            + ")"
        )
        append_result("chat metrics on/off", params, figures, "n/a", f"{ratio:.3f}")


if __name__ == "__main__":
    main()
