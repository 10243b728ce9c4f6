"""The service-to-service pool: one stub per channel and stub class, dropped with its channel."""

from __future__ import annotations

from natter.pool import Pool
from natter.v1 import socket_internal_service_pb2_grpc as ipb_grpc
from natter.v1 import socket_service_pb2_grpc as spb_grpc


async def test_a_stub_is_built_once_per_channel_and_rebuilt_after_the_channel_is_forgotten() -> (
    None
):
    pool = Pool("secret")
    address = "127.0.0.1:9"  # never dialled: building channels and stubs does not connect
    try:
        first = pool.stub(pool.channel(address), ipb_grpc.SocketInternalServiceStub)
        assert pool.stub(pool.channel(address), ipb_grpc.SocketInternalServiceStub) is first
        other = pool.stub(pool.channel(address), spb_grpc.SocketServiceStub)
        assert isinstance(other, spb_grpc.SocketServiceStub)  # each class its own stub
        await pool.forget(address)
        again = pool.stub(pool.channel(address), ipb_grpc.SocketInternalServiceStub)
        assert again is not first  # the new channel's own stub, not one over a closed channel
    finally:
        await pool.close()
