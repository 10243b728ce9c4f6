"""Replies, reactions, edits, deletes, forwards, delete for me and search, end to end on a
real embedded server (on every store `--stores` names): each change is an entry of the
thread's log, folded onto its message on every device; who may do what is enforced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.cli import UNSUPPORTED, message_obj
from app.embedded import EmbeddedServer
from natter import convert
from natter import domain as d
from natter.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from natter.sdk import Client, Connection, Fold, SyncDone
from natter.settings import Settings
from natter.v1 import types_pb2 as pb
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import collect, eventually, gather_events

# The split store's end-to-end subset: these run on sqlite+mongodb too (tests/conftest.py).
pytestmark = pytest.mark.message_log


async def test_reply_react_edit_and_delete_fold_onto_their_messages(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    a, b = await connect(alice), await connect(bob)
    first = await a.send("dinner at eight?", recipient="bob")
    t = first.thread_id
    reply = await b.send("yes, see you tonight", thread_id=t, reply_to_seq=first.seq)
    assert alice.user is not None and reply.message is not None
    quoted = d.ReplyTo(first.seq, alice.user, "dinner at eight?", d.MessageKind.TEXT)
    assert reply.message.reply_to == quoted
    await b.react(t, first.seq, "👍")
    await a.react(t, first.seq, "❤️")
    await b.react(t, first.seq, "😂")  # one per member: bob's changes
    await b.edit(t, reply.seq, "yes, see you at nine")
    await a.edit(t, first.seq, "dinner at nine?")
    await a.delete(t, first.seq)
    # Every entry reaches the other side in order; folded, both see the same thread.
    await gather_events(a, lambda e: isinstance(e, d.Message) and e.seq == 8, 1)
    await gather_events(b, lambda e: isinstance(e, d.Message) and e.seq == 8, 1)
    for conn in (a, b):
        views = conn.fold.thread(t)
        assert [(v.seq, v.text, v.deleted, v.edited) for v in views] == [
            (1, "", True, True),
            (2, "yes, see you at nine", False, True),
        ]
        assert views[0].counts == {} and views[0].attachments == ()
        # The quote keeps what the original said when it was quoted.
        assert views[1].reply_to is not None and views[1].reply_to.snippet == "dinner at eight?"
    # The log has every entry; folded history leaves the events out.
    raw, _ = await alice.history(t)
    assert [m.kind for m in raw] == [
        d.MessageKind.TEXT,
        d.MessageKind.TEXT,
        d.MessageKind.REACTION,
        d.MessageKind.REACTION,
        d.MessageKind.REACTION,
        d.MessageKind.EDIT,
        d.MessageKind.EDIT,
        d.MessageKind.DELETE,
    ]
    assert raw[6].text == ""  # the deleted message's edit lost its text too
    folded, _ = await alice.history(t, folded=True)
    assert [(m.seq, m.text, m.deleted, m.edit_seq) for m in folded] == [
        (1, "", True, 7),
        (2, "yes, see you at nine", False, 6),
    ]
    assert folded[1].edit_time is not None


async def test_reactions_count_per_emoji_and_can_be_removed(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    a, b, c = await connect(alice), await connect(bob), await connect(carol)
    group = await alice.create_group("g", ["bob", "carol"])
    g = group.thread_id
    msg = await a.send("who is in?", thread_id=g)
    await b.react(g, msg.seq, "👍")
    await c.react(g, msg.seq, "👍")
    await a.react(g, msg.seq, "🎉")
    await c.react(g, msg.seq, "")  # carol takes hers back
    folded, _ = await alice.history(g, folded=True)
    [m] = [x for x in folded if x.seq == msg.seq]
    assert sorted((r.user.username, r.emoji) for r in m.reactions) == [
        ("alice", "🎉"),
        ("bob", "👍"),
    ]
    await gather_events(b, lambda e: isinstance(e, d.Message) and e.seq == msg.seq + 4, 1)
    view = b.fold.view(g, msg.seq)
    assert view is not None and view.counts == {"👍": 1, "🎉": 1}
    with pytest.raises(InvalidArgument):
        await b.react(g, msg.seq, "yes")  # one emoji, not words


async def test_only_the_author_edits_and_deletes_within_the_window_admins_delete_any(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    a, b, c = await connect(alice), await connect(bob), await connect(carol)
    mine = await a.send("typo hre", recipient="bob")
    t = mine.thread_id
    with pytest.raises(PermissionDenied) as info:
        await b.edit(t, mine.seq, "not yours")
    assert info.value.reason == "NOT_AUTHOR"
    with pytest.raises(PermissionDenied):
        await b.delete(t, mine.seq)
    with pytest.raises(PermissionDenied) as info:
        await c.react(t, mine.seq, "👍")  # carol is not in the thread
    assert info.value.reason == "NOT_A_MEMBER"
    with pytest.raises(PermissionDenied):
        await c.forward(t, mine.seq, recipient="alice")  # from a thread she is not in
    with pytest.raises(NotFound):
        await a.edit(t, 99, "nothing there")
    await a.delete(t, mine.seq)
    with pytest.raises(FailedPrecondition) as gone:
        await a.edit(t, mine.seq, "too late")
    assert gone.value.reason == "MESSAGE_DELETED"
    with pytest.raises(FailedPrecondition):
        await b.react(t, mine.seq, "👍")
    # In a group an admin may delete a member's message; a member may not delete another's.
    group = await alice.create_group("g", ["bob", "carol"])
    g = group.thread_id
    bobs = await b.send("spam", thread_id=g)
    with pytest.raises(PermissionDenied):
        await c.delete(g, bobs.seq)
    await a.delete(g, bobs.seq)
    with pytest.raises(FailedPrecondition) as sys:
        await b.react(g, 1, "👍")  # the group's creation is not a message to react to
    assert sys.value.reason == "NOT_EDITABLE"


@pytest.fixture
async def closed_windows(settings: Settings) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(
        settings.replace(edit_window_seconds=0, delete_window_seconds=0)
    ) as srv:
        yield srv


async def test_edits_and_deletes_after_the_window_are_refused(
    closed_windows: EmbeddedServer,
) -> None:
    alice, bob = Client(closed_windows.grpc_address), Client(closed_windows.grpc_address)
    for c, name in ((alice, "alice"), (bob, "bob")):
        await c.register(name, PASSWORD)
        await c.login(name, PASSWORD)
    a = await Connection(alice).start()
    try:
        sent = await a.send("hello", recipient="bob")
        with pytest.raises(FailedPrecondition) as info:
            await a.edit(sent.thread_id, sent.seq, "hello!")
        assert info.value.reason == "EDIT_WINDOW_CLOSED"
        with pytest.raises(FailedPrecondition) as info:
            await a.delete(sent.thread_id, sent.seq)
        assert info.value.reason == "DELETE_WINDOW_CLOSED"
        group = await alice.create_group("g", ["bob"])
        b = await Connection(bob).start()
        try:
            old = await b.send("old news", thread_id=group.thread_id)
            await a.delete(group.thread_id, old.seq)  # an admin is not bound by the window
        finally:
            await b.close()
    finally:
        await a.close()
        await alice.close()
        await bob.close()


async def test_a_forward_is_a_marked_copy(user: UserFactory, connect: ConnFactory) -> None:
    alice, _, carol = await user("alice"), await user("bob"), await user("carol")
    a, c = await connect(alice), await connect(carol)
    original = await a.send("the address is 5 Main St", recipient="bob")
    fwd = await a.forward(original.thread_id, original.seq, recipient="carol")
    [got] = await collect(c, 1)
    assert (got.text, got.forwarded, got.kind) == (
        "the address is 5 Main St",
        True,
        d.MessageKind.TEXT,
    )
    assert fwd.thread_id != original.thread_id
    await a.edit(original.thread_id, original.seq, "the address is 7 Main St")
    rows, _ = await carol.history(fwd.thread_id)
    assert rows[-1].text == "the address is 5 Main St"  # a copy, not a link


async def test_delete_for_me_hides_on_my_devices_only_without_a_gap_for_others(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice = await user("alice", device="phone")
    laptop = await user("alice", device="laptop")
    bob = await user("bob")
    phone, b = await connect(alice), await connect(bob)
    first = await phone.send("embarrassing", recipient="bob")
    second = await phone.send("fine", recipient="bob")
    t = first.thread_id
    [change] = await alice.hide(t, [first.seq])
    assert (change.seq, change.message) == (1, d.Cursor(t, first.seq))
    assert await alice.hide(t, [first.seq]) == []  # already hidden: nothing new
    # The other devices of alice get it live; a device that was away gets it on connect.
    [live] = await gather_events(phone, lambda e: isinstance(e, d.UserChange), 1)
    assert live == change
    later = await connect(laptop)
    assert later.user_log_seq == 0  # taken only when the app takes it
    [replayed] = await gather_events(later, lambda e: isinstance(e, d.UserChange), 1)
    assert replayed == change and later.user_log_seq == 1
    view = later.fold.view(t, first.seq)
    assert view is not None and view.hidden and view.text == ""
    assert [v.seq for v in later.fold.thread(t)] == [second.seq]
    # Nobody else sees anything: bob's log has no entry for it, the thread's seqs run on.
    third = await b.send("what was that?", thread_id=t)
    assert third.seq == second.seq + 1
    rows, _ = await bob.history(t)
    assert [(m.seq, m.text, m.hidden) for m in rows[:2]] == [
        (first.seq, "embarrassing", False),
        (second.seq, "fine", False),
    ]
    assert (await bob.user_changes())[0] == []
    mine, _ = await alice.history(t)
    assert (mine[0].hidden, mine[0].text) == (True, "")
    with pytest.raises(NotFound):
        await alice.hide(t, [999])


async def test_unread_counts_and_previews_ignore_reactions_edits_and_deletes(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    a, b = await connect(alice), await connect(bob)
    one = await a.send("one", recipient="bob")
    two = await a.send("two", recipient="bob")
    t = one.thread_id
    await b.react(t, one.seq, "👍")
    await b.react(t, two.seq, "👍")
    await a.edit(t, two.seq, "two (fixed)")
    [thread] = [convert.thread_of(x) for x in await bob.threads()]
    assert thread.unread_count == 2
    assert thread.last_message is not None and (
        thread.last_message.seq,
        thread.last_message.text,
    ) == (
        two.seq,
        "two (fixed)",
    )
    [mine] = [convert.thread_of(x) for x in await alice.threads()]
    assert mine.unread_count == 0  # bob's reactions are not messages to read
    await a.delete(t, two.seq)
    [thread] = [convert.thread_of(x) for x in await bob.threads()]
    assert thread.last_message is not None and thread.last_message.deleted
    assert d.MessageKind.REACTION.is_event and not d.MessageKind.REACTION.notifies
    assert d.MessageKind.ATTACHMENT.notifies and d.MessageKind.SYSTEM.is_content


async def test_search_finds_what_the_user_can_see(user: UserFactory, connect: ConnFactory) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    a, b = await connect(alice), await connect(bob)
    group = await alice.create_group("g", ["bob"])
    g = group.thread_id
    before = await a.send("the zebra crossing before carol", thread_id=g)
    await alice.add_members(g, ["carol"])
    after = await a.send("a zebra after carol joined", thread_id=g)
    direct = await a.send("Zebras in private", recipient="bob")
    gone = await b.send("zebra to delete", thread_id=g)
    await b.delete(g, gone.seq)
    hidden = await b.send("zebra hidden for bob", thread_id=g)
    await bob.hide(g, [hidden.seq])

    async def found(c: Client, query: str, thread_id: int = 0) -> set[tuple[int, int]]:
        rows, token = await c.search(query, thread_id, page_size=2)
        out = {(m.thread_id, m.seq) for m in rows}
        while token:
            rows, token = await c.search(query, thread_id, page_size=2, page_token=token)
            out |= {(m.thread_id, m.seq) for m in rows}
        return out

    assert await found(alice, "zebra") == {
        (g, before.seq),
        (g, after.seq),
        (direct.thread_id, direct.seq),
        (g, hidden.seq),
    }
    assert await found(bob, "ZEBRA") == {
        (g, before.seq),
        (g, after.seq),
        (direct.thread_id, direct.seq),
    }
    # From when she joined (bob's hidden message is hidden for bob only).
    assert await found(carol, "zebra") == {(g, after.seq), (g, hidden.seq)}
    assert await found(alice, "zebra carol") == {(g, before.seq), (g, after.seq)}
    assert await found(alice, "zebra", thread_id=direct.thread_id) == {
        (direct.thread_id, direct.seq)
    }
    assert await found(alice, "crossing") == {(g, before.seq)}
    with pytest.raises(InvalidArgument) as info:
        await alice.search("a b")
    assert info.value.reason == "QUERY_TOO_SHORT"
    with pytest.raises(PermissionDenied):
        await carol.search("zebra", thread_id=direct.thread_id)


async def test_a_kind_this_build_does_not_know_is_shown_as_unsupported(
    user: UserFactory, connect: ConnFactory
) -> None:
    # A newer server's kind (say a poll, 42) with fields this build has no use for.
    future = pb.Message(
        thread_id=3, seq=7, kind=pb.MessageKind.ValueType(42), text="a poll", target_seq=2
    )
    future.sender.username = "alice"
    m = convert.message_of(future)
    assert m.kind is d.MessageKind.UNKNOWN and not m.kind.is_event
    obj = message_obj(m)
    assert (obj["kind"], obj["text"]) == ("unsupported", UNSUPPORTED)
    fold = Fold()
    fold.apply(m)  # shown as an entry of its own, never folded onto message 2
    view = fold.view(3, 7)
    assert view is not None and view.kind is d.MessageKind.UNKNOWN
    assert fold.view(3, 2) is None
    # The new kinds survive a round trip through the contracts, numbers unchanged.
    assert [k.value for k in d.MessageKind] == [0, 1, 2, 3, 4, 5, 6]
    for kind in d.MessageKind:
        if kind is not d.MessageKind.UNKNOWN:
            assert convert.message_kind_of(convert.message_kind(kind)) is kind
    # An event of a kind the SDK knows is delivered and acked like any entry.
    alice, bob = await user("alice"), await user("bob")
    a = await connect(alice)
    sent = await a.send("hi", recipient="bob")
    await a.react(sent.thread_id, sent.seq, "👍")
    b = await connect(bob)
    rows = await gather_events(b, lambda e: isinstance(e, d.Message | SyncDone), 3)
    assert [type(r) for r in rows] == [d.Message, d.Message, SyncDone]

    async def acked() -> bool:
        members = (await bob.thread(sent.thread_id)).members
        return {m.user.username: m.delivered_seq for m in members}["bob"] == 2

    await eventually(acked)
