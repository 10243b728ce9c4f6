"""A real MongoDB-wire server for tests: FerretDB v1.24.2 on SQLite, or `mongod` when installed.

`scripts/install --all` builds FerretDB into `.cache/go/bin` of this repository (no MongoDB
server is packaged in Debian). `async with FerretDbServer() as mongo:` runs it in a
temporary folder on a free port; `mongo.url` is what `--message-log` takes, and
`create_database()` a fresh database's URL. FerretDB v1 ignores write concern and has no
transactions: its durability is its backend's (SQLite here). If `mongod` is on PATH,
`MongodServer` runs a real one the same way (`mongo_servers()` lists what can run here).
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from devtools.ports import HOST, free_port
from devtools.processes import ServerProcess, ServerUnavailable

VERSION = "v1.24.2"
REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / ".cache" / "go" / "bin" / "ferretdb"
INSTALL_HINT = "run scripts/install --all (it builds FerretDB with Go into .cache/go/bin)"
_databases = itertools.count(1)


def ferretdb_binary() -> Path | None:
    found = os.environ.get("NATTER_FERRETDB")
    if found and os.access(found, os.X_OK):
        return Path(found)
    return BINARY if os.access(BINARY, os.X_OK) else None


def missing(kind: str = "ferretdb") -> str | None:
    """Why the MongoDB-wire server `kind` ("ferretdb" or "mongod") cannot run here, or None."""
    if kind == "ferretdb":
        if ferretdb_binary() is None:
            return f"FerretDB {VERSION} not found at {BINARY}; {INSTALL_HINT}"
        return None
    if kind == "mongod":
        return None if shutil.which("mongod") else "mongod is not on PATH"
    raise ValueError(f"unknown MongoDB-wire server {kind!r}")


def mongo_servers() -> list[str]:
    """The MongoDB-wire servers that can run here: FerretDB, and mongod if installed."""
    return [k for k in ("ferretdb", "mongod") if missing(k) is None]


class MongoWireServer(ServerProcess):
    """A server speaking the MongoDB wire protocol on 127.0.0.1, in its own folder."""

    stop_timeout = 5.0
    not_ready = (PyMongoError, OSError, TimeoutError)

    def __init__(self, root: Path | None = None, *, port: int = 0) -> None:
        super().__init__(root)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"mongodb://{HOST}:{self.port}/"

    def _ports_chosen(self) -> bool:
        return self.port != 0

    def _choose_ports(self) -> None:
        self.port = free_port()

    async def _probe(self) -> bool:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            self.url, serverSelectionTimeoutMS=1000, directConnection=True
        )
        try:
            reply = await client.admin.command("ping")
            return bool(reply.get("ok"))
        finally:
            await client.close()

    async def create_database(self) -> str:
        """A URL naming a database no one used yet (databases appear on first write)."""
        return f"mongodb://{HOST}:{self.port}/natter_{os.getpid()}_{next(_databases)}"


class FerretDbServer(MongoWireServer):
    """FerretDB with its SQLite handler: one SQLite file per database in the data folder."""

    name = "ferretdb"

    def __init__(self, root: Path | None = None, *, port: int = 0) -> None:
        found = ferretdb_binary()
        if found is None:
            raise ServerUnavailable(missing("ferretdb") or "")
        self.binary = found
        super().__init__(root, port=port)

    def _argv(self) -> list[str]:
        return [
            str(self.binary),
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data_dir}/",
            f"--listen-addr={HOST}:{self.port}",
            "--telemetry=disable",
            # Its metrics and debug listener would take 127.0.0.1:8088 in every instance.
            "--debug-addr=-",
            f"--state-dir={self.root}",
            "--log-level=warn",
        ]


class FerretDbPgServer(FerretDbServer):
    """FerretDB on its PostgreSQL handler, over a PostgreSQL database's URL.

    `postgresql_url` is a `postgres://user:password@host:port/database` URL (a
    devtools.dbservers PostgresServer's, without the `+asyncpg` driver). This handler pushes
    more filters down to PostgreSQL than the SQLite one does to SQLite.
    """

    name = "ferretdb-pg"

    def __init__(self, postgresql_url: str, root: Path | None = None, *, port: int = 0) -> None:
        self.postgresql_url = postgresql_url.replace("postgresql+asyncpg://", "postgres://")
        super().__init__(root, port=port)

    def _argv(self) -> list[str]:
        return [
            str(self.binary),
            "--handler=pg",
            f"--postgresql-url={self.postgresql_url}",
            f"--listen-addr={HOST}:{self.port}",
            "--telemetry=disable",
            "--debug-addr=-",
            f"--state-dir={self.root}",
            "--log-level=warn",
        ]


class MongodServer(MongoWireServer):
    """A real `mongod` as a one-member replica set, so majority write concern means something."""

    name = "mongod"

    def __init__(self, root: Path | None = None, *, port: int = 0) -> None:
        found = shutil.which("mongod")
        if found is None:
            raise ServerUnavailable("mongod is not on PATH")
        self.binary = found
        super().__init__(root, port=port)

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--dbpath", str(self.data_dir),
            "--bind_ip", HOST,
            "--port", str(self.port),
            "--replSet", "natter",
        ]  # fmt: skip

    async def _after_first_start(self) -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            self.url, directConnection=True
        )
        try:
            await client.admin.command(
                "replSetInitiate",
                {"_id": "natter", "members": [{"_id": 0, "host": f"{HOST}:{self.port}"}]},
            )
        finally:
            await client.close()

    def _initialised(self) -> bool:
        return any(self.data_dir.iterdir())


def server_class(kind: str) -> type[MongoWireServer]:
    if kind == "ferretdb":
        return FerretDbServer
    if kind == "mongod":
        return MongodServer
    raise ValueError(f"unknown MongoDB-wire server {kind!r}")
