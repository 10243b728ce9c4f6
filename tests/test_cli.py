"""The `natter` command line end to end: real `natter serve` and client processes, two
profiles (two devices) under a temporary NATTER_HOME, a send that outlives a restart,
listen showing exactly what a device missed, and the command line's usage."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import natter
from app.cli import parser
from app.profiles import Profile, ProfileStore
from devtools.ports import free_port
from devtools.serving import natter_command
from natter import domain as d
from natter.sdk import Client, Connection
from tests.conftest import PASSWORD
from tests.helpers import eventually
from tests.procs import (
    Cli,
    NatterServer,
    natter_server,
    refusing_listener,
    wait_exit,
)


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


# -- listen shows what the device missed, once ---------------------------------------------


class Listening:
    """A `natter listen` process whose stdout is read line by line while it runs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, cli: Cli, profile: str, *argv: str) -> Listening:
        proc = await asyncio.create_subprocess_exec(
            *cli.args(profile, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli.env(),
        )
        return cls(proc)

    async def until(self, done: Callable[[str], bool], timeout: float = 30.0) -> list[str]:
        """Read lines until one makes done(line) true; all lines read so far."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.lines and done(self.lines[-1])):
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no such line within {timeout} s: {self.lines}")
            line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            if not line:
                raise AssertionError(f"listen ended: {self.lines} {await self.stderr()}")
            self.lines.append(line.decode().rstrip("\n"))
        return self.lines

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    async def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for it to exit; its exit status and stderr (stdout lines join `lines`)."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.lines += out.decode().splitlines()
        return self.proc.returncode or 0, err.decode()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def sdk_user(served: NatterServer, name: str) -> Client:
    c = Client(served.grpc_address)
    await c.register(name, PASSWORD)
    await c.login(name, PASSWORD, "sdk")
    return c


async def test_listen_count_shows_one_and_the_next_listen_shows_the_rest_once(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    await cli.run("b", "register", "bob")
    await cli.run("b", "login", "bob")
    alice = await sdk_user(served, "alice")
    conn = await Connection(alice).start()
    try:
        first = await conn.send("m1", recipient="bob")
        tid = first.thread_id
        for i in range(2, 5):
            await conn.send(f"m{i}", thread_id=tid)
        [shown] = only(await cli.json("b", "listen", "--count", "1", "--timeout", "20"), "message")
        assert (shown["seq"], shown["text"]) == (1, "m1")

        def states_are(*want: d.MessageState) -> Callable[[], Any]:
            async def check() -> bool:
                rows, _ = await alice.history(tid)
                return [m.state for m in rows] == list(want)

            return check

        # Only what bob saw is delivered; the other three wait for his next listen.
        sent, delivered = d.MessageState.SENT, d.MessageState.DELIVERED
        await eventually(states_are(delivered, sent, sent, sent))

        listening = await Listening.start(
            cli, "b", "--json", "listen", "--count", "4", "--timeout", "30"
        )
        try:
            rows = await listening.until(lambda line: json.loads(line)["type"] == "sync_done")
            objs = [json.loads(line) for line in rows]
            assert [(o["seq"], o["text"]) for o in only(objs, "message")] == [
                (2, "m2"),
                (3, "m3"),
                (4, "m4"),
            ]
            assert objs[-1] == {"type": "sync_done", "missed": 3}
            await conn.send("live", thread_id=tid)
            code, err = await listening.finish()
        finally:
            listening.kill()
        assert code == 0, err
        objs = [json.loads(line) for line in listening.lines]
        # Each exactly once: the three it missed, then the live one (--count 4 ends it).
        assert [o["seq"] for o in only(objs, "message")] == [2, 3, 4, 5]
        await eventually(states_are(*[delivered] * 5))
    finally:
        await conn.close()
        await alice.close()


@pytest.mark.parametrize("mode", ["json", "text"])
async def test_own_sends_are_shown_as_own_and_never_counted_as_missed(
    tmp_path: Path, served: NatterServer, mode: str
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    await cli.run("b", "register", "bob")
    await cli.run("b", "login", "bob")
    alice = await sdk_user(served, "alice")
    conn = await Connection(alice).start()
    as_json = mode == "json"

    def parse(line: str) -> dict[str, Any]:
        """A line of listen's stdout: JSON, or a text message line."""
        if as_json:
            return dict(json.loads(line))
        m = re.fullmatch(r"\[[^]]+\] #(\d+):(\d+) (\w+)( \(you\))?: (.*)", line)
        if m is None:  # a receipt, presence or typing line
            return {"type": "other", "line": line}
        return {
            "type": "message",
            "seq": int(m.group(2)),
            "from": m.group(3),
            "own": bool(m.group(4)),
            "text": m.group(5),
        }

    try:
        first = await conn.send("from alice", recipient="bob")
        await cli.run("b", "send", "alice", "from bob")  # this device: sent, not missed
        flags = ["--json"] if as_json else []
        listening = await Listening.start(
            cli, "b", *flags, "listen", "--count", "2", "--timeout", "60"
        )
        try:
            if as_json:
                await listening.until(lambda line: json.loads(line)["type"] == "sync_done")
            else:
                await listening.until(lambda line: "from bob" in line)
            # Another `natter send` on the same profile is the same device: its stream takes
            # the listener's, which reconnects and syncs again, showing the send as its own.
            await cli.run("b", "send", "alice", "again")
            await listening.until(lambda line: parse(line).get("text") == "again")
            await conn.send("the end", thread_id=first.thread_id)
            code, err = await listening.finish()
        finally:
            listening.kill()
        assert code == 0, err
        rows = [parse(line) for line in listening.lines]  # every line parses: nothing else
        shown = [
            (r["seq"], r["from"], r.get("own", False), r["text"]) for r in only(rows, "message")
        ]
        assert shown == [
            (1, "alice", False, "from alice"),
            (2, "bob", True, "from bob"),
            (3, "bob", True, "again"),
            (4, "alice", False, "the end"),
        ]
        status = [line for line in err.splitlines() if line.startswith("--")]
        assert not [r for r in rows if r.get("line", "").startswith(("--", "natter:"))]
        if as_json:
            assert [r["missed"] for r in only(rows, "sync_done")][:2] == [1, 0]
            assert {r["missed"] for r in only(rows, "sync_done")[1:]} == {0}
            assert only(rows, "reconnecting"), rows  # the displaced stream, said as JSON
            assert status == []
        else:
            # Status lines go to stderr; only the first sync counts anything as missed.
            assert status[0] == "-- in sync (1 missed message shown) --"
            assert [line for line in status if "missed" in line] == [status[0]]
            assert "-- connection lost; reconnecting --" in status
    finally:
        await conn.close()
        await alice.close()


# -- the command line's usage --------------------------------------------------------------


async def run_argv(cli: Cli, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`natter ARGV...` exactly as given (Cli.run puts --server and --profile first)."""
    proc = await asyncio.create_subprocess_exec(
        *natter_command(),
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return subprocess.CompletedProcess(list(argv), proc.returncode or 0, out.decode(), err.decode())


async def test_a_thread_is_named_with_or_without_its_hash(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    await cli.run("a", "register", "alice")
    await cli.run("a", "login", "alice")
    for name in ("bob", "carol", "dave"):
        await (await sdk_user(served, name)).close()
    created = await cli.run("a", "group", "create", "Weekend", "bob", "carol")
    m = re.search(r"created group #(\d+) ", created.stdout)
    assert m is not None, created.stdout
    tid = int(m.group(1))
    tag = f"#{tid}"  # as natter prints it
    [sent] = await cli.json("a", "send", "--thread", tag, "who", "is", "in?")
    [plain] = await cli.json("a", "send", "--thread", str(tid), "me")
    assert (sent["thread"], plain["thread"]) == (tid, tid)
    history = only(await cli.json("a", "history", tag), "message")
    assert [r["text"] for r in history][-2:] == ["who is in?", "me"]
    assert only(await cli.json("a", "history", str(tid)), "message") == history
    [added] = await cli.json("a", "group", "add", tag, "dave")
    assert added["system"]["kind"] == "members_added" and added["thread"] == tid
    [promoted] = await cli.json("a", "group", "promote", tag, "bob")
    [demoted] = await cli.json("a", "group", "demote", tag, "bob")
    [removed] = await cli.json("a", "group", "rm", tag, "dave")
    assert [e["system"]["kind"] for e in (promoted, demoted, removed)] == [
        "admins_promoted",
        "admins_demoted",
        "members_removed",
    ]
    info = await cli.json("a", "group", "info", tag)
    assert (info[0]["thread"], info[0]["title"], info[0]["members"]) == (tid, "Weekend", 3)
    [read] = await cli.json("a", "read", tag)
    assert (read["type"], read["thread"]) == ("read", tid)
    [left] = await cli.json("a", "group", "leave", tag)
    assert left == {"type": "group_left", "thread": tid}
    bad = await cli.run("a", "send", "--thread", "#x", "hi", check=False)
    assert bad.returncode == 2 and "'#x' is not a thread id (such as 2 or #2)" in bad.stderr


async def test_a_send_without_text_says_the_text_is_missing(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", "127.0.0.1:1", PASSWORD)  # refused before any connection
    ProfileStore(tmp_path / "home").save("a", Profile(username="al", user_id=1, token="t"))
    for argv, says in (
        (("send", "bob"), "the message text is missing: natter send bob TEXT..."),
        (("send", "--thread", "#2"), "the message text is missing: natter send --thread 2"),
        (("send",), "say who to send to: natter send USER TEXT..."),
    ):
        done = await cli.run("a", *argv, check=False)
        assert done.returncode == 2 and says in done.stderr, (argv, done.stderr)
        assert "needs USER or --thread" not in done.stderr


async def test_contacts_alone_lists_them_and_add_or_rm_without_users_says_how(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    await cli.run("a", "register", "alice")
    await cli.run("a", "login", "alice")
    await (await sdk_user(served, "bob")).close()
    assert (await cli.run("a", "contacts")).stdout == ""  # none yet, and no complaint
    for action in ("add", "rm"):
        done = await cli.run("a", "contacts", action, check=False)
        assert done.returncode == 2, done
        assert f"natter contacts {action} USER..." in done.stderr
        assert "required" not in done.stderr
    await cli.run("a", "contacts", "add", "bob")
    [listed] = await cli.json("a", "contacts")
    assert listed["type"] == "contact" and listed["username"] == "bob"
    assert (await cli.run("a", "contacts")).stdout.split()[0] == "bob"
    assert await cli.json("a", "contacts", "list") == [listed]


async def test_a_missing_profile_names_the_exact_login_command(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", "127.0.0.1:7070", PASSWORD)
    work = await cli.run("work", "threads", check=False)
    assert work.returncode == 1
    assert "run: natter --profile work --server 127.0.0.1:7070 login USER" in work.stderr
    default = await run_argv(cli, "threads")  # no --profile, no --server
    assert default.returncode == 1
    assert default.stderr.strip().endswith("run: natter login USER")
    spaced = await run_argv(cli, "--profile", "my phone", "devices")
    assert "run: natter --profile 'my phone' login USER" in spaced.stderr


async def test_no_server_listening_is_said_plainly(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    cli = Cli(tmp_path / "home", address, PASSWORD)
    # A profile that is logged in, to a server that has gone away.
    ProfileStore(tmp_path / "home").save(
        "a", Profile(server=address, username="alice", user_id=1, device_id=1, token="t")
    )
    for argv in (("register", "zed"), ("threads",), ("listen", "--timeout", "20")):
        done = await cli.run("a", *argv, check=False)
        assert done.returncode == 1, (argv, done)
        [line] = done.stderr.splitlines()
        assert line.startswith(f"natter: cannot reach the natter server at {address}"), line
        assert "--server HOST:PORT or NATTER_SERVER" in line
        assert "UNAVAILABLE" not in line and "failed to connect" not in line


async def test_global_flags_go_before_or_after_the_command(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    srv = served.grpc_address
    done = await run_argv(cli, "register", "alice", "--server", srv, "--json")
    assert json.loads(done.stdout)["type"] == "registered", done.stderr
    done = await run_argv(cli, "--server", srv, "login", "alice", "--profile", "a", "--json")
    assert json.loads(done.stdout)["type"] == "logged_in", done.stderr
    await (await sdk_user(served, "bob")).close()
    # The profile remembers the server; the flags work on nested commands and among words.
    done = await run_argv(cli, "group", "create", "Pals", "bob", "--json", "--profile", "a")
    assert json.loads(done.stdout)["type"] == "group_created", done.stderr
    done = await run_argv(cli, "send", "bob", "--json", "hello", "bob", "--profile", "a")
    sent = json.loads(done.stdout)
    assert sent["type"] == "sent", done.stderr
    [row] = only(await cli.json("a", "history", "bob"), "message")
    assert row["text"] == "hello bob"
    # A flag after the command wins over the same flag before it.
    done = await run_argv(cli, "--profile", "nobody", "threads", "--profile", "a", "--json")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2, done.stderr


async def test_version(tmp_path: Path) -> None:
    done = await run_argv(Cli(tmp_path, "", PASSWORD), "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"natter {natter.__version__}"


def test_every_argument_has_help_and_says_its_default() -> None:
    def walk(p: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
        out = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    out += walk(sub, f"{path} {name}")
            else:
                out.append((path, a))
        return out

    actions = walk(parser(), "natter")
    assert len(actions) > 60
    for path, a in actions:
        name = f"{path} {'/'.join(a.option_strings) or a.dest}"
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
            continue
        assert a.help, f"{name} has no help"
        if a.default not in (None, False, argparse.SUPPRESS) and a.dest != "parser":
            assert "%(default)" in a.help or "default" in a.help, f"{name}: no default in help"


async def test_help_shows_defaults(tmp_path: Path) -> None:
    done = await run_argv(Cli(tmp_path, "", PASSWORD), "listen", "--help")
    assert "--count N" in done.stdout and "(default: 0, no limit)" in done.stdout
    assert "global flags" in done.stdout and "--server HOST:PORT" in done.stdout


async def test_threads_columns_line_up_for_groups_and_direct_chats(
    tmp_path: Path, served: NatterServer
) -> None:
    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    await cli.run("a", "register", "alice")
    await cli.run("a", "login", "alice")
    for name in ("bob", "carol"):
        await (await sdk_user(served, name)).close()
    alice = Client(served.grpc_address)
    await alice.login("alice", PASSWORD, "sdk")
    try:
        conn = await Connection(alice).start()
        await conn.send("hi bob", recipient="bob")
        group = await alice.create_group("A rather long group title, longer than most", ["bob"])
        await conn.send("hi all", thread_id=group.thread_id)
        await alice.create_group("Pals", ["bob", "carol"])
        await conn.close()
    finally:
        await alice.close()
    lines = (await cli.run("a", "threads")).stdout.splitlines()
    assert len(lines) == 3
    assert [line.split()[1] for line in lines] == ["group", "group", "direct"]
    # The same columns on every row: a group's member count has its own, blank for a chat.
    assert len({line.find(" unread ") for line in lines}) == 1, lines
    assert "3 members" in lines[0] and "2 members" in lines[1] and "members" not in lines[2]
    assert "A rather long group tit… " in lines[1]  # a long title is cut to its column


async def test_photos_replies_reactions_edits_deletes_forwards_and_search(
    tmp_path: Path, served: NatterServer
) -> None:
    from PIL import Image

    cli = Cli(tmp_path / "home", served.grpc_address, PASSWORD)
    for profile, name in (("a", "alice"), ("b", "bob"), ("c", "carol")):
        await cli.run(profile, "register", name)
        await cli.run(profile, "login", name)
    photo = tmp_path / "beach.jpg"
    Image.new("RGB", (640, 480), (20, 120, 200)).save(photo)
    rows = await cli.json("a", "send", "bob", "--file", str(photo), "the", "beach")
    [uploaded] = only(rows, "uploaded")
    assert uploaded["attachment"]["type"] == "image/jpeg"
    assert uploaded["attachment"]["width"] == 640
    [sent] = only(rows, "sent")
    t = sent["thread"]
    [got] = only(await cli.json("b", "listen", "--count", "1", "--timeout", "20"), "message")
    assert (got["kind"], got["text"]) == ("attachment", "the beach")
    assert got["attachments"][0]["name"] == "beach.jpg"
    [saved] = await cli.json(
        "b", "download", "alice", str(sent["seq"]), "-o", str(tmp_path / "got.jpg")
    )
    assert (tmp_path / "got.jpg").read_bytes() == photo.read_bytes() and saved[
        "bytes"
    ] == photo.stat().st_size
    # carol is not in the thread: the server refuses her, the command says so and fails.
    res = await cli.run("c", "download", f"#{t}", str(sent["seq"]), check=False)
    assert res.returncode == 1 and "not a member" in res.stderr

    [reply] = await cli.json("b", "reply", "alice", str(sent["seq"]), "lovely", "water")
    await cli.json("b", "react", "alice", str(sent["seq"]), "👍")
    await cli.json("b", "edit", "alice", str(reply["seq"]), "lovely", "clear", "water")
    text = (await cli.run("a", "history", "bob")).stdout.splitlines()
    assert (
        text[0].endswith("the beach  👍 1 (delivered)")
        and "image/jpeg beach.jpg 640x480" in text[0]
    )
    assert text[1].endswith(
        f'(reply to #{t}:{sent["seq"]} alice: "the beach") lovely clear water (edited)'
    )
    folded = only(await cli.json("a", "history", "bob"), "message")
    assert [(m["seq"], m.get("reactions"), m.get("edited")) for m in folded] == [
        (sent["seq"], {"👍": 1}, None),
        (reply["seq"], None, True),
    ]
    raw = only(await cli.json("a", "history", "bob", "--raw"), "message")
    assert [m.get("kind") for m in raw] == ["attachment", None, "reaction", "edit"]

    [hit] = only(await cli.json("a", "search", "clear"), "hit")
    assert (hit["thread"], hit["seq"], hit["text"]) == (t, reply["seq"], "lovely clear water")
    around = only(await cli.json("a", "history", "bob", "--at", str(hit["seq"])), "message")
    assert [m["seq"] for m in around if m.get("at")] == [hit["seq"]]

    [group] = await cli.json("a", "group", "create", "trip", "bob", "carol")
    [fwd] = await cli.json("a", "forward", "bob", str(sent["seq"]), f"#{group['thread']}")
    [copy] = only(await cli.json("c", "history", f"#{group['thread']}"), "message")[1:]
    assert (copy["seq"], copy.get("forwarded"), copy["attachments"][0]["name"]) == (
        fwd["seq"],
        True,
        "beach.jpg",
    )
    await cli.json(
        "c", "download", f"#{group['thread']}", str(fwd["seq"]), "-o", str(tmp_path / "c.jpg")
    )

    await cli.json("a", "delete", "bob", str(sent["seq"]))
    first = only(await cli.json("b", "history", "alice"), "message")[0]
    assert (first["deleted"], first["text"]) == (True, "message deleted")
    [hidden] = await cli.json("b", "delete", "alice", str(reply["seq"]), "--for-me")
    assert hidden["type"] == "hidden"
    assert [m["seq"] for m in only(await cli.json("b", "history", "alice"), "message")] == [
        sent["seq"]
    ]
    assert len(only(await cli.json("a", "history", "bob"), "message")) == 2  # alice keeps it
    res = await cli.run("b", "edit", "alice", str(sent["seq"]), "gone", check=False)
    assert res.returncode == 1 and "was deleted" in res.stderr
    [more] = await cli.json("a", "send", "bob", "one", "more")
    res = await cli.run("b", "edit", "alice", str(more["seq"]), "not mine", check=False)
    assert res.returncode == 1 and "only its sender" in res.stderr
