"""`scripts/cluster up|down|status`: a whole natter cluster on this machine's loopback.

`up` starts etcd, PostgreSQL (initdb'd under the cluster folder on first use), two
message_svc, one channel_svc, one presence_svc and three socket servers — each its own
process with its own log file — prints every process's addresses and log, and writes a
state file that `down` and `status` read. Data (PostgreSQL, etcd) stays in the folder
between `down` and `up`; `down --wipe` removes it. Clients use a message node as their
front door, unchanged: `natter --server 127.0.0.1:7100 ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from devtools.dbservers import PostgresServer
from devtools.etcd import EtcdServer
from devtools.ports import HOST, port_free
from devtools.processes import START_TIMEOUT, ServerUnavailable, log_tail
from devtools.serving import natter_command, serving
from devtools.waiting import eventually

STATE = "state.json"
# (role, how many, first public port as an offset from --base-port)
LAYOUT = (("message", 2, 0), ("channel", 1, 20), ("presence", 1, 30), ("socket", 3, 10))
INTERNAL_OFFSET = 1000
# Message nodes serve attachments over HTTP on their public port plus this.
HTTP_OFFSET = 2000
# Each natter process's /metrics listener (metrics_addr), at public + METRICS_OFFSET.
METRICS_OFFSET = 3000
ETCD_OFFSETS = (90, 91)
PG_OFFSET = 95
STOP_SIGNALS = {"etcd": EtcdServer.stop_signal, "postgres": PostgresServer.stop_signal}


class LaunchError(Exception):
    """Something the operator must fix; the message says what."""


@dataclass
class Proc:
    """One process of the local cluster, as recorded in the state file."""

    name: str
    role: str
    pid: int
    public: str
    internal: str
    log: str
    metrics: str = ""


# -- helpers --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child not yet reaped) is not alive.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    return True


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # outlives this command; `down` stops it
        )
    return proc.pid


def _secret(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


# -- etcd and PostgreSQL ----------------------------------------------------------------------


async def _start_etcd(folder: Path, client: int, peer: int) -> Proc:
    etcd = EtcdServer(
        folder / "etcd", client_port=client, peer_port=peer, log_path=folder / "logs" / "etcd.log"
    )
    await etcd.start()
    return Proc("etcd", "etcd", etcd.pid, etcd.endpoint, f"{HOST}:{peer}", str(etcd.log_path))


async def _start_postgres(folder: Path, port: int) -> tuple[Proc, str]:
    pg = PostgresServer(
        folder / "postgres",
        port=port,
        log_path=folder / "logs" / "postgres.log",
        max_connections=300,
    )
    await pg.start()
    url = await pg.create_database("natter", exist_ok=True)
    return Proc("postgres", "postgres", pg.pid, f"{HOST}:{port}", "", str(pg.log_path)), url


# -- natter roles -----------------------------------------------------------------------------


def _start_role(
    folder: Path, role: str, index: int, public: int, env: dict[str, str], etcd: str
) -> Proc:
    name = f"{role}-{index}"
    log = folder / "logs" / f"{name}.log"
    internal = public + INTERNAL_OFFSET
    pid = _spawn(
        [
            *natter_command(),
            "serve",
            "--role",
            role,
            "--node-id",
            name,
            "--grpc",
            f"{HOST}:{public}",
            "--internal",
            f"{HOST}:{internal}",
            "--metrics",
            f"{HOST}:{public + METRICS_OFFSET}",
            "--data",
            str(folder / name),
            "--etcd",
            etcd,
            *(["--http", f"{HOST}:{public + HTTP_OFFSET}"] if role == "message" else []),
        ],
        log,
        env,
    )
    metrics = f"{HOST}:{public + METRICS_OFFSET}"
    return Proc(name, role, pid, f"{HOST}:{public}", f"{HOST}:{internal}", str(log), metrics)


def _layout(sockets: int) -> list[tuple[str, int, int]]:
    return [
        (role, sockets if role == "socket" else count, offset) for role, count, offset in LAYOUT
    ]


def _ports(base: int, sockets: int) -> list[int]:
    ports = [base + ETCD_OFFSETS[0], base + ETCD_OFFSETS[1], base + PG_OFFSET]
    for role, count, offset in _layout(sockets):
        for i in range(count):
            public = base + offset + i
            ports += [public, public + INTERNAL_OFFSET, public + METRICS_OFFSET]
            if role == "message":
                ports.append(public + HTTP_OFFSET)
    return ports


def up(
    folder: Path,
    base: int,
    *,
    sockets: int = 3,
    env: dict[str, str] | None = None,
) -> list[Proc]:
    """Start the cluster; `env` adds NATTER_* settings for every natter process."""
    if not 1 <= sockets <= 9:
        raise LaunchError("between 1 and 9 socket servers")
    state = folder / STATE
    if state.exists() and any(_alive(p.pid) for p in _load(state)):
        raise LaunchError(f"a cluster is already up (state in {state}); run: scripts/cluster down")
    busy = [p for p in _ports(base, sockets) if not port_free(p)]
    if busy:
        raise LaunchError(f"ports in use: {busy}; pick others with --base-port")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # PostgreSQL's account reaches its folder inside
    procs: list[Proc] = []
    try:
        asyncio.run(_up(folder, base, sockets, env or {}, procs))
    except ServerUnavailable as e:
        down(folder, quiet=True)
        raise LaunchError(str(e)) from None
    except BaseException:
        down(folder, quiet=True)
        raise
    return procs


async def _up(
    folder: Path, base: int, sockets: int, env: dict[str, str], procs: list[Proc]
) -> None:
    """Start every process in order, recording each in the state file as it starts."""
    state = folder / STATE
    procs.append(await _start_etcd(folder, base + ETCD_OFFSETS[0], base + ETCD_OFFSETS[1]))
    _save(state, procs)
    pg, url = await _start_postgres(folder, base + PG_OFFSET)
    procs.append(pg)
    _save(state, procs)
    role_env = {k: v for k, v in os.environ.items() if not k.startswith("NATTER_")}
    role_env.update(
        {
            "NATTER_CLUSTER_SECRET": _secret(folder / "cluster-secret"),
            "NATTER_DATABASE_URL": url,
            "NATTER_LOG_LEVEL": "INFO",
            "GRPC_VERBOSITY": "ERROR",
            # The object store attachments go to, if the caller names one: message nodes
            # share it (without it each keeps blobs in its own data folder).
            **{k: v for k, v in os.environ.items() if k.startswith("NATTER_S3_")},
            **env,
        }
    )
    etcd = procs[0].public
    for role, count, offset in _layout(sockets):
        for i in range(count):
            proc = _start_role(folder, role, i + 1, base + offset + i, role_env, etcd)
            procs.append(proc)
            _save(state, procs)
            if proc.name == "message-1":  # it applies the migrations; the rest wait
                await _wait_serving(proc)
    await asyncio.gather(*(_wait_serving(proc) for proc in procs[2:]))


async def _wait_serving(proc: Proc) -> None:
    async def check() -> bool:
        if not _alive(proc.pid):
            raise LaunchError(f"{proc.name} exited; see {proc.log}")
        return await serving(proc.public)

    try:
        await eventually(check, START_TIMEOUT, 0.1)
    except AssertionError:
        raise LaunchError(
            f"{proc.name} did not come up within {START_TIMEOUT:.0f} s\n"
            f"{log_tail(Path(proc.log), 15)}"
        ) from None


def _save(state: Path, procs: list[Proc]) -> None:
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"processes": [asdict(p) for p in procs]}, indent=2))
    tmp.replace(state)


def _load(state: Path) -> list[Proc]:
    return [Proc(**p) for p in json.loads(state.read_text())["processes"]]


def down(folder: Path, *, wipe: bool = False, quiet: bool = False) -> list[Proc]:
    """Stop natter processes first (SIGTERM, then SIGKILL after 15 s), then PostgreSQL, etcd."""
    state = folder / STATE
    procs = _load(state) if state.exists() else []
    order = [p for p in procs if p.role not in ("etcd", "postgres")]
    order += [p for p in procs if p.role == "postgres"] + [p for p in procs if p.role == "etcd"]
    stopped = []
    for group in (order[:-2] if len(order) > 2 else order, order[-2:] if len(order) > 2 else []):
        live = [p for p in group if _alive(p.pid)]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, STOP_SIGNALS.get(p.role, signal.SIGTERM))
        deadline = time.monotonic() + 15
        while any(_alive(p.pid) for p in live) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in live:
            if _alive(p.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        stopped += live
    state.unlink(missing_ok=True)
    if wipe:
        shutil.rmtree(folder, ignore_errors=True)
    if not quiet:
        for p in stopped:
            print(f"stopped {p.name} (pid {p.pid})")
        print(f"cluster down{'; removed ' + str(folder) if wipe else ''}")
    return stopped


def status(folder: Path) -> int:
    state = folder / STATE
    if not state.exists():
        print(f"no cluster is up (no {state})")
        return 1
    bad = 0
    print(
        f"{'process':<12} {'pid':>7}  {'state':<9} {'public':<16} {'internal':<16} "
        f"{'metrics':<16} log"
    )
    for p in _load(state):
        alive = _alive(p.pid)
        if alive and p.role not in ("etcd", "postgres"):
            health = "serving" if asyncio.run(serving(p.public)) else "starting"
        else:
            health = "running" if alive else "DEAD"
        bad += health in ("DEAD", "starting")
        print(
            f"{p.name:<12} {p.pid:>7}  {health:<9} {p.public:<16} {p.internal:<16} "
            f"{p.metrics or '-':<16} {p.log}"
        )
    return 1 if bad else 0


def _print_up(folder: Path, procs: list[Proc]) -> None:
    print(f"{'process':<12} {'pid':>7}  {'public':<16} {'internal':<16} {'metrics':<16} log")
    for p in procs:
        print(
            f"{p.name:<12} {p.pid:>7}  {p.public:<16} {p.internal:<16} "
            f"{p.metrics or '-':<16} {p.log}"
        )
    doors = [p.public for p in procs if p.role == "message"]
    print(f"\nfront door: {doors[0]}   (with failover: ipv4:{','.join(doors)})")
    print(f"try:        natter --server {doors[0]} register alice")
    print(f"state:      {folder / STATE}; stop with: scripts/cluster down")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="scripts/cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--dir", default="natter-cluster", help="cluster folder (./natter-cluster)")
    p.add_argument(
        "--base-port",
        type=int,
        default=7100,
        help="message nodes listen on BASE, BASE+1; sockets on BASE+10.. (7100)",
    )
    p.add_argument("--sockets", type=int, default=3, help="up: socket servers (default 3)")
    p.add_argument("--wipe", action="store_true", help="down: also delete the data folder")
    args = p.parse_args(argv)
    folder = Path(args.dir).resolve()
    try:
        if args.command == "up":
            _print_up(folder, up(folder, args.base_port, sockets=args.sockets))
        elif args.command == "down":
            down(folder, wipe=args.wipe)
        else:
            sys.exit(status(folder))
    except LaunchError as e:
        print(f"cluster: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
