"""The MessageLog contract: the SQL log and the MongoDB log (FerretDB, and mongod if installed).

Every log must number each thread's entries 1, 2, 3 … in the order given, with no gap and
no duplicate under concurrent writers and crashes, store a (sender, client_msg_id) once
forever, and read ranges and pages back. The SQL log runs on every engine `--stores` names
(its threads and members in the same database), the MongoDB log on FerretDB (threads and
members in SQLite beside it). Servers start once per session (devtools/dbservers.py,
devtools/ferretdb.py) and each test gets a database of its own. The crash tests SIGKILL a
real writer process between its read of the last seq and its insert.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.dbservers import DbServer, require
from devtools.dbservers import server_class as db_server_class
from devtools.ferretdb import FerretDbServer, MongoWireServer, mongo_servers, server_class
from message_svc.mongolog import MongoMessageLog
from message_svc.sqllog import SqlMessageLog
from message_svc.sqlstore import SqlStore
from message_svc.store import Appended, LogEntry, MessageLog
from natter.domain import Message, MessageKind, User
from natter.errors import PermissionDenied

REPO = Path(__file__).resolve().parent.parent
# The MongoDB log on FerretDB always (scripts/install --all builds it; missing, the tests fail
# with the hint), and on a real mongod too when one is on PATH.
MONGO_KINDS = ["ferretdb", *(k for k in mongo_servers() if k == "mongod")]
_count = itertools.count(1)
_servers: dict[str, MongoWireServer] = {}


@pytest.fixture(scope="session")
def mongo_wire_servers() -> Iterator[dict[str, MongoWireServer]]:
    yield _servers
    for s in _servers.values():
        s.remove()
    _servers.clear()


async def _mongo_url(kind: str, servers: dict[str, MongoWireServer]) -> str:
    server = servers.get(kind)
    if server is None:
        server = server_class(kind)()
        servers[kind] = server
        await server.start()
    return await server.create_database()


@dataclass
class Env:
    """A log under test, with the SQL store its threads and members live in."""

    log: MessageLog
    sql: SqlStore
    users: list[User]
    threads: list[int]
    url: str = ""

    def entry(self, thread: int, user: int, key: str, text: str = "") -> LogEntry:
        return LogEntry(thread, self.users[user], 1, key, MessageKind.TEXT, text or key)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The SQL log on every engine `--stores` names; the MongoDB log on every server here."""
    if "log_kind" in metafunc.fixturenames:
        stores = [e.strip() for e in metafunc.config.getoption("stores").split(",")]
        # A split combination (sqlite+mongodb) names its SQL engine for the SQL log.
        engines = dict.fromkeys(e.removesuffix("+mongodb") for e in stores if e)
        kinds = [f"sql-{e}" for e in engines] + MONGO_KINDS
        metafunc.parametrize("log_kind", kinds)
    if "mongo_kind" in metafunc.fixturenames:
        metafunc.parametrize("mongo_kind", MONGO_KINDS)


async def _sql(engine: str, tmp: Path, db_servers: dict[str, DbServer]) -> SqlStore:
    url = f"sqlite+aiosqlite:///{tmp / f'natter-{next(_count)}.db'}"
    if engine != "sqlite":
        server = db_servers.get(engine)
        if server is None:
            require(engine)
            server = db_servers[engine] = db_server_class(engine)()
            await server.start()
        url = await server.create_database()
    store = SqlStore(url)
    await store.open()
    return store


async def _env(
    kind: str, tmp: Path, db_servers: dict[str, DbServer], servers: dict[str, MongoWireServer]
) -> AsyncIterator[Env]:
    # The threads and members live in SQL either way (SQLite beside a MongoDB log).
    sql = await _sql(
        kind.removeprefix("sql-") if kind.startswith("sql-") else "sqlite", tmp, db_servers
    )
    try:
        rows = [await sql.create_user(f"u{next(_count)}", "U", None, "x") for _ in range(3)]
        users = [User(r.user_id, r.username, r.display_name) for r in rows]
        # Two direct threads all three can write to: 0-1 and 1-2 (user 1 is in both).
        t1 = await sql.direct_thread(users[0].user_id, users[1].user_id)
        t2 = await sql.direct_thread(users[1].user_id, users[2].user_id)
        log: MessageLog
        url = ""
        if kind.startswith("sql-"):
            log = SqlMessageLog(sql)
        else:
            url = await _mongo_url(kind, servers)
            log = MongoMessageLog(url)
        await log.open()
        try:
            yield Env(log, sql, users, [t1, t2], url)
        finally:
            await log.close()
    finally:
        await sql.close()


@pytest_asyncio.fixture
async def env(
    log_kind: str,
    tmp_path: Path,
    db_servers: dict[str, DbServer],
    mongo_wire_servers: dict[str, MongoWireServer],
) -> AsyncIterator[Env]:
    async for e in _env(log_kind, tmp_path, db_servers, mongo_wire_servers):
        yield e


@pytest_asyncio.fixture
async def mongo(
    mongo_kind: str,
    tmp_path: Path,
    db_servers: dict[str, DbServer],
    mongo_wire_servers: dict[str, MongoWireServer],
) -> AsyncIterator[Env]:
    async for e in _env(mongo_kind, tmp_path, db_servers, mongo_wire_servers):
        yield e


def _seqs(appended: list[Appended]) -> list[int]:
    return [a.message.seq for a in appended]


async def _all(log: MessageLog, thread: int) -> list[Message]:
    return await log.read(thread, 0, 0, 100_000, False)


# -- appending -----------------------------------------------------------------------------


async def test_each_thread_is_numbered_from_one_in_the_order_given(env: Env) -> None:
    t1, t2 = env.threads
    run = [
        env.entry(t1, 0, "a"),
        env.entry(t2, 1, "b"),
        env.entry(t1, 1, "c"),
        env.entry(t1, 0, "d"),
        env.entry(t2, 2, "e"),
    ]
    out = await env.log.append(run)
    assert [(a.message.thread_id, a.message.seq) for a in out] == [
        (t1, 1),
        (t2, 1),
        (t1, 2),
        (t1, 3),
        (t2, 2),
    ]
    assert not any(a.duplicate for a in out)
    more = await env.log.append([env.entry(t1, 1, "f")])
    assert _seqs(more) == [4]
    stored = await _all(env.log, t1)
    assert [(m.seq, m.client_msg_id, m.text) for m in stored] == [
        (1, "a", "a"),
        (2, "c", "c"),
        (3, "d", "d"),
        (4, "f", "f"),
    ]
    assert stored[0].sender == env.users[0]
    assert stored[0].msg_id == out[0].message.msg_id
    assert stored[0].create_time == out[0].message.create_time
    assert await env.log.last_seqs([t1, t2]) == {t1: 4, t2: 2}


async def test_a_retried_key_answers_with_the_original_and_is_stored_once(env: Env) -> None:
    t1, _ = env.threads
    first = await env.log.append([env.entry(t1, 0, "k1", "hello")])
    again = await env.log.append([env.entry(t1, 0, "k1", "changed"), env.entry(t1, 0, "k2")])
    assert again[0].duplicate
    assert again[0].message == first[0].message
    assert (_seqs(again), again[1].duplicate) == ([1, 2], False)
    # Repeated inside one run: the first is stored, the second answers with it.
    inside = await env.log.append([env.entry(t1, 1, "k3"), env.entry(t1, 1, "k3")])
    assert _seqs(inside) == [3, 3]
    assert [a.duplicate for a in inside] == [False, True]
    # The same client_msg_id from another sender is another message.
    other = await env.log.append([env.entry(t1, 1, "k1")])
    assert (_seqs(other), other[0].duplicate) == ([4], False)
    assert [m.client_msg_id for m in await _all(env.log, t1)] == ["k1", "k2", "k3", "k1"]


async def test_concurrent_writers_leave_no_gap_and_keep_each_writers_order(env: Env) -> None:
    t1, _ = env.threads
    writers, each = 6, 15

    async def write(w: int) -> list[int]:
        seqs = []
        for i in range(each):
            out = await env.log.append([env.entry(t1, w % 2, f"w{w}-{i}")])
            seqs.append(out[0].message.seq)
        return seqs

    results = await asyncio.gather(*(write(w) for w in range(writers)))
    for seqs in results:
        assert seqs == sorted(seqs)
    stored = await _all(env.log, t1)
    assert [m.seq for m in stored] == list(range(1, writers * each + 1))
    assert len({m.client_msg_id for m in stored}) == writers * each


async def test_concurrent_retries_of_one_key_store_it_once(env: Env) -> None:
    t1, _ = env.threads
    outs = await asyncio.gather(*(env.log.append([env.entry(t1, 0, "same")]) for _ in range(8)))
    assert {o[0].message.seq for o in outs} == {1}
    assert sum(not o[0].duplicate for o in outs) == 1
    assert len(await _all(env.log, t1)) == 1


# -- reading -------------------------------------------------------------------------------


async def test_pages_and_ranges_after_cursors(env: Env) -> None:
    t1, t2 = env.threads
    await env.log.append([env.entry(t1, 0, f"a{i}") for i in range(10)])
    await env.log.append([env.entry(t2, 1, f"b{i}") for i in range(5)])
    newest = await env.log.read(t1, 0, 0, 3, True)
    assert [m.seq for m in newest] == [8, 9, 10]
    before = await env.log.read(t1, 0, 8, 3, True)
    assert [m.seq for m in before] == [5, 6, 7]
    oldest = await env.log.read(t1, 2, 0, 3, False)
    assert [m.seq for m in oldest] == [3, 4, 5]
    assert await env.log.read(t1, 10, 0, 3, False) == []
    after = await env.log.read_after([(t1, 7, 10), (t2, 2, 4)], 100)
    assert [(m.thread_id, m.seq) for m in after] == [(t1, 8), (t1, 9), (t1, 10), (t2, 3), (t2, 4)]
    capped = await env.log.read_after([(t1, 7, 10), (t2, 2, 4)], 4)
    assert [(m.thread_id, m.seq) for m in capped] == [(t1, 8), (t1, 9), (t1, 10), (t2, 3)]


async def test_the_sql_log_refuses_an_entry_for_a_thread_the_sender_is_not_in(
    tmp_path: Path,
    db_servers: dict[str, DbServer],
    mongo_wire_servers: dict[str, MongoWireServer],
) -> None:
    """The SQL log checks membership itself; the MongoDB log is handed checked entries."""
    async for e in _env("sql-sqlite", tmp_path, db_servers, mongo_wire_servers):
        _, t2 = e.threads
        with pytest.raises(PermissionDenied):
            await e.log.append([e.entry(t2, 0, "intruder")])
        assert await _all(e.log, t2) == []


# -- MongoDB specifics ---------------------------------------------------------------------


async def test_the_log_survives_reopening_and_keeps_keys_forever(mongo: Env) -> None:
    t1, _ = mongo.threads
    await mongo.log.append([mongo.entry(t1, 0, f"k{i}") for i in range(3)])
    await mongo.log.close()
    again = MongoMessageLog(mongo.url)
    await again.open()
    try:
        out = await again.append([mongo.entry(t1, 0, "k1"), mongo.entry(t1, 0, "k3")])
        assert [(a.message.seq, a.duplicate) for a in out] == [(2, True), (4, False)]
    finally:
        await again.close()
    await mongo.log.open()


async def test_history_and_sync_reads_use_the_thread_seq_index(mongo: Env) -> None:
    assert isinstance(mongo.log, MongoMessageLog)
    t1, _ = mongo.threads
    await mongo.log.append([mongo.entry(t1, 0, f"k{i}") for i in range(20)])
    names = {ix["name"] async for ix in await mongo.log.collection.list_indexes()}
    assert {"thread_seq", "sender_key"} <= names
    plan = await mongo.log.explain_read(t1, 5)
    if "ferretdbVersion" in plan.get("serverInfo", {}):
        # FerretDB v1 on SQLite pushes no filter on fields other than _id down to SQLite:
        # it scans (docs/deployment.md). What it must still do is answer from the plan
        # it reports, for the query the log sent.
        assert plan["command"]["filter"] == {"t": t1, "s": {"$gt": 5}}
        assert plan["command"]["sort"] == {"t": 1, "s": 1}
    else:
        assert "thread_seq" in str(plan["queryPlanner"]), plan


async def test_the_split_stores_reads_use_indexes_or_push_down_id(mongo: Env) -> None:
    """Every read the split store makes: an index on MongoDB; FerretDB v1's pushdown noted."""
    assert isinstance(mongo.log, MongoMessageLog)
    t1, _ = mongo.threads
    await mongo.log.append([mongo.entry(t1, 0, f"k{i}") for i in range(20)])
    plans = {r: await mongo.log.explain(r, t1) for r in ("newest", "folded", "ids", "search")}
    if "ferretdbVersion" in plans["ids"].get("serverInfo", {}):
        # FerretDB v1 on SQLite pushes down only `_id` equality (a string or ObjectId):
        # the by-id read is the one the backend filters, the others scan (docs/deployment.md).
        assert plans["ids"]["filterPushdown"] is True, plans["ids"]
        assert {r: p["filterPushdown"] for r, p in plans.items() if r != "ids"} == {
            "newest": False,
            "folded": False,
            "search": False,
        }
    else:
        for read in ("newest", "folded", "search"):
            assert "thread_seq" in str(plans[read]["queryPlanner"]), (read, plans[read])
        ids = str(plans["ids"]["queryPlanner"])
        assert "_id_" in ids or "IDHACK" in ids or "EXPRESS" in ids, ids


async def _writer(url: str, *args: str) -> tuple[int, list[tuple[str, int]]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.logwriter",
        url,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    acked = []
    for line in out.decode().splitlines():
        _, key, seq = line.split()
        acked.append((key, int(seq)))
    assert proc.returncode is not None
    if proc.returncode not in (0, -9):
        raise AssertionError(f"writer exited {proc.returncode}: {err.decode()[-2000:]}")
    return proc.returncode, acked


async def test_a_writer_killed_between_allocating_and_inserting_leaves_no_gap(mongo: Env) -> None:
    t1, _ = mongo.threads
    sender = str(mongo.users[0].user_id)
    base = ["--thread", str(t1), "--sender", sender, "--prefix", "p", "--count", "30"]
    code, acked = await _writer(mongo.url, *base, "--kill-at", "12")
    assert code == -9
    assert [seq for _, seq in acked] == list(range(1, 12))
    # Another writer takes over: the seq the dead one had chosen is simply the next one.
    await mongo.log.append([mongo.entry(t1, 1, "after-crash")])
    stored = await _all(mongo.log, t1)
    assert [m.seq for m in stored] == list(range(1, 13))
    # Its retry of everything: what was acknowledged is found, the rest appended, once.
    code, again = await _writer(mongo.url, *base)
    assert code == 0
    assert again[:11] == acked
    stored = await _all(mongo.log, t1)
    assert [m.seq for m in stored] == list(range(1, 32))
    keys = [m.client_msg_id for m in stored]
    assert len(keys) == len(set(keys)) == 31
    assert set(keys) == {f"p-{i}" for i in range(30)} | {"after-crash"}


async def test_writers_killed_mid_run_beside_a_live_one_leave_a_gap_free_log(mongo: Env) -> None:
    """Runs of 7 entries; each killed writer dies in a run (a prefix of it may be stored)."""
    t1, _ = mongo.threads
    sender = str(mongo.users[1].user_id)

    def argv(prefix: str, kill_at: int = 0) -> list[str]:
        a = ["--thread", str(t1), "--sender", sender, "--prefix", prefix]
        a += ["--count", "35", "--batch", "7"]
        return a + (["--kill-at", str(kill_at)] if kill_at else [])

    results = await asyncio.gather(
        _writer(mongo.url, *argv("live")),
        _writer(mongo.url, *argv("x", 3)),
        _writer(mongo.url, *argv("y", 4)),
    )
    assert [r[0] for r in results] == [0, -9, -9]
    for prefix in ("x", "y"):
        code, _ = await _writer(mongo.url, *argv(prefix))
        assert code == 0
    stored = await _all(mongo.log, t1)
    assert [m.seq for m in stored] == list(range(1, 3 * 35 + 1))
    keys = [m.client_msg_id for m in stored]
    assert len(set(keys)) == len(keys)
    for prefix in ("live", "x", "y"):
        mine = [int(k.split("-")[1]) for k in keys if k.startswith(prefix + "-")]
        assert mine == list(range(35)), prefix  # each writer's order kept


async def test_acknowledged_entries_survive_a_sigkill_of_the_server() -> None:
    """kill -9 of FerretDB itself: what the log acknowledged is there after the restart."""
    async with FerretDbServer() as server:
        url = await server.create_database()
        log = MongoMessageLog(url)
        await log.open()
        sender = User(1, "u1", "U1")
        entries = [LogEntry(7, sender, 1, f"d-{i}", MessageKind.TEXT, "t") for i in range(40)]
        try:
            for start in range(0, 40, 8):
                await log.append(entries[start : start + 8])
        finally:
            await log.close()
        await server.kill()
        await server.restart()
        again = MongoMessageLog(url)
        await again.open()
        try:
            stored = await again.read(7, 0, 0, 100, False)
            assert [(m.seq, m.client_msg_id) for m in stored] == [
                (i + 1, f"d-{i}") for i in range(40)
            ]
            more = await again.append([LogEntry(7, sender, 1, "d-0", MessageKind.TEXT, "t")])
            assert (more[0].message.seq, more[0].duplicate) == (1, True)
        finally:
            await again.close()
