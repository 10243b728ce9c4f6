"""The blob store on an S3-compatible object store: a small SigV4 client over aiohttp.

Four calls are all natter needs (PUT, GET with Range, HEAD, DELETE, plus creating the
bucket once), and because blobs are content-addressed the payload hash S3 signs is the
SHA-256 natter already computed, so a file streams from disk without a second pass.
Path-style addressing (`ENDPOINT/BUCKET/KEY`), which S3 and the compatible servers accept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp

from media_svc.blobs import READ_CHUNK, checked
from natter.errors import NotFound, Unavailable

logger = logging.getLogger(__name__)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload_sha256: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers of an AWS Signature Version 4 request to S3 (host, date, hash, auth)."""
    when = now or datetime.now(UTC)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    parts = urlsplit(url)
    out = {k.lower(): v for k, v in headers.items()}
    out["host"] = parts.netloc
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_sha256
    signed = sorted(out)
    canonical_headers = "".join(f"{k}:{' '.join(str(out[k]).split())}\n" for k in signed)
    query = "&".join(
        sorted(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)
        )
    )
    canonical = "\n".join(
        [
            method,
            quote(parts.path or "/", safe="/-_.~"),
            query,
            canonical_headers,
            ";".join(signed),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "s3"), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return out


class S3BlobStore:
    """Blobs as objects `blobs/ab/abcd…` in one bucket, created at open if missing."""

    def __init__(
        self, endpoint: str, bucket: str, region: str, access_key: str, secret_key: str
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self._session: aiohttp.ClientSession | None = None

    def _url(self, sha256: str | None = None) -> str:
        base = f"{self.endpoint}/{self.bucket}"
        if sha256 is None:
            return base
        checked(sha256)
        return f"{base}/blobs/{sha256[:2]}/{sha256}"

    def _headers(
        self, method: str, url: str, payload: str, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        return sign(
            method,
            url,
            extra or {},
            payload,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    async def open(self) -> None:
        url = self._url()
        try:
            async with self.session.head(
                url, headers=self._headers("HEAD", url, EMPTY_SHA256)
            ) as r:
                if r.status == 200:
                    return
            async with self.session.put(url, headers=self._headers("PUT", url, EMPTY_SHA256)) as r:
                if r.status not in (200, 409):
                    raise Unavailable(f"cannot create bucket {self.bucket}: HTTP {r.status}")
        except aiohttp.ClientError as e:
            raise Unavailable(f"object store unreachable: {e}") from e

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def exists(self, sha256: str) -> bool:
        url = self._url(sha256)
        try:
            async with self.session.head(
                url, headers=self._headers("HEAD", url, EMPTY_SHA256)
            ) as r:
                if r.status == 200:
                    return True
                if r.status == 404:
                    return False
                raise Unavailable(f"object store answered HTTP {r.status} to HEAD")
        except aiohttp.ClientError as e:
            raise Unavailable(f"object store unreachable: {e}") from e

    async def put_file(self, sha256: str, path: Path, size: int) -> None:
        url = self._url(sha256)
        headers = self._headers(
            "PUT",
            url,
            sha256,
            {"content-length": str(size), "content-type": "application/octet-stream"},
        )
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            async with self.session.put(url, data=fh, headers=headers) as r:
                if r.status != 200:
                    body = await r.text()
                    raise Unavailable(f"object store refused PUT: HTTP {r.status} {body[:200]}")
        except aiohttp.ClientError as e:
            raise Unavailable(f"object store unreachable: {e}") from e
        finally:
            fh.close()
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def read(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        url = self._url(sha256)
        extra = {}
        if start or end is not None:
            extra["range"] = f"bytes={start}-{'' if end is None else end - 1}"
        headers = self._headers("GET", url, EMPTY_SHA256, extra)
        try:
            async with self.session.get(url, headers=headers) as r:
                if r.status == 404:
                    raise NotFound("the attachment's content is missing", "BLOB_MISSING")
                if r.status not in (200, 206):
                    raise Unavailable(f"object store answered HTTP {r.status} to GET")
                async for chunk in r.content.iter_chunked(READ_CHUNK):
                    yield chunk
        except aiohttp.ClientError as e:
            raise Unavailable(f"object store unreachable: {e}") from e

    async def delete(self, sha256: str) -> None:
        url = self._url(sha256)
        try:
            async with self.session.delete(
                url, headers=self._headers("DELETE", url, EMPTY_SHA256)
            ) as r:
                if r.status not in (200, 204, 404):
                    raise Unavailable(f"object store answered HTTP {r.status} to DELETE")
        except aiohttp.ClientError as e:
            raise Unavailable(f"object store unreachable: {e}") from e
