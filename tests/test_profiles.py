"""Profiles on a real server: the about line and the picture, validated, shown only to
contacts and chat partners (never across a block), pushed live as ProfileChanged, removed
with the account, and a picture kept from the blob collector while it is in use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import InvalidArgument, NotFound, PermissionDenied
from natter.sdk import Client, Media
from natter.settings import Settings
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import eventually, next_of
from tests.media_files import PDF, jpeg


async def picture(client: Client, color: tuple[int, int, int] = (10, 120, 200)) -> str:
    async with Media(client) as media:
        att = await media.upload(jpeg(400, 400, color), name="me.jpg")
    return att.attachment_id


async def test_about_is_one_line_of_at_most_140_characters(user: UserFactory) -> None:
    alice = await user("alice")
    await alice.update_settings(about="  " + "é" * 140 + " ")
    assert (await alice.me()).user.about == "é" * 140
    with pytest.raises(InvalidArgument) as e:
        await alice.update_settings(about="x" * 141)
    assert e.value.reason == "ABOUT_TOO_LONG" and "140" in str(e.value)
    for bad in ("two\nlines", "tab\there", "bell\x07"):
        with pytest.raises(InvalidArgument) as e:
            await alice.update_settings(about=bad)
        assert e.value.reason == "BAD_ABOUT"
    # Emoji sequences (joiners are format characters, not control ones) are fine.
    await alice.update_settings(about="at work 👩‍💻")
    assert (await alice.me()).user.about == "at work 👩‍💻"
    await alice.update_settings(about="")
    assert (await alice.me()).user.about == ""


async def test_the_picture_must_be_an_image_the_user_uploaded(user: UserFactory) -> None:
    alice, bob = await user("alice"), await user("bob")
    with pytest.raises(NotFound):
        await alice.update_settings(picture_id="01NOSUCHATTACHMENT0000000")
    theirs = await picture(bob)
    with pytest.raises(PermissionDenied) as denied:
        await alice.update_settings(picture_id=theirs)
    assert denied.value.reason == "NOT_YOUR_ATTACHMENT"
    async with Media(alice) as media:
        pdf = await media.upload(PDF, name="cv.pdf")
    with pytest.raises(InvalidArgument) as e:
        await alice.update_settings(picture_id=pdf.attachment_id)
    assert e.value.reason == "NOT_AN_IMAGE"
    assert (await alice.me()).user.picture_id == ""
    mine = await picture(alice)
    await alice.update_settings(picture_id=mine)
    assert (await alice.me()).user.picture_id == mine
    await alice.update_settings(display_name="Alice A.")  # other settings keep the picture
    me = await alice.me()
    assert (me.user.picture_id, me.user.display_name) == (mine, "Alice A.")
    await alice.update_settings(picture_id="")
    assert (await alice.me()).user.picture_id == ""


async def _status(client: Client, attachment_id: str) -> int:
    async with Media(client) as media:
        status, _ = await media.fetch(
            f"/v1/attachments/{attachment_id}/thumbnail",
            {"Authorization": f"Bearer {client.token}"},
        )
    return status


async def test_contacts_and_chat_partners_see_the_profile_others_only_the_name(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol, dave = [await user(n) for n in ("alice", "bob", "carol", "dave")]
    pic = await picture(alice)
    await alice.update_settings(about="on holiday", picture_id=pic)
    a = await connect(alice)
    await a.send("hi bob", recipient="bob")  # bob shares a chat with alice
    await alice.add_contact("dave")  # alice has dave as a contact
    await carol.add_contact("alice")  # carol added alice; alice did not add her back

    [thread] = await bob.threads()
    assert (thread.peer.about, thread.peer.picture_id) == ("on holiday", pic)
    members = (await bob.thread(thread.thread_id)).members
    shown = {m.user.username: m.user for m in members}
    assert (shown["alice"].about, shown["alice"].picture_id) == ("on holiday", pic)
    await bob.add_contact("alice")
    [contact] = await bob.contacts()
    assert (contact.user.about, contact.user.picture_id) == ("on holiday", pic)
    assert (await dave.discover(["alice"]))["alice"].about == "on holiday"
    assert await _status(bob, pic) == 200
    assert await _status(dave, pic) == 200

    [seen_by_carol] = await carol.contacts()
    assert (seen_by_carol.user.display_name, seen_by_carol.user.about) == ("alice", "")
    assert seen_by_carol.user.picture_id == ""
    assert (await carol.discover(["alice"]))["alice"].picture_id == ""
    assert await _status(carol, pic) == 403

    # A block hides the profile both ways, as it hides presence.
    await alice.block("bob")
    [thread] = await bob.threads()
    assert (thread.peer.about, thread.peer.picture_id) == ("", "")
    assert (await bob.discover(["alice"]))["alice"].about == ""
    assert await _status(bob, pic) == 403
    await dave.block("alice")
    assert await _status(dave, pic) == 403
    assert (await dave.discover(["alice"]))["alice"].picture_id == ""


async def test_a_change_reaches_contacts_and_partners_live(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    alice_phone = await user("alice", device="phone")
    a = await connect(alice)
    await a.send("hi", recipient="bob")
    await carol.add_contact("alice")  # sees the name only
    b, c, a2 = await connect(bob), await connect(carol), await connect(alice_phone)
    pic = await picture(alice)
    await alice.update_settings(display_name="Alice", about="busy", picture_id=pic)

    ev = await next_of(b, d.ProfileChanged)
    assert isinstance(ev, d.ProfileChanged)
    assert (ev.user.username, ev.user.display_name, ev.user.about, ev.user.picture_id) == (
        "alice",
        "Alice",
        "busy",
        pic,
    )
    assert b.profiles[ev.user.user_id].about == "busy"  # folded by the connection
    mine = await next_of(a2, d.ProfileChanged)
    assert isinstance(mine, d.ProfileChanged) and mine.user.picture_id == pic
    theirs = await next_of(c, d.ProfileChanged)
    assert isinstance(theirs, d.ProfileChanged)
    assert (theirs.user.display_name, theirs.user.about, theirs.user.picture_id) == (
        "Alice",
        "",
        "",
    )

    await alice.update_settings(picture_id="")
    ev = await next_of(b, d.ProfileChanged)
    assert isinstance(ev, d.ProfileChanged) and (ev.user.about, ev.user.picture_id) == ("busy", "")
    # After a reconnect the lists have it.
    [thread] = await bob.threads()
    assert (thread.peer.display_name, thread.peer.picture_id) == ("Alice", "")


async def test_deleting_the_account_removes_about_and_picture(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    pic = await picture(alice)
    await alice.update_settings(about="bye soon", picture_id=pic)
    await (await connect(alice)).send("hi", recipient="bob")
    assert await _status(bob, pic) == 200
    uid = (await alice.me()).user.user_id
    await alice.delete_account(PASSWORD)
    row = (await server.store.get_users([uid]))[uid]
    assert (row.about, row.picture_id) == ("", None)
    [thread] = await bob.threads()
    assert (thread.peer.about, thread.peer.picture_id) == ("", "")
    assert await _status(bob, pic) == 403


@pytest.fixture
async def gc_server(settings: Settings) -> AsyncIterator[EmbeddedServer]:
    fast = settings.replace(blob_gc_grace_seconds=2, blob_gc_interval_seconds=0.1)
    async with EmbeddedServer(fast) as srv:
        yield srv


async def test_a_picture_in_use_is_not_collected(gc_server: EmbeddedServer) -> None:
    alice = Client(gc_server.grpc_address)
    try:
        await alice.register("alice", PASSWORD)
        await alice.login("alice", PASSWORD, "test")
        old, kept = await picture(alice, (1, 2, 3)), await picture(alice, (4, 5, 6))
        await alice.update_settings(picture_id=old)
        await alice.update_settings(picture_id=kept)  # the first is no longer referred to

        async def collected() -> bool:
            return await gc_server.store.get_attachment(old) is None

        await eventually(collected, timeout=30)
        assert await gc_server.store.get_attachment(kept) is not None
        assert (await alice.me()).user.picture_id == kept
    finally:
        await alice.close()
