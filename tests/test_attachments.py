"""Attachments end to end on a real embedded server: upload over HTTP in chunks, send,
receive with a thumbnail, download (token or signed link), and who may do what; bad
uploads refused with nothing stored; unreferenced blobs collected after the grace period.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from natter.sdk import Client, Connection, Media
from natter.settings import Settings
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import collect, eventually
from tests.media_files import PDF, jpeg, png_bomb


async def http(
    server: EmbeddedServer,
    method: str,
    path: str,
    token: str = "",
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[int, dict[str, str], bytes]:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{server.http_port}{path}"
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=h, **kw) as r:
        return r.status, dict(r.headers), await r.read()


def blob_files(server: EmbeddedServer) -> list[Path]:
    root = server.settings.data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_a_photo_arrives_with_a_thumbnail_and_downloads_whole(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    a, b = await connect(alice), await connect(bob)
    photo = jpeg(1600, 1200)
    async with Media(alice) as media:
        att = await media.upload(
            photo, name="beach.jpg", mime_type="image/jpeg", chunk_bytes=10_000
        )
    assert (att.mime_type, att.size, att.width, att.height) == (
        "image/jpeg",
        len(photo),
        1600,
        1200,
    )
    assert att.sha256 == hashlib.sha256(photo).hexdigest()
    assert att.has_thumbnail and len(att.blurhash) >= 20
    sent = await a.send("the beach", recipient="bob", attachments=[att.attachment_id])
    assert sent.message is not None and sent.message.kind is d.MessageKind.ATTACHMENT
    [got] = await collect(b, 1)
    assert got.kind is d.MessageKind.ATTACHMENT and got.text == "the beach"
    assert got.attachments == (att,)
    async with Media(bob) as media:
        thumb = await media.thumbnail(att.attachment_id)
        with Image.open(__import__("io").BytesIO(thumb)) as img:
            assert img.format == "JPEG" and max(img.size) <= 320
        dest = await media.download(att.attachment_id, Path(server.settings.data_dir) / "got.jpg")
        assert dest.read_bytes() == photo
    # Range requests, as a player seeking in a voice note would make.
    status, headers, body = await http(
        server, "GET", f"/v1/attachments/{att.attachment_id}", bob.token, {"Range": "bytes=10-19"}
    )
    assert (status, body, headers["Content-Range"]) == (
        206,
        photo[10:20],
        f"bytes 10-19/{len(photo)}",
    )
    assert headers["Content-Type"] == "image/jpeg"


async def test_signed_links_work_in_a_browser_and_only_as_signed(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    a = await connect(alice)
    photo = jpeg()
    async with Media(alice) as media:
        att = await media.upload(photo, name="p.jpg")
    await a.send("", recipient="bob", attachments=[att.attachment_id])
    links = await bob.attachment(att.attachment_id)
    assert links.url.startswith(f"/v1/attachments/{att.attachment_id}?")
    # No Authorization header: an <img src> or <audio src> carries only the URL.
    status, _, body = await http(server, "GET", links.url)
    assert (status, body) == (200, photo)
    status, headers, thumb = await http(server, "GET", links.thumbnail_url)
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and thumb
    forged = links.url.replace(
        f"u={bob.user.user_id if bob.user else 0}", f"u={carol.user.user_id if carol.user else 0}"
    )
    assert forged != links.url
    status, _, body = await http(server, "GET", forged)
    assert status == 401 and b"BAD_LINK" in body
    # A thumbnail link does not open the content, nor the other way round.
    status, _, _ = await http(server, "GET", links.thumbnail_url.replace("/thumbnail", ""))
    assert status == 401
    with pytest.raises(PermissionDenied):
        await carol.attachment(att.attachment_id)


async def test_only_members_of_a_thread_it_was_sent_in_may_download(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    a = await connect(alice)
    async with Media(alice) as media:
        att = await media.upload(jpeg(), name="p.jpg")
    direct = await a.send("for bob", recipient="bob", attachments=[att.attachment_id])
    path = f"/v1/attachments/{att.attachment_id}"
    assert (await http(server, "GET", path, bob.token))[0] == 200
    status, _, body = await http(server, "GET", path, carol.token)
    assert status == 403 and b"permission_denied" in body
    assert (await http(server, "GET", path + "/thumbnail", carol.token))[0] == 403
    assert (await http(server, "GET", path))[0] == 401  # no token at all
    async with Media(carol) as media:
        with pytest.raises(PermissionDenied):
            await media.download(att.attachment_id, server.settings.data_dir / "x.jpg")
    # Forwarded into a group carol is in, by reference: now she may.
    group = await alice.create_group("g", ["carol"])
    await a.forward(direct.thread_id, direct.seq, thread_id=group.thread_id)
    assert (await http(server, "GET", path, carol.token))[0] == 200


async def test_an_interrupted_upload_resumes_from_where_it_stopped(
    server: EmbeddedServer, user: UserFactory
) -> None:
    alice = await user("alice")
    photo = jpeg(1200, 900)
    status, _, body = await http(
        server, "POST", "/v1/uploads", alice.token, json={"size": len(photo), "name": "a.jpg"}
    )
    assert status == 201
    upload = __import__("json").loads(body)["upload_id"]
    path = f"/v1/uploads/{upload}"
    status, headers, _ = await http(
        server, "PATCH", path, alice.token, {"Upload-Offset": "0"}, data=photo[:5000]
    )
    assert (status, headers["Upload-Offset"]) == (204, "5000")
    # The client lost the answer and sends the same chunk again: told where it stands.
    status, _, body = await http(
        server, "PATCH", path, alice.token, {"Upload-Offset": "0"}, data=photo[:5000]
    )
    assert status == 409 and b"OFFSET_MISMATCH" in body
    status, headers, _ = await http(server, "HEAD", path, alice.token)
    assert (status, headers["Upload-Offset"], headers["Upload-Length"]) == (
        200,
        "5000",
        str(len(photo)),
    )
    status, _, body = await http(server, "POST", path + "/complete", alice.token)
    assert status == 409 and b"UPLOAD_INCOMPLETE" in body  # truncated: refused, kept to resume
    assert blob_files(server) == []
    status, headers, _ = await http(
        server, "PATCH", path, alice.token, {"Upload-Offset": "5000"}, data=photo[5000:]
    )
    assert (status, headers["Upload-Offset"]) == (204, str(len(photo)))
    status, _, body = await http(server, "POST", path + "/complete", alice.token)
    assert status == 200
    att = __import__("json").loads(body)["attachment"]
    assert att["sha256"] == hashlib.sha256(photo).hexdigest() and att["width"] == 1200
    # Completing again answers the same attachment; another user cannot touch the upload.
    again = __import__("json").loads(
        (await http(server, "POST", path + "/complete", alice.token))[2]
    )
    assert again["attachment"]["attachmentId"] == att["attachmentId"]
    bob = await user("bob")
    assert (await http(server, "HEAD", path, bob.token))[0] == 403


@pytest.fixture
def small_settings(settings: Settings) -> Settings:
    return settings.replace(max_attachment_bytes=200_000, max_image_pixels=20_000_000)


@pytest.fixture
async def small(small_settings: Settings) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(small_settings) as srv:
        yield srv


async def _client(server: EmbeddedServer, name: str) -> Client:
    c = Client(server.grpc_address)
    await c.register(name, PASSWORD)
    await c.login(name, PASSWORD)
    return c


async def test_bad_uploads_are_refused_clearly_and_nothing_half_stored(
    small: EmbeddedServer,
) -> None:
    alice = await _client(small, "alice")
    try:
        media = Media(alice)

        async def refused(data: bytes, **kw: Any) -> Any:
            with pytest.raises((InvalidArgument, FailedPrecondition, NotFound)) as info:
                await media.upload(data, **kw)
            return info.value

        err = await refused(b"", name="empty.txt")
        assert err.reason == "EMPTY_FILE"
        from natter.errors import ResourceExhausted

        with pytest.raises(ResourceExhausted) as too_big:
            await media.upload(b"x" * 200_001, name="big.bin")
        assert too_big.value.reason == "FILE_TOO_LARGE" and "200,000" in too_big.value.message
        err = await refused(PDF, name="cat.png", mime_type="image/png")
        assert err.reason == "MIME_MISMATCH" and "application/pdf" in err.message
        with pytest.raises(ResourceExhausted) as bomb:
            await media.upload(png_bomb(), name="bomb.png", mime_type="image/png")
        assert bomb.value.reason == "IMAGE_TOO_LARGE" and "20,000,000" in bomb.value.message
        # One just over the limit is refused from its header too, before any decoding.
        with pytest.raises(ResourceExhausted) as over:
            await media.upload(png_bomb(5000, 4001), name="big.png")
        assert "5000x4001" in over.value.message
        damaged = jpeg()[:600] + b"\x00" * 400
        err = await refused(damaged, name="broken.jpg")
        assert err.reason == "BAD_IMAGE"
        # A chunk past the declared size is refused; the upload is not grown.
        status, _, body = await http(
            small, "POST", "/v1/uploads", alice.token, json={"size": 10, "name": "t.txt"}
        )
        upload = __import__("json").loads(body)["upload_id"]
        status, _, body = await http(
            small,
            "PATCH",
            f"/v1/uploads/{upload}",
            alice.token,
            {"Upload-Offset": "0"},
            data=b"x" * 11,
        )
        assert status == 413 and b"UPLOAD_TOO_LONG" in body
        await media.close()
        # Nothing of any of them is stored: no blob, no attachment to send.
        assert blob_files(small) == []
        far = datetime.now(UTC) + timedelta(days=1)
        assert await small.store.collectable_blobs(far, 10) == []
        assert await small.store.drop_unsent_attachments(far) == 0
        # A file whose type is unknown is still a file: stored as application/octet-stream.
        async with Media(alice) as ok:
            att = await ok.upload(bytes(range(256)) * 4, name="data.bin")
        assert att.mime_type == "application/octet-stream"
    finally:
        await alice.close()


async def test_a_message_can_refer_only_to_its_senders_uploads(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    b = await connect(bob)
    async with Media(alice) as media:
        att = await media.upload(jpeg(), name="p.jpg")
    with pytest.raises(NotFound) as info:
        await b.send("mine now", recipient="alice", attachments=[att.attachment_id])
    assert info.value.reason == "ATTACHMENT_NOT_FOUND"
    with pytest.raises(NotFound):
        await b.send("", recipient="alice", attachments=["NOSUCHATTACHMENT"])


@pytest.fixture
def gc_settings(settings: Settings) -> Settings:
    # The grace must outlast the uploads and sends below on a loaded machine (at 0.5 s the
    # first upload was sometimes collected before the test looked at it).
    return settings.replace(blob_gc_grace_seconds=5, blob_gc_interval_seconds=0.1)


@pytest.fixture
async def gc_server(gc_settings: Settings) -> AsyncIterator[EmbeddedServer]:
    async with EmbeddedServer(gc_settings) as srv:
        yield srv


async def test_blobs_nothing_refers_to_are_collected_after_the_grace(
    gc_server: EmbeddedServer,
) -> None:
    alice, bob = await _client(gc_server, "alice"), await _client(gc_server, "bob")
    a = await Connection(alice).start()
    try:
        async with Media(alice) as media:
            unsent = await media.upload(jpeg(color=(1, 2, 3)), name="never-sent.jpg")
            kept = await media.upload(jpeg(color=(4, 5, 6)), name="kept.jpg")
            deleted = await media.upload(jpeg(color=(7, 8, 9)), name="deleted.jpg")
            shared = await media.upload(jpeg(color=(10, 11, 12)), name="shared.jpg")
        store = gc_server.media.blobs
        for att in (unsent, kept, deleted, shared):
            assert await store.exists(att.sha256)
        await a.send("kept", recipient="bob", attachments=[kept.attachment_id])
        gone = await a.send("oops", recipient="bob", attachments=[deleted.attachment_id])
        original = await a.send("shared", recipient="bob", attachments=[shared.attachment_id])
        group = await alice.create_group("g", ["bob"])
        await a.forward(original.thread_id, original.seq, thread_id=group.thread_id)
        await a.delete(gone.thread_id, gone.seq)
        await a.delete(original.thread_id, original.seq)  # the forward still refers to it

        async def collected() -> bool:
            return not await store.exists(unsent.sha256) and not await store.exists(deleted.sha256)

        await eventually(collected, timeout=30)
        assert await store.exists(kept.sha256) and await store.exists(shared.sha256)
        assert await gc_server.store.get_attachment(unsent.attachment_id) is None
        # What is gone is refused as such; what stays is served.
        async with Media(bob) as media:
            with pytest.raises(NotFound):
                await media.download(deleted.attachment_id, gc_server.settings.data_dir / "d.jpg")
            await media.download(shared.attachment_id, gc_server.settings.data_dir / "s.jpg")
    finally:
        await a.close()
        await alice.close()
        await bob.close()


async def test_the_same_photo_twice_is_stored_once(
    server: EmbeddedServer, user: UserFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    photo = jpeg()
    async with Media(alice) as m1, Media(bob) as m2:
        first = await m1.upload(photo, name="a.jpg")
        second = await m2.upload(photo, name="b.jpg")
    assert first.attachment_id != second.attachment_id and first.sha256 == second.sha256
    assert len(blob_files(server)) == 1


async def test_voice_notes_keep_their_type_and_length(
    server: EmbeddedServer, user: UserFactory, connect: ConnFactory
) -> None:
    alice, bob = await user("alice"), await user("bob")
    a, b = await connect(alice), await connect(bob)
    # What MediaRecorder makes: WebM (Chrome, Firefox) or Ogg; the container cannot say
    # audio or video, the uploader can.
    webm = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm" + bytes(2000)
    ogg = b"OggS\x00\x02" + bytes(26) + b"OpusHead" + bytes(1000)
    async with Media(alice) as media:
        note = await media.upload(
            webm,
            name="note.webm",
            mime_type="audio/webm;codecs=opus",
            voice_note=True,
            duration_ms=4200,
        )
        song = await media.upload(ogg, name="song.ogg", duration_ms=180_000)
        with pytest.raises(InvalidArgument) as info:
            await media.upload(ogg, name="x.png", mime_type="image/png")
        assert info.value.reason == "MIME_MISMATCH"
    assert (note.mime_type, note.voice_note, note.duration_ms) == ("audio/webm", True, 4200)
    assert (song.mime_type, song.voice_note, song.duration_ms) == ("audio/ogg", False, 180_000)
    assert not note.has_thumbnail and note.width == 0
    await a.send("", recipient="bob", attachments=[note.attachment_id])
    [got] = await collect(b, 1)
    assert got.attachments == (note,) and got.text == ""
    status, headers, _ = await http(
        server, "GET", f"/v1/attachments/{note.attachment_id}", bob.token
    )
    assert (status, headers["Content-Type"]) == (200, "audio/webm")
    assert headers["Content-Disposition"].startswith("inline")
