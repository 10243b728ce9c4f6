"""Soak: hours of mixed chat against the embedded server or a local cluster, RSS and latency over time.

    python -m bench.soak --minutes 30 --mode embedded      # the documented long mode
    python -m bench.soak --minutes 30 --mode cluster
    python -m bench.soak --minutes 2 --mode embedded --out /tmp/soak   # what CI runs

The workload (devtools/workload.py): users in 1:1 pairs (contacts of each other) and a
group, some on two devices, every device sending at a steady total rate; every few seconds
a device is closed and opened again (an app killed and restarted: its unanswered sends
abandoned), devices type, and users ask for their contacts' presence. With `--bad-input`,
a share of the traffic is refused on purpose (wrong passwords, bad tokens, oversized and
empty texts, unknown recipients, malformed frames).

Every `--sample` seconds it records, per window: messages acknowledged per second, the
send → acknowledged and send → shown-on-another-device latency percentiles, and the RSS of
every server process. At the end every device catches up, the store is read back and the
history checker (devtools/history.py) gives its verdict. It writes `soak.json` (all
samples), `soak.png` (RSS per process, throughput and latency over time) and `history.jsonl`
to `--out`, and prints a summary: the verdict and RSS growth after warm-up (the first
`--warmup` share of the run) for each process. It exits non-zero when the history is not
valid or any process grew by `--max-growth` (10 %) or more after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from bench.common import REPO, percentile
from devtools import cluster as local_cluster
from devtools.history import check, read
from devtools.ports import free_port, port_free
from devtools.serving import natter_command, serving
from devtools.waiting import eventually
from devtools.workload import PASSWORD, Workload
from natter.errors import NatterError
from natter.sdk import Client
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc

SERVER_ENV = {
    "NATTER_ARGON2_MEMORY_KIB": "1024",
    "NATTER_ARGON2_TIME_COST": "1",
    "NATTER_LOG_LEVEL": "WARNING",
    "NATTER_HEARTBEAT_INTERVAL_SECONDS": "2",
    # The soak registers its people from one address: no registration rate limits.
    "NATTER_REGISTRATIONS_PER_IP_PER_HOUR": "0",
    "NATTER_REGISTRATIONS_PER_HOUR": "0",
}


def rss_kib(pid: int) -> int:
    """Resident memory of a process now, in KiB (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Sample:
    t: float
    acked_per_s: float
    ack_p50_ms: float
    ack_p99_ms: float
    show_p50_ms: float
    show_p99_ms: float
    rss_mib: dict[str, float]
    refused_on_purpose: int = 0


@dataclass
class Result:
    mode: str
    minutes: float
    samples: list[Sample] = field(default_factory=list)
    verdict: str = ""
    valid: bool = False
    growth: dict[str, float] = field(default_factory=dict)  # process -> RSS growth after warm-up
    acked: int = 0
    bad_input: int = 0

    def ok(self, max_growth: float) -> bool:
        return self.valid and all(g < max_growth for g in self.growth.values())


# -- the servers ---------------------------------------------------------------------------


class Embedded:
    """`natter serve` on free loopback ports over a temporary data folder."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.address = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [
            *natter_command(),
            "serve",
            "--data", str(self.folder / "data"),
            "--grpc", self.address,
            "--http", f"127.0.0.1:{free_port()}",
        ]  # fmt: skip
        with (self.folder / "server.log").open("ab") as log:
            return subprocess.Popen(
                argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start(self) -> None:
        self.proc = await asyncio.to_thread(self._spawn)
        await eventually(lambda: serving(self.address), 60, 0.1, "natter serve")

    @property
    def front(self) -> str:
        return self.address

    def pids(self) -> dict[str, int]:
        return {"natter": self.proc.pid} if self.proc else {}

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class LocalCluster:
    """`scripts/cluster up` in a folder of its own: etcd, PostgreSQL and every natter role."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.procs: list[local_cluster.Proc] = []

    async def start(self) -> None:
        base = next(
            b
            for b in range(24000, 31000, 1200)
            if all(port_free(p) for p in local_cluster._ports(b, 3))
        )
        env = {**self.env, "NATTER_LEASE_TTL_SECONDS": "3"}
        # In a child of its own: the processes it starts outlive it (detached), as with
        # `scripts/cluster up`, and this process holds no handle on them.
        script = (
            "import json, sys; from dataclasses import asdict; from pathlib import Path; "
            "from devtools import cluster; "
            "procs = cluster.up(Path(sys.argv[1]), int(sys.argv[2]), env=json.loads(sys.argv[3])); "
            "print(json.dumps([asdict(p) for p in procs]))"
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(self.folder), str(base), json.dumps(env),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )  # fmt: skip
        out, _ = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"the local cluster did not start (exit {child.returncode})")
        self.procs = [local_cluster.Proc(**p) for p in json.loads(out.decode().splitlines()[-1])]

    @property
    def front(self) -> str:
        return "ipv4:" + ",".join(p.public for p in self.procs if p.role == "message")

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs}

    async def stop(self) -> None:
        await asyncio.to_thread(local_cluster.down, self.folder, quiet=True)


# -- traffic that is refused on purpose ------------------------------------------------------


async def bad_input(front: str, user: str, stop: asyncio.Event) -> int:
    """Requests the server must refuse, cleanly, over and over; returns how many were made."""
    made = 0
    client = Client(front, timeout=10)
    intruder = Client(front, token="not-a-token", timeout=10)
    try:
        await client.login(user, PASSWORD, "bad-input")
        while not stop.is_set():
            kind = made % 5
            with contextlib.suppress(NatterError, grpc.aio.AioRpcError):
                if kind == 0:
                    # Wrong passwords: for the real user (throttled after a few) and for
                    # names that do not exist (hashed against a dummy, every time).
                    who = user if made % 10 == 0 else f"nobody-{random.randrange(10**9)}"
                    await client.login(who, "wrong password!!", "x")
                elif kind == 1:
                    await intruder.threads()
                elif kind == 2:
                    await client.history(999_999_999)
                elif kind == 3:
                    await client.discover(["nobody-" + str(random.randrange(10**9))])
                else:
                    # A stream that says nothing valid: garbage instead of Hello.
                    stub = spb_grpc.SocketServiceStub(client.channel)
                    call = stub.Connect(metadata=client.metadata())
                    with contextlib.suppress(Exception):
                        await call.write(spb.ClientFrame())
                        await asyncio.wait_for(call.read(), 5)
                    call.cancel()
            made += 1
            await asyncio.sleep(0.02)
    finally:
        await client.close()
        await intruder.close()
    return made


# -- the run -------------------------------------------------------------------------------


def _window(samples: list[tuple[float, float]], since: float) -> list[float]:
    return sorted(s * 1000 for t, s in samples if t >= since)


async def soak(
    mode: str,
    minutes: float,
    out: Path,
    *,
    rate: float = 40.0,
    sample: float = 5.0,
    pairs: int = 6,
    group: int = 8,
    second_devices: int = 4,
    with_bad_input: bool = False,
    warmup: float = 0.25,
    production_hashing: bool = False,
) -> Result:
    os.makedirs(out, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"natter-soak-{mode}-"))
    env = dict(SERVER_ENV)
    if production_hashing:  # Argon2id at its default cost (19 MiB a hash), as deployed
        env = {k: v for k, v in env.items() if not k.startswith("NATTER_ARGON2")}
    server: Embedded | LocalCluster = (
        Embedded(folder, env) if mode == "embedded" else LocalCluster(folder, env)
    )
    result = Result(mode, minutes)
    history = out / "history.jsonl"
    history.unlink(missing_ok=True)
    try:
        await server.start()
        w = Workload(server.front, history, max_backoff=1.0)
        await w.setup(pairs=pairs, group=group, second_devices=second_devices, contacts=True)
        w.start(total=10**9, rate=rate, inflight=2)
        stop_bad = asyncio.Event()
        bad = (
            asyncio.create_task(bad_input(server.front, w.devices[0].user, stop_bad))
            if with_bad_input
            else None
        )
        start = time.monotonic()
        end = start + minutes * 60
        last_acked, last_t = 0, start
        next_sample, next_churn, next_typing = start + sample, start + 7.0, start + 3.0
        while time.monotonic() < end:
            await asyncio.sleep(0.25)  # the schedule's tick: samples, churn, typing, presence
            now = time.monotonic()
            if now >= next_churn:
                next_churn = now + 7.0
                await w.restart(1)
                dv = random.choice(w.devices)
                if dv.target:
                    with contextlib.suppress(NatterError):
                        await dv.client.presence([dv.target])
            if now >= next_typing:
                next_typing = now + 3.0
                await w.typing()
            if now >= next_sample:
                next_sample = now + sample
                acked = len(w.tally.acked)
                since = now - sample
                acks = _window(w.tally.ack_latency, since)
                shows = _window(w.tally.show_latency, since)
                result.samples.append(
                    Sample(
                        round(now - start, 1),
                        round((acked - last_acked) / (now - last_t), 1),
                        round(percentile(acks, 50), 1) if acks else 0.0,
                        round(percentile(acks, 99), 1) if acks else 0.0,
                        round(percentile(shows, 50), 1) if shows else 0.0,
                        round(percentile(shows, 99), 1) if shows else 0.0,
                        {n: round(rss_kib(p) / 1024, 1) for n, p in server.pids().items()},
                    )
                )
                last_acked, last_t = acked, now
                # Keep the tallies small over hours: only the current window is needed.
                w.tally.ack_latency = [x for x in w.tally.ack_latency if x[0] >= now]
                w.tally.show_latency = [x for x in w.tally.show_latency if x[0] >= now]
        stop_bad.set()
        if bad is not None:
            result.bad_input = await bad
        left = await w.stop(60)
        missing = await w.settle(120)
        await w.audit()
        result.acked = len(w.tally.acked)
        await w.close()
        verdict = await asyncio.to_thread(lambda: check(read(history)))
        result.valid = verdict.ok and left == 0 and missing == 0
        result.verdict = (
            verdict.report()
            + (f"\n{left} sends unanswered at the end" if left else "")
            + (f"\n{missing} messages still not shown at the end" if missing else "")
        )
        result.growth = growth(result.samples, warmup)
    finally:
        await server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    (out / "soak.json").write_text(
        json.dumps({**asdict(result), "samples": [asdict(s) for s in result.samples]}, indent=1)
    )
    plot(result, out / "soak.png")
    return result


def growth(samples: list[Sample], warmup: float) -> dict[str, float]:
    """Per process: RSS at the end over RSS just after warm-up, minus 1 (medians of 3 samples)."""
    if len(samples) < 4:
        return {}
    first = max(0, min(len(samples) - 3, int(len(samples) * warmup)))
    out = {}
    for name in samples[-1].rss_mib:
        after = sorted(s.rss_mib.get(name, 0.0) for s in samples[first : first + 3])[1]
        end = sorted(s.rss_mib.get(name, 0.0) for s in samples[-3:])[1]
        if after > 0:
            out[name] = round(end / after - 1, 4)
    return out


def plot(result: Result, path: Path) -> None:
    """RSS per process, throughput and latency over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t / 60 for s in result.samples]
    fig, (rss, tput, lat) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name in sorted(result.samples[-1].rss_mib if result.samples else {}):
        rss.plot(t, [s.rss_mib.get(name, 0) for s in result.samples], label=name)
    rss.set_ylabel("RSS (MiB)")
    rss.legend(fontsize=7, ncol=3)
    rss.set_title(
        f"natter soak, {result.mode}, {result.minutes:g} min — "
        f"{'VALID' if result.valid else 'INVALID'} history, {result.acked} messages"
    )
    tput.plot(t, [s.acked_per_s for s in result.samples])
    tput.set_ylabel("acknowledged / s")
    for attr, label in (
        ("ack_p50_ms", "send→ack p50"),
        ("ack_p99_ms", "send→ack p99"),
        ("show_p50_ms", "send→shown p50"),
        ("show_p99_ms", "send→shown p99"),
    ):
        lat.plot(t, [getattr(s, attr) for s in result.samples], label=label)
    lat.set_ylabel("latency (ms)")
    lat.set_xlabel("minutes")
    lat.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary(result: Result, max_growth: float) -> str:
    lines = [result.verdict, "RSS growth after warm-up:"]
    last = result.samples[-1].rss_mib if result.samples else {}
    for name, g in sorted(result.growth.items()):
        lines.append(f"  {name:12} {g * 100:+6.1f} %  (now {last.get(name, 0):.0f} MiB)")
    tputs = [s.acked_per_s for s in result.samples]
    if tputs:
        lines.append(
            f"throughput: {sum(tputs) / len(tputs):.1f} msg/s on average; "
            f"send→shown p99 over windows: max {max(s.show_p99_ms for s in result.samples):.0f} ms"
        )
    if result.bad_input:
        lines.append(f"bad-input requests refused: {result.bad_input}")
    lines.append("PASS" if result.ok(max_growth) else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--mode", choices=("embedded", "cluster"), default="embedded")
    p.add_argument("--out", type=Path, default=Path("soak-results"))
    p.add_argument("--rate", type=float, default=40.0, help="messages per second, in all")
    p.add_argument("--sample", type=float, default=5.0, help="seconds per sample")
    p.add_argument("--warmup", type=float, default=0.25, help="share of the run that is warm-up")
    p.add_argument("--max-growth", type=float, default=0.10)
    p.add_argument("--bad-input", action="store_true", help="add requests refused on purpose")
    p.add_argument("--production-hashing", action="store_true", help="Argon2id at its default cost")
    a = p.parse_args(argv)
    result = asyncio.run(
        soak(
            a.mode,
            a.minutes,
            a.out,
            rate=a.rate,
            sample=a.sample,
            warmup=a.warmup,
            with_bad_input=a.bad_input,
            production_hashing=a.production_hashing,
        )
    )
    print(summary(result, a.max_growth))
    print(f"samples: {a.out / 'soak.json'}, plot: {a.out / 'soak.png'}")
    return 0 if result.ok(a.max_growth) else 1


if __name__ == "__main__":
    sys.exit(main())
