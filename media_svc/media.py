"""Attachments: uploads become blobs with records, downloads are checked, orphans collected."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from media_svc import images
from media_svc.blobs import BlobStore
from media_svc.ports import Authenticator, MediaStore
from media_svc.sniff import HEAD_BYTES, reconcile, sniff
from media_svc.uploads import Upload, Uploads, completed
from natter.domain import Attachment, AttachmentRecord, Principal
from natter.errors import (
    FailedPrecondition,
    InvalidArgument,
    NatterError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from natter.ids import new_msg_id
from natter.settings import Settings

logger = logging.getLogger(__name__)

MAX_NAME = 255
MAX_DURATION_MS = 24 * 3600 * 1000
GC_BATCH = 500


@dataclass(frozen=True, slots=True)
class Links:
    """Signed, expiring paths to an attachment and its thumbnail, for one user."""

    url: str
    thumbnail_url: str
    expire_time: datetime


@dataclass(frozen=True, slots=True)
class Collected:
    """What one garbage-collection pass removed."""

    attachments: int
    blobs: int
    uploads: int


def _name(value: str) -> str:
    name = os.path.basename(value.replace("\\", "/")).strip()
    name = "".join(ch for ch in name if ch.isprintable())
    if len(name.encode()) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:100] + dot + ext[:20]) if dot else name[:120]
    return name or "file"


class Media:
    """The rules of attachments, over a blob store, a record store and local staging."""

    def __init__(
        self,
        settings: Settings,
        store: MediaStore,
        blobs: BlobStore,
        auth: Authenticator,
        staging: Path,
        link_key: bytes,
    ) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.auth = auth
        self.uploads = Uploads(staging)
        self.link_key = link_key
        self.http_url = settings.public_http_url
        self._gc: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self.uploads.open()
        await self.blobs.open()

    async def close(self) -> None:
        if self._gc is not None:
            self._gc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc
            self._gc = None
        await self.blobs.close()

    async def authenticate(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated("send the device token: Authorization: Bearer TOKEN", "NO_TOKEN")
        return await self.auth.authenticate(token)

    # -- uploads -------------------------------------------------------------------------

    async def start_upload(
        self,
        who: Principal,
        size: int,
        name: str,
        declared_type: str,
        voice_note: bool = False,
        duration_ms: int = 0,
    ) -> Upload:
        cap = self.settings.max_attachment_bytes
        if size <= 0:
            raise InvalidArgument("the file is empty (0 bytes)", "EMPTY_FILE")
        if size > cap:
            raise ResourceExhausted(
                f"the file is {size:,} bytes; the limit is {cap:,}", "FILE_TOO_LARGE"
            )
        if not 0 <= duration_ms <= MAX_DURATION_MS:
            raise InvalidArgument("duration_ms is out of range", "BAD_DURATION")
        if len(declared_type) > 128:
            raise InvalidArgument("the declared type is too long", "BAD_TYPE")
        return await self.uploads.create(
            who.user.user_id, size, _name(name), declared_type, voice_note, duration_ms
        )

    async def upload_status(self, who: Principal, upload_id: str) -> tuple[Upload, int]:
        up = await self.uploads.get(upload_id, who.user.user_id)
        return up, await self.uploads.offset(up)

    async def append(
        self, who: Principal, upload_id: str, offset: int, chunks: AsyncIterator[bytes]
    ) -> int:
        up = await self.uploads.get(upload_id, who.user.user_id)
        lock = self.uploads.lock(upload_id)
        if lock.locked():
            raise FailedPrecondition("another chunk of this upload is being written", "UPLOAD_BUSY")
        async with lock:
            return await self.uploads.append(up, offset, chunks)

    async def abort(self, who: Principal, upload_id: str) -> None:
        up = await self.uploads.get(upload_id, who.user.user_id)
        async with self.uploads.lock(upload_id):
            await self.uploads.discard(up.upload_id)

    async def complete(self, who: Principal, upload_id: str) -> Attachment:
        """Check the whole upload and store it: hashed, typed by content, images thumbnailed.

        An upload that is short of its declared size is refused and kept to resume. One that
        fails a check (its type, a damaged or oversized image) is thrown away: nothing of it
        is stored. Completing twice returns the same attachment.
        """
        up = await self.uploads.get(upload_id, who.user.user_id)
        async with self.uploads.lock(upload_id):
            up = await self.uploads.get(upload_id, who.user.user_id)
            if up.attachment_id:
                record = await self.store.get_attachment(up.attachment_id)
                if record is not None and await self.blobs.exists(record.attachment.sha256):
                    return record.attachment
                raise FailedPrecondition("the upload was lost; upload it again", "UPLOAD_LOST")
            have = await self.uploads.offset(up)
            if have < up.size:
                raise FailedPrecondition(
                    f"the upload has {have:,} of its {up.size:,} bytes; send the rest from "
                    f"offset {have}",
                    "UPLOAD_INCOMPLETE",
                )
            part = self.uploads.part(up.upload_id)
            try:
                attachment, thumbnail = await self._inspect(up, part)
            except NatterError:
                await self.uploads.discard(up.upload_id)
                raise
            record = AttachmentRecord(attachment, up.owner_id, datetime.now(UTC))
            # The record first (it touches the blob's row, after any collection of the same
            # content in progress), then the bytes if the store does not have them yet.
            await self.store.add_attachment(record, thumbnail)
            await self.uploads.save(completed(up, attachment.attachment_id))
            if not await self.blobs.exists(attachment.sha256):
                await self.blobs.put_file(attachment.sha256, part, up.size)
            else:
                await asyncio.to_thread(part.unlink, missing_ok=True)
            return attachment

    async def _inspect(self, up: Upload, part: Path) -> tuple[Attachment, bytes | None]:
        known = self.uploads.digest(up.upload_id, up.size)

        def digest() -> tuple[str, bytes]:
            with open(part, "rb") as fh:
                head = fh.read(HEAD_BYTES)
                if known is not None:
                    return known, head
                h = hashlib.sha256(head)
                while chunk := fh.read(1024 * 1024):
                    h.update(chunk)
            return h.hexdigest(), head

        sha, head = await asyncio.to_thread(digest)
        mime = reconcile(up.declared_type, sniff(head))
        width = height = 0
        thumbnail: bytes | None = None
        blurhash = ""
        if mime in images.DECODED:
            info = await asyncio.to_thread(images.probe, part, self.settings.max_image_pixels)
            width, height, thumbnail, blurhash = (
                info.width,
                info.height,
                info.thumbnail,
                info.blurhash,
            )
        audio_or_video = mime.startswith(("audio/", "video/"))
        return (
            Attachment(
                attachment_id=new_msg_id(),
                mime_type=mime,
                size=up.size,
                name=up.name,
                sha256=sha,
                width=width,
                height=height,
                duration_ms=up.duration_ms if audio_or_video else 0,
                blurhash=blurhash,
                has_thumbnail=thumbnail is not None,
                voice_note=up.voice_note and mime.startswith("audio/"),
            ),
            thumbnail,
        )

    # -- downloads -----------------------------------------------------------------------

    async def readable(self, user_id: int, attachment_id: str) -> AttachmentRecord:
        """An attachment the user may download: theirs, or in a message they can see."""
        if not attachment_id.isalnum() or len(attachment_id) > 26:
            raise NotFound("no such attachment", "ATTACHMENT_NOT_FOUND")
        record = await self.store.get_attachment(attachment_id)
        if record is None:
            raise NotFound("no such attachment", "ATTACHMENT_NOT_FOUND")
        if not await self.store.may_read_attachment(user_id, attachment_id):
            raise PermissionDenied(
                "this attachment was not sent in a thread of yours", "NOT_A_MEMBER"
            )
        return record

    async def thumbnail(self, user_id: int, attachment_id: str) -> bytes:
        await self.readable(user_id, attachment_id)
        thumb = await self.store.attachment_thumbnail(attachment_id)
        if thumb is None:
            raise NotFound("this attachment has no thumbnail", "NO_THUMBNAIL")
        return thumb

    def read(self, record: AttachmentRecord, start: int, end: int) -> AsyncIterator[bytes]:
        return self.blobs.read(record.attachment.sha256, start, end)

    # -- signed links ----------------------------------------------------------------------

    def _signature(self, attachment_id: str, user_id: int, expires: int, what: str) -> str:
        msg = f"{attachment_id}|{user_id}|{expires}|{what}".encode()
        digest = hmac.new(self.link_key, msg, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    async def links(self, who: Principal, attachment_id: str) -> tuple[Attachment, Links]:
        record = await self.readable(who.user.user_id, attachment_id)
        expires = int(time.time() + self.settings.media_link_seconds)
        uid = who.user.user_id

        def path(what: str) -> str:
            suffix = "/thumbnail" if what == "thumbnail" else ""
            sig = self._signature(attachment_id, uid, expires, what)
            return f"/v1/attachments/{attachment_id}{suffix}?u={uid}&e={expires}&s={sig}"

        a = record.attachment
        return a, Links(
            path("content"),
            path("thumbnail") if a.has_thumbnail else "",
            datetime.fromtimestamp(expires, UTC),
        )

    def check_link(self, attachment_id: str, what: str, u: str, e: str, s: str) -> int:
        """The user a signed link was made for, if it is genuine and not expired."""
        try:
            user_id, expires = int(u), int(e)
        except ValueError:
            raise Unauthenticated("the link is malformed", "BAD_LINK") from None
        good = self._signature(attachment_id, user_id, expires, what)
        if not hmac.compare_digest(good, s):
            raise Unauthenticated("the link's signature is wrong", "BAD_LINK")
        if expires < time.time():
            raise Unauthenticated("the link has expired; ask for a new one", "LINK_EXPIRED")
        return user_id

    # -- garbage collection ----------------------------------------------------------------

    async def collect(self, now: datetime | None = None) -> Collected:
        """One pass: unsent uploads, then blobs nothing refers to, both after the grace."""
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.settings.blob_gc_grace_seconds)
        dropped = await self.store.drop_unsent_attachments(cutoff)
        blobs = 0
        while True:
            batch = await self.store.collectable_blobs(cutoff, GC_BATCH)
            for sha in batch:

                async def delete(sha: str = sha) -> None:
                    await self.blobs.delete(sha)

                if await self.store.collect_blob(sha, cutoff, delete):
                    blobs += 1
            if len(batch) < GC_BATCH:
                break
        uploads = await self.uploads.expire(time.time() - self.settings.upload_expiry_seconds)
        if dropped or blobs or uploads:
            logger.info(
                "collected %d unsent attachments, %d blobs, %d stale uploads",
                dropped,
                blobs,
                uploads,
            )
        return Collected(dropped, blobs, uploads)

    def start_gc(self) -> None:
        """Collect every blob_gc_interval_seconds until closed."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.settings.blob_gc_interval_seconds)
                try:
                    await self.collect()
                except Exception:
                    logger.warning("blob collection failed; trying again later", exc_info=True)

        if self._gc is None:
            self._gc = asyncio.create_task(loop())
