"""Group fan-out: deliveries/s and time to the last recipient in a 500-member group; presence.

The server is the embedded one with extra socket servers (hubs) in a child process, so the
channel_svc path is the real one: one forward per socket server with members online. The
recipients' devices are SDK connections in another child process; the sender is this one.
A message's "time to the last recipient" is from just before its send to the moment the last
online member's device surfaced it (CLOCK_MONOTONIC is one clock for every process here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path

from bench import flame
from bench.common import (
    PASSWORD,
    SPAWN,
    append_result,
    cpu_seconds,
    fmt,
    percentile,
    print_table,
)
from natter import domain as d
from natter.sdk import Client, Connection
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc

TAG = "F"
# Seconds the idle server's CPU rate is measured before each flat-out phase.
IDLE_WINDOW = 3.0


# -- the server process ------------------------------------------------------------------------


def _server_main(pipe: Pipe, data_dir: str, nodes: int, beat: float) -> None:
    asyncio.run(_server(pipe, Path(data_dir), nodes, beat))


async def _server(pipe: Pipe, data_dir: Path, nodes: int, beat: float) -> None:
    from app.embedded import EmbeddedServer
    from bench.common import BENCH_SETTINGS
    from natter.settings import Settings

    settings = Settings(
        data_dir=data_dir, grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0"
    ).replace(**BENCH_SETTINGS, heartbeat_interval_seconds=beat)
    async with EmbeddedServer(settings) as srv:
        addresses = [srv.grpc_address]
        for i in range(nodes - 1):
            _, address = await srv.add_socket_server(f"sock-{i}")
            addresses.append(address)
        pipe.send(addresses)
        while True:
            command = await asyncio.to_thread(pipe.recv)
            if command == "stats":
                pipe.send(
                    {
                        "forwards": srv.channels.forwards,
                        "deliveries": sum(h.deliveries for h in srv.fanout.hubs.values()),
                    }
                )
            else:
                break
    pipe.send("stopped")


# -- the recipients' process -------------------------------------------------------------------


def _receivers_main(pipe: Pipe, logins: list[tuple[str, str]]) -> None:
    asyncio.run(_receivers(pipe, logins))


async def _receivers(pipe: Pipe, logins: list[tuple[str, str]]) -> None:
    """Log in and connect each (address, username); report each message once all have it."""
    gate = asyncio.Semaphore(32)

    async def device(address: str, name: str) -> tuple[Client, Connection]:
        async with gate:
            client = Client(address, timeout=60.0)
            await client.login(name, PASSWORD, "bench")
            # No replay: these devices are new and only the live fan-out is measured.
            return client, await Connection(client, skip_replay=True).start(timeout=120.0)

    devices = await asyncio.gather(*(device(a, n) for a, n in logins))
    got: dict[tuple[str, int], int] = defaultdict(int)
    worst: dict[tuple[str, int], int] = defaultdict(int)

    async def consume(conn: Connection) -> None:
        while True:
            ev = await conn.events.get()
            if not isinstance(ev, d.Message) or not ev.text.startswith(TAG):
                continue
            now = time.monotonic_ns()
            _, phase, index, stamp = ev.text.split()
            key = (phase, int(index))
            got[key] += 1
            worst[key] = max(worst[key], now - int(stamp))
            if got[key] == len(devices):
                pipe.send((phase, key[1], worst.pop(key), now))
                del got[key]

    tasks = [asyncio.create_task(consume(conn)) for _, conn in devices]
    pipe.send("ready")
    await asyncio.to_thread(pipe.recv)  # "stop"
    for task in tasks:
        task.cancel()
    for client, conn in devices:
        with contextlib.suppress(Exception):
            await conn.close()
        await client.close()
    pipe.send("stopped")


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FanoutResult:
    online: int
    messages: int
    deliveries_per_second: float
    p50_ms: float
    p99_ms: float
    loaded_p99_ms: float
    forwards_per_message: float
    server_cpu_ms_per_delivery: float
    # The same with the idle server's own CPU rate (heartbeats, presence, upkeep of the
    # online devices, measured just before) taken out: what the deliveries themselves cost.
    above_idle_ms_per_delivery: float
    idle_cpu_share: float


class Run:
    def __init__(
        self,
        addresses: list[str],
        server_pid: int,
        server_pipe: Pipe,
        pyspy: Path | None = None,
    ) -> None:
        self.addresses = addresses
        self.server_pid = server_pid
        self.server_pipe = server_pipe
        # Samples of the server during each flat-out phase: PYSPY.<online>.
        self.pyspy = pyspy
        self.profiles: list[tuple[int, Path]] = []

    def stats(self) -> dict[str, int]:
        self.server_pipe.send("stats")
        result: dict[str, int] = self.server_pipe.recv()
        return result

    async def fanout(
        self,
        sender: Connection,
        thread_id: int,
        members: Sequence[str],
        online: int,
        latency_messages: int,
        load_messages: int,
        window: int,
    ) -> FanoutResult:
        """`online` members (the sender's device among them) connected across the hubs."""
        logins = [
            (self.addresses[i % len(self.addresses)], name)
            for i, name in enumerate(members[1:online])
        ]
        ours, theirs = SPAWN.Pipe()
        proc = SPAWN.Process(target=_receivers_main, args=(theirs, logins), daemon=True)
        proc.start()
        try:
            if not await asyncio.to_thread(ours.poll, 300):
                raise RuntimeError("the recipients did not connect within 300 s")
            assert ours.recv() == "ready"
            notes: asyncio.Queue[tuple[str, int, int, int]] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            quiet_tag, load_tag = f"q{online}", f"l{online}"

            async def note(tag: str) -> tuple[int, int]:
                while True:
                    phase, _, lat, at = await notes.get()
                    if phase == tag:
                        return lat, at

            def relay() -> None:
                while True:
                    note = ours.recv()
                    if note == "stopped":
                        return
                    loop.call_soon_threadsafe(notes.put_nowait, note)

            reader = loop.run_in_executor(None, relay)

            # 1. One message at a time: the time to the last recipient with nothing queued.
            quiet: list[float] = []
            for i in range(latency_messages):
                await sender.send(
                    f"{TAG} {quiet_tag} {i} {time.monotonic_ns()}", thread_id=thread_id
                )
                lat, _ = await note(quiet_tag)
                quiet.append(lat / 1e6)
            # 2. Flat out with a window of sends in flight: deliveries per second.
            sampler = None
            if self.pyspy is not None:
                out = self.pyspy.with_name(f"{self.pyspy.name}.{online}")
                sampler = flame.start(self.server_pid, out, rate=500)
                self.profiles.append((online, out))
                await asyncio.sleep(1.0)  # py-spy attaches before the window opens
            # The idle rate, every member online and nothing sent.
            idle0, idle_at = cpu_seconds(self.server_pid), time.monotonic()
            await asyncio.sleep(IDLE_WINDOW)
            idle_rate = (cpu_seconds(self.server_pid) - idle0) / (time.monotonic() - idle_at)
            before, cpu0, at0 = self.stats(), cpu_seconds(self.server_pid), time.monotonic()
            slots = asyncio.Semaphore(window)
            start = time.monotonic_ns()

            async def send(i: int) -> None:
                async with slots:
                    await sender.send(
                        f"{TAG} {load_tag} {i} {time.monotonic_ns()}", thread_id=thread_id
                    )

            await asyncio.gather(*(send(i) for i in range(load_messages)))
            loaded, last = [], start
            for _ in range(load_messages):
                lat, at = await note(load_tag)
                loaded.append(lat / 1e6)
                last = max(last, at)
            after, cpu1, at1 = self.stats(), cpu_seconds(self.server_pid), time.monotonic()
            if sampler is not None:
                await asyncio.to_thread(flame.stop, sampler)
            ours.send("stop")
            await reader
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        recipients = online - 1
        delivered = load_messages * recipients
        quiet.sort()
        loaded.sort()
        return FanoutResult(
            online=online,
            messages=load_messages,
            deliveries_per_second=delivered / ((last - start) / 1e9),
            p50_ms=percentile(quiet, 50),
            p99_ms=percentile(quiet, 99),
            loaded_p99_ms=percentile(loaded, 99),
            forwards_per_message=(after["forwards"] - before["forwards"]) / load_messages,
            server_cpu_ms_per_delivery=(cpu1 - cpu0) * 1e3 / max(1, delivered),
            above_idle_ms_per_delivery=(cpu1 - cpu0 - idle_rate * (at1 - at0))
            * 1e3
            / max(1, delivered),
            idle_cpu_share=idle_rate,
        )


async def presence_times(address: str, trials: int) -> tuple[list[float], list[float], float]:
    """Seconds from connect/close of a contact to the watcher's push; and for a silent device."""
    watcher, subject = Client(address), Client(address)
    await watcher.login("watcher", PASSWORD, "bench")
    await subject.login("subject", PASSWORD, "bench")
    # Presence goes to mutual contacts only (docs/safety.md): each adds the other.
    await watcher.add_contact("subject")
    await subject.add_contact("watcher")
    watch = await Connection(watcher).start()

    async def pushed(online: bool) -> float:
        while True:
            ev = await asyncio.wait_for(watch.events.get(), 30)
            if isinstance(ev, d.Presence) and ev.user.username == "subject" and ev.online == online:
                return time.monotonic()

    ups, downs = [], []
    for _ in range(trials):
        t0 = time.monotonic()
        conn = await Connection(subject).start()
        ups.append(await pushed(True) - t0)
        t1 = time.monotonic()
        await conn.close()
        downs.append(await pushed(False) - t1)
    # A device that says hello and then nothing (a half-open stream): offline after the timeout.
    call = spb_grpc.SocketServiceStub(subject.channel).Connect(metadata=subject.metadata())
    await call.write(spb.ClientFrame(hello=spb.Hello(skip_replay=True)))
    t2 = await pushed(True)
    silent = await pushed(False) - t2
    call.cancel()
    await watch.close()
    await watcher.close()
    await subject.close()
    return ups, downs, silent


async def setup(address: str, members: int) -> tuple[Client, Connection, int, list[str]]:
    names = [f"member{i:04d}" for i in range(members)]
    gate = asyncio.Semaphore(16)

    async def register(name: str) -> None:
        async with gate, Client(address, timeout=60.0) as c:
            await c.register(name, PASSWORD)

    await asyncio.gather(*(register(n) for n in [*names, "watcher", "subject"]))
    owner = Client(address, timeout=60.0)
    await owner.login(names[0], PASSWORD, "bench")
    group = await owner.create_group("fan-out bench", names[1:])
    sender = await Connection(owner).start()
    return owner, sender, int(group.thread_id), names


async def run(args: argparse.Namespace, run_: Run) -> list[tuple[str, str]]:
    t0 = time.monotonic()
    owner, sender, thread_id, names = await setup(run_.addresses[0], args.members)
    setup_s = time.monotonic() - t0
    ups, downs, silent = await presence_times(run_.addresses[0], args.presence_trials)
    few = await run_.fanout(
        sender, thread_id, names, args.few, args.latency_messages, args.few_messages, args.window
    )
    every = await run_.fanout(
        sender,
        thread_id,
        names,
        args.members,
        args.latency_messages,
        args.all_messages,
        args.window,
    )
    await sender.close()
    await owner.close()
    rows = [("setup (register, create group)", f"{setup_s:.1f} s")]
    for r in (few, every):
        label = f"{r.online} of {args.members} online"
        rows += [
            (
                f"{label}: deliveries/s",
                f"{fmt(r.deliveries_per_second)}  "
                f"({r.messages} messages x {r.online - 1} recipients, {args.window} in flight)",
            ),
            (
                f"{label}: to last recipient p50 / p99",
                f"{r.p50_ms:.1f} / {r.p99_ms:.1f} ms  (one at a time; "
                f"p99 under load {r.loaded_p99_ms:.0f} ms)",
            ),
            (
                f"{label}: channel forwards per message",
                f"{r.forwards_per_message:.2f}  ({min(args.nodes, r.online)} socket servers)",
            ),
            (f"{label}: server CPU per delivery", f"{r.server_cpu_ms_per_delivery:.3f} ms"),
            (
                f"{label}: server CPU per delivery above idle",
                f"{r.above_idle_ms_per_delivery:.3f} ms  (idle server: "
                f"{r.idle_cpu_share * 100:.0f} % of a core, heartbeats every {args.beat:g} s)",
            ),
        ]
    rows += [
        (
            "deliveries/s ratio all / few",
            f"{every.deliveries_per_second / few.deliveries_per_second:.2f}",
        ),
        (
            "presence online push (connect -> watcher)",
            f"mean {sum(ups) / len(ups):.2f} s, max {max(ups):.2f} s",
        ),
        (
            "presence offline push (close -> watcher)",
            f"mean {sum(downs) / len(downs):.2f} s, max {max(downs):.2f} s",
        ),
        ("presence silent device -> offline", f"{silent:.2f} s"),
        ("presence bound (interval / timeout)", f"{args.beat:g} s / {args.beat * 3:g} s"),
    ]
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.group_fanout", description=__doc__)
    p.add_argument("--members", type=int, default=500, help="group size (default 500)")
    p.add_argument("--few", type=int, default=10, help="members online in the small case")
    p.add_argument("--nodes", type=int, default=4, help="socket servers (default 4)")
    p.add_argument(
        "--latency-messages",
        type=int,
        default=20,
        help="messages sent one at a time for latency (default 20)",
    )
    p.add_argument(
        "--few-messages",
        type=int,
        default=1000,
        help="messages flat out with few online (default 1000)",
    )
    p.add_argument(
        "--all-messages",
        type=int,
        default=60,
        help="messages flat out with all online (default 60)",
    )
    p.add_argument("--window", type=int, default=16, help="sends in flight (default 16)")
    p.add_argument(
        "--beat",
        type=float,
        default=1.0,
        help="heartbeat interval in seconds (default 1; the product's is 5)",
    )
    p.add_argument("--presence-trials", type=int, default=3)
    p.add_argument(
        "--py-spy",
        dest="pyspy",
        type=Path,
        help="sample the server with py-spy during each flat-out phase (collapsed stacks in "
        "PYSPY.<online>), print where its CPU went",
    )
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)

    started = time.monotonic()
    folder = tempfile.mkdtemp(prefix="natter-fanout-")
    ours, theirs = SPAWN.Pipe()
    server = SPAWN.Process(
        target=_server_main,
        daemon=True,
        args=(theirs, str(Path(folder) / "data"), args.nodes, args.beat),
    )
    server.start()
    try:
        if not ours.poll(60):
            raise RuntimeError("the server did not start within 60 s")
        addresses: list[str] = ours.recv()
        assert server.pid is not None
        run_ = Run(addresses, server.pid, ours, args.pyspy)
        rows = asyncio.run(run(args, run_))
        ours.send("stop")
        ours.poll(30)
    finally:
        server.join(30)
        if server.is_alive():
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)
    rows.append(("total run time", f"{time.monotonic() - started:.1f} s"))
    print_table(f"natter group fan-out: {args.members} members, {args.nodes} socket servers", rows)
    for online, path in run_.profiles:
        if path.exists():
            print(f"server, flat out with {online} online:\n{flame.summary(path)}\n")
    if not args.no_record:
        append_result(
            "group",
            f"{args.members} members, {args.nodes} socket servers, window {args.window}"
            + (", py-spy" if args.pyspy else ""),
            "; ".join(f"{k}: {v}" for k, v in rows if k != "total run time"),
            "n/a",
            "n/a",
        )


if __name__ == "__main__":
    main()
