"""The push worker: drains the queue, expands each burst to devices, sends, retries, cleans up.

Off the send path: a send's transaction only wrote one queue row per thread (message_svc).
Here, once the grace period has passed, a worker claims due rows under a lease (one worker
per row, whichever process it runs in), folds each thread's rows into one burst, works out
who is notified (`notification.py`), skips devices that are active now (a live stream with
the app in front, asked of presence), and sends one push per device: a notification per
chat per burst, collapsing on the device by its thread's Topic. Progress is recorded as it
goes, so a worker that dies mid-burst is taken over from where it was (at most the chunk in
flight is sent again, and those collapse into the same notification).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from natter.domain import PushContext, PushJob, PushKind, PushTarget
from natter.settings import Settings
from push_svc import payload
from push_svc.notification import Notification, notifications
from push_svc.ports import Liveness
from push_svc.sending import Outcome, Result, Sender
from push_svc.store import PushStore
from push_svc.vapid import topic

logger = logging.getLogger(__name__)

# Jobs claimed at once; members handled between two lease renewals (the most a worker that
# dies sends twice).
CLAIM = 200
CHUNK = 64
# Backoff of a failing device: 1 s, 2 s, 4 s ... at most this, with jitter.
MAX_BACKOFF = 300.0
# A burst whose handling failed (the database away) is tried again after this long.
RELEASE_DELAY = 5.0


@dataclass
class Stats:
    """What this worker did, for tests, benchmarks and operators."""

    jobs: int = 0
    sent: int = 0
    skipped_active: int = 0
    retried: int = 0
    given_up: int = 0
    removed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class _Unit:
    """One burst to handle: a thread's seqs, for everyone (device 0) or one device's retry."""

    jobs: tuple[PushJob, ...]
    thread_id: int
    first_seq: int
    last_seq: int
    device_id: int = 0
    attempts: int = 0
    done_user: int = 0

    @property
    def ids(self) -> list[int]:
        return [j.job_id for j in self.jobs]


def units(jobs: Sequence[PushJob]) -> list[_Unit]:
    """Fresh jobs of one thread fold into one burst; retries and resumed jobs stay alone."""
    out: list[_Unit] = []
    fresh: dict[int, list[PushJob]] = defaultdict(list)
    for j in jobs:
        if j.device_id == 0 and j.attempts == 0 and j.done_user == 0:
            fresh[j.thread_id].append(j)
        else:
            out.append(
                _Unit(
                    (j,), j.thread_id, j.first_seq, j.last_seq, j.device_id, j.attempts, j.done_user
                )
            )
    for tid, group in fresh.items():
        lo = min(j.first_seq for j in group)
        hi = max(j.last_seq for j in group)
        out.append(_Unit(tuple(group), tid, lo, hi))
    return out


def backoff(attempts: int) -> float:
    """Seconds before try number `attempts + 1` of one device."""
    return random.uniform(0.8, 1.2) * min(MAX_BACKOFF, 2.0 ** max(attempts - 1, 0))


class Worker:
    """One process's drain of the push queue; `run` until cancelled."""

    def __init__(
        self,
        store: PushStore,
        settings: Settings,
        liveness: Liveness,
        sender: Sender,
        topic_key: str,
        node_id: str,
    ) -> None:
        self.store = store
        self.settings = settings
        self.liveness = liveness
        self.sender = sender
        self.topic_key = topic_key
        # Unique per start: a restarted process never mistakes another start's leases for its own.
        self.owner = f"{node_id}:{uuid.uuid4().hex[:8]}"[:64]
        self.stats = Stats()
        self._limit = asyncio.Semaphore(max(1, settings.push_concurrency))
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        s = self.settings
        while True:
            try:
                jobs = await self.store.claim_push_jobs(
                    self.owner, s.push_grace_seconds, s.push_lease_seconds, CLAIM
                )
            except Exception:
                logger.warning("could not claim push jobs; trying again", exc_info=True)
                jobs = []
            if jobs:
                await self.drain(jobs)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.push_poll_seconds):
                    await self._wake.wait()

    async def drain(self, jobs: Sequence[PushJob]) -> None:
        """Handle claimed jobs: every burst at once, each within its own failures."""
        todo = units(jobs)
        try:
            contexts = await self.store.push_contexts(
                [(u.thread_id, u.first_seq, u.last_seq) for u in todo]
            )
        except Exception:
            logger.warning("could not read %d push bursts; later", len(todo), exc_info=True)
            await self._release([j.job_id for j in jobs])
            return
        await asyncio.gather(*(self._unit(u, contexts.get(u.thread_id)) for u in todo))

    async def _release(self, ids: list[int]) -> None:
        with contextlib.suppress(Exception):
            await self.store.release_push_jobs(ids, self.owner, RELEASE_DELAY)

    async def _unit(self, unit: _Unit, ctx: PushContext | None) -> None:
        try:
            if (ctx is not None and await self._notify(unit, ctx)) or ctx is None:
                await self.store.finish_push_jobs(unit.ids, self.owner)
            self.stats.jobs += len(unit.jobs)
        except Exception:
            logger.warning("push burst of thread %s failed; later", unit.thread_id, exc_info=True)
            await self._release(unit.ids)

    async def _notify(self, unit: _Unit, ctx: PushContext) -> bool:
        """Send the burst's pushes chunk by chunk; False if the lease was lost on the way."""
        now = datetime.now(UTC)
        only = 0
        retry_target: PushTarget | None = None
        if unit.device_id:
            retry_target = await self.store.get_push_target(unit.device_id)
            if retry_target is None:
                return True  # the device has no target any more
            only = retry_target.user_id
        pending = list(notifications(ctx, now, after_user=unit.done_user, only_user=only))
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start : start + CHUNK]
            targets = await self.store.push_targets([n.user_id for n in chunk])
            if retry_target is not None:
                targets = [t for t in targets if t.device_id == unit.device_id]
            await self._send_chunk(unit, chunk, targets)
            if start + CHUNK < len(pending) and not await self.store.renew_push_jobs(
                unit.ids, self.owner, self.settings.push_lease_seconds, chunk[-1].user_id
            ):
                logger.warning("lost the lease of a push burst of thread %s", unit.thread_id)
                return False
        return True

    async def _send_chunk(
        self, unit: _Unit, chunk: Sequence[Notification], targets: Sequence[PushTarget]
    ) -> None:
        if not targets:
            return
        active = await self.liveness.active_devices([(t.user_id, t.device_id) for t in targets])
        by_user: dict[int, list[PushTarget]] = defaultdict(list)
        for t in targets:
            if t.device_id in active:
                self.stats.skipped_active += 1
            else:
                by_user[t.user_id].append(t)
        calls: list[Awaitable[list[tuple[PushJob, datetime]]]] = []
        for n in chunk:
            mine = by_user.get(n.user_id, [])
            web = [t for t in mine if t.kind is PushKind.WEB_PUSH]
            gateways: dict[str, list[PushTarget]] = defaultdict(list)
            for t in mine:
                if t.kind is PushKind.GATEWAY:
                    gateways[t.endpoint].append(t)
            calls.extend(self._web(unit, n, t) for t in web)
            calls.extend(self._gateway(unit, n, url, ts) for url, ts in gateways.items())
        retries = [x for part in await asyncio.gather(*calls) for x in part]
        if retries:
            await self.store.retry_pushes(retries)

    async def _web(
        self, unit: _Unit, n: Notification, target: PushTarget
    ) -> list[tuple[PushJob, datetime]]:
        body = payload.web_push(n)
        async with self._limit:
            result = await self.sender.web_push(
                target, body, topic(self.topic_key, n.thread_id), payload.urgency(n)
            )
        if result.outcome is Outcome.GONE:
            await self._remove(target)
        return self._after(unit, [target], result)

    async def _gateway(
        self, unit: _Unit, n: Notification, url: str, targets: list[PushTarget]
    ) -> list[tuple[PushJob, datetime]]:
        body = payload.gateway(n, targets)
        async with self._limit:
            result = await self.sender.gateway(url, body)
        gone = set(result.rejected)
        for t in targets:
            if t.pushkey in gone or result.outcome is Outcome.GONE:
                await self._remove(t)
        return self._after(unit, [t for t in targets if t.pushkey not in gone], result)

    async def _remove(self, target: PushTarget) -> None:
        if await self.store.delete_push_target(
            target.device_id, target.endpoint, target.pushkey if target.pushkey else ""
        ):
            self.stats.removed += 1
            logger.info("push target of device %s is gone; removed", target.device_id)

    def _after(
        self, unit: _Unit, targets: Sequence[PushTarget], result: Result
    ) -> list[tuple[PushJob, datetime]]:
        """Count the outcome; a retry of each device when the push service asked for one."""
        if result.outcome is Outcome.SENT:
            self.stats.sent += len(targets)
            return []
        if result.outcome is Outcome.GONE:
            return []
        if result.outcome is Outcome.FAILED:
            self.stats.failed += len(targets)
            return []
        attempts = unit.attempts + 1
        if attempts >= self.settings.push_max_attempts:
            self.stats.given_up += len(targets)
            logger.warning(
                "gave up pushing thread %s to %d devices after %d tries",
                unit.thread_id,
                len(targets),
                attempts,
            )
            return []
        wait = max(backoff(attempts), result.retry_after or 0.0)
        at = datetime.now(UTC) + timedelta(seconds=min(wait, MAX_BACKOFF * 4))
        self.stats.retried += len(targets)
        base = unit.jobs[0]
        return [
            (
                replace(
                    base,
                    first_seq=unit.first_seq,
                    last_seq=unit.last_seq,
                    device_id=t.device_id,
                    attempts=attempts,
                    done_user=0,
                ),
                at,
            )
            for t in targets
        ]
