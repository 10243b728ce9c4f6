"""presence_svc: heartbeat batches in, changes pushed to those who may see them, GetPresence out.

Who sees a user's online status and last seen (`presence_audience`):

- "contacts" (the default): the people the user has as a contact *and* who have the user as
  a contact — adding someone is one-sided and shows you nothing until they add you back;
- "contacts_and_chats": also the people the user shares a thread with (pushes only for
  threads of at most `presence_push_group_size` members; the pull query for any thread).

Never anyone the user blocked or who blocked the user, whatever else holds; the user always
sees their own. `hide_last_seen` hides the time (not the online dot) from everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Protocol

from natter.domain import Delivery, Presence, PresenceUser, Principal
from natter.errors import InvalidArgument
from natter.identifiers import normalise
from natter.metrics import NO_METRICS, Metrics
from natter.settings import Settings
from presence_svc.tracker import Change, Tracker

logger = logging.getLogger(__name__)

MAX_QUERY = 1000
MAX_BATCH = 100_000
# Online users' last-seen time is also written this often, so a crash loses little of it.
CHECKPOINT_SECONDS = 60.0
# Last-seen times of recent transitions kept in memory, so a query never reads an older one
# from the store while the newer one is being written.
RECENT_LIMIT = 100_000


class PresenceStore(Protocol):
    """What presence_svc reads and writes in the system of record (message_svc's SqlStore)."""

    async def find_presence_users(self, identifiers: Sequence[str]) -> dict[str, PresenceUser]: ...
    async def get_presence_users(self, user_ids: Sequence[int]) -> dict[int, PresenceUser]: ...
    async def set_last_seen(self, seen: Sequence[tuple[int, datetime]]) -> None: ...
    async def mutual_contacts(self, user_ids: Sequence[int]) -> dict[int, set[int]]: ...
    async def mutual_contacts_among(self, owner_id: int, user_ids: Sequence[int]) -> set[int]: ...
    async def block_links(self, user_ids: Sequence[int]) -> dict[int, set[int]]: ...
    async def thread_peers_among(self, user_id: int, user_ids: Sequence[int]) -> set[int]: ...
    async def small_thread_peers(
        self, user_ids: Sequence[int], max_members: int
    ) -> dict[int, set[int]]: ...


class Fanout(Protocol):
    """Pushes presence changes to the connected devices of the users they name."""

    async def deliver(self, deliveries: Sequence[Delivery]) -> None: ...


def query_identifiers(usernames: Sequence[str]) -> list[str]:
    """A presence query's names, checked and normalised, each once, in request order."""
    if len(usernames) > MAX_QUERY:
        raise InvalidArgument(
            f"at most {MAX_QUERY} usernames per presence query; got {len(usernames)}",
            "TOO_MANY_USERS",
        )
    return list(dict.fromkeys(normalise(u) for u in usernames if u.strip()))


class PresenceService:
    """Implements socket_svc's PresenceApi (`report`) and the public presence query."""

    def __init__(
        self,
        store: PresenceStore,
        settings: Settings,
        fanout: Fanout,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.fanout = fanout
        self.metrics = metrics
        self.chats = settings.presence_audience == "contacts_and_chats"
        self.tracker = Tracker(settings.presence_timeout_seconds, clock)
        # Transitions are applied (persisted, pushed) one batch at a time, in order.
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._recent: dict[int, datetime] = {}
        self.reports = 0
        self.beats = 0
        self.pushes = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._expire_forever()),
            asyncio.create_task(self._checkpoint_forever()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.checkpoint()

    # -- beats in ------------------------------------------------------------------------

    async def report(
        self,
        node_id: str,
        beats: Sequence[tuple[int, int, bool]],
        foreground: Collection[int] = frozenset(),
    ) -> None:
        """A socket server's batch: (user, device, connected) for devices heard from.

        `foreground` names those whose app is in the foreground (see `active_devices`).
        """
        if not node_id:
            raise InvalidArgument(
                "a heartbeat report needs the socket server's node_id", "NO_NODE_ID"
            )
        if len(beats) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} beats per report", "BATCH_TOO_LARGE")
        if any(u <= 0 or dv <= 0 for u, dv, _ in beats):
            raise InvalidArgument("every beat needs a positive user_id and device_id", "BAD_BEAT")
        async with self._lock:
            self.reports += 1
            self.beats += len(beats)
            await self._apply(self.tracker.report(node_id, beats, foreground))

    async def active_devices(self, devices: Sequence[tuple[int, int]]) -> set[int]:
        """Of (user, device) pairs, the devices with a live stream and the app in front.

        The push worker skips these: the person is looking at the app on that device.
        """
        if len(devices) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} devices per query", "BATCH_TOO_LARGE")
        return {dv for u, dv in devices if self.tracker.active(dv, u)}

    async def forget_node(self, node_id: str) -> None:
        """A socket server left the registry (crashed or stopped): its devices are offline."""
        async with self._lock:
            await self._apply(self.tracker.forget_node(node_id))

    async def expire(self) -> None:
        async with self._lock:
            await self._apply(self.tracker.expire())

    async def _expire_forever(self) -> None:
        period = max(self.settings.heartbeat_interval_seconds / 4, 0.02)
        while True:
            await asyncio.sleep(period)
            await self.expire()

    async def checkpoint(self) -> None:
        seen = [(u, s) for u in self.tracker.online_users() if (s := self.tracker.seen(u))]
        try:
            await self.store.set_last_seen(seen)
        except Exception:
            logger.warning("could not record last-seen times", exc_info=True)

    async def _checkpoint_forever(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            await self.checkpoint()

    async def _apply(self, changes: list[Change]) -> None:
        if not changes:
            return
        if len(self._recent) + len(changes) > RECENT_LIMIT:
            self._recent.clear()
        for c in changes:
            self._recent[c.user_id] = c.seen
            self.metrics.presence_changes.labels("online" if c.online else "offline").inc()
        try:
            await self.store.set_last_seen([(c.user_id, c.seen) for c in changes])
        except Exception:  # the push still tells people; the next change records it
            logger.warning("could not record last-seen times", exc_info=True)
        try:
            await self._push(changes)
        except Exception:  # soft state: the pull query still answers correctly
            logger.warning("presence push failed", exc_info=True)

    async def _push(self, changes: list[Change]) -> None:
        """To the user's mutual contacts (and, with chats, the members of their small threads).

        Only connected devices receive a delivery, so offline people cost no push. They are
        not filtered out here: with presence sharded over several nodes (cluster mode) this
        node's tracker does not know whether the audience is online.
        """
        ids = [c.user_id for c in changes]
        users = await self.store.get_presence_users(ids)
        mutual = await self.store.mutual_contacts(ids)
        peers: dict[int, set[int]] = {}
        if self.chats:
            size = self.settings.presence_push_group_size
            peers = await self.store.small_thread_peers(ids, size)
        links = await self.store.block_links(ids)
        deliveries = []
        for c in changes:
            row = users.get(c.user_id)
            if row is None:
                continue
            audience = set(mutual.get(c.user_id, ())) | peers.get(c.user_id, set())
            audience -= links.get(c.user_id, set())
            audience.discard(c.user_id)
            if audience:
                event = Presence(row.user, c.online, None if row.hide_last_seen else c.seen)
                deliveries.append(Delivery(event, user_ids=sorted(audience)))
        if deliveries:
            self.pushes += len(deliveries)
            await self.fanout.deliver(deliveries)

    # -- the query -----------------------------------------------------------------------

    async def get_presence(self, who: Principal, usernames: Sequence[str]) -> list[Presence]:
        """Status of the named users the caller may see, in request order; others left out."""
        idents = query_identifiers(usernames)
        found = await self.store.find_presence_users(idents)
        rows = list({found[i].user.user_id: found[i] for i in idents if i in found}.values())
        me = who.user.user_id
        others = [r.user.user_id for r in rows if r.user.user_id != me]
        visible = {me}
        if others:
            visible |= await self.store.mutual_contacts_among(me, others)
            rest = [u for u in others if u not in visible]
            if rest and self.chats:
                visible |= await self.store.thread_peers_among(me, rest)
            visible -= (await self.store.block_links([me])).get(me, set())
        return [self._status(r, r.user.user_id == me) for r in rows if r.user.user_id in visible]

    def _status(self, row: PresenceUser, own: bool) -> Presence:
        user_id = row.user.user_id
        online = self.tracker.online(user_id)
        if online:
            seen = self.tracker.seen(user_id)
        else:
            known = [t for t in (row.last_seen_time, self._recent.get(user_id)) if t]
            seen = max(known) if known else None
        if row.hide_last_seen and not own:
            seen = None
        return Presence(row.user, online, seen)
