"""Blocking end to end: no direct messages, no presence, no group adds; shared groups go on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from natter.settings import Settings
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.conftest import test_settings as make_settings
from tests.helpers import collect, eventually, gather_events
from tests.test_presence import BEAT, pending_presence, presence_event, reports_pass


@pytest.fixture
def settings(tmp_path: Path, store_url: str, message_log_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url=store_url,
        message_log=message_log_url,
        heartbeat_interval_seconds=BEAT,
    )


async def test_a_blocked_person_cannot_message_the_blocker_and_is_not_told_why(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca, cb = await connect(alice), await connect(bob)
    first = await ca.send("hi bob", recipient="bob")
    [got] = await collect(cb, 1)
    assert got.text == "hi bob"
    blocked = await bob.block("alice")
    assert blocked.username == "alice"
    with pytest.raises(PermissionDenied) as refused:
        await ca.send("are you there?", recipient="bob")
    with pytest.raises(PermissionDenied) as by_thread:
        await ca.send("hello?", thread_id=first.thread_id)
    # Worded exactly as a send to a deleted account: the block is not revealed.
    cc = await connect(carol)
    bye = await cc.send("bye", recipient="alice")
    await carol.delete_account(PASSWORD)
    with pytest.raises(PermissionDenied) as to_deleted:
        await ca.send("carol?", thread_id=bye.thread_id)
    for info in (refused, by_thread):
        assert info.value.reason == "RECIPIENT_UNAVAILABLE"
        assert (info.value.reason, info.value.message) == (
            to_deleted.value.reason,
            to_deleted.value.message,
        )
        assert "block" not in info.value.message
    # Nothing was stored or pushed: bob's history has only the first message.
    rows, _ = await bob.history(first.thread_id)
    assert [m.text for m in rows] == ["hi bob"]
    assert [e for e in list(cb.events._queue) if isinstance(e, d.Message)] == []  # type: ignore[attr-defined]
    # The blocker is told plainly why they cannot write to the person they blocked.
    with pytest.raises(FailedPrecondition) as mine:
        await cb.send("hi alice", recipient="alice")
    assert mine.value.reason == "YOU_BLOCKED"
    await bob.unblock("alice")
    again = await ca.send("back again", recipient="bob")
    assert again.seq == first.seq + 1  # refused sends took no seq
    [got] = await collect(cb, 1)
    assert got.text == "back again"


async def test_blocked_people_see_no_presence_either_way(
    user: UserFactory, connect: ConnFactory, server: EmbeddedServer
) -> None:
    alice, bob = await user("alice"), await user("bob")
    await alice.add_contact("bob")
    await bob.add_contact("alice")
    cb = await connect(bob, heartbeat_seconds=BEAT)
    ca = await connect(alice, heartbeat_seconds=BEAT)
    await presence_event(cb, "alice", True)
    assert [p.user.username for p in await bob.presence(["alice"])] == ["alice"]
    await alice.block("bob")
    assert await bob.presence(["alice"]) == []
    assert await alice.presence(["bob"]) == []
    await ca.close()
    assert alice.user is not None
    alice_id = alice.user.user_id
    await eventually(lambda: not server.presence.tracker.online(alice_id))
    await connect(alice, heartbeat_seconds=BEAT)
    await eventually(lambda: server.presence.tracker.online(alice_id))
    await reports_pass(server)
    # Neither her going offline nor coming back reached bob.
    assert [p for p in pending_presence(cb) if p.user.username == "alice"] == []
    await alice.unblock("bob")

    async def seen_online() -> bool:
        return [p.online for p in await bob.presence(["alice"])] == [True]

    await eventually(seen_online)


async def test_a_blocked_person_cannot_add_the_blocker_to_groups(user: UserFactory) -> None:
    alice, bob = await user("alice"), await user("bob")
    carol = await user("carol")
    await bob.block("alice")
    with pytest.raises(PermissionDenied) as info:
        await alice.create_group("trap", ["bob", "carol"])
    assert info.value.reason == "CANNOT_ADD" and "bob" in info.value.message
    group = await alice.create_group("ok", ["carol"])
    with pytest.raises(PermissionDenied) as info:
        await alice.add_members(group.thread_id, ["bob"])
    assert info.value.reason == "CANNOT_ADD"
    # The blocker may still add the person they blocked (they chose to).
    made = await bob.create_group("bob's", ["alice"])
    assert made.member_count == 2
    assert carol is not None


async def test_in_a_shared_group_messages_still_flow_and_the_list_lets_apps_hide_them(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    group = await carol.create_group("all three", ["alice", "bob"])
    await bob.block("alice")
    ca, cb = await connect(alice), await connect(bob)
    await ca.send("hello group", thread_id=group.thread_id)
    got = await gather_events(
        cb,
        lambda ev: isinstance(ev, d.Message) and ev.text == "hello group",
        1,
        what="the group message",
    )
    assert got[0].sender.username == "alice"
    await cb.send("hi all", thread_id=group.thread_id)
    await gather_events(
        ca, lambda ev: isinstance(ev, d.Message) and ev.text == "hi all", 1, what="bob's reply"
    )
    assert [u.username for u in await bob.blocked()] == ["alice"]
    assert await alice.blocked() == []


def _message_with(text: str) -> Callable[[object], bool]:
    return lambda ev: isinstance(ev, d.Message) and ev.text == text


async def test_typing_in_a_direct_chat_does_not_cross_a_block(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    ca, cb = await connect(alice), await connect(bob)
    sent = await ca.send("hi", recipient="bob")
    await collect(cb, 1)
    await ca.typing(sent.thread_id, True)
    await gather_events(cb, lambda ev: isinstance(ev, d.Typing), 1, what="typing")
    await bob.block("alice")
    group = await bob.create_group("both", ["alice"])
    # Typing is relayed while its frame is handled, before the stream's next frame: a
    # group message sent after it reaching the other side shows it would have been there.
    for me, other, text in ((ca, cb, "after alice typed"), (cb, ca, "after bob typed")):
        await me.typing(sent.thread_id, True)
        await me.send(text, thread_id=group.thread_id)
        await gather_events(other, _message_with(text), 1)
        queued = list(other.events._queue)  # type: ignore[attr-defined]
        assert [
            e for e in queued if isinstance(e, d.Typing) and e.thread_id == sent.thread_id
        ] == []


async def test_blocking_rules(user: UserFactory) -> None:
    alice = await user("alice")
    with pytest.raises(InvalidArgument) as info:
        await alice.block("alice")
    assert info.value.reason == "SELF_BLOCK"
    await user("bob")
    await alice.block("bob")
    await alice.block("bob")  # twice is fine
    await alice.unblock("bob")
    await alice.unblock("bob")  # and so is unblocking someone not blocked
    assert await alice.blocked() == []
