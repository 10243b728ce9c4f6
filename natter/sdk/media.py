"""Attachments from the SDK: resumable chunked uploads and downloads over the HTTP listener."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import mimetypes
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from google.protobuf import json_format

from natter import convert
from natter import domain as d
from natter.errors import (
    FailedPrecondition,
    InvalidArgument,
    NatterError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    import aiohttp  # imported when first used: it would double a command line's start-up
from natter.sdk.client import Client
from natter.v1 import types_pb2 as pb

_BY_CODE: dict[str, type[NatterError]] = {
    "invalid_argument": InvalidArgument,
    "not_found": NotFound,
    "permission_denied": PermissionDenied,
    "unauthenticated": Unauthenticated,
    "resource_exhausted": ResourceExhausted,
    "failed_precondition": FailedPrecondition,
    "unavailable": Unavailable,
}
RETRIES = 5


def _error(status: int, body: str) -> NatterError:
    try:
        data = json.loads(body)
        klass = _BY_CODE.get(str(data.get("code")), NatterError)
        return klass(str(data.get("message")), str(data.get("reason") or "ERROR"))
    except (ValueError, AttributeError):
        return Unavailable(f"HTTP {status}: {body[:200]}")


class Media:
    """Uploads and downloads for one logged-in Client, at the server's HTTP listener.

    `upload` sends a file in chunks (MediaService.GetMediaInfo's chunk size); after a broken
    connection it asks where the upload stands and goes on from there, so a large file is
    never sent twice.
    """

    def __init__(self, client: Client, ssl_context: ssl.SSLContext | None = None) -> None:
        self.client = client
        # True: aiohttp's default checks (system CAs) for https; a context for a private CA.
        self.ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.base = ""
        self.chunk = 0
        self.max_bytes = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Media:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ready(self) -> aiohttp.ClientSession:
        if not self.base:
            info = await self.client.media_info()
            self.base = self._reachable(info.http_url)
            self.chunk = int(info.chunk_bytes) or 8 * 1024 * 1024
            self.max_bytes = int(info.max_file_bytes)
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
            )
        return self._session

    def _reachable(self, url: str) -> str:
        """The server's HTTP URL, its wildcard host (0.0.0.0) replaced by the one we dial."""
        if not url:
            raise FailedPrecondition("the server does not say where uploads go", "NO_HTTP_URL")
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host in ("0.0.0.0", "::", ""):
            dialled = self.client.server.rsplit(":", 1)[0].strip("[]")
            netloc = f"{dialled}:{parts.port}" if parts.port else dialled
            parts = parts._replace(netloc=netloc)
        return urlunsplit(parts).rstrip("/")

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.client.token}"}
        out.update(extra or {})
        return out

    async def _request(
        self,
        method: str,
        path: str,
        read: Callable[[aiohttp.ClientResponse], Awaitable[Any]],
        **kwargs: Any,
    ) -> Any:
        import aiohttp

        session = await self._ready()
        try:
            async with session.request(method, self.base + path, ssl=self.ssl, **kwargs) as r:
                if r.status >= 400:
                    raise _error(r.status, await r.text())
                return await read(r)
        except aiohttp.ClientError as e:
            raise Unavailable(f"HTTP {method} {path} failed: {e}") from e

    async def upload(
        self,
        source: Path | bytes,
        *,
        name: str = "",
        mime_type: str = "",
        voice_note: bool = False,
        duration_ms: int = 0,
        chunk_bytes: int = 0,
    ) -> d.Attachment:
        """Store a file (or bytes) on the server; send the returned id with a message."""
        if isinstance(source, Path):
            size = (await asyncio.to_thread(source.stat)).st_size
            name = name or source.name
            mime_type = mime_type or (mimetypes.guess_type(source.name)[0] or "")
        else:
            size = len(source)
        await self._ready()
        chunk = chunk_bytes or self.chunk

        async def created(r: aiohttp.ClientResponse) -> str:
            return str((await r.json())["upload_id"])

        upload_id = await self._request(
            "POST",
            "/v1/uploads",
            created,
            headers=self._headers(),
            json={
                "size": size,
                "name": name,
                "type": mime_type,
                "voice_note": voice_note,
                "duration_ms": duration_ms,
            },
        )
        offset, failures = 0, 0
        while offset < size:
            data = await _piece(source, offset, min(chunk, size - offset))
            try:

                async def moved(r: aiohttp.ClientResponse) -> int:
                    return int(r.headers["Upload-Offset"])

                offset = await self._request(
                    "PATCH",
                    f"/v1/uploads/{upload_id}",
                    moved,
                    headers=self._headers(
                        {
                            "Upload-Offset": str(offset),
                            "Content-Type": "application/offset+octet-stream",
                        }
                    ),
                    data=io.BytesIO(data),
                )
                failures = 0
            except (Unavailable, FailedPrecondition) as e:
                if isinstance(e, FailedPrecondition) and e.reason != "OFFSET_MISMATCH":
                    raise
                failures += 1
                if failures > RETRIES:
                    raise
                await asyncio.sleep(0.2 * failures)
                offset = await self.offset(upload_id)

        async def done(r: aiohttp.ClientResponse) -> d.Attachment:
            body = await r.json()
            return convert.attachment_of(json_format.ParseDict(body["attachment"], pb.Attachment()))

        attachment: d.Attachment = await self._request(
            "POST", f"/v1/uploads/{upload_id}/complete", done, headers=self._headers()
        )
        return attachment

    async def offset(self, upload_id: str) -> int:
        """Where an upload stands: how many of its bytes the server has."""

        async def read(r: aiohttp.ClientResponse) -> int:
            return int(r.headers["Upload-Offset"])

        return int(
            await self._request("HEAD", f"/v1/uploads/{upload_id}", read, headers=self._headers())
        )

    async def download(self, attachment_id: str, dest: Path) -> Path:
        """Save an attachment's content (this user must be allowed to see it)."""

        async def save(r: aiohttp.ClientResponse) -> Path:
            tmp = dest.with_name(dest.name + ".part")
            fh = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for chunk in r.content.iter_chunked(256 * 1024):
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                fh.close()
            await asyncio.to_thread(tmp.replace, dest)
            return dest

        try:
            return Path(
                await self._request(
                    "GET", f"/v1/attachments/{attachment_id}", save, headers=self._headers()
                )
            )
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(dest.with_name(dest.name + ".part").unlink, missing_ok=True)

    async def thumbnail(self, attachment_id: str) -> bytes:
        async def read(r: aiohttp.ClientResponse) -> bytes:
            return await r.read()

        return bytes(
            await self._request(
                "GET", f"/v1/attachments/{attachment_id}/thumbnail", read, headers=self._headers()
            )
        )

    async def fetch(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """GET a path (a signed link, say) as is: its status and body, errors included."""
        session = await self._ready()
        async with session.get(self.base + path, ssl=self.ssl, headers=headers or {}) as r:
            return r.status, await r.read()


async def _piece(source: Path | bytes, offset: int, length: int) -> bytes:
    if isinstance(source, bytes):
        return source[offset : offset + length]

    def read() -> bytes:
        with open(source, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    return await asyncio.to_thread(read)
