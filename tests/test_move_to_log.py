"""`natter move-to-log`: an SQLite deployment's messages moved into an empty MongoDB log.

A server on the SQL store only gathers a history (texts, a reply, a reaction, an edit, a
delete, a group with its system messages, rows the canary's prune removed); the command
copies it into a fresh log on FerretDB; the same data folder served with that log shows
the same threads, history and search, keeps numbering each thread where it was, holds
no body in SQL any more, and a second run copies nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from app.embedded import EmbeddedServer
from devtools.serving import natter_command
from natter.sdk import Client, Connection
from tests.conftest import PASSWORD
from tests.conftest import test_settings as make_settings
from tests.procs import TEST_ENV


async def _move(data: Path, log_url: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        *natter_command(),
        "move-to-log",
        "--data",
        str(data),
        "--message-log",
        log_url,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**TEST_ENV, "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return int(proc.returncode or 0), (lines[-1] if lines else {}), err.decode()


async def _client(address: str, name: str, register: bool) -> Client:
    c = Client(address, timeout=10.0)
    if register:
        await c.register(name, PASSWORD)
    await c.login(name, PASSWORD, "test")
    return c


def _shape(messages: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (
            m.seq,
            m.msg_id,
            m.sender.username,
            m.kind,
            m.text,
            m.emoji,
            m.target_seq,
            m.deleted,
            m.edit_seq,
            m.reply_to.seq if m.reply_to else 0,
            tuple(sorted((r.emoji, r.user.username) for r in m.reactions)),
            m.system.kind if m.system else None,
        )
        for m in messages
    ]


async def _view(address: str, threads: list[int]) -> dict[str, Any]:
    """What ann sees: her thread list, every thread's whole history (folded and not), search."""
    ann = await _client(address, "ann", register=False)
    try:
        view: dict[str, Any] = {
            "threads": sorted(
                (
                    t.thread_id,
                    t.last_seq,
                    t.unread_count,
                    t.title,
                    t.member_count,
                    t.last_message.text,
                )
                for t in await ann.threads()
            )
        }
        for tid in threads:
            raw, _ = await ann.history(tid, limit=200, forward=True)
            folded, _ = await ann.history(tid, limit=200, forward=True, folded=True)
            view[f"raw {tid}"] = _shape(raw)
            view[f"folded {tid}"] = _shape(folded)
        found, _ = await ann.search("lighthouse")
        view["search"] = sorted((m.thread_id, m.seq, m.text) for m in found)
        return view
    finally:
        await ann.close()


async def test_an_sql_deployment_moves_into_an_empty_log_and_serves_the_same(
    tmp_path: Path, log_url: str
) -> None:
    data = tmp_path / "data"
    async with EmbeddedServer(make_settings(data, canary_interval_seconds=0)) as srv:
        address = srv.grpc_address
        ann, bob, cy = [await _client(address, n, True) for n in ("ann", "bob", "cyd")]
        async with Connection(ann) as conn:
            first = await conn.send("the lighthouse at dawn", recipient="bob")
            direct = first.thread_id
            for i in range(12):
                await conn.send(f"note {i}", thread_id=direct)
            await conn.send("about the lighthouse", thread_id=direct, reply_to_seq=first.seq + 3)
            await conn.react(direct, first.seq + 4, "👍")
            await conn.edit(direct, first.seq + 5, "note four, edited")
            await conn.delete(direct, first.seq + 6)
            group = await ann.create_group("walkers", ["bob"])
            await ann.add_members(group.thread_id, ["cyd"])
            await conn.send("lighthouse walk on sunday", thread_id=group.thread_id)
        # The canary's prune (its own thread only, in a server) leaves seqs without rows.
        await srv.store.prune_messages(direct, first.seq + 2)
        threads = [direct, group.thread_id]
        before = await _view(address, threads)
        for c in (bob, cy):
            await c.close()

    code, moved, err = await _move(data, log_url)
    assert code == 0, err
    assert moved["threads"] >= 2 and moved["gaps"] == 2 and moved["entries"] > 15, moved
    with contextlib.closing(sqlite3.connect(data / "natter.db")) as db:
        (bodies,) = db.execute(
            "SELECT count(*) FROM messages WHERE text <> '' OR system IS NOT NULL "
            "OR payload IS NOT NULL"
        ).fetchone()
    assert bodies == 0  # the bodies are the log's now

    split = make_settings(data, canary_interval_seconds=0, message_log=log_url)
    async with EmbeddedServer(split) as srv:
        after = await _view(srv.grpc_address, threads)
        assert after == before
        ann = await _client(srv.grpc_address, "ann", register=False)
        async with Connection(ann) as conn:
            more = await conn.send("back on the lighthouse", thread_id=direct)
        await ann.close()
        assert more.seq == before["raw " + str(direct)][-1][0] + 1
        found = await _view(srv.grpc_address, [])
        assert (direct, more.seq, "back on the lighthouse") in found["search"]

    code, again, err = await _move(data, log_url)
    assert code == 0, err
    assert again["entries"] == 0 and again["gaps"] == 0 and again["stripped"] == 0, again


async def test_a_log_ahead_of_the_database_is_refused_and_nothing_is_written(
    tmp_path: Path, log_url: str
) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    for folder, count in ((big, 5), (small, 1)):
        async with EmbeddedServer(make_settings(folder, canary_interval_seconds=0)) as srv:
            ann = await _client(srv.grpc_address, "ann", True)
            await _client(srv.grpc_address, "bob", True)
            async with Connection(ann) as conn:
                for i in range(count):
                    await conn.send(f"m{i}", recipient="bob")
            await ann.close()
    code, _, _ = await _move(big, log_url)
    assert code == 0
    code, _, err = await _move(small, log_url)
    assert code != 0 and "ahead" in err
    with contextlib.closing(sqlite3.connect(small / "natter.db")) as db:
        (texts,) = db.execute("SELECT count(*) FROM messages WHERE text <> ''").fetchone()
    assert texts == 1  # untouched
