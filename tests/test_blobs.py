"""The blob-store contract on both implementations: files, and S3 against a real S3Proxy.

S3Proxy 2.6.0 (Maven Central, filesystem backend) is started once for the module by
devtools/s3proxy.py; nothing is mocked.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.s3proxy import S3ProxyServer, missing
from media_svc import BlobStore, FileBlobStore, S3BlobStore
from media_svc.s3 import sign
from natter.errors import InvalidArgument, NotFound


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s3proxy() -> AsyncIterator[S3ProxyServer]:
    reason = missing()
    if reason is not None:
        pytest.fail(f"the S3 tests need S3Proxy: {reason}", pytrace=False)
    async with S3ProxyServer() as server:
        yield server


_buckets = iter(range(1, 1_000_000))


@pytest_asyncio.fixture(loop_scope="module", params=["file", "s3"])
async def blobs(
    request: pytest.FixtureRequest, tmp_path: Path, s3proxy: S3ProxyServer
) -> AsyncIterator[BlobStore]:
    store: BlobStore
    if request.param == "file":
        store = FileBlobStore(tmp_path / "blobs")
    else:
        store = S3BlobStore(
            s3proxy.endpoint,
            f"natter-{next(_buckets)}",
            "us-east-1",
            s3proxy.access_key,
            s3proxy.secret_key,
        )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def staged(tmp_path: Path, data: bytes, name: str = "x.part") -> tuple[str, Path]:
    path = tmp_path / name
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path


async def read_all(blobs: BlobStore, sha: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([c async for c in blobs.read(sha, start, end)])


@pytest.mark.asyncio(loop_scope="module")
async def test_put_read_ranges_and_delete(blobs: BlobStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # 2.3 MB: more than one read chunk
    sha, path = staged(tmp_path, data)
    assert not await blobs.exists(sha)
    await blobs.put_file(sha, path, len(data))
    assert await blobs.exists(sha)
    assert await read_all(blobs, sha) == data
    assert await read_all(blobs, sha, 1000, 1010) == data[1000:1010]
    assert await read_all(blobs, sha, len(data) - 5) == data[-5:]
    await blobs.delete(sha)
    assert not await blobs.exists(sha)
    with pytest.raises(NotFound):
        await read_all(blobs, sha)
    await blobs.delete(sha)  # deleting what is gone is fine


@pytest.mark.asyncio(loop_scope="module")
async def test_the_same_content_twice_is_one_blob(blobs: BlobStore, tmp_path: Path) -> None:
    sha, first = staged(tmp_path, b"same bytes", "a.part")
    _, second = staged(tmp_path, b"same bytes", "b.part")
    await blobs.put_file(sha, first, 10)
    await blobs.put_file(sha, second, 10)
    assert await read_all(blobs, sha) == b"same bytes"


@pytest.mark.asyncio(loop_scope="module")
async def test_names_are_hashes_only(blobs: BlobStore) -> None:
    with pytest.raises(InvalidArgument):
        await blobs.exists("../../etc/passwd")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_wrong_signature_is_refused_by_s3proxy(s3proxy: S3ProxyServer) -> None:
    # The client's own signing is what S3Proxy checks: a wrong secret gets 403.
    bad = S3BlobStore(s3proxy.endpoint, "natter-bad", "us-east-1", s3proxy.access_key, "wrong")
    try:
        from natter.errors import Unavailable

        with pytest.raises(Unavailable):
            await bad.open()
    finally:
        await bad.close()
    headers = sign(
        "GET", "http://h:1/b/k?x=1", {}, "e3", access_key="a", secret_key="s", region="r"
    )
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=a/")
