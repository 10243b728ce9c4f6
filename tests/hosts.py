"""A natter cluster on separate test hosts: every process in its own network namespace.

`HostCluster` builds a `devtools.netns.Network` with one host per process — etcd, PostgreSQL,
each message, channel, presence and socket node — and one for the clients, where the agent
(`devtools/agent.py`) runs the recorded workload and makes every probe. Each process listens on
its host's address (same ports on every host: public 7070, internal 7071) and registers that
address in etcd, so every call between two processes crosses the bridge, where a test can cut
it (`partition`, `isolate`, `link`) or, with `proxy=True`, slow and break it: then every
address a process or client is given (etcd, the database, each node's public and internal
listener) is a Toxiproxy proxy on a host of its own, and each link has its toxics.

Nothing here talks to a test address from the machine's own namespace: processes are started
with `ip netns exec`, etcd and PostgreSQL are probed from threads inside their hosts, natter
nodes by the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools import netns
from devtools.agent import Agent
from devtools.dbservers import PostgresServer, require
from devtools.etcd import EtcdServer, etcd_binary
from devtools.history import Verdict, check, read
from devtools.netns import Host, Network
from devtools.processes import ServerUnavailable, log_tail
from devtools.serving import natter_command
from devtools.toxiproxy import ToxiproxyServer, toxiproxy_binary
from devtools.waiting import eventually
from tests.procs import TEST_ENV

SECRET = "hosts-test-secret"
PUBLIC, INTERNAL = 7070, 7071
START_TIMEOUT = 60.0


def require_hosts(proxy: bool = False) -> None:
    """Fail (not skip) with what to install when the hosts cannot be built here."""
    reason = netns.missing()
    if reason is None and etcd_binary() is None:
        reason = "etcd not found; run scripts/install --all"
    if reason is None:
        try:
            require("postgresql")
        except ServerUnavailable as e:
            reason = str(e)
    if reason is None and proxy and toxiproxy_binary() is None:
        reason = "toxiproxy-server not found; run scripts/install --all"
    if reason is not None:
        pytest.fail(f"the network fault tests need: {reason}", pytrace=False)


@dataclass
class Node:
    """One `natter serve --role ROLE` on its own host."""

    role: str
    node_id: str
    host: Host
    log_path: Path
    env: dict[str, str]
    data: Path
    public: str = ""  # what clients and peers are given (a proxy in proxy mode)
    internal: str = ""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def bound_public(self) -> str:
        return f"{self.host.addr}:{PUBLIC}"

    @property
    def bound_internal(self) -> str:
        return f"{self.host.addr}:{INTERNAL}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        assert not self.running, f"{self.node_id} is already running"
        argv = [
            *natter_command(),
            "serve",
            "--role", self.role,
            "--node-id", self.node_id,
            "--grpc", self.bound_public,
            "--internal", self.bound_internal,
            "--data", str(self.data),
        ]  # fmt: skip
        env = {**self.env, **self.extra_env}
        if self.public != self.bound_public:
            env["NATTER_ADVERTISE_ADDR"] = self.public
            env["NATTER_ADVERTISE_INTERNAL_ADDR"] = self.internal
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1} on {self.host}\n".encode())
            log.flush()
            self.proc = self.host.popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def rss_kib(self) -> int:
        """Resident memory now (0 if not running)."""
        if not self.running:
            return 0
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


class HostCluster:
    """etcd, PostgreSQL and natter's roles on separate hosts; clients on one more."""

    def __init__(
        self,
        root: Path,
        *,
        sockets: int = 3,
        messages: int = 2,
        ttl: int = 2,
        heartbeat: float = 1.0,
        proxy: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.proxy_mode = proxy
        self.counts = {"message": messages, "channel": 1, "presence": 1, "socket": sockets}
        self.extra_env = env or {}
        self.net = Network()
        self.etcd_host = self.net.add("etcd")
        self.db_host = self.net.add("db")
        self.nodes: list[Node] = []
        for role, count in self.counts.items():
            for i in range(1, count + 1):
                node_id = f"{role}-{i}"
                host = self.net.add(node_id)
                self.nodes.append(
                    Node(role, node_id, host, root / f"{node_id}.log", {}, root / node_id)
                )
        self.clients = self.net.add("clients")
        self.proxy_host = self.net.add("proxy") if proxy else None
        self.etcd = EtcdServer(host=self.etcd_host)
        self.db = PostgresServer(host=self.db_host, max_connections=300)
        self.toxiproxy: ToxiproxyServer | None = None
        self.agent: Agent | None = None
        self.etcd_endpoint = ""
        self.db_url = ""

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
                "NATTER_ETCD_ENDPOINTS": self.etcd_endpoint,
                "NATTER_DATABASE_URL": self.db_url,
                "GRPC_VERBOSITY": "ERROR",
            }
        )
        env.update(self.extra_env)
        return env

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        starting = [self.etcd.start(), self.db.start()]
        if self.proxy_host is not None:
            self.toxiproxy = ToxiproxyServer(self.proxy_host)
            starting.append(self.toxiproxy.start())
        await asyncio.gather(*starting)
        db_url = await self.db.create_database("natter")
        self.agent = await Agent.start(self.clients, self.root / "clients")
        self.etcd_endpoint = self.etcd.endpoint
        self.db_url = db_url
        tp = self.toxiproxy
        if tp is not None:
            self.etcd_endpoint = await tp.add("etcd", self.etcd.endpoint)
            db_addr = f"{self.db.bind}:{self.db.port}"
            self.db_url = db_url.replace(db_addr, await tp.add("db", db_addr))
        env = self._env()
        for n in self.nodes:
            n.env = env
            n.public, n.internal = n.bound_public, n.bound_internal
            if tp is not None:
                n.public = await tp.add(f"{n.node_id}-public", n.bound_public)
                n.internal = await tp.add(f"{n.node_id}-internal", n.bound_internal)
        await self.agent.call("watch", endpoints=[self.etcd_endpoint], ttl=self.ttl)
        # The first message node applies the migrations; the others start once it serves.
        first, rest = self.nodes[0], self.nodes[1:]
        first.spawn()
        await self.wait_ready([first])
        for n in rest:
            n.spawn()
        await self.wait_ready()

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.close()
        for n in self.nodes:
            if n.running:
                assert n.proc is not None
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    await asyncio.to_thread(n.proc.wait, 10)
                except subprocess.TimeoutExpired:
                    n.kill()
        for server in (self.etcd, self.db, self.toxiproxy):
            if server is not None:
                await asyncio.to_thread(server.remove)
        self.net.remove()

    async def __aenter__(self) -> HostCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what runs where ---------------------------------------------------------------

    def of(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    @property
    def front_door(self) -> str:
        """Both message nodes as one gRPC target: the channel fails over between them."""
        return "ipv4:" + ",".join(n.public for n in self.of("message"))

    async def call(self, op: str, wait: float = 120.0, **args: Any) -> Any:
        assert self.agent is not None
        return await self.agent.call(op, wait=wait, **args)

    async def members(self) -> dict[str, list[str]]:
        return dict(await self.call("members", roles=list(self.counts)))

    async def wait_ready(self, nodes: list[Node] | None = None) -> None:
        """The given (default: all) nodes serve and etcd lists exactly the running ones."""
        group = nodes if nodes is not None else self.nodes

        async def ready() -> bool:
            for n in group:
                if not n.running:
                    raise AssertionError(f"{n.node_id} exited:\n{n.log_tail()}")
            probes = await self.call("probe", addresses=[n.public for n in group])
            if not all(probes.values()):
                return False
            members = await self.members()
            for n in group:
                if n.node_id not in members[n.role]:
                    return False
            if nodes is None:
                for role in self.counts:
                    if set(members[role]) != {n.node_id for n in self.of(role) if n.running}:
                        return False
            return True

        try:
            await eventually(ready, START_TIMEOUT, 0.2, "cluster ready")
        except AssertionError as e:
            tails = "\n".join(f"== {n.node_id}\n{n.log_tail(10)}" for n in group)
            raise AssertionError(f"{e}\n{tails}") from None

    # -- faults --------------------------------------------------------------------------

    def hosts(self, *names: str) -> list[Host]:
        """Hosts by name: node ids, "etcd", "db", "clients"."""
        return [self.net[name] for name in names]

    def partition(self, side: list[str], other: list[str]) -> None:
        self.net.partition(self.hosts(*side), self.hosts(*other))

    def heal(self) -> None:
        self.net.heal()
        for h in self.net.hosts.values():
            self.net.link(h, up=True)

    async def note(self, text: str) -> None:
        await self.call("note", text=text)

    # -- the workload and its verdict ------------------------------------------------------

    async def verdict(self, history: str) -> Verdict:
        """The checker's verdict on a finished workload's history."""
        return await asyncio.to_thread(lambda: check(read(Path(history))))


# -- a recorded workload through the cluster -------------------------------------------------


@dataclass
class Run:
    """One workload against the cluster: start it, watch it, finish it, judge it."""

    cluster: HostCluster
    total: int
    rate: float
    started: float = 0.0
    setup: dict[str, Any] | None = None
    final: dict[str, Any] | None = None  # the workload's stats once every send was answered

    async def begin(self, pairs: int = 4, group: int = 5, second_devices: int = 3) -> None:
        self.setup = await self.cluster.call(
            "setup",
            front=self.cluster.front_door,
            pairs=pairs,
            group=group,
            second_devices=second_devices,
        )
        self.started = time.monotonic()
        await self.cluster.call("start", total=self.total, rate=self.rate, inflight=4)

    async def stats(self) -> dict[str, Any]:
        return dict(await self.cluster.call("stats"))

    async def extend(self, more: int) -> None:
        """Send `more` messages beyond the total (so the traffic outlasts a condition)."""
        await self.cluster.call("extend", more=more)
        self.total += more

    async def acked(self) -> int:
        return int((await self.stats())["acked"])

    async def until_acked(self, n: int, timeout: float = 120.0) -> None:
        async def enough() -> bool:
            return await self.acked() >= n

        await eventually(enough, timeout, 0.2, f"{n} messages acknowledged")

    async def finish(self, timeout: float = 180.0) -> str:
        """Every message sent and answered, every device caught up, the store read: verdict."""
        c = self.cluster

        async def spent() -> bool:
            s = await self.stats()
            return bool(s["sends"] >= self.total)

        await eventually(spent, timeout, 0.5, f"{self.total} messages sent")
        left = await c.call("stop", wait=timeout, timeout=timeout - 30)
        stats = self.final = await self.stats()
        assert left == 0, f"{left} sends never answered: {stats}"
        missing = await c.call("settle", wait=timeout, timeout=timeout - 30)
        await c.call("audit", wait=timeout)
        await c.call("finish", wait=timeout)
        assert self.setup is not None
        verdict = await c.verdict(self.setup["history"])
        report = verdict.report()
        assert verdict.ok, f"{report}\nstill missing at the end: {missing[:5]}"
        assert verdict.stats["unanswered"] == 0 and verdict.stats["acked"] >= self.total * 0.9, (
            report
        )
        return report


async def run(
    cluster: HostCluster,
    total: int,
    fault: Callable[[Run], Awaitable[None]],
    *,
    rate: float = 80.0,
) -> Run:
    r = Run(cluster, total, rate)
    await r.begin()
    await r.until_acked(total // 3)
    # While the fault lasts, a device is closed and opened again every 2 s, as an app that
    # is killed: the sends it had not had answered are abandoned, and must appear at most once.
    churn = asyncio.create_task(_restarts(cluster))
    try:
        await fault(r)
    finally:
        churn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await churn
        # A fault that failed half-way must not leave its partition to the module's next test.
        cluster.heal()
    print(await r.finish())
    return r


async def _restarts(cluster: HostCluster) -> None:
    while True:
        await asyncio.sleep(2.0)  # the churn's own rhythm
        await cluster.call("restart", count=1)


async def until(
    r: Run, cond: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
) -> None:
    """Wait until the workload's stats satisfy `cond`."""

    async def check() -> bool:
        return cond(await r.stats())

    await eventually(check, timeout, 0.2, what)


async def lasting(
    r: Run, cond: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
) -> None:
    """Wait until the stats satisfy `cond`, topping up the sends so they never run out first.

    A condition about traffic during a fault (every device had a send acknowledged) cannot
    hold once the workload has nothing left to send: it keeps about two seconds' worth
    ahead until the condition is decided.
    """
    ahead = max(1, int(r.rate * 2))

    async def check() -> bool:
        s = await r.stats()
        if cond(s):
            return True
        if s["sends"] + ahead > r.total:
            await r.extend(ahead)
        return False

    await eventually(check, timeout, 0.2, what)


async def on_node(r: Run) -> dict[str, list[str]]:
    """Socket node -> the devices connected to it now."""
    out: dict[str, list[str]] = {}
    for dev, node in (await r.stats())["nodes"].items():
        out.setdefault(node, []).append(dev)
    return out


async def busiest_socket(r: Run) -> str:
    where = await on_node(r)
    return max((n for n in where if n.startswith("socket-")), key=lambda n: len(where[n]))
