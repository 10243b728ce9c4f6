"""A local cluster of real processes for fault tests, and chat traffic that checks for loss.

`Cluster` starts etcd and PostgreSQL (Debian binaries, temporary folders, free ports), then
every natter role as its own `natter serve --role ROLE` child process on free 127.0.0.1
ports. Any process can be SIGKILLed (`kill`), stopped cleanly (`terminate`) and started
again on the same ports (`restart`); `heal()` brings back whatever is down. An observer
`EtcdRegistry` (one that registers nothing) shows what the cluster itself sees.

`Chat` drives users over the SDK against the front door (both message nodes, as one
`ipv4:` target with failover) and records what every device acknowledged and received,
so a test can assert: no acknowledged message lost, none duplicated, per-thread order kept.
Synchronisation is by polling for conditions with deadlines, never by sleeping a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.dbservers import PostgresServer, ServerUnavailable, require
from devtools.etcd import EtcdServer, etcd_binary
from devtools.ports import free_port
from devtools.processes import log_tail
from devtools.serving import natter_command, serving
from natter import domain as d
from natter.errors import NatterError
from natter.sdk import Client, Connected, Connection
from registry import EtcdRegistry
from tests.helpers import eventually
from tests.procs import TEST_ENV

SECRET = "cluster-test-secret"
PASSWORD = "correct horse battery"
START_TIMEOUT = 40.0


@dataclass
class RoleProc:
    """One `natter serve --role ROLE` child process with fixed ports and node id."""

    role: str
    node_id: str
    log_path: Path
    env: dict[str, str]
    extra_args: list[str]
    grpc_port: int = field(default_factory=free_port)
    internal_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def public_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def internal_addr(self) -> str:
        return f"127.0.0.1:{self.internal_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        return [
            *natter_command(),
            "serve",
            "--role",
            self.role,
            "--node-id",
            self.node_id,
            "--grpc",
            self.public_addr,
            "--internal",
            self.internal_addr,
            *(["--http", f"127.0.0.1:{self.http_port}"] if self.role == "message" else []),
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
            *self.extra_args,
        ]

    def spawn(self) -> None:
        assert not self.running, f"{self.node_id} is already running"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        """kill -9: no deregistration, no flush, no goodbye to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (a clean stop: deregister, close sessions, finish in-flight work)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        return int(proc.returncode)

    async def serving(self) -> bool:
        return await serving(self.public_addr)

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)


class Cluster:
    """etcd + PostgreSQL + natter roles, each a real process on loopback."""

    def __init__(
        self,
        root: Path,
        *,
        sockets: int = 3,
        messages: int = 2,
        channels: int = 1,
        presences: int = 1,
        ttl: int = 2,
        heartbeat: float = 1.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.counts = {
            "message": messages,
            "channel": channels,
            "presence": presences,
            "socket": sockets,
        }
        self.extra_env = env or {}
        self.etcd = EtcdServer()
        self.db: PostgresServer | None = None
        self.db_url = ""
        self.procs: list[RoleProc] = []
        self.observer: EtcdRegistry | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NATTER_")}
        env.update(TEST_ENV)
        env.update(
            {
                "NATTER_LOG_LEVEL": "INFO",
                "NATTER_CLUSTER_SECRET": SECRET,
                "NATTER_LEASE_TTL_SECONDS": str(self.ttl),
                "NATTER_HEARTBEAT_INTERVAL_SECONDS": str(self.heartbeat),
                "NATTER_ETCD_ENDPOINTS": self.etcd.endpoint,
                "NATTER_DATABASE_URL": self.db_url,
                "GRPC_VERBOSITY": "ERROR",
            }
        )
        env.update(self.extra_env)
        return env

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = PostgresServer()
        await asyncio.gather(self.etcd.start(), self.db.start())
        self.db_url = await self.db.create_database("natter")
        self.observer = EtcdRegistry([self.etcd.endpoint], ttl=self.ttl)
        await self.observer.start()
        env = self._env()
        for role, count in self.counts.items():
            for i in range(1, count + 1):
                node_id = f"{role}-{i}"
                self.procs.append(
                    RoleProc(
                        role,
                        node_id,
                        self.root / f"{node_id}.log",
                        env,
                        ["--data", str(self.root / node_id)],
                    )
                )
        # The first message node applies the migrations; the others start once it serves.
        first, rest = self.procs[0], self.procs[1:]
        first.spawn()
        await self.wait_ready([first])
        for p in rest:
            p.spawn()
        await self.wait_ready()

    async def stop(self) -> None:
        await asyncio.gather(
            *(p.terminate(10) for p in self.procs if p.running), return_exceptions=True
        )
        for p in self.procs:
            p.kill()
        if self.observer is not None:
            await self.observer.close(revoke=False)
        await asyncio.to_thread(self.etcd.remove)
        if self.db is not None:
            await asyncio.to_thread(self.db.remove)

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what runs where ---------------------------------------------------------------

    def of(self, role: str) -> list[RoleProc]:
        return [p for p in self.procs if p.role == role]

    def proc(self, node_id: str) -> RoleProc:
        return next(p for p in self.procs if p.node_id == node_id)

    @property
    def front_door(self) -> str:
        """Both message nodes as one gRPC target: the channel fails over between them."""
        return "ipv4:" + ",".join(p.public_addr for p in self.of("message"))

    def registered(self, role: str) -> set[str]:
        assert self.observer is not None
        return {n.node_id for n in self.observer.nodes(role)}

    def owner(self, user_id: int) -> str | None:
        """The socket node that owns a user, as the cluster's ring says now."""
        assert self.observer is not None
        node = self.observer.ring("socket").owner(str(user_id))
        return node.node_id if node else None

    # -- waiting and healing -----------------------------------------------------------

    async def wait_ready(
        self, procs: Sequence[RoleProc] | None = None, timeout: float = START_TIMEOUT
    ) -> None:
        """Every given (default: every) process serves and the registry lists exactly them."""
        group = list(procs if procs is not None else self.procs)

        async def ready() -> bool:
            for p in group:
                if not p.running:
                    raise AssertionError(f"{p.node_id} exited:\n{p.log_tail()}")
                if not await p.serving():
                    return False
            if procs is None:
                for role in self.counts:
                    want = {p.node_id for p in self.of(role) if p.running}
                    if self.registered(role) != want:
                        return False
            else:
                for p in group:
                    if p.node_id not in self.registered(p.role):
                        return False
            return True

        try:
            await eventually(ready, timeout, 0.05, "cluster ready")
        except AssertionError as e:
            tails = "\n".join(f"== {p.node_id}\n{p.log_tail(10)}" for p in group)
            raise AssertionError(f"{e}\n{tails}") from None

    async def restart(self, p: RoleProc, *, crash: bool = True) -> None:
        if crash:
            p.kill()
        elif p.running:
            await p.terminate()
        p.spawn()
        await self.wait_ready([p])

    async def heal(self) -> None:
        """Whatever a test took down comes back; returns once everything is registered."""
        if not self.etcd.running:
            await self.etcd.start()
        if self.db is not None and not self.db.running:
            await self.db.start()
        for p in self.procs:
            if not p.running:
                p.spawn()
        await self.wait_ready()


# -- chat traffic ------------------------------------------------------------------------

_run = itertools.count(1)


def _state(conn: Connection) -> str:
    """Whether the SDK's connection loop still runs (for failure messages)."""
    task = conn._task
    if task is None:
        return "not started"
    if not task.done():
        return "running"
    return f"ended: {task.exception()!r}" if not task.cancelled() else "cancelled"


@dataclass
class Peer:
    """One user on one device, and everything it saw."""

    name: str
    client: Client
    conn: Connection | None = None
    target: str = ""  # recipient username (direct) ...
    thread_id: int = 0  # ... or a group thread
    received: dict[int, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    connects: list[tuple[float, str]] = field(default_factory=list)
    acked: list[tuple[int, int, str]] = field(default_factory=list)  # thread, seq, text
    failures: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        """The socket node this device is connected to now."""
        return self.connects[-1][1] if self.connects else ""


class Chat:
    """Users sending to each other (direct pairs or one group) while the cluster is hurt."""

    def __init__(
        self, front: str, users: int, *, group: bool = False, interval: float = 0.2, name: str = ""
    ) -> None:
        self.front = front
        self.size = users
        self.group = group
        self.interval = interval
        self.tag = name or f"r{next(_run)}x{os.getpid() % 1000}"
        self.peers: list[Peer] = []
        self.members: dict[int, list[Peer]] = defaultdict(list)
        self._stopping = asyncio.Event()
        self._senders: list[asyncio.Task[None]] = []
        self._readers: list[asyncio.Task[None]] = []

    async def open(self) -> Chat:
        gate = asyncio.Semaphore(16)

        async def make(i: int) -> Peer:
            async with gate:
                name = f"{self.tag}u{i}"
                client = Client(self.front, timeout=20.0)
                await client.register(name, PASSWORD)
                await client.login(name, PASSWORD, "test")
                return Peer(name, client)

        self.peers = list(await asyncio.gather(*(make(i) for i in range(self.size))))
        if self.group:
            first = self.peers[0]
            thread = await first.client.create_group(
                f"{self.tag} group", [p.name for p in self.peers[1:]]
            )
            thread_id = int(thread.thread_id)
            for p in self.peers:
                p.thread_id = thread_id
                self.members[thread_id].append(p)
        else:
            for a, b in zip(self.peers[::2], self.peers[1::2], strict=True):
                a.target, b.target = b.name, a.name

        async def connect(p: Peer) -> None:
            async with gate:
                p.conn = Connection(p.client)
                self._readers.append(asyncio.create_task(self._read(p)))
                await p.conn.start(timeout=30)

        await asyncio.gather(*(connect(p) for p in self.peers))
        return self

    async def _read(self, p: Peer) -> None:
        assert p.conn is not None
        while True:
            ev = await p.conn.next_event()
            if isinstance(ev, Connected):
                p.connects.append((time.monotonic(), ev.node_id))
            elif isinstance(ev, d.Message) and ev.sender.username != p.name:
                p.received[ev.thread_id].append((ev.seq, ev.text))

    def start(self) -> None:
        """Every user sends, one message at a time, each after the previous was acknowledged."""
        self._stopping.clear()
        self._senders = [asyncio.create_task(self._send_loop(p)) for p in self.peers]

    async def _send_loop(self, p: Peer) -> None:
        assert p.conn is not None
        for i in itertools.count(len(p.acked)):
            if self._stopping.is_set():
                return
            text = f"{p.name}#{i}"
            try:
                if p.thread_id:
                    res = await p.conn.send(text, thread_id=p.thread_id)
                else:
                    res = await p.conn.send(text, recipient=p.target)
            except NatterError as e:
                p.failures.append(f"{text}: {e.message}")
                return
            p.acked.append((res.thread_id, res.seq, text))
            if not p.thread_id and res.thread_id not in self.members:
                partner = next(q for q in self.peers if q.name == p.target)
                self.members[res.thread_id] = [p, partner]
            await asyncio.sleep(self.interval)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop sending; every send already made must be acknowledged within `timeout`."""
        self._stopping.set()
        done, pending = await asyncio.wait(self._senders, timeout=timeout)
        if pending:
            stuck = [
                f"{p.name} on {p.node}: outbox {list(p.conn.outbox)} stats {p.conn.stats} "
                f"loop {_state(p.conn)}"
                for p in self.peers
                if p.conn is not None and p.conn.outbox
            ]
            for t in pending:
                t.cancel()
            raise AssertionError(
                f"{len(pending)} sends not acknowledged within {timeout} s: {stuck}"
            )
        for t in done:
            t.result()
        failures = [f for p in self.peers for f in p.failures]
        assert not failures, f"sends failed: {failures[:5]}"

    async def finish(self) -> None:
        """Stop sending, then check: every acknowledged message delivered in order, stored once."""
        await self.stop()
        await self.settle()
        await self.check_store()

    def acked_total(self) -> int:
        return sum(len(p.acked) for p in self.peers)

    def missing(self) -> list[str]:
        """Acknowledged messages some other member has not received (yet)."""
        out = []
        for p in self.peers:
            for thread_id, seq, text in p.acked:
                for q in self.members[thread_id]:
                    if q is not p and (seq, text) not in q.received[thread_id]:
                        out.append(f"{q.name} lacks {thread_id}:{seq} {text!r}")
        return out

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until every acknowledged message reached every other member, then check order."""
        try:
            await eventually(lambda: not self.missing(), timeout, 0.05, "all delivered")
        except AssertionError:
            raise AssertionError(f"lost: {self.missing()[:10]}") from None
        self.check_order()

    def check_order(self) -> None:
        for p in self.peers:
            for thread_id, got in p.received.items():
                seqs = [s for s, _ in got]
                assert seqs == sorted(set(seqs)), (
                    f"{p.name} thread {thread_id}: out of order or duplicated: {seqs}"
                )

    async def check_store(self) -> None:
        """The store holds every acknowledged message once, with gap-free seqs."""
        reader = self.peers[0].client
        for thread_id, members in self.members.items():
            client = members[0].client if members else reader
            rows = [m async for m in client.all_history(thread_id)]
            seqs = [m.seq for m in rows]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gaps: {seqs}"
            texts = [m.text for m in rows if m.kind is d.MessageKind.TEXT]
            assert len(texts) == len(set(texts)), "a message was stored twice"
            acked = {t for p in members for th, _, t in p.acked if th == thread_id}
            assert acked <= set(texts), f"acknowledged but not stored: {acked - set(texts)}"

    async def close(self) -> None:
        self._stopping.set()
        for t in [*self._senders, *self._readers]:
            t.cancel()
        for p in self.peers:
            if p.conn is not None:
                await p.conn.close()
            await p.client.close()


@contextlib.asynccontextmanager
async def running_cluster(
    root: Path, env: dict[str, str] | None = None, **shape: int
) -> AsyncIterator[Cluster]:
    """A Cluster of the given shape, or a test failure that says what to install."""
    import pytest

    try:
        require("postgresql")
    except ServerUnavailable as e:
        pytest.fail(f"the cluster tests need PostgreSQL: {e}", pytrace=False)
    if etcd_binary() is None:
        pytest.fail("the cluster tests need etcd: apt-get install -y etcd-server", pytrace=False)
    async with Cluster(root, env=env, **shape) as c:
        yield c
