"""A database server that stops answering: the store notices within seconds and fails fast.

(A network partition looks the same from the store's side: calls that never return.) The
server, every backend too, is frozen with SIGSTOP, so connections stay open and nothing is refused — calls just
hang — and thawed with SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.outage import Outage
from devtools.dbservers import PostgresServer, ServerUnavailable, require
from message_svc import SqlStore
from message_svc.sqlstore import PROBE_INTERVAL, PROBE_TIMEOUT
from natter.errors import Unavailable
from tests.helpers import eventually


def freeze(pid: int, sig: int) -> None:
    """Signal a process and its children (PostgreSQL's backends have process groups of their own)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for p in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


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
        freeze(pg.proc.pid, signal.SIGSTOP)  # the server and every backend
        try:
            took = await eventually(lambda: not store.reachable, 4 * PROBE_TIMEOUT, 0.05)
            # A probe in flight (a first one logs in, given twice as long), then the next.
            assert took <= PROBE_INTERVAL + 2 * PROBE_TIMEOUT + 1.0
            with pytest.raises(Unavailable) as caught:
                await store.find_users(["ann"])
            assert caught.value.reason == "DATABASE_UNREACHABLE"
        finally:
            freeze(pg.proc.pid, signal.SIGCONT)
        await eventually(lambda: store.reachable, 10, 0.05)
        assert "ann" in await store.find_users(["ann"])
    finally:
        await store.close()


async def test_calls_already_waiting_on_the_database_are_answered_when_it_is_found_gone(
    pg: PostgresServer,
) -> None:
    """A message node's calls in flight at the partition fail with the store's verdict.

    New calls fail at once once the probe has spoken; those already waiting on the silent
    server used to hang until their own deadline (15 s for a send), holding up every later
    send of their devices.
    """
    store = SqlStore(await pg.create_database())
    await store.open()
    outage = Outage(lambda: store.reachable)
    outage.start()
    try:
        await store.create_user("bea", "Bea", None, "x")
        assert pg.proc is not None
        freeze(pg.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                await outage.run(store.find_users(["bea"]))  # sent before the probe noticed
            took = time.monotonic() - started
            assert caught.value.reason == "DATABASE_UNREACHABLE"
            assert took <= PROBE_INTERVAL + 2 * PROBE_TIMEOUT + 1.0, f"answered after {took:.1f} s"
            assert outage.cut_short == 1
        finally:
            freeze(pg.proc.pid, signal.SIGCONT)
        await eventually(lambda: store.reachable, 10, 0.05)
        assert "bea" in await outage.run(store.find_users(["bea"]))
    finally:
        await outage.stop()
        await store.close()
