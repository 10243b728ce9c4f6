"""Attachments in cluster mode: every role a real process, the blobs in a real S3-compatible
store (S3Proxy 2.6.0, filesystem backend) that all message nodes share, the records in
PostgreSQL. An upload through one message node downloads through the other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.s3proxy import S3ProxyServer, missing
from media_svc import S3BlobStore
from natter import domain as d
from natter.errors import PermissionDenied
from natter.sdk import Client, Connection, Media
from tests.cluster import Cluster
from tests.conftest import PASSWORD
from tests.helpers import collect
from tests.media_files import jpeg

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
BUCKET = "natter-cluster"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s3() -> AsyncIterator[S3ProxyServer]:
    reason = missing()
    if reason is not None:
        pytest.fail(f"the cluster attachment test needs S3Proxy: {reason}", pytrace=False)
    async with S3ProxyServer() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    tmp_path_factory: pytest.TempPathFactory, s3: S3ProxyServer
) -> AsyncIterator[Cluster]:
    from tests.cluster import running_cluster

    env = {
        "NATTER_S3_ENDPOINT": s3.endpoint,
        "NATTER_S3_BUCKET": BUCKET,
        "NATTER_S3_ACCESS_KEY": s3.access_key,
        "NATTER_S3_SECRET_KEY": s3.secret_key,
    }
    root: Path = tmp_path_factory.mktemp("cluster-media")
    async with running_cluster(root, sockets=1, messages=2, env=env) as c:
        yield c


async def _login(address: str, name: str, register: bool) -> Client:
    c = Client(address)
    if register:
        await c.register(name, PASSWORD)
    await c.login(name, PASSWORD)
    return c


async def test_an_upload_through_one_node_downloads_through_another(
    cluster: Cluster, s3: S3ProxyServer
) -> None:
    one, two = (p.public_addr for p in cluster.of("message"))
    alice = await _login(one, "alice", True)
    bob = await _login(two, "bob", True)
    carol = await _login(two, "carol", True)
    a = await Connection(alice, locate=True).start()
    b = await Connection(bob, locate=True).start()
    try:
        photo = jpeg(1024, 768)
        async with Media(alice) as media:
            assert media.base == "" and (await alice.media_info()).http_url.endswith(
                str(cluster.of("message")[0].http_port)
            )
            att = await media.upload(photo, name="cluster.jpg", chunk_bytes=20_000)
        objects = S3BlobStore(s3.endpoint, BUCKET, "us-east-1", s3.access_key, s3.secret_key)
        try:
            assert await objects.exists(att.sha256)  # in the shared store, not on a node's disk
        finally:
            await objects.close()
        await a.send("from the cluster", recipient="bob", attachments=[att.attachment_id])
        [got] = await collect(b, 1, timeout=20)
        assert got.kind is d.MessageKind.ATTACHMENT and got.attachments == (att,)
        async with Media(bob) as media:  # the other message node's HTTP listener
            assert str(cluster.of("message")[1].http_port) in media._reachable(
                (await bob.media_info()).http_url
            )
            status, body = await media.fetch(
                f"/v1/attachments/{att.attachment_id}", {"Authorization": f"Bearer {bob.token}"}
            )
            assert (status, body) == (200, photo)
            assert await media.thumbnail(att.attachment_id)
        async with Media(carol) as media:
            with pytest.raises(PermissionDenied):
                await media.download(att.attachment_id, Path("/nonexistent/never-written"))
    finally:
        await a.close()
        await b.close()
        for c in (alice, bob, carol):
            await c.close()
