"""natter as a child process: the command that starts it, and whether it serves yet."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def natter_command() -> list[str]:
    """The installed `natter` script next to this interpreter, or the module behind it."""
    script = Path(sys.executable).with_name("natter")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from app.cli import main; main()"]


async def serving(address: str, timeout: float = 1.0) -> bool:
    """Whether the gRPC health check at `address` (plaintext) answers SERVING now."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            res = await stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(res.status == health_pb2.HealthCheckResponse.SERVING)
