"""The SDK gives up a stream that is never welcomed, and tries again.

A server that accepts the stream but never answers it (a front door whose database is out of
reach) must not hold a device for ever: after `handshake_seconds` the connection cancels the
stream and connects again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from natter.sdk import Client, Connection, Disconnected
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from tests.helpers import eventually, next_of


class Silent(spb_grpc.SocketServiceServicer):
    """Takes every stream and never says a word."""

    def __init__(self) -> None:
        self.streams = 0

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        self.streams += 1
        await asyncio.Event().wait()

    async def Locate(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


async def test_a_stream_never_welcomed_is_given_up_and_tried_again() -> None:
    server = grpc.aio.server()
    silent = Silent()
    spb_grpc.add_SocketServiceServicer_to_server(silent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = Client(f"127.0.0.1:{port}", token="t")
    conn = Connection(client, handshake_seconds=0.5, max_backoff=0.1)
    try:
        await conn.start(wait_synced=False)
        ev = await next_of(conn, Disconnected, timeout=5)
        assert isinstance(ev, Disconnected) and not ev.final
        await eventually(lambda: silent.streams >= 3, 10)
    finally:
        await conn.close()
        await client.close()
        await server.stop(0)
