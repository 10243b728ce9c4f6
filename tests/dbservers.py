"""Real PostgreSQL and MariaDB servers for tests: temporary data folders, free local ports, kill -9.

Nothing here depends on a database service already running on the machine. Each server gets
its own temporary folder (data directory, log, socket), listens on a free 127.0.0.1 port and
is removed when its context manager exits::

    async with postgres_server() as server:
        url = await server.create_database()    # a fresh, empty database
        ...
        await server.restart()                   # kill -9 the whole server, start it again

The processes are plain `subprocess.Popen` children, so a server started in one event loop
can be killed and restarted from another (pytest-asyncio runs each test in its own loop).
When the tests run as root, the servers run as an unprivileged account (PostgreSQL refuses to
run as root): `postgres` or `mysql`, which the Debian packages create, else `nobody`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

ENGINES = ("sqlite", "postgresql", "mariadb")
INSTALL_HINT = "run scripts/install-deps (Debian: apt-get install -y postgresql-15 mariadb-server)"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_POLL = 0.05


class ServerUnavailable(RuntimeError):
    """A database server is not installed here or did not start; the message says why."""


# -- which engines can run here ------------------------------------------------------------


def _pg_bindir() -> Path | None:
    preferred = Path("/usr/lib/postgresql/15/bin")
    candidates = [preferred]
    others = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    candidates += [p for p in others if p != preferred]
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).parent
    return None


def _which(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    return Path(found) if found else None


def _mariadb_binaries() -> tuple[Path, Path] | None:
    server = _which("mariadbd")
    install = _which("mariadb-install-db")
    if server is None or install is None:
        return None
    return server, install


def missing(engine: str) -> str | None:
    """Why `engine` cannot run on this machine, or None when its binaries are installed."""
    if engine == "sqlite":
        return None
    if engine == "postgresql":
        if _pg_bindir() is None:
            return (
                "PostgreSQL server binaries (initdb, postgres) were not found in "
                f"/usr/lib/postgresql/15/bin or on PATH; {INSTALL_HINT}"
            )
        return None
    if engine == "mariadb":
        if _mariadb_binaries() is None:
            return f"MariaDB binaries (mariadbd, mariadb-install-db) were not found; {INSTALL_HINT}"
        return None
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def available_engines() -> list[str]:
    """The engines whose server binaries are installed here (SQLite always is)."""
    return [e for e in ENGINES if missing(e) is None]


def require(engine: str) -> None:
    """Raise ServerUnavailable with install instructions when `engine` cannot run here."""
    reason = missing(engine)
    if reason is not None:
        raise ServerUnavailable(reason)


# -- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _account(preferred: str) -> pwd.struct_passwd | None:
    """The unprivileged account servers run as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in (preferred, "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerUnavailable(f"running as root and neither {preferred!r} nor 'nobody' exists")


def _child_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin") + ":/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }


_live: weakref.WeakSet[DbServer] = weakref.WeakSet()


@atexit.register
def _remove_leftovers() -> None:
    """Never leave a server or its folder behind, even when a test run is interrupted."""
    for server in list(_live):
        server.remove()


# -- servers -------------------------------------------------------------------------------


class DbServer:
    """One database server process with its own data folder and port."""

    engine = ""
    account_name = "nobody"

    def __init__(self) -> None:
        self._account = _account(self.account_name)
        self.root = Path(tempfile.mkdtemp(prefix=f"natter-{self.engine}-"))
        _live.add(self)
        if self._account is not None:
            os.chown(self.root, self._account.pw_uid, self._account.pw_gid)
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = 0
        self.user = "natter"
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0

    # subclass hooks
    def _initdb_argv(self) -> list[str]:
        raise NotImplementedError

    def _server_argv(self) -> list[str]:
        raise NotImplementedError

    def url(self, database: str = "") -> str:
        """A SQLAlchemy URL for `database` (empty: the server's maintenance database)."""
        raise NotImplementedError

    def _create_sql(self, name: str) -> str:
        raise NotImplementedError

    async def _after_first_start(self) -> None:
        """Create the test account once the new server answers."""

    def _admin_url(self) -> str:
        return self.url()

    def _probe_url(self) -> str:
        return self._admin_url()

    def _stop_signal(self) -> int:
        return signal.SIGTERM

    # process handling

    def _popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        # Switching to the database's account is `setpriv`'s job, not Popen's: Popen can
        # change the user only through fork(), and a fork() while gRPC's threads run may
        # crash the child before exec (seen: a postmaster dead of SIGSEGV). Without user=
        # Popen uses vfork, which is safe beside those threads.
        acc = self._account
        if acc is not None:
            argv = [
                "setpriv",
                f"--reuid={acc.pw_uid}",
                f"--regid={acc.pw_gid}",
                "--clear-groups",
                *argv,
            ]
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=_child_env(),
                start_new_session=True,  # its own process group: kill() takes every child
            )

    def _log_tail(self, path: Path | None = None, lines: int = 30) -> str:
        try:
            text = (path or self.log_path).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def _run_once(self, argv: list[str], what: str) -> None:
        log = self.root / f"{what}.log"
        proc = await asyncio.to_thread(self._popen, argv, log)
        code = await asyncio.to_thread(proc.wait)
        if code != 0:
            raise ServerUnavailable(
                f"{self.engine} {what} failed with exit code {code}:\n{self._log_tail(log)}"
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        """Start the server (initialising its data folder the first time) and wait until ready."""
        if self.running:
            return
        first = not self.data_dir.exists()
        if first:
            await self._run_once(self._initdb_argv(), "initdb")
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            if self.port == 0 or attempt > 0:
                self.port = free_port()
            self.proc = await asyncio.to_thread(self._popen, self._server_argv(), self.log_path)
            try:
                await self._wait_ready()
                break
            except ServerUnavailable:
                await self.kill()
                if attempt == attempts - 1:
                    raise
        if first:
            await self._after_first_start()

    async def _wait_ready(self) -> None:
        """Poll with real connections until the server answers a query."""
        deadline = time.monotonic() + START_TIMEOUT
        engine = create_async_engine(self._probe_url(), poolclass=NullPool)
        last: BaseException | None = None
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise ServerUnavailable(
                        f"{self.engine} exited with code {self.proc.returncode} while starting:\n"
                        f"{self._log_tail()}"
                    )
                try:
                    async with asyncio.timeout(5), engine.connect() as conn:
                        await conn.execute(sa.text("SELECT 1"))
                    return
                except (exc.DBAPIError, OSError, TimeoutError) as e:
                    last = e
                await asyncio.sleep(_POLL)
        finally:
            await engine.dispose()
        raise ServerUnavailable(
            f"{self.engine} did not accept connections within {START_TIMEOUT:.0f}s "
            f"(last error: {last!r}):\n{self._log_tail()}"
        )

    def kill_now(self) -> None:
        """SIGKILL the server's whole process group and reap it (synchronous)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.proc = None

    async def kill(self) -> None:
        """kill -9 the server and every process it started, as a crash or power cut would."""
        await asyncio.to_thread(self.kill_now)

    async def stop(self) -> None:
        """Shut the server down cleanly; kill it if it does not stop in time."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, self._stop_signal())
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        await self.kill()  # reaps, and takes any straggler in the process group

    async def restart(self, *, crash: bool = True) -> None:
        """Stop the server (kill -9 unless crash=False) and start it on the same port and data."""
        if crash:
            await self.kill()
        else:
            await self.stop()
        await self.start()

    async def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        if name is None:
            self._databases += 1
            name = f"natter_{self._databases}_{secrets.token_hex(3)}"
        engine = create_async_engine(
            self._admin_url(), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text(self._create_sql(name)))
        finally:
            await engine.dispose()
        return self.url(name)

    def remove(self) -> None:
        """Kill the server if needed and delete its folder."""
        self.kill_now()
        _live.discard(self)
        shutil.rmtree(self.root, ignore_errors=True)


class PostgresServer(DbServer):
    """PostgreSQL with the Debian defaults for durability (fsync, synchronous_commit on)."""

    engine = "postgresql"
    account_name = "postgres"

    def __init__(self) -> None:
        require("postgresql")
        bindir = _pg_bindir()
        assert bindir is not None
        self.bindir = bindir
        super().__init__()

    def _initdb_argv(self) -> list[str]:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._account is not None:
            os.chown(pwfile, self._account.pw_uid, self._account.pw_gid)
        return [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
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
        ]

    def _server_argv(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "logging_collector=off",
            "-c",
            "max_connections=200",
        ]

    def _stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: do not wait for clients to disconnect

    def url(self, database: str = "") -> str:
        return sa.URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database=database or "postgres",
        ).render_as_string(hide_password=False)

    def _create_sql(self, name: str) -> str:
        return f'CREATE DATABASE "{name}"'


class MariaDbServer(DbServer):
    """MariaDB with its default durability (innodb_flush_log_at_trx_commit=1), utf8mb4."""

    engine = "mariadb"
    account_name = "mysql"

    def __init__(self) -> None:
        require("mariadb")
        binaries = _mariadb_binaries()
        assert binaries is not None
        self.mariadbd, self.install_db = binaries
        super().__init__()

    def _initdb_argv(self) -> list[str]:
        return [
            str(self.install_db),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]

    def _server_argv(self) -> list[str]:
        return [
            str(self.mariadbd),
            "--no-defaults",  # ignore /etc/mysql: this server is entirely ours
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.root / 'mariadbd.sock'}",
            f"--pid-file={self.root / 'mariadbd.pid'}",
            f"--log-error={self.log_path}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--max-connections=200",
        ]

    def url(self, database: str = "", *, root: bool = False) -> str:
        return sa.URL.create(
            "mysql+asyncmy",
            username="root" if root else self.user,
            password="" if root else self.password,
            host="127.0.0.1",
            port=self.port,
            database=database or None,
            query={"charset": "utf8mb4"},
        ).render_as_string(hide_password=False)

    def _probe_url(self) -> str:
        # Until the test account exists, readiness is checked as root (passwordless, local).
        if not (self.root / "account-created").exists():
            return self.url(root=True)
        return self.url()

    async def _after_first_start(self) -> None:
        engine = create_async_engine(
            self.url(root=True), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            async with engine.connect() as conn:
                for sql in (
                    f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}'",
                    f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1'",
                ):
                    await conn.execute(sa.text(sql))
        finally:
            await engine.dispose()
        (self.root / "account-created").touch()

    def _create_sql(self, name: str) -> str:
        # The operator's usual choice; the schema itself asks for binary collation per table.
        return f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"


@contextlib.asynccontextmanager
async def _serve(server: DbServer) -> AsyncIterator[DbServer]:
    try:
        await server.start()
        yield server
    finally:
        # The data is thrown away, so there is nothing to shut down cleanly for: a clean
        # PostgreSQL shutdown would checkpoint every test database first, for seconds.
        await asyncio.to_thread(server.remove)


def postgres_server() -> contextlib.AbstractAsyncContextManager[DbServer]:
    """A fresh PostgreSQL server; `await server.create_database()` gives a database URL."""
    return _serve(PostgresServer())


def mariadb_server() -> contextlib.AbstractAsyncContextManager[DbServer]:
    """A fresh MariaDB server; `await server.create_database()` gives a database URL."""
    return _serve(MariaDbServer())


def server_for(engine: str) -> contextlib.AbstractAsyncContextManager[DbServer]:
    """The context manager that runs a server for `engine` ("postgresql" or "mariadb")."""
    if engine == "postgresql":
        return postgres_server()
    if engine == "mariadb":
        return mariadb_server()
    raise ValueError(f"no server for engine {engine!r}")
