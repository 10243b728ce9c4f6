"""Service-to-service plumbing: one channel per peer address, the cluster secret, retries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from natter.errors import NatterError, Unavailable
from natter.rpc import error_from_rpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

SECRET_HEADER = "x-natter-cluster-secret"
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class Pool:
    """Channels to internal listeners, shared by every typed client of a process."""

    def __init__(self, secret: str, deadline: float = 5.0) -> None:
        self.secret = secret
        self.deadline = deadline
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((SECRET_HEADER, self.secret),) if self.secret else ()

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = ch
        return ch

    async def forget(self, address: str) -> None:
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            await ch.close()

    async def call(
        self, addresses: Callable[[], Sequence[str]], fn: Callable[[grpc.aio.Channel], Awaitable[T]],
        attempts: int = 4,
    ) -> T:
        """Call the first reachable address; only UNAVAILABLE is retried (on the next one)."""
        last: NatterError = Unavailable("no peer of that kind is registered", "NO_PEER")
        for attempt in range(attempts):
            targets = list(addresses())
            if not targets:
                await asyncio.sleep(min(1.0, 0.1 * 2**attempt))
                continue
            address = targets[attempt % len(targets)]
            try:
                return await fn(self.channel(address))
            except grpc.aio.AioRpcError as e:
                err = error_from_rpc(e)
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise err from None
                last = Unavailable(f"{address}: {e.details()}", "PEER_UNAVAILABLE")
                await asyncio.sleep(random.uniform(0, min(0.5, 0.05 * 2**attempt)))
        raise last
