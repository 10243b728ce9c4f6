"""Attachments over HTTP: resumable uploads and checked downloads (docs/messages.md).

Uploads are created, sent in PATCH chunks at offsets and completed; downloads honour Range.
Every call is authenticated by the device token (Authorization: Bearer), downloads also by
a signed link (MediaService.GetAttachment) so that `<img src>` works in a browser.

    POST   /v1/uploads                   {"size", "name", "type", "voice_note", "duration_ms"}
    HEAD   /v1/uploads/{id}              Upload-Offset, Upload-Length
    PATCH  /v1/uploads/{id}              Upload-Offset: N, body: the next bytes
    POST   /v1/uploads/{id}/complete     -> {"attachment": {...}}
    DELETE /v1/uploads/{id}
    GET    /v1/attachments/{id}          the content (Range), or ?u=&e=&s= (a signed link)
    GET    /v1/attachments/{id}/thumbnail
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

from aiohttp import web
from google.protobuf import json_format

from media_svc.media import Media
from natter import convert
from natter.domain import Principal
from natter.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NatterError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

logger = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# HTTP status of each error class; the body says {"code", "message", "reason"}.
_STATUS: tuple[tuple[type[NatterError], int, str], ...] = (
    (InvalidArgument, 400, "invalid_argument"),
    (NotFound, 404, "not_found"),
    (AlreadyExists, 409, "already_exists"),
    (PermissionDenied, 403, "permission_denied"),
    (Unauthenticated, 401, "unauthenticated"),
    (ResourceExhausted, 413, "resource_exhausted"),
    (FailedPrecondition, 409, "failed_precondition"),
    (Unavailable, 503, "unavailable"),
    (DeadlineExceeded, 504, "deadline_exceeded"),
)
INLINE = ("image/", "audio/", "video/")
_EXPOSE = "Upload-Offset, Upload-Length, Location, Content-Range, Content-Length, ETag"


def error_response(error: NatterError) -> web.Response:
    status, code = 500, "internal"
    for klass, http, name in _STATUS:
        if isinstance(error, klass):
            status, code = http, name
            break
    if error.reason == "FILE_TOO_LARGE" or error.reason == "UPLOAD_TOO_LONG":
        status = 413
    body = {"code": code, "message": error.message, "reason": error.reason}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answering(handler: Handler) -> Handler:
    """The handler with natter errors answered as JSON bodies with their HTTP status."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NatterError as e:
            return error_response(e)

    return run


def _token(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body in pieces of about READ_CHUNK (fewer trips to the writing thread)."""
    buf: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        buf.append(chunk)
        size += len(chunk)
        if size >= READ_CHUNK:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _attachment_json(a: Any) -> dict[str, Any]:
    return json_format.MessageToDict(convert.attachment(a))


class MediaHttp:
    """The routes, for the HTTP listener of whichever process serves attachments."""

    def __init__(self, media: Media) -> None:
        self.media = media

    def routes(self) -> Sequence[web.RouteDef]:
        a = _answering
        return [
            web.post("/v1/uploads", a(self._create)),
            web.head("/v1/uploads/{id}", a(self._status)),
            web.get("/v1/uploads/{id}", a(self._status), allow_head=False),
            web.patch("/v1/uploads/{id}", a(self._patch)),
            web.post("/v1/uploads/{id}/complete", a(self._complete)),
            web.delete("/v1/uploads/{id}", a(self._abort)),
            web.get("/v1/attachments/{id}", a(self._download), allow_head=False),
            web.get("/v1/attachments/{id}/thumbnail", a(self._thumbnail), allow_head=False),
        ]

    async def _who(self, request: web.Request) -> Principal:
        return await self.media.authenticate(_token(request))

    async def _create(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        try:
            body = json.loads(await request.read() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
            size = int(str(body.get("size", request.headers.get("Upload-Length", -1))))
            name = str(body.get("name", ""))
            declared = str(body.get("type", ""))
            voice = bool(body.get("voice_note", body.get("voiceNote", False)))
            duration = int(str(body.get("duration_ms", body.get("durationMs", 0))))
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"malformed upload request: {e}", "MALFORMED") from None
        up = await self.media.start_upload(who, size, name, declared, voice, duration)
        location = f"/v1/uploads/{up.upload_id}"
        return web.json_response(
            {"upload_id": up.upload_id, "offset": 0, "size": up.size, "location": location},
            status=201,
            headers={
                "Location": location,
                "Upload-Offset": "0",
                "Upload-Length": str(up.size),
                "Access-Control-Expose-Headers": _EXPOSE,
            },
        )

    async def _status(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        up, offset = await self.media.upload_status(who, request.match_info["id"])
        headers = {
            "Upload-Offset": str(offset),
            "Upload-Length": str(up.size),
            "Cache-Control": "no-store",
            "Access-Control-Expose-Headers": _EXPOSE,
        }
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        return web.json_response(
            {
                "upload_id": up.upload_id,
                "offset": offset,
                "size": up.size,
                "attachment_id": up.attachment_id,
            },
            headers=headers,
        )

    async def _patch(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        raw = request.headers.get("Upload-Offset", "")
        if not raw.isdigit():
            raise InvalidArgument("PATCH needs an Upload-Offset header", "NO_OFFSET")
        offset = await self.media.append(who, request.match_info["id"], int(raw), _chunks(request))
        return web.Response(
            status=204,
            headers={"Upload-Offset": str(offset), "Access-Control-Expose-Headers": _EXPOSE},
        )

    async def _complete(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        attachment = await self.media.complete(who, request.match_info["id"])
        return web.json_response({"attachment": _attachment_json(attachment)})

    async def _abort(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        await self.media.abort(who, request.match_info["id"])
        return web.Response(status=204)

    async def _reader(self, request: web.Request, what: str) -> int:
        """The user a download is for: a signed link's, else the device token's."""
        q = request.query
        if "s" in q:
            return self.media.check_link(
                request.match_info["id"], what, q.get("u", ""), q.get("e", ""), q.get("s", "")
            )
        return (await self._who(request)).user.user_id

    async def _thumbnail(self, request: web.Request) -> web.Response:
        user_id = await self._reader(request, "thumbnail")
        thumb = await self.media.thumbnail(user_id, request.match_info["id"])
        return web.Response(
            body=thumb,
            content_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=86400, immutable"},
        )

    async def _download(self, request: web.Request) -> web.StreamResponse:
        user_id = await self._reader(request, "content")
        record = await self.media.readable(user_id, request.match_info["id"])
        a = record.attachment
        start, end, status = 0, a.size, 200
        etag = f'"{a.sha256}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        wanted = request.headers.get("Range")
        if wanted:
            m = _RANGE.match(wanted.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                return _unsatisfiable(a.size)
            if m.group(1):
                start = int(m.group(1))
                end = min(a.size, int(m.group(2)) + 1) if m.group(2) else a.size
            else:
                start = max(0, a.size - int(m.group(2)))
            if start >= a.size or start >= end:
                return _unsatisfiable(a.size)
            status = 206
        disposition = "inline" if a.mime_type.startswith(INLINE) else "attachment"
        response = web.StreamResponse(
            status=status,
            headers={
                "Content-Type": a.mime_type,
                "Content-Length": str(end - start),
                "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(a.name)}",
                "Accept-Ranges": "bytes",
                "ETag": etag,
                "Cache-Control": "private, max-age=86400, immutable",
                "Access-Control-Expose-Headers": _EXPOSE,
            },
        )
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{a.size}"
        chunks = self.media.read(record, start, end)
        # The first chunk before the headers: a missing blob is still an error response.
        first = await anext(chunks, b"")
        await response.prepare(request)
        if first:
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        await response.write_eof()
        return response


def _unsatisfiable(size: int) -> web.Response:
    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
