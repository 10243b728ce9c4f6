"""Cluster routing: deliveries to the socket server that owns each user, groups via channel_svc."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from channel_svc.client import ChannelClient
from natter import domain as d
from natter.errors import NatterError
from natter.pool import Pool
from registry import Registry
from socket_svc.client import SocketClient

logger = logging.getLogger(__name__)

RETRY_INTERVAL = 0.25
MAX_RETRY_QUEUE = 100_000


@dataclass(frozen=True, slots=True)
class _Later:
    delivery: d.Delivery
    until: float


class ClusterFanout:
    """message_svc's Fanout in cluster mode: one Deliver per socket server per batch.

    The first attempt runs inline (so pushes keep the order of commits). What fails — a
    socket server that just died, channel_svc restarting — is queued and tried again by
    one background task every `RETRY_INTERVAL` and at every ring change, re-resolving
    owners each time, for up to `retry_seconds`: long enough for a dead node's lease to
    expire and its users to reach their new owner. Devices drop what they already have
    (by thread and seq), so a retry that races a sync costs a wasted frame, never a
    duplicate; and the store stays the truth for what is given up.
    """

    def __init__(
        self, pool: Pool, registry: Registry, channel: ChannelClient, retry_seconds: float = 10.0
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.channel = channel
        self.retry_seconds = retry_seconds
        self.retried = 0
        self.given_up = 0
        self._later: list[_Later] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        registry.subscribe(lambda role: self._wake.set())

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None:
        failed = await self._attempt(deliveries)
        if failed:
            self._queue(failed, time.monotonic() + self.retry_seconds)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- one attempt ---------------------------------------------------------------------

    async def _attempt(self, deliveries: Sequence[d.Delivery]) -> list[d.Delivery]:
        """Hand every delivery to its owner once; return those that could not be handed over."""
        ring = self.registry.ring("socket")
        per_node: dict[str, list[d.Delivery]] = defaultdict(list)
        group: list[d.Delivery] = []
        failed: list[d.Delivery] = []
        for dl in deliveries:
            if not dl.user_ids:
                group.append(dl)
                continue
            split: dict[str, list[int]] = defaultdict(list)
            for uid in dl.user_ids:
                node = ring.owner(str(uid))
                if node is not None:
                    split[node.internal_addr].append(uid)
                else:
                    split[""].append(uid)
            for address, uids in split.items():
                part = d.Delivery(dl.event, tuple(uids), dl.thread_id, dl.exclude_device_id)
                if address:
                    per_node[address].append(part)
                else:
                    failed.append(part)

        async def send(address: str, batch: list[d.Delivery]) -> None:
            try:
                await SocketClient(self.pool, address).deliver(batch)
            except NatterError as e:
                logger.info("deliver to %s failed (%s); will retry", address, e)
                failed.extend(batch)

        async def publish() -> None:
            failed.extend(await self.channel.publish(group))

        calls = [send(address, batch) for address, batch in per_node.items()]
        if group:
            calls.append(publish())
        await asyncio.gather(*calls)
        return failed

    # -- retries -------------------------------------------------------------------------

    def _queue(self, failed: Sequence[d.Delivery], until: float) -> None:
        keep = [x for x in failed if not isinstance(x.event, d.Typing)]
        self._later.extend(_Later(x, until) for x in keep)
        if len(self._later) > MAX_RETRY_QUEUE:
            dropped = len(self._later) - MAX_RETRY_QUEUE
            del self._later[:dropped]
            self.given_up += dropped
            logger.warning("push retry queue full: %d pushes left to sync", dropped)
        if self._later and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._retry_forever())

    async def _retry_forever(self) -> None:
        while self._later:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_INTERVAL)
            now = time.monotonic()
            due, self._later = self._later, []
            alive = [x for x in due if x.until > now]
            self.given_up += len(due) - len(alive)
            if not alive:
                continue
            until = {id(x.delivery): x.until for x in alive}
            self.retried += len(alive)
            try:
                failed = await self._attempt([x.delivery for x in alive])
            except Exception:
                logger.warning("push retry failed", exc_info=True)
                failed = [x.delivery for x in alive]
            # Parts of a split delivery inherit the latest deadline of the batch.
            latest = max(until.values())
            self._later.extend(_Later(x, until.get(id(x), latest)) for x in failed)
