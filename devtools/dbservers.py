"""Real PostgreSQL and MariaDB servers: own data folders, free local ports, kill -9 and restart.

Nothing here depends on a database service already running on the machine. A test's server
lives in a temporary folder (data directory, log, socket), listens on a free 127.0.0.1 port
and is removed when its context manager exits::

    async with PostgresServer() as server:
        url = await server.create_database()    # a fresh, empty database
        ...
        await server.restart()                   # kill -9 the whole server, start it again

The local cluster (devtools/cluster.py) names a folder and a port instead: the server keeps
its data and password there between runs and outlives the command that started it
(devtools/processes.py).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devtools.netns import Host
from devtools.ports import free_port
from devtools.processes import ServerProcess, ServerUnavailable

__all__ = [
    "ENGINES",
    "DbServer",
    "MariaDbServer",
    "PostgresServer",
    "ServerUnavailable",
    "available_engines",
    "missing",
    "require",
    "server_class",
    "server_for",
]

ENGINES = ("sqlite", "postgresql", "mariadb")
INSTALL_HINT = "run scripts/install --all (Debian: apt-get install -y postgresql mariadb-server)"


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


def _secret(path: Path) -> str:
    """A password kept in `path` (made on first use, readable only by us)."""
    if not path.exists():
        path.write_text(secrets.token_hex(12) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


# -- servers -------------------------------------------------------------------------------


class DbServer(ServerProcess):
    """One database server process with its own data folder and port."""

    engine = ""  # the engine name, as in ENGINES
    templates = False  # whether create_database can copy a template database
    not_ready = (exc.DBAPIError, OSError, TimeoutError)

    def __init__(
        self,
        root: Path | None = None,
        *,
        port: int = 0,
        log_path: Path | None = None,
        max_connections: int = 200,
        host: Host | None = None,
    ) -> None:
        require(self.engine)
        self._locate_binaries()
        super().__init__(root, log_path=log_path, host=host)
        self.data_dir = self.root / "data"
        self.port = port
        self.max_connections = max_connections
        self.user = "natter"
        self.password = _secret(self.root / "password")
        self._databases = 0

    # subclass hooks

    def _locate_binaries(self) -> None:
        raise NotImplementedError

    def url(self, database: str = "") -> str:
        """A SQLAlchemy URL for `database` (empty: the server's maintenance database)."""
        raise NotImplementedError

    def _create_sql(self, name: str, template: str) -> str:
        raise NotImplementedError

    def _exists_sql(self) -> str:
        """A query with one `:name` parameter that returns a row when that database exists."""
        raise NotImplementedError

    def _admin_url(self) -> str:
        return self.url()

    def _probe_url(self) -> str:
        return self._admin_url()

    # ServerProcess

    def _initialised(self) -> bool:
        return self.data_dir.exists()

    def _ports_chosen(self) -> bool:
        return self.port != 0

    def _choose_ports(self) -> None:
        self.port = free_port()

    async def _probe(self) -> bool:
        """A real connection and a query."""
        engine = create_async_engine(self._probe_url(), poolclass=NullPool)
        try:
            async with asyncio.timeout(5), engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        finally:
            await engine.dispose()
        return True

    async def create_database(
        self, name: str | None = None, *, exist_ok: bool = False, template: str = ""
    ) -> str:
        """Create a database (unless `exist_ok` and it exists) and return its URL.

        It is empty, or with `template` (PostgreSQL only) a copy of that database.
        """
        if name is None:
            self._databases += 1
            name = f"natter_{self._databases}_{secrets.token_hex(3)}"
        if template and not self.templates:
            raise ValueError(f"{self.engine} cannot copy a database")
        if self.host is not None:
            await self.host.call(lambda: self._create(name, exist_ok, template))
        else:
            await self._create(name, exist_ok, template)
        return self.url(name)

    async def _create(self, name: str, exist_ok: bool, template: str) -> None:
        engine = create_async_engine(
            self._admin_url(), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            async with engine.connect() as conn:
                found = await conn.execute(sa.text(self._exists_sql()), {"name": name})
                if not (exist_ok and found.first() is not None):
                    await conn.execute(sa.text(self._create_sql(name, template)))
        finally:
            await engine.dispose()


class PostgresServer(DbServer):
    """PostgreSQL with the Debian defaults for durability (fsync, synchronous_commit on)."""

    engine = name = "postgresql"
    templates = True
    account_name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients to disconnect

    def _locate_binaries(self) -> None:
        bindir = _pg_bindir()
        assert bindir is not None
        self.bindir = bindir

    async def _before_first_start(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        try:
            await self._run_once(
                [
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
                ],
                "initdb",
            )
        except ServerUnavailable:
            shutil.rmtree(self.data_dir, ignore_errors=True)  # the next start tries again
            raise
        finally:
            pwfile.unlink(missing_ok=True)
        if self.host is not None:
            # Clients on the other test hosts log in over the test network too.
            subnet = self.host.addr.rsplit(".", 1)[0]
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {subnet}.0/24 scram-sha-256\n")

    def _argv(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.bind}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "logging_collector=off",
            "-c",
            f"max_connections={self.max_connections}",
        ]

    def url(self, database: str = "") -> str:
        return sa.URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password,
            host=self.bind,
            port=self.port,
            database=database or "postgres",
        ).render_as_string(hide_password=False)

    def _create_sql(self, name: str, template: str) -> str:
        return f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")

    def _exists_sql(self) -> str:
        return "SELECT 1 FROM pg_database WHERE datname = :name"


class MariaDbServer(DbServer):
    """MariaDB with its default durability (innodb_flush_log_at_trx_commit=1), utf8mb4."""

    engine = name = "mariadb"
    account_name = "mysql"

    def _locate_binaries(self) -> None:
        binaries = _mariadb_binaries()
        assert binaries is not None
        self.mariadbd, self.install_db = binaries

    async def _before_first_start(self) -> None:
        await self._run_once(
            [
                str(self.install_db),
                "--no-defaults",
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            "initdb",
        )

    def _argv(self) -> list[str]:
        return [
            str(self.mariadbd),
            "--no-defaults",  # ignore /etc/mysql: this server is entirely ours
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            f"--bind-address={self.bind}",
            f"--socket={self.root / 'mariadbd.sock'}",
            f"--pid-file={self.root / 'mariadbd.pid'}",
            f"--log-error={self.log_path}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            f"--max-connections={self.max_connections}",
        ]

    def url(self, database: str = "", *, root: bool = False) -> str:
        return sa.URL.create(
            "mysql+asyncmy",
            username="root" if root else self.user,
            password="" if root else self.password,
            host=self.bind,
            port=self.port,
            database=database or None,
            query={"charset": "utf8mb4"},
        ).render_as_string(hide_password=False)

    def _probe_url(self) -> str:
        # Until the natter account exists, readiness is checked as root (passwordless, local).
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
                    f"CREATE USER '{self.user}'@'{self.bind}' IDENTIFIED BY '{self.password}'",
                    f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'{self.bind}'",
                ):
                    await conn.execute(sa.text(sql))
        finally:
            await engine.dispose()
        (self.root / "account-created").touch()

    def _create_sql(self, name: str, template: str) -> str:
        # The operator's usual choice; the schema itself asks for binary collation per table.
        return f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"

    def _exists_sql(self) -> str:
        return "SELECT 1 FROM information_schema.schemata WHERE schema_name = :name"


def server_class(engine: str) -> type[DbServer]:
    """The launcher for `engine` ("postgresql" or "mariadb")."""
    if engine == "postgresql":
        return PostgresServer
    if engine == "mariadb":
        return MariaDbServer
    raise ValueError(f"no server for engine {engine!r}")


def server_for(engine: str) -> DbServer:
    """A fresh server for `engine` ("postgresql" or "mariadb"), for `async with`."""
    return server_class(engine)()
