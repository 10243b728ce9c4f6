"""The cluster on the split store: two message nodes over PostgreSQL and one MongoDB log.

Every role a real process (etcd, PostgreSQL, FerretDB, one socket server, two message_svc,
one channel_svc, one presence_svc); both message nodes killed by the fault hook between a
log append and its SQL step, under traffic, and started again: no acknowledged message
lost or duplicated, order kept, and every thread agrees with the log. (A message node
SIGKILLed at a random point is tests/test_cluster.py's, on the SQL store.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from devtools.ferretdb import FerretDbServer
from tests.cluster import Chat, Cluster, running_cluster
from tests.helpers import eventually

FAULT = "NATTER_FAULT_KILL_AFTER_LOG_APPENDS"
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mongo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with FerretDbServer(tmp_path_factory.mktemp("ferretdb")) as server:
        yield await server.create_database()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, mongo: str) -> AsyncIterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("cluster")
    async with running_cluster(root, env={"NATTER_MESSAGE_LOG": mongo}, sockets=1) as c:
        yield c


async def log_seqs(url: str, thread_id: int) -> list[int]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
    try:
        coll = client.get_default_database().get_collection("messages")
        return sorted([int(str(d["s"])) async for d in coll.find({"t": thread_id})])
    finally:
        await client.close()


async def test_threads_agree_with_the_log_after_a_kill_between_the_two_writes(
    cluster: Cluster, mongo: str
) -> None:
    await cluster.heal()
    chat = await Chat(cluster.front_door, 2, interval=0.1).open()
    try:
        chat.start()
        await eventually(lambda: chat.acked_total() >= 10, 30)
        await chat.finish()
        peer = chat.peers[0]
        [thread] = await peer.client.threads()
        tid = int(thread.thread_id)
        assert await log_seqs(mongo, tid) == list(range(1, int(thread.last_seq) + 1))
    finally:
        await chat.close()
    # Each message node now dies right after its next log append, before its SQL step.
    # Users registered first: a node dies at its first append, whichever send it is.
    chat = await Chat(cluster.front_door, 2, interval=0.1).open()
    try:
        for node in cluster.of("message"):
            node.kill()
            node.env = {**node.env, FAULT: "1"}
            node.spawn()  # not waited for: a retry in flight may kill it at once
        chat.start()
        await eventually(lambda: not any(n.running for n in cluster.of("message")), 60)
        assert chat.acked_total() == 0
        for node in cluster.of("message"):
            node.env = {k: v for k, v in node.env.items() if k != FAULT}
        await cluster.heal()
        # The unanswered sends are retried by their devices and answered from the log.
        await eventually(lambda: chat.acked_total() >= 10, 60)
        await chat.finish()
        for p in chat.peers:
            for t in await p.client.threads():
                tid = int(t.thread_id)
                assert await log_seqs(mongo, tid) == list(range(1, int(t.last_seq) + 1))
                seqs = [m.seq async for m in p.client.all_history(tid)]
                assert seqs == list(range(1, int(t.last_seq) + 1))
    finally:
        await chat.close()
