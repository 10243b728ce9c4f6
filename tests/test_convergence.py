"""The scenario of messages people send, as one test: a photo, a reply quoting it, a
reaction, an edit, a delete for everyone; every device, online, offline or new, ends up
showing the same thread (on every store `--stores` names)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from natter import domain as d
from natter.sdk import Connection, Media, SyncDone
from tests.conftest import ConnFactory, UserFactory
from tests.helpers import gather_events
from tests.media_files import jpeg


def shown(conn: Connection, thread_id: int) -> list[tuple[Any, ...]]:
    """What a device shows of a thread: each message folded, as a person would see it."""
    return [
        (
            v.seq,
            v.kind.name,
            v.sender.username,
            v.text,
            v.deleted,
            v.edited,
            tuple(sorted(v.counts.items())),
            v.reply_to.snippet if v.reply_to else None,
            tuple(a.attachment_id for a in v.attachments),
        )
        for v in conn.fold.thread(thread_id)
    ]


async def upto(conn: Connection, thread_id: int, seq: int) -> None:
    """Wait until the device has taken every entry of the thread up to seq."""
    if conn.cursors.get(thread_id, 0) >= seq:
        return
    await gather_events(
        conn,
        lambda e: isinstance(e, d.Message) and e.thread_id == thread_id and e.seq >= seq,
        1,
        timeout=15,
    )


async def test_every_device_online_offline_or_new_shows_the_same_thread(
    user: UserFactory, connect: ConnFactory
) -> None:
    alice = await user("alice", device="phone")
    bob_phone = await user("bob", device="phone")
    bob_laptop = await user("bob", device="laptop")  # logged in, offline for now
    carol = await user("carol", device="phone")  # offline through all of it
    a, bp = await connect(alice), await connect(bob_phone)
    group = await alice.create_group("Trip", ["bob", "carol"])
    g = group.thread_id

    # alice sends a text and a photo.
    leave = await a.send("we leave at nine", thread_id=g)
    photo = jpeg(4000, 3000)
    async with Media(alice) as media:
        att = await media.upload(photo, name="view.jpg", mime_type="image/jpeg")
    shot = await a.send("the view from the hut", thread_id=g, attachments=[att.attachment_id])

    # bob's phone has it at once, with what a thumbnail needs; the full image on tap.
    await upto(bp, g, shot.seq)
    got = bp.fold.view(g, shot.seq)
    assert got is not None and got.attachments[0].blurhash and got.attachments[0].width == 4000
    async with Media(bob_phone) as media:
        with Image.open(io.BytesIO(await media.thumbnail(att.attachment_id))) as thumb:
            assert max(thumb.size) <= 320
        status, full = await media.fetch(
            f"/v1/attachments/{att.attachment_id}",
            {"Authorization": f"Bearer {bob_phone.token}"},
        )
        assert (status, full) == (200, photo)

    # bob's laptop was offline: it connects and gets the photo, thumbnail and all.
    bl = await connect(bob_laptop)
    await upto(bl, g, shot.seq)
    assert bl.fold.view(g, shot.seq) == bp.fold.view(g, shot.seq)
    async with Media(bob_laptop) as media:
        assert await media.thumbnail(att.attachment_id)

    # bob replies quoting the photo, reacts to the text, edits his reply, and deletes a
    # message he sent by mistake, for everyone.
    reply = await bp.send("wow, great", thread_id=g, reply_to_seq=shot.seq)
    await bp.react(g, leave.seq, "👍")
    await bp.edit(g, reply.seq, "wow, what a view")
    oops = await bp.send("this was meant for someone else", thread_id=g)
    last = await bp.delete(g, oops.seq)

    # carol's device was offline through all of it; a new device logs in afterwards.
    c = await connect(carol)
    fresh = await connect(await user("carol", device="tablet"))
    devices = {"alice": a, "bob phone": bp, "bob laptop": bl, "carol": c, "carol new": fresh}
    for conn in devices.values():
        await upto(conn, g, last.seq)
    expected = [
        (1, "SYSTEM", "alice", "alice created the group 'Trip'", False, False, (), None, ()),
        (leave.seq, "TEXT", "alice", "we leave at nine", False, False, (("👍", 1),), None, ()),
        (
            shot.seq,
            "ATTACHMENT",
            "alice",
            "the view from the hut",
            False,
            False,
            (),
            None,
            (att.attachment_id,),
        ),
        (
            reply.seq,
            "TEXT",
            "bob",
            "wow, what a view",
            False,
            True,
            (),
            "the view from the hut",
            (),
        ),
        (oops.seq, "TEXT", "bob", "", True, False, (), None, ()),
    ]
    for name, conn in devices.items():
        assert shown(conn, g) == expected, name
    # Exactly once, in order: each device took every seq of the thread once.
    replay = await gather_events(
        await connect(await user("carol", device="watch")),
        lambda e: isinstance(e, d.Message | SyncDone),
        last.seq + 1,
    )
    assert [m.seq for m in replay[:-1]] == list(range(1, last.seq + 1))
    assert isinstance(replay[-1], SyncDone)
