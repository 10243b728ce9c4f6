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
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

STATE = "state.json"
HOST = "127.0.0.1"
# (role, how many, first public port as an offset from --base-port)
LAYOUT = (("message", 2, 0), ("channel", 1, 20), ("presence", 1, 30), ("socket", 3, 10))
INTERNAL_OFFSET = 1000
ETCD_OFFSETS = (90, 91)
PG_OFFSET = 95
START_TIMEOUT = 60.0


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


# -- helpers --------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


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


def _wait(what: str, check: object, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise LaunchError(f"{what} did not come up within {timeout:.0f} s{tail}")


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            res = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)  # type: ignore[attr-defined]
        except grpc.RpcError:
            return False
        return bool(res.status == health_pb2.HealthCheckResponse.SERVING)


def _spawn(
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    user: pwd.struct_passwd | None = None,
) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            _as(user, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # outlives this command; `down` stops it
        )
    return proc.pid


def _as(user: pwd.struct_passwd | None, argv: list[str]) -> list[str]:
    """Run argv as another account through `setpriv`.

    Popen(user=...) must fork(), and a fork() beside gRPC's threads can crash the child
    before exec; without it Popen uses vfork, which is safe.
    """
    if user is None:
        return argv
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv]


def _secret(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


# -- etcd and PostgreSQL ----------------------------------------------------------------------


def _etcd_binary() -> str:
    found = shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/local/bin/etcd") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise LaunchError("etcd not found: run scripts/install --all (Debian: etcd-server)")
    return found


def _start_etcd(folder: Path, client: int, peer: int) -> Proc:
    client_url, peer_url = f"http://{HOST}:{client}", f"http://{HOST}:{peer}"
    log = folder / "logs" / "etcd.log"
    pid = _spawn(
        [
            _etcd_binary(),
            "--name",
            "natter",
            "--data-dir",
            str(folder / "etcd"),
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"natter={peer_url}",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ],
        log,
    )

    def healthy() -> bool:
        if not _alive(pid):
            raise LaunchError(f"etcd exited; see {log}")
        try:
            with urllib.request.urlopen(f"{client_url}/health", timeout=1) as res:
                return bool(json.loads(res.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    _wait("etcd", healthy, START_TIMEOUT, log)
    return Proc("etcd", "etcd", pid, f"{HOST}:{client}", f"{HOST}:{peer}", str(log))


def _pg_bindir() -> Path:
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).parent
    raise LaunchError("PostgreSQL not found: run scripts/install --all (Debian: postgresql)")


def _pg_account() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LaunchError("running as root, and neither a 'postgres' nor a 'nobody' account exists")


def _start_postgres(folder: Path, port: int) -> tuple[Proc, str]:
    bindir, account = _pg_bindir(), _pg_account()
    data, log = folder / "postgres", folder / "logs" / "postgres.log"
    password = _secret(folder / "db-password")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "TZ": "UTC"}
    if not data.exists():
        data.mkdir(mode=0o700)
        pwfile = folder / "db-password.init"
        pwfile.write_text(password + "\n")
        if account is not None:
            for path in (data, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        init = subprocess.run(
            _as(
                account,
                [
                    str(bindir / "initdb"),
                    "--pgdata",
                    str(data),
                    "--username",
                    "natter",
                    "--pwfile",
                    str(pwfile),
                    "--auth-local",
                    "trust",
                    "--auth-host",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C.UTF-8",
                ],
            ),
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        pwfile.unlink()
        if init.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise LaunchError(f"initdb failed:\n{init.stdout}{init.stderr}")
    log.parent.mkdir(parents=True, exist_ok=True)
    if account is not None:
        log.touch()
        os.chown(log, account.pw_uid, account.pw_gid)
    pid = _spawn(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=300",
        ],
        log,
        env,
        account,
    )
    psql_env = {**env, "PGPASSWORD": password}

    def psql(sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(bindir / "psql"),
                "-h",
                HOST,
                "-p",
                str(port),
                "-U",
                "natter",
                "-d",
                database,
                "-tAc",
                sql,
            ],
            env=psql_env,
            capture_output=True,
            text=True,
            check=False,
        )

    def ready() -> bool:
        if not _alive(pid):
            raise LaunchError(f"PostgreSQL exited; see {log}")
        return psql("SELECT 1").returncode == 0

    _wait("PostgreSQL", ready, START_TIMEOUT, log)
    if psql("SELECT 1 FROM pg_database WHERE datname = 'natter'").stdout.strip() != "1":
        made = psql("CREATE DATABASE natter")
        if made.returncode != 0:
            raise LaunchError(f"cannot create the database: {made.stderr}")
    url = f"postgresql+asyncpg://natter:{password}@{HOST}:{port}/natter"
    return Proc("postgres", "postgres", pid, f"{HOST}:{port}", "", str(log)), url


# -- natter roles -----------------------------------------------------------------------------


def _natter() -> list[str]:
    script = Path(sys.executable).with_name("natter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def _start_role(
    folder: Path, role: str, index: int, public: int, env: dict[str, str], etcd: str
) -> Proc:
    name = f"{role}-{index}"
    log = folder / "logs" / f"{name}.log"
    internal = public + INTERNAL_OFFSET
    pid = _spawn(
        [
            *_natter(),
            "serve",
            "--role",
            role,
            "--node-id",
            name,
            "--grpc",
            f"{HOST}:{public}",
            "--internal",
            f"{HOST}:{internal}",
            "--data",
            str(folder / name),
            "--etcd",
            etcd,
        ],
        log,
        env,
    )
    return Proc(name, role, pid, f"{HOST}:{public}", f"{HOST}:{internal}", str(log))


def _layout(sockets: int) -> list[tuple[str, int, int]]:
    return [
        (role, sockets if role == "socket" else count, offset) for role, count, offset in LAYOUT
    ]


def _ports(base: int, sockets: int) -> list[int]:
    ports = [base + ETCD_OFFSETS[0], base + ETCD_OFFSETS[1], base + PG_OFFSET]
    for _, count, offset in _layout(sockets):
        for i in range(count):
            ports += [base + offset + i, base + offset + i + INTERNAL_OFFSET]
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
    busy = [p for p in _ports(base, sockets) if not _port_free(p)]
    if busy:
        raise LaunchError(f"ports in use: {busy}; pick others with --base-port")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    procs: list[Proc] = []
    try:
        procs.append(_start_etcd(folder, base + ETCD_OFFSETS[0], base + ETCD_OFFSETS[1]))
        pg, url = _start_postgres(folder, base + PG_OFFSET)
        procs.append(pg)
        _save(state, procs)
        role_env = {k: v for k, v in os.environ.items() if not k.startswith("NATTER_")}
        role_env.update(
            {
                "NATTER_CLUSTER_SECRET": _secret(folder / "cluster-secret"),
                "NATTER_DATABASE_URL": url,
                "NATTER_LOG_LEVEL": "INFO",
                "GRPC_VERBOSITY": "ERROR",
                **(env or {}),
            }
        )
        etcd = procs[0].public
        for role, count, offset in _layout(sockets):
            for i in range(count):
                proc = _start_role(folder, role, i + 1, base + offset + i, role_env, etcd)
                procs.append(proc)
                _save(state, procs)
                if proc.name == "message-1":  # it applies the migrations; the rest wait
                    _wait_serving(proc)
        for proc in procs[2:]:
            _wait_serving(proc)
    except BaseException:
        down(folder, quiet=True)
        raise
    return procs


def _wait_serving(proc: Proc) -> None:
    def check() -> bool:
        if not _alive(proc.pid):
            raise LaunchError(f"{proc.name} exited; see {proc.log}")
        return _serving(proc.public)

    _wait(proc.name, check, START_TIMEOUT, Path(proc.log))


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
                os.kill(p.pid, signal.SIGINT if p.role == "postgres" else signal.SIGTERM)
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
    print(f"{'process':<12} {'pid':>7}  {'state':<9} {'public':<16} {'internal':<16} log")
    for p in _load(state):
        alive = _alive(p.pid)
        if alive and p.role not in ("etcd", "postgres"):
            health = "serving" if _serving(p.public) else "starting"
        else:
            health = "running" if alive else "DEAD"
        bad += health in ("DEAD", "starting")
        print(f"{p.name:<12} {p.pid:>7}  {health:<9} {p.public:<16} {p.internal:<16} {p.log}")
    return 1 if bad else 0


def _print_up(folder: Path, procs: list[Proc]) -> None:
    print(f"{'process':<12} {'pid':>7}  {'public':<16} {'internal':<16} log")
    for p in procs:
        print(f"{p.name:<12} {p.pid:>7}  {p.public:<16} {p.internal:<16} {p.log}")
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
