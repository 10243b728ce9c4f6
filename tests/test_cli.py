"""The `natter` command line end to end: real `natter serve` and client processes, two
profiles (two devices) under a temporary NATTER_HOME, and a send that outlives a restart."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from natter import domain as d
from natter.sdk import Client, Connection
from tests.conftest import PASSWORD
from tests.helpers import eventually
from tests.procs import Cli, NatterServer, natter_server, refusing_listener, wait_exit


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[NatterServer]:
    async with natter_server(tmp_path / "data") as srv:
        yield srv


def only(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["type"] == kind]


async def test_two_profiles_chat_and_a_restart_keeps_history(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    assert (
        only(await cli.json("a", "register", "alice", "--name", "Alice"), "registered")[0][
            "username"
        ]
        == "alice"
    )
    await cli.run("b", "register", "bob")
    [logged] = await cli.json("a", "login", "alice", "--device", "laptop")
    assert logged["username"] == "alice" and logged["device_id"] > 0
    await cli.json("b", "login", "bob")
    profile = tmp_path / "home" / "profiles" / "a.json"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600  # it holds a token
    assert only(await cli.json("a", "contacts", "add", "bob"), "contact_added")
    [contact] = await cli.json("a", "contacts", "list")
    assert contact["username"] == "bob"

    [sent] = await cli.json("a", "send", "bob", "hello", "bob")
    assert (sent["type"], sent["seq"]) == ("sent", 1)
    [got] = only(await cli.json("b", "listen", "--count", "1", "--timeout", "20"), "message")
    assert (got["from"], got["text"], got["seq"], got["thread"]) == (
        "alice",
        "hello bob",
        1,
        sent["thread"],
    )
    # The profile remembers how far bob got: the next listen shows only what is new.
    listening = cli.start("b", "--json", "listen", "--count", "1", "--timeout", "20")
    await cli.json("a", "send", "--thread", str(sent["thread"]), "second", "one")
    code, out, err = await wait_exit(listening, 30)
    assert code == 0, err
    [second] = only([json.loads(line) for line in out.splitlines()], "message")
    assert (second["text"], second["seq"]) == ("second one", 2)

    history = only(await cli.json("b", "history", "alice"), "message")
    assert [(m["seq"], m["from"], m["text"]) for m in history] == [
        (1, "alice", "hello bob"),
        (2, "alice", "second one"),
    ]
    mine = only(await cli.json("a", "history", "bob"), "message")
    assert [m["state"] for m in mine] == ["delivered", "delivered"]  # bob's listens acked
    [ta] = await cli.json("a", "threads")
    [tb] = await cli.json("b", "threads")
    assert (ta["peer"], ta["unread"], ta["last_text"]) == ("bob", 0, "second one")
    assert (tb["peer"], tb["unread"], tb["thread"]) == ("alice", 2, sent["thread"])

    served.kill()  # kill -9: history must not depend on a clean shutdown
    await served.start()
    assert only(await cli.json("b", "history", "alice"), "message") == history
    text = await cli.run("a", "send", "bob", "after", "the", "restart")
    assert text.stdout.startswith(f"sent #{sent['thread']}:3 ")
    lines = (await cli.run("b", "history", "alice")).stdout.splitlines()
    assert len(lines) == 3 and lines[-1].endswith("alice: after the restart")


async def test_a_send_during_a_restart_succeeds_once_the_server_is_back(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    for profile, name in (("a", "alice"), ("b", "bob")):
        await cli.run(profile, "register", name)
        await cli.run(profile, "login", name)
    served.kill()
    # While the server is down something holds its port and drops every connection, so the
    # test knows the client is retrying (not merely slow to start) before bringing it back.
    async with refusing_listener(served.grpc_port) as attempts:
        sending = cli.start("a", "--json", "send", "bob", "through the restart", "--timeout", "40")
        await eventually(lambda: attempts[0] >= 2 or sending.poll() is not None, timeout=20)
        assert sending.poll() is None, sending.communicate()
    await served.start()
    code, out, err = await wait_exit(sending, 45)
    assert code == 0, err
    [sent] = [json.loads(line) for line in out.splitlines()]
    assert (sent["type"], sent["seq"]) == ("sent", 1)
    bob = Client(served.grpc_address)
    await bob.login("bob", PASSWORD)
    rows, _ = await bob.history(sent["thread"])
    assert [(m.seq, m.text, m.msg_id) for m in rows] == [(1, "through the restart", sent["msg_id"])]
    await bob.close()
    # ...and the wait is bounded by --timeout.
    served.kill()
    async with refusing_listener(served.grpc_port):
        never = cli.start("a", "send", "bob", "never", "--timeout", "1")
        code, out, err = await wait_exit(never, 20)
    assert code == 1 and "not acknowledged within 1 s" in err


async def test_backup_while_the_server_writes_and_serve_from_the_copy(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    alice, bob = Client(served.grpc_address), Client(served.grpc_address)
    try:
        for c, name in ((alice, "alice"), (bob, "bob")):
            await c.register(name, PASSWORD)
            await c.login(name, PASSWORD, "test")
        conn = Connection(alice)
        await conn.start()
        first = await conn.send("before 0", recipient="bob")
        for i in range(1, 50):
            await conn.send(f"before {i}", thread_id=first.thread_id)

        async def keep_sending() -> None:
            for i in range(200):
                await conn.send(f"during {i}", thread_id=first.thread_id)

        dest = tmp_path / "copy" / "natter.db"
        sending = asyncio.create_task(keep_sending())
        [done] = await cli.json("x", "backup", str(dest), "--data", str(served.data_dir))
        await sending
        await conn.close()
        assert done["type"] == "backup" and done["bytes"] == dest.stat().st_size
        assert 50 <= done["messages"] <= 250  # a snapshot: everything before, some of during

        refused = await cli.run(
            "x", "backup", str(dest), "--data", str(served.data_dir), check=False
        )
        assert refused.returncode == 1 and "exists" in refused.stderr
        other = await cli.run(
            "x",
            "backup",
            str(tmp_path / "pg.db"),
            "--database-url",
            "postgresql+asyncpg://u@127.0.0.1/natter",
            check=False,
        )
        assert other.returncode == 1 and "pg_dump" in other.stderr
    finally:
        await alice.close()
        await bob.close()

    # The copy is a whole natter: serve it and read the history it holds, without gaps.
    async with natter_server(dest.parent) as restored:
        reader = Client(restored.grpc_address)
        try:
            await reader.login("bob", PASSWORD, "restored")
            rows = [m async for m in reader.all_history(first.thread_id)]
        finally:
            await reader.close()
    assert [m.seq for m in rows] == list(range(1, done["messages"] + 1))
    assert [m.text for m in rows[:50]] == [f"before {i}" for i in range(50)]


async def test_read_marks_a_thread_read_and_the_sender_sees_it(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    for name in ("alice", "bob"):
        await cli.run(name, "register", name)
        await cli.run(name, "login", name)
    await cli.run("alice", "send", "bob", "one")
    [sent] = await cli.json("alice", "send", "bob", "two")
    [before] = only(await cli.json("bob", "threads"), "thread")
    assert before["unread"] == 2
    [done] = await cli.json("bob", "read", "alice")
    assert (done["type"], done["thread"], done["seq"]) == ("read", sent["thread"], 2)
    [after] = only(await cli.json("bob", "threads"), "thread")
    assert after["unread"] == 0
    async with Client(served.grpc_address) as alice:
        await alice.login("alice", PASSWORD, "check")
        rows, _ = await alice.history(sent["thread"])
        assert [m.state for m in rows] == [d.MessageState.READ, d.MessageState.READ]
    again = await cli.json("bob", "read", "alice")  # nothing new: a no-op, still an answer
    assert again[0]["seq"] == 2
