"""Many idle devices: memory per device, CPU per heartbeat and connect time, next to bare gRPC."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import resource
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import grpc

from bench import echo
from bench.common import (
    BENCH_SETTINGS,
    PASSWORD,
    SPAWN,
    BenchServer,
    append_result,
    cpu_seconds,
    print_table,
    rss_bytes,
)

# Streams opening at once per client process: enough to be quick, few enough that a
# connect is not a thundering herd the server must queue.
CONNECT_CONCURRENCY = 64
# Each client channel gets its own TCP connection (grpc.aio shares one per target otherwise).
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
TEXT = "idle bench message"


@dataclass(frozen=True, slots=True)
class Job:
    """One client process's share: what to connect to and as whom."""

    kind: str  # "natter" or "bare"
    address: str
    tokens: tuple[str, ...]  # natter: one bearer token per device; bare: one "" per stream
    usernames: tuple[str, ...]
    channels: int
    interval: float


@dataclass
class Report:
    """What a client process saw; sent back over its pipe at each step."""

    connected: int = 0
    failed: int = 0
    connect_seconds: float = 0.0
    beats_sent: int = 0
    beats_answered: int = 0
    sent: int = 0
    acked: int = 0
    arrived: int = 0
    duplicates: int = 0
    lost: int = 0
    ended: int = 0  # streams the server ended while they should have stayed open
    errors: list[str] = field(default_factory=list)
    cpu: float = 0.0


class _Device:
    __slots__ = ("call", "index")

    def __init__(self, index: int, call: Any) -> None:
        self.index = index
        self.call = call


def _raise_nofile() -> None:
    """As many open files as the hard limit allows: a client holds many connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _client(pipe: Pipe, job: Job) -> None:
    from natter.v1 import socket_service_pb2 as spb
    from natter.v1 import socket_service_pb2_grpc as spb_grpc

    _raise_nofile()
    loop = asyncio.get_running_loop()
    report = Report()
    channels = [
        grpc.aio.insecure_channel(job.address, options=CHANNEL_OPTIONS) for _ in range(job.channels)
    ]
    for channel in channels:
        await channel.channel_ready()
    devices: list[_Device] = []
    readers: list[asyncio.Task[None]] = []
    # Deliveries by recipient index and msg_id; send results by client_msg_id.
    arrivals: Counter[tuple[int, str]] = Counter()
    results: dict[str, str] = {}
    settled = asyncio.Event()
    want = 0
    closing = False
    hello = spb.ClientFrame(hello=spb.Hello(skip_replay=True, accept_batches=True))
    beat = spb.ClientFrame(heartbeat=spb.Heartbeat())

    def frames_of(frame: spb.ServerFrame) -> Sequence[spb.ServerFrame]:
        return frame.batch.frames if frame.WhichOneof("payload") == "batch" else (frame,)

    async def read_natter(dev: _Device) -> None:
        nonlocal want
        while True:
            got = await dev.call.read()
            if got is grpc.aio.EOF:
                if not closing:
                    report.ended += 1
                return
            for frame in frames_of(got):
                which = frame.WhichOneof("payload")
                if which == "heartbeat_ack":
                    report.beats_answered += 1
                elif which == "message" and frame.message.text == TEXT:
                    if frame.message.sender.username != job.usernames[dev.index]:
                        arrivals[(dev.index, frame.message.msg_id)] += 1
                        if len(arrivals) >= want and len(results) >= want:
                            settled.set()
                elif which == "send_result":
                    results[frame.send_result.client_msg_id] = frame.send_result.msg_id
                    if len(arrivals) >= want and len(results) >= want:
                        settled.set()
                elif which == "error" and len(report.errors) < 5:
                    report.errors.append(f"{frame.error.reason}: {frame.error.message}")

    async def read_bare(dev: _Device) -> None:
        while True:
            got = await dev.call.read()
            if got is grpc.aio.EOF:
                if not closing:
                    report.ended += 1
                return
            report.beats_answered += 1

    async def open_one(index: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            channel = channels[index % len(channels)]
            try:
                if job.kind == "natter":
                    stub = spb_grpc.SocketServiceStub(channel)
                    call: Any = stub.Connect(
                        metadata=(("authorization", f"Bearer {job.tokens[index]}"),)
                    )
                    await call.write(hello)
                    while True:  # Welcome, then SyncDone: the device is live
                        first: Any = await call.read()
                        if first is grpc.aio.EOF:
                            raise RuntimeError("stream ended before SyncDone")
                        if any(f.WhichOneof("payload") == "sync_done" for f in frames_of(first)):
                            break
                else:
                    call = channel.stream_stream(f"/{echo.SERVICE}/Echo")()
                    await call.write(echo.PAYLOAD)
                    if await call.read() is grpc.aio.EOF:
                        raise RuntimeError("echo stream ended at once")
            except Exception as e:  # counted and reported, never a hang
                report.failed += 1
                if len(report.errors) < 5:
                    report.errors.append(repr(e)[:200])
                return
            dev = _Device(index, call)
            devices.append(dev)
            reader = read_natter if job.kind == "natter" else read_bare
            readers.append(loop.create_task(reader(dev)))

    t0 = time.monotonic()
    cpu0 = time.process_time()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    await asyncio.gather(*(open_one(i, gate) for i in range(len(job.tokens))))
    report.connect_seconds = time.monotonic() - t0
    report.connected = len(devices)
    report.cpu = time.process_time() - cpu0
    pipe.send(report)

    beating = asyncio.Event()
    beating.set()
    parked = asyncio.Event()  # the heartbeat task writes nothing while this is set

    async def beat_one(dev: _Device) -> None:
        with contextlib.suppress(Exception):
            await dev.call.write(beat if job.kind == "natter" else echo.PAYLOAD)
            report.beats_sent += 1

    async def heartbeats() -> None:
        # Every device beats once per interval, spread evenly over it, like phones would.
        # A step's writes go out together (each on its own stream): awaited one by one they
        # would take a loop turn each and fall behind with thousands of streams.
        if not devices:
            return
        step = 0.05
        per_step = max(1, round(len(devices) * step / job.interval))
        i = 0
        due = time.monotonic()
        while True:
            if not beating.is_set():
                parked.set()
                await beating.wait()
                parked.clear()
                due = time.monotonic()
            chunk = [devices[(i + k) % len(devices)] for k in range(per_step)]
            i += per_step
            await asyncio.gather(*(beat_one(dev) for dev in chunk))
            due += step
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    beater = loop.create_task(heartbeats())
    while True:
        command = await asyncio.to_thread(pipe.recv)
        if command == "stats":
            report.cpu = time.process_time() - cpu0
            pipe.send(report)
        elif isinstance(command, tuple) and command[0] == "send":
            # Devices 2k send to 2k+1 (same process, so arrival is checked here).
            _, pairs, per_pair = command
            beating.clear()  # one writer per stream at a time: wait for the beats to stop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(parked.wait(), 30.0)
            pairs = min(pairs, len(devices) // 2)
            want = pairs * per_pair
            keys: list[str] = []
            for k in range(pairs):
                dev, peer = devices[2 * k], devices[2 * k + 1]
                frames = [
                    spb.ClientFrame(
                        send=spb.Send(
                            client_msg_id=uuid.uuid4().hex,
                            recipient=job.usernames[peer.index],
                            text=TEXT,
                        )
                    )
                    for _ in range(per_pair)
                ]
                keys.extend(f.send.client_msg_id for f in frames)
                report.sent += len(frames)
                await dev.call.write(spb.ClientFrame(batch=spb.ClientBatch(frames=frames)))
            beating.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), 60.0)
            await asyncio.sleep(0)
            report.acked = sum(1 for k in keys if k in results)
            delivered = {msg_id for (_, msg_id) in arrivals}
            report.arrived = len(delivered)
            report.duplicates = sum(n - 1 for n in arrivals.values())
            acked_ids = {results[k] for k in keys if k in results}
            report.lost = len(acked_ids - delivered)
            pipe.send(report)
        else:  # stop
            break
    closing = True
    beater.cancel()
    for dev in devices:
        dev.call.cancel()
    await asyncio.gather(*readers, beater, return_exceptions=True)
    for channel in channels:
        await channel.close()
    pipe.send(report)


def _client_main(pipe: Pipe, job: Job) -> None:
    try:
        asyncio.run(_client(pipe, job))
    except BaseException as e:
        pipe.send(RuntimeError(f"client process failed: {e!r}"))  # gRPC errors do not pickle
        raise


# -- accounts ---------------------------------------------------------------------------------


def bulk_accounts(server: BenchServer, count: int, tag: str) -> tuple[list[str], list[str]]:
    """`count` accounts with one logged-in device each, written straight into the stopped
    server's SQLite database in one transaction (registering 20,000 over the API would take
    minutes of argon2 and fsyncs; the server reads them as it reads any account).

    Every account shares one real argon2 hash of the bench password; each device gets its
    own random token (the server keeps its SHA-256) and a recent `last_active_time`, so a
    connect does not renew the token (a write the bench would otherwise measure).
    """
    import hashlib

    import sqlalchemy as sa
    from argon2 import PasswordHasher

    from message_svc import schema

    assert server.data_dir is not None
    hasher = PasswordHasher(
        time_cost=int(str(BENCH_SETTINGS["argon2_time_cost"])),
        memory_cost=int(str(BENCH_SETTINGS["argon2_memory_kib"])),
    )
    password_hash = hasher.hash(PASSWORD)
    now = dt.datetime.now(dt.UTC)
    expire = now + dt.timedelta(days=365)
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'natter.db'}")
    tokens = [secrets.token_urlsafe(32) for _ in range(count)]
    names = [f"{tag}{i}" for i in range(count)]
    try:
        with engine.begin() as db:
            first = (
                int(
                    db.execute(
                        sa.select(sa.func.coalesce(sa.func.max(schema.users.c.id), 0))
                    ).scalar_one()
                )
                + 1
            )
            db.execute(
                schema.users.insert(),
                [
                    {
                        "id": first + i,
                        "username": name,
                        "display_name": name,
                        "phone": None,
                        "password_hash": password_hash,
                        "hide_last_seen": False,
                        "create_time": now,
                    }
                    for i, name in enumerate(names)
                ],
            )
            db.execute(
                schema.devices.insert(),
                [
                    {
                        "user_id": first + i,
                        "name": "idle bench",
                        "token_hash": hashlib.sha256(token.encode()).hexdigest(),
                        "create_time": now,
                        "last_active_time": now,
                        "expire_time": expire,
                    }
                    for i, token in enumerate(tokens)
                ],
            )
    finally:
        engine.dispose()
    return tokens, names


# -- orchestration (no gRPC in this process) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdleResult:
    kind: str
    devices: int
    connected: int
    failed: int
    connect_seconds: float
    connect_cpu: float  # the server's, from the first client process's start to the last connect
    connect_client_cpu: float
    rss_before: int
    rss_after: int
    beats: int  # heartbeats answered in the CPU window
    cpu_window: float  # server CPU over the window
    idle_cpu_rate: float  # server CPU per second before any device connected
    window: float
    sent: int = 0
    acked: int = 0
    arrived: int = 0
    duplicates: int = 0
    lost: int = 0
    ended: int = 0
    client_cpu: float = 0.0
    errors: tuple[str, ...] = ()

    @property
    def per_device(self) -> float:
        return (self.rss_after - self.rss_before) / max(1, self.connected)

    @property
    def cpu_per_beat(self) -> float:
        """Server CPU-seconds per heartbeat answered, the idle server's own use taken out."""
        extra = self.cpu_window - self.idle_cpu_rate * self.window
        return max(0.0, extra) / max(1, self.beats)


def _collect(children: list[tuple[Pipe, Any]], timeout: float) -> list[Report]:
    out: list[Report] = []
    for pipe, _ in children:
        if not pipe.poll(timeout):
            raise RuntimeError(f"a client process did not answer in {timeout:g} s")
        got = pipe.recv()
        if isinstance(got, BaseException):
            raise got
        out.append(got)
    return out


def run_idle(
    kind: str,
    address: str,
    pid: int,
    tokens: Sequence[str],
    usernames: Sequence[str],
    *,
    procs: int,
    channels: int,
    interval: float,
    window: float,
    pairs: int,
    per_pair: int,
    progress: Any = print,
    snapshot: Any = None,
) -> IdleResult:
    """Connect every device (or bare stream), beat for a while, measure, optionally send.

    `snapshot`, when given, is called just before the first device connects and again when
    the memory after is read (a tracemalloc snapshot of the server each time).
    """
    n = len(tokens)
    idle0, t_idle = cpu_seconds(pid), time.monotonic()
    time.sleep(min(2.0, window))
    idle_rate = (cpu_seconds(pid) - idle0) / (time.monotonic() - t_idle)
    if snapshot is not None:
        snapshot()
    rss_before = rss_bytes(pid)
    children = []
    for p in range(procs):
        share = range(p, n, procs)
        job = Job(
            kind,
            address,
            tuple(tokens[i] for i in share),
            tuple(usernames[i] for i in share),
            max(1, channels // procs),
            interval,
        )
        ours, theirs = SPAWN.Pipe()
        proc = SPAWN.Process(target=_client_main, args=(theirs, job), daemon=True)
        proc.start()
        children.append((ours, proc))
    try:
        t0, c0 = time.monotonic(), cpu_seconds(pid)
        connected = _collect(children, 600)
        connect_seconds = time.monotonic() - t0
        connect_cpu = cpu_seconds(pid) - c0
        done = sum(r.connected for r in connected)
        progress(f"  {kind}: {done:,} of {n:,} connected in {connect_seconds:.1f} s")
        # Two heartbeat rounds before measuring: every stream has beaten and settled.
        time.sleep(2 * interval)
        rss_after = rss_bytes(pid)
        if snapshot is not None:
            snapshot()
        for pipe, _ in children:
            pipe.send("stats")
        before = _collect(children, 60)
        cpu0 = cpu_seconds(pid)
        time.sleep(window)
        cpu1 = cpu_seconds(pid)
        for pipe, _ in children:
            pipe.send("stats")
        after = _collect(children, 60)
        beats = sum(a.beats_answered for a in after) - sum(b.beats_answered for b in before)
        sent_reports = after
        if kind == "natter" and pairs > 0:
            per_proc = max(1, pairs // procs)
            for pipe, _ in children:
                pipe.send(("send", per_proc, per_pair))
            sent_reports = _collect(children, 120)
        for pipe, _ in children:
            pipe.send("stop")
        final = _collect(children, 120)
        for _, proc in children:
            proc.join(10)
    finally:
        for _, proc in children:
            if proc.is_alive():
                proc.kill()
    return IdleResult(
        kind=kind,
        devices=n,
        connected=done,
        failed=sum(r.failed for r in connected),
        connect_seconds=connect_seconds,
        connect_cpu=connect_cpu,
        connect_client_cpu=sum(r.cpu for r in connected),
        rss_before=rss_before,
        rss_after=rss_after,
        beats=beats,
        cpu_window=cpu1 - cpu0,
        idle_cpu_rate=idle_rate,
        window=window,
        sent=sum(r.sent for r in sent_reports),
        acked=sum(r.acked for r in sent_reports),
        arrived=sum(r.arrived for r in sent_reports),
        duplicates=sum(r.duplicates for r in sent_reports),
        lost=sum(r.lost for r in sent_reports),
        ended=sum(r.ended for r in final),
        client_cpu=sum(r.cpu for r in after) - sum(r.cpu for r in before),
        errors=tuple(e for r in final for e in r.errors),
    )


def measure_bare(
    n: int, *, procs: int, channels: int, interval: float, window: float, progress: Any = print
) -> IdleResult:
    """The ceiling: the same number of idle bidirectional streams on a bare grpc.aio server."""
    server = echo.EchoServer()
    try:
        return run_idle(
            "bare",
            server.address,
            server.pid,
            [""] * n,
            [""] * n,
            procs=procs,
            channels=channels,
            interval=interval,
            window=window,
            pairs=0,
            per_pair=0,
            progress=progress,
        )
    finally:
        server.close()


def measure_natter(
    n: int,
    *,
    procs: int,
    channels: int,
    interval: float,
    window: float,
    pairs: int,
    per_pair: int,
    progress: Any = print,
    env: dict[str, str] | None = None,
    pyspy: Path | None = None,
    profile: Path | None = None,
    tracemalloc: Path | None = None,
) -> IdleResult:
    """`n` authenticated idle devices on one embedded server of our own."""
    if tracemalloc is not None:
        tracemalloc = tracemalloc.resolve()
        tracemalloc.mkdir(parents=True, exist_ok=True)
    server = BenchServer.start(count_fsyncs=False, env=env)
    try:
        server.stop()  # the schema exists now; accounts go in while nothing else writes
        t0 = time.monotonic()
        tokens, names = bulk_accounts(server, n, "i" + uuid.uuid4().hex[:6])
        progress(f"  natter: {n:,} accounts and devices written in {time.monotonic() - t0:.1f} s")
        server = BenchServer.start(
            count_fsyncs=False,
            env=env,
            folder=server.folder,
            pyspy=pyspy,
            profile=profile,
            tracemalloc=None if tracemalloc is None else tracemalloc / "snapshot",
            timeout=30.0 if tracemalloc is None else 300.0,  # tracing slows the start
        )
        assert server.pid is not None
        try:
            result = run_idle(
                "natter",
                server.address,
                server.pid,
                tokens,
                names,
                procs=procs,
                channels=channels,
                interval=interval,
                window=window,
                pairs=pairs,
                per_pair=per_pair,
                progress=progress,
                snapshot=None if tracemalloc is None else server.snapshot,
            )
        except BaseException:
            print(server.log_tail())
            raise
        server.stop()
        if check(result):
            print("server log, last lines:\n" + server.log_tail(40))
        if pyspy is not None:
            print(server.flame_summary())
        if profile is not None:
            print(server.hot_spots())
        if tracemalloc is not None:
            from bench import memwatch

            snaps = tracemalloc / "snapshot"
            print(memwatch.diff(Path(f"{snaps}.0"), Path(f"{snaps}.1"), max(1, result.connected)))
        return result
    finally:
        server.cleanup()


def rows(natter: IdleResult, bare: IdleResult | None) -> list[tuple[str, str]]:
    kib = 1024
    out = [
        (
            "devices connected / asked",
            f"{natter.connected:,} / {natter.devices:,} (failed {natter.failed})",
        ),
        (
            "time to connect them all",
            f"{natter.connect_seconds:.1f} s ({natter.connected / max(1e-9, natter.connect_seconds):,.0f}/s)",
        ),
        (
            "CPU per connect, server / client",
            f"{natter.connect_cpu / max(1, natter.connected) * 1e3:.2f} / "
            f"{natter.connect_client_cpu / max(1, natter.connected) * 1e3:.2f} ms",
        ),
        (
            "server RSS before / after",
            f"{natter.rss_before / 2**20:,.1f} / {natter.rss_after / 2**20:,.1f} MiB",
        ),
        ("server memory per device", f"{natter.per_device / kib:.1f} KiB"),
        (
            "server CPU per heartbeat",
            f"{natter.cpu_per_beat * 1e3:.3f} ms ({natter.beats:,} answered in {natter.window:g} s, {natter.cpu_window / natter.window:.0%} of a core)",
        ),
        ("client CPU per heartbeat", f"{natter.client_cpu / max(1, natter.beats) * 1e3:.3f} ms"),
        ("streams ended by the server", str(natter.ended)),
    ]
    if natter.sent:
        out.append(
            (
                "sent / acked / arrived",
                f"{natter.sent:,} / {natter.acked:,} / {natter.arrived:,} "
                f"(lost {natter.lost}, duplicates {natter.duplicates})",
            )
        )
    if bare is not None:
        out += [
            (
                "bare grpc.aio streams connected",
                f"{bare.connected:,} in {bare.connect_seconds:.1f} s",
            ),
            ("bare server memory per stream", f"{bare.per_device / kib:.1f} KiB"),
            ("bare server CPU per echo", f"{bare.cpu_per_beat * 1e3:.3f} ms"),
            ("natter / bare memory", f"{natter.per_device / max(1.0, bare.per_device):.2f}"),
        ]
    if natter.errors:
        out.append(("first errors", "; ".join(natter.errors[:3])))
    if bare is not None and bare.errors:
        out.append(("first bare errors", "; ".join(bare.errors[:3])))
    return out


def check(natter: IdleResult) -> list[str]:
    """What must hold for the run to count: every device on, every message once."""
    problems = []
    if natter.connected != natter.devices:
        problems.append(f"{natter.devices - natter.connected} devices did not connect")
    if natter.ended:
        problems.append(f"{natter.ended} streams were ended by the server")
    if natter.lost or natter.duplicates or natter.acked != natter.sent:
        problems.append(
            f"sends: {natter.sent} sent, {natter.acked} acked, lost {natter.lost}, "
            f"duplicates {natter.duplicates}"
        )
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    p.add_argument("--devices", type=int, default=20_000, help="idle devices (default 20,000)")
    p.add_argument("--procs", type=int, default=8, help="client processes (default 8)")
    p.add_argument(
        "--channels",
        type=int,
        default=8,
        help="TCP connections over all client processes (default 8)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=float(str(5.0)),
        help="seconds between a device's heartbeats (default 5, the server's default)",
    )
    p.add_argument("--window", type=float, default=10.0, help="seconds CPU is measured over")
    p.add_argument("--pairs", type=int, default=100, help="sender/recipient pairs that send")
    p.add_argument("--per-pair", type=int, default=3, help="messages each sender sends")
    p.add_argument(
        "--py-spy",
        dest="pyspy",
        type=Path,
        help="sample the natter server with py-spy (collapsed stacks here), print where CPU went",
    )
    p.add_argument(
        "--profile", type=Path, help="run the natter server under cProfile, print hot spots"
    )
    p.add_argument(
        "--tracemalloc",
        type=Path,
        metavar="DIR",
        help="trace the natter server's allocations (snapshots in DIR), print what each "
        "device added by place (slow: use a few thousand devices)",
    )
    p.add_argument("--no-bare", action="store_true", help="skip the bare grpc.aio ceiling")
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)
    _raise_nofile()
    common = {
        "procs": args.procs,
        "channels": args.channels,
        "interval": args.interval,
        "window": args.window,
    }
    bare = None if args.no_bare else measure_bare(args.devices, **common)
    natter = measure_natter(
        args.devices,
        pairs=args.pairs,
        per_pair=args.per_pair,
        pyspy=args.pyspy,
        profile=args.profile,
        tracemalloc=args.tracemalloc,
        **common,
    )
    print_table(
        f"idle devices: {args.devices:,} over {args.channels} connections in {args.procs} "
        f"client processes, heartbeat every {args.interval:g} s",
        rows(natter, bare),
    )
    problems = check(natter)
    if not args.no_record:
        figures = (
            f"{natter.connected:,} connected in {natter.connect_seconds:.1f} s; "
            f"{natter.per_device / 1024:.1f} KiB/device; "
            f"{natter.cpu_per_beat * 1e3:.3f} server CPU-ms/heartbeat; "
            f"sent {natter.sent}, lost {natter.lost}, duplicates {natter.duplicates}"
        )
        ceiling = (
            "n/a" if bare is None else f"bare grpc.aio {bare.per_device / 1024:.1f} KiB/stream"
        )
        ratio = "n/a" if bare is None else f"{natter.per_device / max(1.0, bare.per_device):.2f}"
        append_result(
            "idle",
            f"{args.devices:,} devices, {args.channels} connections, {args.procs} client procs, "
            f"heartbeat {args.interval:g} s",
            figures,
            ceiling,
            ratio,
        )
    if problems:
        raise SystemExit("FAILED: " + "; ".join(problems))


if __name__ == "__main__":
    main()
