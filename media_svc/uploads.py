"""Resumable uploads staged on local disk: create, append chunks at offsets, then complete.

An upload is two files in the staging folder: `ID.part` (the bytes so far; its size is the
offset) and `ID.json` (who, how long, what name and type were declared, and once complete
the attachment it became). Both survive a restart, so an interrupted upload resumes from
what reached the disk. Uploads live on the node that created them (docs/messages.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from natter.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from natter.ids import new_msg_id


@dataclass(frozen=True, slots=True)
class Upload:
    upload_id: str
    owner_id: int
    size: int
    name: str
    declared_type: str
    voice_note: bool
    duration_ms: int
    create_time: float
    attachment_id: str = ""


class Uploads:
    """The staging folder and a lock per upload (one chunk at a time)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}
        # The SHA-256 of each upload's bytes so far, and how many: kept as chunks arrive so
        # completing does not read the file again (after a restart it is read once).
        self._hashes: dict[str, tuple[int, Any]] = {}

    async def open(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    def part(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.part"

    def _meta(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.json"

    def lock(self, upload_id: str) -> asyncio.Lock:
        return self._locks.setdefault(upload_id, asyncio.Lock())

    async def create(
        self,
        owner_id: int,
        size: int,
        name: str,
        declared_type: str,
        voice_note: bool,
        duration_ms: int,
    ) -> Upload:
        up = Upload(
            new_msg_id().lower(),
            owner_id,
            size,
            name,
            declared_type,
            voice_note,
            duration_ms,
            time.time(),
        )

        def write() -> None:
            self.part(up.upload_id).touch()
            self._save(up)

        await asyncio.to_thread(write)
        return up

    def _save(self, up: Upload) -> None:
        tmp = self._meta(up.upload_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(up)))
        os.replace(tmp, self._meta(up.upload_id))

    async def save(self, up: Upload) -> None:
        await asyncio.to_thread(self._save, up)

    async def get(self, upload_id: str, owner_id: int) -> Upload:
        """The owner's upload; someone else's is NOT_FOUND too (ids are not secrets to guard)."""
        if not upload_id.isalnum() or len(upload_id) > 32:
            raise NotFound("no such upload", "UPLOAD_NOT_FOUND")
        try:
            raw = await asyncio.to_thread(self._meta(upload_id).read_text)
        except FileNotFoundError:
            raise NotFound(
                "no such upload (finished long ago, or expired)", "UPLOAD_NOT_FOUND"
            ) from None
        up = Upload(**json.loads(raw))
        if up.owner_id != owner_id:
            raise PermissionDenied("this upload is someone else's", "NOT_YOUR_UPLOAD")
        return up

    async def offset(self, up: Upload) -> int:
        if up.attachment_id:
            return up.size
        try:
            return (await asyncio.to_thread(self.part(up.upload_id).stat)).st_size
        except FileNotFoundError:
            return 0

    async def append(self, up: Upload, offset: int, chunks: AsyncIterator[bytes]) -> int:
        """Write chunks at offset (which must be where the upload stands); return the new one.

        What arrived before a broken connection stays written: the client resumes from the
        offset HEAD reports. The upload never grows past its declared size.
        """
        if up.attachment_id:
            raise FailedPrecondition("the upload is complete", "UPLOAD_COMPLETE")
        path = self.part(up.upload_id)
        have = await self.offset(up)
        if offset != have:
            raise FailedPrecondition(
                f"Upload-Offset is {offset} but the upload stands at {have}", "OFFSET_MISMATCH"
            )
        fh = await asyncio.to_thread(open, path, "r+b")
        written = have
        hashed = self._hashes.get(up.upload_id)
        h = hashed[1] if hashed is not None and hashed[0] == have else None
        if h is None and have == 0:
            h = hashlib.sha256()
        try:
            await asyncio.to_thread(fh.seek, have)
            async for chunk in chunks:
                if written + len(chunk) > up.size:
                    raise InvalidArgument(
                        f"the upload was declared {up.size} bytes; this chunk goes past it",
                        "UPLOAD_TOO_LONG",
                    )
                await asyncio.to_thread(_write, fh, chunk, h)
                written += len(chunk)
        finally:
            await asyncio.to_thread(_close_durably, fh)
            if h is not None:
                self._hashes[up.upload_id] = (written, h)
            else:
                self._hashes.pop(up.upload_id, None)
        return written

    def digest(self, upload_id: str, size: int) -> str | None:
        """The SHA-256 of a whole upload if it was kept as it arrived (None: read the file)."""
        hashed = self._hashes.get(upload_id)
        if hashed is None or hashed[0] != size:
            return None
        return str(hashed[1].hexdigest())

    async def discard(self, upload_id: str) -> None:
        def remove() -> None:
            for path in (self.part(upload_id), self._meta(upload_id)):
                path.unlink(missing_ok=True)

        await asyncio.to_thread(remove)
        self._locks.pop(upload_id, None)
        self._hashes.pop(upload_id, None)

    async def expire(self, before: float) -> int:
        """Remove uploads created before `before` (finished or not); how many."""

        def sweep() -> list[str]:
            gone = []
            for meta in self.root.glob("*.json"):
                with contextlib.suppress(OSError, ValueError, TypeError):
                    up = Upload(**json.loads(meta.read_text()))
                    if up.create_time < before:
                        gone.append(up.upload_id)
            return gone

        ids = await asyncio.to_thread(sweep)
        for upload_id in ids:
            if not self.lock(upload_id).locked():
                await self.discard(upload_id)
        return len(ids)


def completed(up: Upload, attachment_id: str) -> Upload:
    return replace(up, attachment_id=attachment_id)


def _write(fh: Any, chunk: bytes, h: Any) -> None:
    fh.write(chunk)
    if h is not None:
        h.update(chunk)


def _close_durably(fh: object) -> None:
    import io

    assert isinstance(fh, io.BufferedRandom)
    try:
        fh.flush()
        os.fsync(fh.fileno())
    finally:
        fh.close()
