"""A database server that stops answering: the store notices within seconds and fails fast.

(A network partition looks the same from the store's side: calls that never return.) The
server is frozen with SIGSTOP, so connections stay open and nothing is refused — calls just
hang — and thawed with SIGCONT.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import pytest

from devtools.dbservers import PostgresServer, ServerUnavailable, require
from message_svc import SqlStore
from message_svc.sqlstore import PROBE_INTERVAL, PROBE_TIMEOUT
from natter.errors import Unavailable
from tests.helpers import eventually


@pytest.fixture
async def pg() -> AsyncIterator[PostgresServer]:
    try:
        require("postgresql")
    except ServerUnavailable as e:
        pytest.fail(f"this test needs PostgreSQL: {e}", pytrace=False)
    async with PostgresServer() as server:
        yield server


async def test_a_database_that_stops_answering_makes_calls_fail_fast_until_it_answers(
    pg: PostgresServer,
) -> None:
    store = SqlStore(await pg.create_database())
    await store.open()
    try:
        await store.create_user("ann", "Ann", None, "x")
        assert store.reachable
        assert pg.proc is not None
        pg.proc.send_signal(signal.SIGSTOP)
        try:
            took = await eventually(lambda: not store.reachable, 4 * PROBE_TIMEOUT, 0.05)
            assert took <= PROBE_INTERVAL + PROBE_TIMEOUT + 1.0
            with pytest.raises(Unavailable) as caught:
                await store.find_users(["ann"])
            assert caught.value.reason == "DATABASE_UNREACHABLE"
        finally:
            pg.proc.send_signal(signal.SIGCONT)
        await eventually(lambda: store.reachable, 10, 0.05)
        assert "ann" in await store.find_users(["ann"])
    finally:
        await store.close()
