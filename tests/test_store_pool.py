"""The store's connection pool on PostgreSQL and MariaDB: pings only idle connections.

A ping at every checkout cost three round trips per transaction on asyncpg; a connection
in steady use is now handed out as it is, an idle one is still pinged, and a dead idle one
is replaced without failing the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from message_svc.sqlstore import SqlStore

pytestmark = pytest.mark.server_stores  # SQLite's store has no pool of server connections


@pytest.fixture
async def server_url(store_url: str) -> str:
    assert store_url, "a database server's URL"
    return store_url


async def _open(url: str, idle: float) -> SqlStore:
    store = SqlStore(url)
    store.ping_idle_seconds = idle
    await store.open()
    return store


@pytest.fixture
async def steady(server_url: str) -> AsyncIterator[SqlStore]:
    store = await _open(server_url, 60.0)
    yield store
    await store.close()


@pytest.fixture
async def always(server_url: str) -> AsyncIterator[SqlStore]:
    store = await _open(server_url, 0.0)
    yield store
    await store.close()


async def test_connections_in_steady_use_are_not_pinged(steady: SqlStore) -> None:
    for _ in range(30):
        assert await steady.get_thread(1) is None
    assert steady.pinged.pings == 0


async def test_idle_connections_are_pinged_at_checkout(always: SqlStore) -> None:
    for _ in range(10):
        assert await always.get_thread(1) is None
    # The first checkout is of a fresh connection; every later one had been idle long enough.
    assert always.pinged.pings >= 9
    assert always.pinged.dead == 0


async def _kill_others(url: str) -> int:
    """Terminate every other session on the store's database, as a server restart would."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                rows = await conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                return len(rows.all())
            rows = await conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                )
            )
            ids = [r[0] for r in rows]
            for i in ids:
                await conn.execute(sa.text(f"KILL {int(i)}"))
            return len(ids)
    finally:
        await engine.dispose()


async def test_a_dead_idle_connection_is_replaced_without_failing_the_call(
    always: SqlStore, server_url: str
) -> None:
    assert await always.get_thread(1) is None
    assert await _kill_others(server_url) >= 1
    assert await always.get_thread(1) is None  # the ping found it dead; a new one served
    assert always.pinged.dead >= 1
