"""Groups end to end: membership rules, system messages in the thread, history windows, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from natter import convert
from natter import domain as d
from natter.errors import (
    FailedPrecondition,
    InvalidArgument,
    NatterError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from natter.sdk import Client, Connection
from natter.settings import Settings
from natter.v1 import group_service_pb2 as gpb
from natter.v1 import types_pb2 as tpb
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import collect, eventually, gather_events
from tests.procs import Cli

S = d.SystemKind
GROUP = d.ThreadKind.GROUP.value
ADMIN, MEMBER = d.Role.ADMIN.value, d.Role.MEMBER.value


async def messages(conn: Connection, count: int, timeout: float = 10.0) -> list[d.Message]:
    """The next `count` messages the connection surfaces, the device's own included."""
    return await gather_events(
        conn, lambda ev: isinstance(ev, d.Message), count, timeout, "messages"
    )


def story(rows: list[d.Message]) -> list[tuple[int, str]]:
    """(seq, what) per message: the system event kind, or the text."""
    return [(m.seq, m.system.kind.name if m.system else m.text) for m in rows]


async def full_history(client: Client, thread_id: int) -> list[d.Message]:
    return [m async for m in client.all_history(thread_id)]


async def reason_of(call: object) -> tuple[type[NatterError], str]:
    try:
        await call  # type: ignore[misc]
    except NatterError as e:
        return type(e), e.reason
    raise AssertionError("no error")


# -- the happy paths -----------------------------------------------------------------------


async def test_create_a_group_and_chat(user: UserFactory, connect: ConnFactory) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca, cb, cc = await connect(alice), await connect(bob), await connect(carol)
    group = await alice.create_group("Trip ✈", ["bob", "carol", "alice", "BOB"])
    assert (group.kind, group.title, group.member_count, group.role, group.last_seq) == (
        GROUP,
        "Trip ✈",
        3,
        ADMIN,
        1,
    )
    # Every device, the creator's included, sees the creation as seq 1.
    for conn in (ca, cb, cc):
        [m] = await messages(conn, 1)
        assert (m.thread_id, m.seq, m.kind) == (group.thread_id, 1, d.MessageKind.SYSTEM)
        assert m.system is not None
        assert (m.system.kind, m.system.actor.username, m.system.title) == (
            S.GROUP_CREATED,
            "alice",
            "Trip ✈",
        )
        assert [u.username for u in m.system.users] == ["bob", "carol"]
    sent = await cb.send("hi all", thread_id=group.thread_id)
    assert sent.seq == 2
    for conn in (ca, cc):
        [m] = await collect(conn, 1)
        assert (m.text, m.seq, m.sender.username) == ("hi all", 2, "bob")
    [t] = await carol.threads()
    assert (t.thread_id, t.kind, t.title, t.member_count, t.role, t.active) == (
        group.thread_id,
        GROUP,
        "Trip ✈",
        3,
        MEMBER,
        True,
    )
    assert t.last_message.text == "hi all" and t.unread_count == 2  # the creation too


@pytest.mark.message_log
async def test_membership_changes_tell_every_device_the_same_story(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol, dave = [await user(n) for n in ("alice", "bob", "carol", "dave")]
    group = await alice.create_group("Band", ["bob", "carol"])
    g = group.thread_id
    ca, cb, cc, cd = [await connect(x) for x in (alice, bob, carol, dave)]
    await cb.send("before dave", thread_id=g)  # seq 2
    await alice.rename_group(g, "Band 2")  # 3
    added = await alice.add_members(g, ["dave", "bob"])  # 4: bob is already in
    assert added.system is not None and [u.username for u in added.system.users] == ["dave"]
    removed = await alice.remove_members(g, ["carol"])  # 5
    assert (removed.seq, removed.system and removed.system.kind) == (5, S.MEMBERS_REMOVED)
    await alice.set_role(g, ["bob"], admin=True)  # 6
    await bob.set_role(g, ["bob"], admin=False)  # 7: bob steps down himself
    want = [
        (1, "GROUP_CREATED"),
        (2, "before dave"),
        (3, "TITLE_CHANGED"),
        (4, "MEMBERS_ADDED"),
        (5, "MEMBERS_REMOVED"),
        (6, "ADMINS_PROMOTED"),
        (7, "ADMINS_DEMOTED"),
    ]
    # Live on each connected member's device, the same seqs in the same order.
    assert story(await messages(ca, 7)) == want
    assert story(await messages(cb, 7)) == want
    # dave was added while connected: from his join on, live, without reconnecting.
    assert story(await messages(cd, 4)) == want[3:]
    # carol gets up to her removal, then nothing more of the group.
    assert story(await messages(cc, 5)) == want[:5]
    after = await cb.send("after carol left", thread_id=g)  # 8
    assert after.seq == 8
    [m] = await collect(cd, 1)
    assert (m.seq, m.text) == (8, "after carol left")
    await ca.send("just to carol", recipient="carol")
    [m] = await collect(cc, 1)
    assert m.text == "just to carol" and m.thread_id != g
    # History agrees with what was pushed.
    assert story(await full_history(alice, g)) == [*want, (8, "after carol left")]
    assert story(await full_history(dave, g)) == [*want[3:], (8, "after carol left")]
    assert story(await full_history(carol, g)) == want[:5]
    with pytest.raises(PermissionDenied):
        await cc.send("let me back", thread_id=g, timeout=5)
    info = await bob.thread(g)
    roles = {m.user.username: m.role for m in info.members}
    assert roles == {"alice": ADMIN, "bob": MEMBER, "dave": MEMBER}
    assert info.thread.title == "Band 2" and info.thread.member_count == 3
    carols = {t.thread_id: t for t in await carol.threads()}
    assert carols[g].active is False and carols[g].last_seq == 5


@pytest.mark.message_log
async def test_members_added_later_see_history_from_their_join(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, _, _ = await user("alice"), await user("bob"), await user("carol")
    group = await alice.create_group("g", ["bob"])
    ca = await connect(alice)
    for i in range(3):
        await ca.send(f"m{i}", thread_id=group.thread_id)  # 2..4
    await alice.add_members(group.thread_id, ["carol"])  # 5
    carol = await user("carol")
    assert story(await full_history(carol, group.thread_id)) == [(5, "MEMBERS_ADDED")]
    cc = await connect(carol)
    replayed = await messages(cc, 1)
    assert story(replayed) == [(5, "MEMBERS_ADDED")]


async def test_full_history_for_new_members_when_configured(settings: Settings) -> None:
    async with EmbeddedServer(settings.replace(group_history_from_join=False)) as srv:
        clients = []
        for name in ("alice", "bob", "carol"):
            c = Client(srv.grpc_address)
            clients.append(c)
            await c.register(name, PASSWORD)
            await c.login(name, PASSWORD)
        alice, _, carol = clients
        group = await alice.create_group("g", ["bob"])
        async with Connection(alice) as ca:
            await ca.send("early", thread_id=group.thread_id)
        await alice.add_members(group.thread_id, ["carol"])
        assert story(await full_history(carol, group.thread_id)) == [
            (1, "GROUP_CREATED"),
            (2, "early"),
            (3, "MEMBERS_ADDED"),
        ]
        for c in clients:
            await c.close()


@pytest.mark.message_log
async def test_the_last_admin_leaving_promotes_the_longest_member(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    group = await alice.create_group("g", ["bob", "carol"])
    g = group.thread_id
    cb = await connect(bob)
    await messages(cb, 1)
    await alice.leave_group(g)
    promoted, left = await messages(cb, 2)
    assert promoted.system is not None and left.system is not None
    assert (promoted.seq, promoted.system.kind, [u.username for u in promoted.system.users]) == (
        2,
        S.ADMINS_PROMOTED,
        ["bob"],
    )
    assert (left.seq, left.system.kind, left.system.actor.username) == (3, S.MEMBER_LEFT, "alice")
    info = await bob.thread(g)
    assert {m.user.username: m.role for m in info.members} == {"bob": ADMIN, "carol": MEMBER}
    # The one who left keeps the story up to leaving, and can act no more.
    assert story(await full_history(alice, g))[-1] == (3, "MEMBER_LEFT")
    for call in (alice.leave_group(g), alice.rename_group(g, "mine")):
        assert await reason_of(call) == (PermissionDenied, "NOT_A_MEMBER")
    # With another admin left, nobody is promoted.
    await bob.set_role(g, ["carol"], admin=True)  # 4
    await bob.leave_group(g)  # 5
    assert story(await full_history(carol, g))[-2:] == [(4, "ADMINS_PROMOTED"), (5, "MEMBER_LEFT")]
    await carol.leave_group(g)  # the last one out: an empty group, no error
    assert story(await full_history(carol, g))[-1] == (6, "MEMBER_LEFT")


async def test_group_messages_keep_the_direct_contract(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    group = await alice.create_group("g", ["bob", "carol"])
    g = group.thread_id
    ca, cc = await connect(alice), await connect(carol)
    first = await ca.send("one", thread_id=g, client_msg_id="k1")
    again = await ca.send("one", thread_id=g, client_msg_id="k1")
    assert (again.seq, again.msg_id) == (first.seq, first.msg_id) == (2, first.msg_id)
    await ca.send("two", thread_id=g)
    # bob was offline: he catches up on connect, in order, once.
    cb = await connect(bob)
    assert story(await messages(cb, 3)) == [(1, "GROUP_CREATED"), (2, "one"), (3, "two")]
    assert [m.seq for m in await collect(cc, 3)] == [1, 2, 3]
    # Receipts per member: carol and bob read; alice hears of each.
    await cc.read(g, 3)
    await cb.read(g, 2)
    read_by: dict[str, int] = {}
    while read_by != {"carol": 3, "bob": 2}:
        ev = await ca.next_event(10)
        if isinstance(ev, d.Receipt) and ev.kind is d.ReceiptKind.READ:
            read_by[ev.user.username] = ev.seq
    info = await alice.thread(g)
    assert {m.user.username: m.read_seq for m in info.members} == {"alice": 0, "bob": 2, "carol": 3}

    async def states() -> bool:
        rows, _ = await alice.history(g)
        return [m.state for m in rows if m.kind is d.MessageKind.TEXT] == [
            d.MessageState.READ,
            d.MessageState.DELIVERED,
        ]

    await eventually(states)


# -- bad input -----------------------------------------------------------------------------


async def test_bad_group_requests_get_clear_errors(user: UserFactory, connect: ConnFactory) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    group = await alice.create_group("g", ["bob"])
    g = group.thread_id
    cb = await connect(bob)
    direct = await cb.send("hi", recipient="alice")
    cases = [
        (alice.create_group("", ["bob"]), InvalidArgument, "EMPTY_TITLE"),
        (alice.create_group("x" * 129, ["bob"]), InvalidArgument, "TOO_LONG"),
        (alice.create_group("g", ["bob", "nobody"]), NotFound, "USER_NOT_FOUND"),
        (alice.add_members(g, ["ghost"]), NotFound, "USER_NOT_FOUND"),
        (alice.add_members(g, []), InvalidArgument, "NO_MEMBERS"),
        (alice.add_members(g, ["bob"]), FailedPrecondition, "ALREADY_MEMBERS"),
        (alice.remove_members(g, ["carol"]), FailedPrecondition, "NOT_MEMBERS"),
        (alice.remove_members(g, ["alice"]), InvalidArgument, "REMOVE_SELF"),
        (alice.set_role(g, ["carol"], admin=True), FailedPrecondition, "NOT_MEMBERS"),
        (alice.set_role(g, ["alice"], admin=False), FailedPrecondition, "LAST_ADMIN"),
        (alice.set_role(g, ["bob"], admin=False), FailedPrecondition, "NO_CHANGE"),
        # Only admins manage; a member removing himself is told to leave instead.
        (bob.remove_members(g, ["bob"]), PermissionDenied, "NOT_AN_ADMIN"),
        (bob.add_members(g, ["carol"]), PermissionDenied, "NOT_AN_ADMIN"),
        (bob.rename_group(g, "mine"), PermissionDenied, "NOT_AN_ADMIN"),
        (bob.set_role(g, ["bob"], admin=True), PermissionDenied, "NOT_AN_ADMIN"),
        # Groups one is not in, groups that do not exist, threads that are not groups.
        (carol.rename_group(g, "mine"), PermissionDenied, "NOT_A_MEMBER"),
        (carol.leave_group(g), PermissionDenied, "NOT_A_MEMBER"),
        (carol.add_members(g, ["carol"]), PermissionDenied, "NOT_A_MEMBER"),
        (alice.rename_group(99999, "x"), NotFound, "THREAD_NOT_FOUND"),
        (alice.leave_group(0), InvalidArgument, "BAD_THREAD"),
        (alice.rename_group(direct.thread_id, "x"), FailedPrecondition, "NOT_A_GROUP"),
        (bob.leave_group(direct.thread_id), FailedPrecondition, "NOT_A_GROUP"),
    ]
    for call, error, reason in cases:
        assert await reason_of(call) == (error, reason)
    # An unknown role value is refused before anything happens.
    with pytest.raises(InvalidArgument) as info:
        await set_role_number(alice, g, 7)
    assert info.value.reason == "UNKNOWN_ENUM"
    # Nothing was written by any of them: the group is as it was created.
    assert story(await full_history(alice, g)) == [(1, "GROUP_CREATED")]
    assert [t.thread_id for t in await carol.threads()] == []


async def set_role_number(client: Client, thread_id: int, role: int) -> d.Message:
    """SetMemberRole with any number as the role, as a client built from newer protos sends."""
    res = await client._call(
        client.groups_stub.SetMemberRole,
        gpb.SetMemberRoleRequest(
            thread_id=thread_id, members=["bob"], role=tpb.MemberRole.ValueType(role)
        ),
    )
    return convert.message_of(res.message)


async def test_a_role_number_the_server_does_not_know_is_invalid_argument(
    user: UserFactory,
) -> None:
    alice = await user("alice")
    await user("bob")
    g = (await alice.create_group("g", ["bob"])).thread_id
    for number, reason, words in (
        (99, "UNKNOWN_ENUM", "role = 99 is not a MemberRole this server knows"),
        (0, "UNSPECIFIED_ENUM", "role is required"),
    ):
        with pytest.raises(InvalidArgument) as info:
            await set_role_number(alice, g, number)
        assert info.value.reason == reason
        assert info.value.message.startswith(words), info.value.message
        assert "MEMBER_ROLE_MEMBER or MEMBER_ROLE_ADMIN" in info.value.message
    # Nothing was written, and the server goes on serving the same caller and group.
    assert story(await full_history(alice, g)) == [(1, "GROUP_CREATED")]
    event = await set_role_number(alice, g, tpb.MEMBER_ROLE_ADMIN)
    assert event.system is not None and event.system.kind is S.ADMINS_PROMOTED
    assert story(await full_history(alice, g)) == [(1, "GROUP_CREATED"), (2, "ADMINS_PROMOTED")]


class TestMemberCap:
    @pytest.fixture
    def settings(self, tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
        return make_settings(
            tmp_path / "data",
            database_url=store_url,
            message_log=message_log_url,
            max_group_members=3,
        )

    async def test_groups_cannot_grow_past_the_cap(self, user: UserFactory) -> None:
        alice = await user("alice")
        for name in ("bob", "carol", "dave"):
            await user(name)
        assert await reason_of(alice.create_group("g", ["bob", "carol", "dave"])) == (
            ResourceExhausted,
            "GROUP_FULL",
        )
        group = await alice.create_group("g", ["bob", "carol", "alice"])
        assert group.member_count == 3
        assert await reason_of(alice.add_members(group.thread_id, ["dave"])) == (
            ResourceExhausted,
            "GROUP_FULL",
        )
        many = [f"user{i}" for i in range(10)]
        assert await reason_of(alice.add_members(group.thread_id, many)) == (
            ResourceExhausted,
            "GROUP_FULL",
        )
        assert await reason_of(alice.remove_members(group.thread_id, many)) == (
            InvalidArgument,
            "TOO_MANY_USERS",
        )
        await alice.remove_members(group.thread_id, ["carol"])
        added = await alice.add_members(group.thread_id, ["dave"])
        assert added.seq == 3


# -- the command line ----------------------------------------------------------------------


@pytest.mark.above_the_store
async def test_cli_group_commands(tmp_path: Path, server: EmbeddedServer) -> None:
    cli = Cli(tmp_path / "home", server.grpc_address, PASSWORD)
    for name in ("alice", "bob", "carol"):
        await cli.run(name, "register", name)
        await cli.run(name, "login", name)
    [created] = await cli.json("alice", "group", "create", "Pals", "bob")
    assert (created["type"], created["title"], created["members"]) == ("group_created", "Pals", 2)
    g = str(created["thread"])
    [added] = await cli.json("alice", "group", "add", g, "carol")
    assert added["system"] == {
        "kind": "members_added",
        "actor": "alice",
        "users": ["carol"],
        "title": "",
    }
    [promoted] = await cli.json("alice", "group", "promote", g, "bob")
    assert promoted["system"]["kind"] == "admins_promoted" and promoted["seq"] == 3
    [demoted] = await cli.json("alice", "group", "demote", g, "bob")
    assert demoted["system"]["users"] == ["bob"]
    [removed] = await cli.json("alice", "group", "rm", g, "carol")
    assert removed["text"] == "alice removed carol"
    info = await cli.json("bob", "group", "info", g)
    assert info[0]["title"] == "Pals" and info[0]["members"] == 2
    assert {(m["username"], m["role"]) for m in info[1:]} == {("alice", "admin"), ("bob", "member")}
    sent = await cli.json("bob", "send", "--thread", g, "hello", "pals")
    assert sent[0]["seq"] == 6
    threads = await cli.json("alice", "threads")
    assert [(t["kind"], t["title"], t["members"]) for t in threads] == [("group", "Pals", 2)]
    text = (await cli.run("alice", "threads")).stdout
    assert "Pals" in text and "2 members" in text
    [left] = await cli.json("bob", "group", "leave", g)
    assert left == {"type": "group_left", "thread": int(g)}
    failed = await cli.run("carol", "group", "add", g, "carol", check=False)
    assert failed.returncode == 1 and "no longer a member" in failed.stderr
    failed = await cli.run("alice", "group", "add", g, "nobody", check=False)
    assert failed.returncode == 1 and "nobody" in failed.stderr
