"""Shared fixtures: a real embedded server on port 0 over a temporary database, SDK clients.

The store is SQLite unless `--stores` names others (`--stores sqlite,postgresql,mariadb`):
then every test that uses the `settings` fixture runs once per engine, each against a fresh
database on a real server started once per session (devtools/dbservers.py). Tests marked
`all_stores` always run on all three SQL engines. `sqlite+mongodb` and `postgresql+mongodb`
are the split store: that SQL engine beside the MongoDB message log on a FerretDB server
started once per session (devtools/ferretdb.py), a fresh database per test. Tests marked
`message_log` run on `sqlite+mongodb` too, whatever `--stores` says. Tests marked
`above_the_store` (the command line's, which reach the store only through the server's API,
as every end-to-end test on each store already does) run on the first store `--stores` names.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from devtools.dbservers import ENGINES, DbServer, require, server_class
from devtools.ferretdb import FerretDbServer
from message_svc.sqlstore import SqlStore
from natter.sdk import Client, Connection
from natter.settings import Settings

PASSWORD = "correct horse battery"
_names = itertools.count(1)
# What --stores takes: the SQL engines, and two of them beside the MongoDB message log.
MESSAGE_LOG = "+mongodb"
SPLIT = f"sqlite{MESSAGE_LOG}"
STORES = (*ENGINES, SPLIT, f"postgresql{MESSAGE_LOG}")


# What the suite needs instead of the product's defaults (tests/test_defaults.py checks
# those): cheap password hashing, quick ack flushes, no per-address limits (every test
# client comes from 127.0.0.1), room for many devices, and no delivery canary (its own
# tests turn it on).
TEST_LIMITS: dict[str, object] = {
    "argon2_memory_kib": 1024,
    "argon2_time_cost": 1,
    "ack_flush_seconds": 0.05,
    "logins_per_ip_per_minute": 0,
    "registrations_per_ip_per_hour": 0,
    "registrations_per_hour": 0,
    "max_devices_per_user": 1000,
    "max_pending_streams_per_address": 0,
    "canary_interval_seconds": 0,
}


def test_settings(data: Path, **changes: object) -> Settings:
    base = Settings(data_dir=data, grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0")
    return base.replace(**{**TEST_LIMITS, **changes})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stores",
        default="sqlite",
        help="comma-separated stores the embedded-server tests run on: " + ",".join(STORES),
    )
    parser.addoption(
        "--fault-messages",
        type=int,
        default=1000,
        help="messages each network fault test sends (tests/test_partitions.py); long mode: 5000",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "all_stores: run on SQLite, PostgreSQL and MariaDB whatever --stores says"
    )
    config.addinivalue_line(
        "markers", "sqlite_only: checks something only the embedded SQLite store has"
    )
    config.addinivalue_line(
        "markers",
        "server_stores: checks what only a database server has (PostgreSQL and MariaDB, "
        "whatever --stores says)",
    )
    config.addinivalue_line(
        "markers",
        "above_the_store: checks a layer above the store's API; runs on the first --stores only",
    )
    config.addinivalue_line(
        "markers",
        "message_log: runs on sqlite+mongodb too whatever --stores says (the split store's "
        "end-to-end subset in CI)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_engine" not in metafunc.fixturenames:
        return
    engines = [e.strip() for e in metafunc.config.getoption("stores").split(",") if e.strip()]
    if metafunc.definition.get_closest_marker("all_stores"):
        engines = list(ENGINES)
    if metafunc.definition.get_closest_marker("server_stores"):
        engines = [e for e in ENGINES if e != "sqlite"]
    if metafunc.definition.get_closest_marker("sqlite_only"):
        engines = ["sqlite"]
    elif metafunc.definition.get_closest_marker("above_the_store"):
        engines = engines[:1]
    elif metafunc.definition.get_closest_marker("message_log") and SPLIT not in engines:
        engines = [*engines, SPLIT]
    unknown = [e for e in engines if e not in STORES]
    if unknown:
        raise pytest.UsageError(f"--stores: unknown {unknown}; expected some of {STORES}")
    if engines != ["sqlite"]:
        metafunc.parametrize("store_engine", engines, indirect=True)


@pytest.fixture
def store_engine(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


_db_servers: dict[str, DbServer] = {}


@pytest.fixture(scope="session")
def db_servers() -> Iterator[dict[str, DbServer]]:
    """Database servers started on first use, one per engine, removed at the end."""
    yield _db_servers
    concurrent.futures.wait(_next.values())
    _next.clear()
    for server in _db_servers.values():
        server.remove(wait=False)
    _db_servers.clear()
    _migrated.clear()


_mongo: dict[str, FerretDbServer] = {}


@pytest.fixture(scope="session")
def mongo_servers() -> Iterator[dict[str, FerretDbServer]]:
    """The FerretDB server of the split stores, started on first use, removed at the end."""
    yield _mongo
    for server in _mongo.values():
        server.remove()
    _mongo.clear()


# Every end-to-end test gets a database with the schema in place. PostgreSQL copies one it
# migrated once (CREATE DATABASE … TEMPLATE); MariaDB cannot copy a database, so the next
# test's is created and migrated on a thread of its own while the current test runs. Either
# way about 0.4-0.7 s less per test than migrating in the test. The store contract suite
# (tests/test_store_contract.py) migrates each of its databases itself.
_TEMPLATE = "natter_migrated"
_migrated: set[str] = set()
_next: dict[str, concurrent.futures.Future[str]] = {}
_preparer = concurrent.futures.ThreadPoolExecutor(1, "test-databases")


async def _migrated_database(server: DbServer, name: str | None = None) -> str:
    url = await server.create_database(name)
    store = SqlStore(url)
    await store.open()
    await store.close()
    return url


def _prepare(server: DbServer) -> concurrent.futures.Future[str]:
    return _preparer.submit(lambda: asyncio.run(_migrated_database(server)))


@pytest.fixture
async def store_url(store_engine: str, db_servers: dict[str, DbServer]) -> str:
    """A fresh database of the engine under test, schema applied ("" for SQLite)."""
    engine = store_engine.removesuffix(MESSAGE_LOG)
    if engine == "sqlite":
        return ""
    server = db_servers.get(engine)
    if server is None:
        require(engine)
        server = server_class(engine)()
        db_servers[engine] = server
        await server.start()
    if server.templates:
        if engine not in _migrated:
            await _migrated_database(server, _TEMPLATE)
            _migrated.add(engine)
        return await server.create_database(template=_TEMPLATE)
    ready = _next.pop(engine, None)
    _next[engine] = _prepare(server)
    try:
        if ready is not None:
            return await asyncio.wrap_future(ready)
    except Exception:  # the server was restarted by the test before: make one now
        pass
    return await _migrated_database(server)


async def _ferretdb_database(mongo_servers: dict[str, FerretDbServer]) -> str:
    server = mongo_servers.get("ferretdb")
    if server is None:
        server = mongo_servers["ferretdb"] = FerretDbServer()
        await server.start()
    return await server.create_database()


@pytest.fixture
async def message_log_url(store_engine: str, mongo_servers: dict[str, FerretDbServer]) -> str:
    """A fresh MongoDB database for the split stores' message log ("" for the SQL stores)."""
    if not store_engine.endswith(MESSAGE_LOG):
        return ""
    return await _ferretdb_database(mongo_servers)


@pytest.fixture
async def log_url(mongo_servers: dict[str, FerretDbServer]) -> str:
    """A fresh MongoDB database on FerretDB, whatever the stores (tests of the log itself)."""
    return await _ferretdb_database(mongo_servers)


@pytest.fixture
def settings(tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
    return test_settings(tmp_path / "data", database_url=store_url, message_log=message_log_url)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(settings) as srv:
        yield srv


UserFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def user(server: EmbeddedServer) -> AsyncIterator[UserFactory]:
    """`await user("alice")` registers (if needed) and logs in a new device; closed after."""
    clients: list[Client] = []
    registered: set[str] = set()

    async def make(name: str = "", device: str = "test", address: str = "") -> Client:
        name = name or f"user{next(_names)}"
        c = Client(address or server.grpc_address)
        clients.append(c)
        if name not in registered:
            await c.register(name, PASSWORD)
            registered.add(name)
        await c.login(name, PASSWORD, device)
        return c

    yield make
    for c in clients:
        await c.close()


ConnFactory = Callable[..., Awaitable[Connection]]


@pytest.fixture
async def connect() -> AsyncIterator[ConnFactory]:
    conns: list[Connection] = []

    async def make(client: Client, **kwargs: object) -> Connection:
        conn = Connection(client, **kwargs)  # type: ignore[arg-type]
        conns.append(conn)
        await conn.start()
        return conn

    yield make
    for c in conns:
        await c.close()
