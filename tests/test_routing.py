"""Cluster routing: a sender's own copies, and the memory of recent pushes (the repair window)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

import grpc
import pytest_asyncio

from app.routing import ClusterFanout
from channel_svc.client import ChannelClient
from natter import domain as d
from natter.metrics import Metrics
from natter.pool import Pool
from natter.settings import Settings
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from registry import LocalRegistry, Node
from socket_svc import Hub, SocketInternalServicer
from socket_svc.ports import MessageApi
from tests.helpers import eventually

WINDOW = 0.3


@pytest_asyncio.fixture
async def routed() -> AsyncIterator[tuple[ClusterFanout, Hub]]:
    """A fanout whose ring holds one real socket server (its internal Deliver, no devices)."""
    hub = Hub("socket-1", cast(MessageApi, None), Settings(), metrics=Metrics())
    server = grpc.aio.server()
    ipb_grpc.add_SocketInternalServiceServicer_to_server(SocketInternalServicer(hub), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    registry = LocalRegistry()
    await registry.start()
    await registry.register(Node("socket-1", "socket", "127.0.0.1:1", f"127.0.0.1:{port}"))
    pool = Pool("")
    out = ClusterFanout(pool, registry, ChannelClient(pool, lambda _: None), WINDOW)
    try:
        yield out, hub
    finally:
        await out.close()
        await pool.close()
        await registry.close()
        await server.stop(None)


@pytest_asyncio.fixture
async def fanout(routed: tuple[ClusterFanout, Hub]) -> ClusterFanout:
    return routed[0]


def message(seq: int) -> d.Delivery:
    user = d.User(1, "alice", "Alice")
    event = d.Message(
        7, seq, f"m{seq}", user, 1, f"c{seq}", d.MessageKind.TEXT, "hi", datetime.now(UTC)
    )
    return d.Delivery(event, (2,), 7)


async def test_pushes_older_than_the_repair_window_are_forgotten_on_a_stable_ring(
    fanout: ClusterFanout,
) -> None:
    """On a ring that never changes, the pushes kept for repairs stay those of one window.

    They were trimmed only when a ring changed; on a stable ring every push of the run was
    kept (up to 200,000), and the message nodes of a 30-minute soak grew without a plateau.
    """
    await fanout.deliver([message(seq) for seq in range(1, 501)])
    assert fanout.remembered == 500
    seq = 500

    async def forgotten() -> bool:
        nonlocal seq
        seq += 1
        await fanout.deliver([message(seq)])
        return fanout.remembered < 100

    await eventually(forgotten, 10, message="pushes of an earlier window were forgotten")


async def test_a_senders_copy_skips_only_the_socket_server_that_pushes_it_itself(
    routed: tuple[ClusterFanout, Hub],
) -> None:
    """`pushed_by` names the sender's socket server: not called there, called anywhere else.

    After a ring change the sender's devices can sit on a server other than the one its
    sending device is on; that one pushes only what it holds, so the others still get a
    Deliver. And a skipped push is remembered as handed over, so a ring change soon after
    pushes it to the new owner.
    """
    fanout, hub = routed
    owner = fanout.registry.ring("socket").owner("2")
    assert owner is not None

    def received() -> float:
        return hub.metrics.registry.get_sample_value("natter_deliver_messages_total") or 0.0

    await fanout.deliver([replace(message(1), pushed_by=owner.internal_addr)])
    assert received() == 0
    assert fanout.remembered == 1
    await fanout.deliver([replace(message(2), pushed_by="127.0.0.1:9")])
    assert received() == 1
    assert fanout.remembered == 2
