"""The blob-store port (contents by SHA-256) and its filesystem implementation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from natter.errors import InvalidArgument, NotFound

SHA256 = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 1024 * 1024


def checked(sha256: str) -> str:
    if not SHA256.match(sha256):
        raise InvalidArgument("not a SHA-256 in lowercase hex", "BAD_SHA256")
    return sha256


class BlobStore(Protocol):
    """Immutable contents named by their SHA-256; putting the same content twice is a no-op."""

    async def exists(self, sha256: str) -> bool: ...
    async def put_file(self, sha256: str, path: Path, size: int) -> None:
        """Store the file's content (whose hash the caller computed); the file may be moved."""
        ...

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) (to the end when end is None), in chunks."""
        ...

    async def delete(self, sha256: str) -> None:
        """Gone afterwards, whether or not it was there."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Blobs as files under a folder, fanned out by hash: ROOT/ab/cd/abcd…, written durably."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        checked(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def open(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path(sha256).is_file)

    async def put_file(self, sha256: str, path: Path, size: int) -> None:
        dest = self.path(sha256)

        def put() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            if dest.is_file() and dest.stat().st_size == size:
                path.unlink(missing_ok=True)
                return
            try:
                os.replace(path, dest)  # same file system: the staging folder is a sibling
            except OSError:
                tmp = dest.with_suffix(".tmp")
                with open(path, "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(READ_CHUNK):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest)
                path.unlink(missing_ok=True)
            _fsync_dir(dest.parent)

        await asyncio.to_thread(put)

    async def read(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path(sha256)
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise NotFound("the attachment's content is missing", "BLOB_MISSING") from None
        try:
            await asyncio.to_thread(fh.seek, start)
            left = None if end is None else end - start
            while left is None or left > 0:
                want = READ_CHUNK if left is None else min(READ_CHUNK, left)
                chunk = await asyncio.to_thread(fh.read, want)
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            fh.close()

    async def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(sha256).unlink)
