"""Cluster routing: deliveries to the socket server that owns each user, groups via channel_svc."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from channel_svc.client import ChannelClient
from natter import domain as d
from natter.errors import NatterError
from natter.pool import Pool
from registry import Registry
from socket_svc.client import SocketClient

logger = logging.getLogger(__name__)

RETRY_INTERVAL = 0.25
MAX_RETRY_QUEUE = 100_000
MAX_PER_RPC = 2_000
MAX_RECENT = 200_000
SETTLE_SECONDS = 0.3


class _Lane:
    """Deliveries to one socket server: in order, one RPC at a time, many per RPC.

    Sends that finish together (a group commit resolves a whole batch at once) share one
    Deliver call; while a call is in flight the next batch gathers. Each caller awaits
    the call that carried its deliveries and sees its failure.
    """

    def __init__(self, pool: Pool, address: str) -> None:
        self.client = SocketClient(pool, address)
        self._pending: list[tuple[list[d.Delivery], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def send(self, batch: list[d.Delivery]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await fut

    async def _run(self) -> None:
        while self._pending:
            take: list[tuple[list[d.Delivery], asyncio.Future[None]]] = []
            size = 0
            while self._pending and (not take or size + len(self._pending[0][0]) <= MAX_PER_RPC):
                item = self._pending.pop(0)
                take.append(item)
                size += len(item[0])
            error: BaseException | None = None
            try:
                await self.client.deliver([x for batch, _ in take for x in batch])
            except Exception as e:
                error = e
            for _, fut in take:
                if fut.done():
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass(frozen=True, slots=True)
class _Later:
    delivery: d.Delivery
    until: float


@dataclass(frozen=True, slots=True)
class _Sent:
    """A push handed to `address` at `at`: replayed if its owner changes soon after."""

    at: float
    delivery: d.Delivery
    address: str


class ClusterFanout:
    """message_svc's Fanout in cluster mode: one Deliver per socket server per batch.

    The first attempt runs inline (so pushes keep the order of commits). Two things can
    still stand between a push and its device, and one background task repairs both:

    - **Failures** (a socket server that just died, channel_svc restarting) are queued and
      tried again every `RETRY_INTERVAL` and at every ring change, re-resolving owners each
      time, for up to `retry_seconds`: long enough for a dead node's lease to expire and
      its users to reach their new owner.
    - **Pushes that reached the wrong node**: while rings change (a node joins or leaves,
      etcd lost its data and nodes register again one by one) a push can go to the node
      that owned a user, or a thread's channel, a moment ago — the call succeeds and the
      push is gone. So pushes of the last `retry_seconds` are remembered with the address
      they went to, and after every ring change (once it has been quiet for
      `SETTLE_SECONDS`) those whose owner is now another node are sent again.

    Devices drop what they already have (by thread and seq), so a repeat costs a wasted
    frame, never a duplicate; and the store stays the truth for whatever is given up.
    """

    def __init__(
        self, pool: Pool, registry: Registry, channel: ChannelClient, retry_seconds: float = 10.0
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.channel = channel
        self.retry_seconds = retry_seconds
        self.retried = 0
        self.replayed = 0
        self.given_up = 0
        self._lanes: dict[str, _Lane] = {}
        self._later: list[_Later] = []
        self._recent: deque[_Sent] = deque(maxlen=MAX_RECENT)
        self._replay_at: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        registry.subscribe(self._ring_changed)

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None:
        failed = await self._attempt(deliveries)
        if failed:
            self._queue(failed, time.monotonic() + self.retry_seconds)

    async def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _ring_changed(self, role: str) -> None:
        if role in ("socket", "channel") and self._recent:
            self._replay_at = time.monotonic() + SETTLE_SECONDS
            self._ensure_task()
        self._wake.set()

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
                split[node.internal_addr if node is not None else ""].append(uid)
            for address, uids in split.items():
                part = replace(dl, user_ids=tuple(uids)) if len(split) > 1 else dl
                if address == dl.pushed_by:
                    # Pushed by that socket server itself (a sender's own copies); kept as
                    # if handed over, so a ring change soon after pushes it to the new owner.
                    self._remember([part], address)
                elif address:
                    per_node[address].append(part)
                else:
                    failed.append(part)

        async def send(address: str, batch: list[d.Delivery]) -> None:
            lane = self._lanes.get(address)
            if lane is None:
                lane = self._lanes[address] = _Lane(self.pool, address)
            try:
                await lane.send(batch)
            except NatterError as e:
                logger.info("deliver to %s failed (%s); will retry", address, e)
                failed.extend(batch)
                return
            self._remember(batch, address)

        async def publish() -> None:
            lost = await self.channel.publish(group)
            failed.extend(lost)
            if len(lost) < len(group):
                gone = {id(x) for x in lost}
                for x in group:
                    if id(x) not in gone:
                        self._remember([x], self.channel.owner(x.thread_id) or "")

        calls = [send(address, batch) for address, batch in per_node.items()]
        if group:
            calls.append(publish())
        await asyncio.gather(*calls)
        return failed

    @property
    def remembered(self) -> int:
        """How many recent pushes are kept for pushing again after a ring change."""
        return len(self._recent)

    def _remember(self, batch: Sequence[d.Delivery], address: str) -> None:
        """Keep the pushes of the last `retry_seconds`; older ones are forgotten here.

        Not only at ring changes: on a stable ring nothing else trims the deque, and it
        grew to MAX_RECENT, a message node holding every push of the last hour or so
        (about 0.9 KB each: the event with its text, sender and times), which the soaks saw
        as RSS rising 2-3 MiB a minute without a plateau.
        """
        now = time.monotonic()
        horizon = now - self.retry_seconds
        recent = self._recent
        while recent and recent[0].at < horizon:
            recent.popleft()
        recent.extend(_Sent(now, x, address) for x in batch if not isinstance(x.event, d.Typing))

    def _owner_now(self, dl: d.Delivery) -> set[str]:
        if not dl.user_ids:
            return {self.channel.owner(dl.thread_id) or ""}
        ring = self.registry.ring("socket")
        return {(n.internal_addr if (n := ring.owner(str(u))) else "") for u in dl.user_ids}

    # -- repairs -------------------------------------------------------------------------

    def _queue(self, failed: Sequence[d.Delivery], until: float) -> None:
        keep = [x for x in failed if not isinstance(x.event, d.Typing)]
        self._later.extend(_Later(x, until) for x in keep)
        if len(self._later) > MAX_RETRY_QUEUE:
            dropped = len(self._later) - MAX_RETRY_QUEUE
            del self._later[:dropped]
            self.given_up += dropped
            logger.warning("push retry queue full: %d pushes left to sync", dropped)
        if self._later:
            self._ensure_task()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._repair_forever())

    async def _repair_forever(self) -> None:
        while self._later or self._replay_at is not None:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_INTERVAL)
            now = time.monotonic()
            due: list[_Later] = []
            if self._replay_at is not None and now >= self._replay_at:
                self._replay_at = None
                due += self._moved(now)
            later, self._later = self._later, []
            alive = [x for x in later if x.until > now]
            self.given_up += len(later) - len(alive)
            self.retried += len(alive)
            due += alive
            if not due:
                continue
            until = {id(x.delivery): x.until for x in due}
            try:
                failed = await self._attempt([x.delivery for x in due])
            except Exception:
                logger.warning("push repair failed", exc_info=True)
                failed = [x.delivery for x in due]
            # Parts of a split delivery inherit the latest deadline of the batch.
            latest = max(until.values())
            self._later.extend(_Later(x, until.get(id(x), latest)) for x in failed)

    def _moved(self, now: float) -> list[_Later]:
        """Recent pushes whose owner is no longer the node they went to; they leave `_recent`."""
        horizon = now - self.retry_seconds
        while self._recent and self._recent[0].at < horizon:
            self._recent.popleft()
        keep: deque[_Sent] = deque(maxlen=MAX_RECENT)
        moved: list[_Later] = []
        for sent in self._recent:
            if self._owner_now(sent.delivery) == {sent.address}:
                keep.append(sent)
            else:
                moved.append(_Later(sent.delivery, sent.at + self.retry_seconds))
        self._recent = keep
        self.replayed += len(moved)
        if moved:
            logger.info("rings changed: pushing %d recent events again", len(moved))
        return moved
