"""Cluster routing's memory of recent pushes: kept for the repair window, not for the whole run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

import grpc
import pytest_asyncio

from app.routing import ClusterFanout
from channel_svc.client import ChannelClient
from natter import domain as d
from natter.pool import Pool
from natter.settings import Settings
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from registry import LocalRegistry, Node
from socket_svc import Hub, SocketInternalServicer
from socket_svc.ports import MessageApi
from tests.helpers import eventually

WINDOW = 0.3


@pytest_asyncio.fixture
async def fanout() -> AsyncIterator[ClusterFanout]:
    """A fanout whose ring holds one real socket server (its internal Deliver, no devices)."""
    hub = Hub("socket-1", cast(MessageApi, None), Settings())
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
        yield out
    finally:
        await out.close()
        await pool.close()
        await registry.close()
        await server.stop(None)


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
