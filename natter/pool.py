"""Service-to-service plumbing: one channel per peer address, the cluster secret, retries."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import grpc

from natter.errors import NatterError, Unavailable
from natter.hashing import key_hash
from natter.rpc import RequestIdClientInterceptor, error_from_rpc

logger = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")

SECRET_HEADER = "x-natter-cluster-secret"
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # A peer's own connection: a dead peer's backoff must not delay a live one's.
    ("grpc.use_local_subchannel_pool", 1),
]
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# An address that just answered UNAVAILABLE is tried last for this long.
SUSPECT_SECONDS = 2.0
# A channel to an address that left the cluster is closed this long after it left.
PRUNE_AFTER = 60.0


class Pool:
    """Channels to internal listeners, shared by every typed client of a process.

    `call` spreads calls over the given addresses (round robin), moves on to the next one
    when an address answers UNAVAILABLE, and remembers that address as suspect for a
    moment so that other calls try it last. Only UNAVAILABLE (and a cancelled channel) is
    retried, per AIP-194: the callers' RPCs are idempotent (sends carry client_msg_id).
    """

    def __init__(self, secret: str, deadline: float = 5.0) -> None:
        self.secret = secret
        self.deadline = deadline
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Stubs per channel and stub class: building one binds a callable per RPC, and a
        # stub per call cost ~2 % of a message node's CPU under load (py-spy).
        self._stubs: dict[tuple[grpc.aio.Channel, object], object] = {}
        self._suspect: dict[str, float] = {}
        self._missing_since: dict[str, float] = {}
        self._turn = itertools.count()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((SECRET_HEADER, self.secret),) if self.secret else ()

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=[RequestIdClientInterceptor()]
            )
            self._channels[address] = ch
        return ch

    def stub(self, channel: grpc.aio.Channel, make: Callable[[grpc.aio.Channel], S]) -> S:
        """The stub `make` builds over `channel`, built once per channel."""
        key = (channel, make)
        stub = self._stubs.get(key)
        if stub is None:
            stub = self._stubs[key] = make(channel)
        return stub  # type: ignore[return-value]

    async def forget(self, address: str) -> None:
        ch = self._channels.pop(address, None)
        self._suspect.pop(address, None)
        if ch is not None:
            self._drop_stubs(ch)
            await ch.close()

    def _drop_stubs(self, channel: grpc.aio.Channel) -> None:
        for key in [k for k in self._stubs if k[0] is channel]:
            del self._stubs[key]

    async def prune(self, keep: Iterable[str]) -> None:
        """Close channels to addresses out of the cluster for PRUNE_AFTER seconds.

        Not at once: membership can shrink for a moment (etcd lost its data and nodes
        register again), and closing a channel cancels the calls in flight on it.
        """
        wanted = set(keep)
        now = time.monotonic()
        for address in list(self._channels):
            if address in wanted:
                self._missing_since.pop(address, None)
            elif now - self._missing_since.setdefault(address, now) >= PRUNE_AFTER:
                self._missing_since.pop(address, None)
                await self.forget(address)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._stubs.clear()
        for ch in channels.values():
            await ch.close()

    def mark_suspect(self, address: str) -> None:
        self._suspect[address] = time.monotonic() + SUSPECT_SECONDS

    def _order(self, targets: Sequence[str], key: str = "") -> list[str]:
        """Suspects (recently UNAVAILABLE) go last; otherwise by `key`, else round robin.

        With a key, every process orders the same addresses the same way (rendezvous
        hashing), so calls about one thread go to one replica while it is up: its pushes
        then leave in commit order and devices need not fetch gaps.
        """
        if key:
            rotated = sorted(targets, key=lambda a: key_hash(f"{key}@{a}"), reverse=True)
        else:
            start = next(self._turn) % len(targets)
            rotated = [*targets[start:], *targets[:start]]
        now = time.monotonic()
        fine = [a for a in rotated if self._suspect.get(a, 0.0) <= now]
        return fine + [a for a in rotated if a not in fine]

    async def call(
        self,
        addresses: Callable[[], Sequence[str]],
        fn: Callable[[grpc.aio.Channel], Awaitable[T]],
        attempts: int = 4,
        key: str = "",
    ) -> T:
        """Call one of `addresses()`; UNAVAILABLE moves the call on to the next address."""
        last: NatterError = Unavailable("no peer of that kind is registered", "NO_PEER")
        tried: set[str] = set()
        for attempt in range(attempts):
            targets = list(addresses())
            if not targets:
                await asyncio.sleep(min(1.0, 0.1 * 2**attempt))
                continue
            order = self._order(targets, key)
            address = next((a for a in order if a not in tried), order[0])
            tried.add(address)
            try:
                return await fn(self.channel(address))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # A replica that did not answer in time (cut off from its database, say)
                    # is tried last by the caller's retry, which is the caller's to make.
                    self.mark_suspect(address)
                if e.code() not in RETRYABLE:
                    raise error_from_rpc(e) from None
                self.mark_suspect(address)
                last = Unavailable(f"{address}: {e.details()}", "PEER_UNAVAILABLE")
                if len(tried) >= len(targets):
                    # Every address failed once: wait a little before going round again.
                    tried.clear()
                    await asyncio.sleep(random.uniform(0.05, min(1.0, 0.1 * 2**attempt)))
        raise last

    async def call_one(self, address: str, fn: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        """One call to one address; gRPC failures come back as domain errors."""
        try:
            return await fn(self.channel(address))
        except grpc.aio.AioRpcError as e:
            if e.code() in RETRYABLE:
                self.mark_suspect(address)
            raise error_from_rpc(e) from None
