"""The sessions connected to this socket server: routing of deliveries, group index, upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Protocol

from natter import domain as d
from natter.errors import (
    AlreadyExists,
    DeadlineExceeded,
    NatterError,
    Unauthenticated,
    Unavailable,
)
from natter.metrics import NO_METRICS, GaugeFamily, Metrics, gauge
from natter.settings import Settings
from natter.v1 import socket_service_pb2 as spb
from registry import Node
from socket_svc.ports import MessageApi
from socket_svc.session import Session

logger = logging.getLogger(__name__)

# How long connects and disconnects are gathered before they are reported to presence_svc.
PRESENCE_QUICK = 0.1


class ChannelApi(Protocol):
    """channel_svc as seen by a socket server."""

    async def subscribe(self, node_id: str, thread_ids: Sequence[int]) -> None: ...
    async def unsubscribe(self, node_id: str, thread_ids: Sequence[int]) -> None: ...


class PresenceApi(Protocol):
    """presence_svc as seen by a socket server."""

    async def report(
        self,
        node_id: str,
        beats: Sequence[tuple[int, int, bool]],
        foreground: Collection[int] = frozenset(),
    ) -> None:
        """(user, device, connected) per device heard from; `foreground`: those in front."""
        ...


class PendingStreams:
    """Streams per client address that have not said Hello yet, capped.

    A stream is counted from its start until its Hello (or its end): opening many streams
    and never saying Hello costs the opener, not the server, past the cap.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.by_address: dict[str, int] = {}

    def enter(self, address: str) -> bool:
        count = self.by_address.get(address, 0)
        if self.cap > 0 and count >= self.cap:
            return False
        self.by_address[address] = count + 1
        return True

    def leave(self, address: str) -> None:
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)


class Moved(Exception):
    """The device's user belongs on another socket server: it is told to go there."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


class Hub:
    """Knows which devices are connected here and which groups they belong to."""

    def __init__(
        self,
        node_id: str,
        api: MessageApi,
        settings: Settings,
        channel: ChannelApi | None = None,
        presence: PresenceApi | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.node_id = node_id
        # What message_svc's fan-out calls this server (node id in one process, internal
        # address in a cluster): it pushes its senders' own copies itself (sends.py).
        self.origin = node_id
        self.api = api
        self.settings = settings
        self.channel = channel
        self.presence = presence
        self.metrics = metrics
        self.pending = PendingStreams(settings.max_pending_streams_per_address)
        self.by_user: dict[int, set[Session]] = defaultdict(set)
        self.by_device: dict[int, Session] = {}
        # group thread -> local users who are members; the channel subscription follows it.
        self.members: dict[int, set[int]] = defaultdict(set)
        self.groups_of: dict[int, set[int]] = {}
        # Users whose groups were fetched on connect; and, while that fetch runs, the groups
        # they left meanwhile (a stale fetch must not put them back).
        self._indexed: set[int] = set()
        self._loading: dict[int, set[int]] = {}
        self._ack_pending: set[Session] = set()
        self._beats: dict[tuple[int, int], bool] = {}
        # Set on a connect or disconnect: reported within PRESENCE_QUICK, not a whole interval.
        self._presence_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # A lock per user while someone holds or waits for it: (lock, holders and waiters).
        self._user_locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}
        self.deliveries = 0
        # Where a user's devices belong when that is another server (None: here). Set by a
        # cluster's socket role from its ring; a ring of one serves everyone.
        self.elsewhere: Callable[[int], str | None] = lambda _: None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_acks_forever()),
            asyncio.create_task(self._sweep_forever()),
            asyncio.create_task(self._report_forever()),
            asyncio.create_task(self._recheck_forever()),
        ]
        self.metrics.gauges(self._gauges)

    def _gauges(self) -> list[GaugeFamily]:
        """Connected devices and their backlog, computed when scraped."""
        sessions = list(self.by_device.values())
        backlogs = [s.backlog() for s in sessions]
        labels = {"node": self.node_id}
        return [
            gauge(
                "natter_connected_devices",
                "Devices with a live session on this socket server",
                len(sessions),
                labels,
            ),
            gauge(
                "natter_backlog_messages",
                "Messages queued for or pushed to connected devices and not acked yet",
                sum(n for n, _ in backlogs),
                labels,
            ),
            gauge(
                "natter_backlog_device_max_messages",
                "The largest backlog of one connected device",
                max((n for n, _ in backlogs), default=0),
                labels,
            ),
            gauge(
                "natter_backlog_oldest_seconds",
                "Age of the oldest message pushed to a connected device and not acked",
                max((age for _, age in backlogs), default=0.0),
                labels,
            ),
        ]

    async def stop(self) -> None:
        self.metrics.forget(self._gauges)
        for s in list(self.by_device.values()):
            s.close(Unavailable("server shutting down; reconnect", "SERVER_SHUTTING_DOWN"))
            self._beats[(s.user_id, s.device_id)] = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush_acks()
        await self._report()

    # -- sessions ------------------------------------------------------------------------

    async def attach(self, session: Session) -> None:
        """Register before sync so live events buffer while the replay runs.

        Raises `Moved` when the ring gives the user to another server (or the error that
        `elsewhere` raises, which ends the stream with it). The check and the
        registration happen in one step of the event loop: a ring change before it sends
        the device on here, any later one reaches the session through `rebalance`. Without
        it a device sent here on a view of the ring that changed while it reconnected
        (a redirect decided before the heal, followed after it) stayed on a server that
        is not its user's owner, and every live push went to the owner, which dropped it.
        """
        address = self.elsewhere(session.user_id)
        if address is not None:
            raise Moved(address)
        old = self.by_device.get(session.device_id)
        if old is not None:
            old.close(AlreadyExists("this device connected again elsewhere", "CONNECTED_ELSEWHERE"))
        self.by_device[session.device_id] = session
        self.by_user[session.user_id].add(session)
        self._beats[(session.user_id, session.device_id)] = True
        self._presence_changed.set()
        session.watch_state(self._state_changed)
        try:
            await self._index(session.user_id)
        except BaseException:
            await self.detach(session)
            raise

    async def _index(self, user_id: int) -> None:
        """Load a user's groups once per stay; every device waits, so none syncs unsubscribed."""
        async with self._user_lock(user_id):
            if user_id in self._indexed or user_id not in self.by_user:
                return
            self._loading[user_id] = set()
            try:
                groups = await self.api.user_groups(user_id)
            finally:
                left = self._loading.pop(user_id)
            await self._join(user_id, [g for g in groups if g not in left])
            self._indexed.add(user_id)

    @contextlib.asynccontextmanager
    async def _user_lock(self, user_id: int) -> AsyncIterator[None]:
        """One user's connect or disconnect bookkeeping at a time.

        The lock is forgotten once nobody holds or waits for it: one kept for every user
        ever connected would grow without end.
        """
        entry = self._user_locks.get(user_id)
        if entry is None:
            entry = self._user_locks[user_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0] and self._user_locks.get(user_id) is entry:
                del self._user_locks[user_id]

    async def detach(self, session: Session) -> None:
        if self.by_device.get(session.device_id) is session:
            del self.by_device[session.device_id]
            self._beats[(session.user_id, session.device_id)] = False
            self._presence_changed.set()
        sessions = self.by_user.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.by_user[session.user_id]
                async with self._user_lock(session.user_id):
                    if session.user_id not in self.by_user:
                        self._indexed.discard(session.user_id)
                        groups = self.groups_of.pop(session.user_id, set())
                        await self._leave(session.user_id, groups)
        await self._flush_one(session)

    async def _join(self, user_id: int, groups: Sequence[int]) -> None:
        if not groups:  # no empty set kept per user: most idle devices' users are in no group
            return
        mine = self.groups_of.setdefault(user_id, set())
        loading = self._loading.get(user_id)
        fresh = []
        for g in groups:
            mine.add(g)
            if loading is not None:
                loading.discard(g)
            if not self.members[g]:
                fresh.append(g)
            self.members[g].add(user_id)
        if fresh and self.channel is not None:
            await self.channel.subscribe(self.node_id, fresh)

    async def _leave(self, user_id: int, groups: set[int]) -> None:
        gone = []
        for g in groups:
            users = self.members.get(g)
            if users is None:
                continue
            users.discard(user_id)
            if not users:
                del self.members[g]
                gone.append(g)
        if gone and self.channel is not None:
            try:
                await self.channel.unsubscribe(self.node_id, gone)
            except Exception:  # soft state: a stale subscription only costs a wasted forward
                logger.warning("unsubscribe failed", exc_info=True)

    def subscriptions(self) -> list[int]:
        return sorted(self.members)

    # -- deliveries ----------------------------------------------------------------------

    def received(self, deliveries: Sequence[d.Delivery]) -> None:
        """Count a Deliver call from another service (its deliveries follow to `deliver`)."""
        messages = sum(1 for dl in deliveries if isinstance(dl.event, d.Message))
        self.metrics.deliver_calls.labels("messages" if messages else "other").inc()
        if messages:
            self.metrics.deliver_messages.inc(messages)

    async def deliver(self, deliveries: Sequence[d.Delivery]) -> None:
        for dl in deliveries:
            event = dl.event
            leaving: list[int] = []
            if isinstance(event, d.Message) and event.system is not None:
                leaving = await self._membership(event)
            if dl.user_ids:
                users: Sequence[int] = dl.user_ids
            else:
                users = list(self.members.get(dl.thread_id, ()))
            # Typing goes to the other members, not back to the typist's own devices.
            typist = event.user.user_id if isinstance(event, d.Typing) else 0
            reached = 0
            for uid in users:
                if uid == typist or uid == dl.exclude_user_id:
                    continue
                for s in self.by_user.get(uid, ()):
                    if s.device_id != dl.exclude_device_id:
                        s.enqueue(event)
                        reached += 1
            self.deliveries += reached
            if not dl.user_ids:
                self.metrics.group_fanout_devices.observe(reached)
            if leaving:
                assert isinstance(event, d.Message)
                await self._drop(event.thread_id, leaving)

    async def _membership(self, m: d.Message) -> list[int]:
        """Keep the local group index in step with the thread's membership changes.

        Joins apply at once, so the event itself reaches the new members; the local users who
        left are returned, to be dropped right after the event reached them too.
        """
        assert m.system is not None
        kind, actor = m.system.kind, m.system.actor.user_id
        local = [u.user_id for u in m.system.users if u.user_id in self.by_user]
        if kind in (d.SystemKind.MEMBERS_ADDED, d.SystemKind.GROUP_CREATED):
            if kind is d.SystemKind.GROUP_CREATED and actor in self.by_user:
                local.append(actor)
            for uid in local:
                await self._join(uid, [m.thread_id])
            return []
        if kind is d.SystemKind.MEMBERS_REMOVED:
            return local
        if kind is d.SystemKind.MEMBER_LEFT and actor in self.by_user:
            return [actor]
        return []

    async def _drop(self, thread_id: int, user_ids: Sequence[int]) -> None:
        for uid in user_ids:
            self.groups_of.get(uid, set()).discard(thread_id)
            loading = self._loading.get(uid)
            if loading is not None:
                loading.add(thread_id)
            await self._leave(uid, {thread_id})

    # -- acks ----------------------------------------------------------------------------

    def ack_pending(self, session: Session) -> None:
        self._ack_pending.add(session)

    async def flush_acks(self) -> None:
        pending, self._ack_pending = self._ack_pending, set()
        # Each ack stays paired with its session: a failed flush gives every session back
        # exactly its own cursors (a session may be pending with nothing left to ack).
        taken = [(s, a) for s in pending if (a := s.take_acks()) is not None]
        if taken:
            try:
                await self.api.ack([a for _, a in taken])
            except Exception:
                logger.warning("ack flush failed; will retry", exc_info=True)
                for s, a in taken:
                    for c in a.cursors:
                        s.ack_dirty[c.thread_id] = max(s.ack_dirty.get(c.thread_id, 0), c.seq)
                    self._ack_pending.add(s)

    async def _flush_one(self, session: Session) -> None:
        self._ack_pending.discard(session)
        ack = session.take_acks()
        if ack is not None:
            try:
                await self.api.ack([ack])
            except Exception:
                logger.warning("final ack flush failed", exc_info=True)

    async def _flush_acks_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ack_flush_seconds)
            await self.flush_acks()

    # -- idle sessions and presence ------------------------------------------------------

    async def _sweep_forever(self) -> None:
        idle = self.settings.session_idle_timeout_seconds
        while True:
            await asyncio.sleep(min(5.0, max(idle / 4, 0.05)))
            now = time.monotonic()
            for s in list(self.by_device.values()):
                if now - s.last_frame > idle:
                    s.close(
                        DeadlineExceeded(
                            f"no heartbeat for {idle:.0f} s; session closed", "IDLE_TIMEOUT"
                        )
                    )

    def _state_changed(self, session: Session) -> None:
        """Foreground or background: reported as quickly as a connect (push decisions use it)."""
        if self.by_device.get(session.device_id) is session:
            self._beats[(session.user_id, session.device_id)] = True
            self._presence_changed.set()

    async def recheck(self) -> None:
        """Close the sessions of devices no longer logged in; renew the others' tokens.

        A logout through this cluster closes streams at once; this catches the rest: tokens
        that lapsed, accounts disabled or deleted, and devices revoked by `natter admin`
        over the data folder, which the servers were not told of.
        """
        sessions = list(self.by_device.values())
        if not sessions:
            return
        try:
            valid = await self.api.check_devices([s.device_id for s in sessions])
        except Exception:
            logger.warning("could not check the connected devices", exc_info=True)
            return
        for s in sessions:
            if s.device_id not in valid and self.by_device.get(s.device_id) is s:
                s.close(Unauthenticated("this device was logged out", "DEVICE_LOGGED_OUT"))

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.session_recheck_seconds)
            await self.recheck()

    def beat(self, session: Session) -> None:
        """Any frame from a device shows it is alive; many frames make one beat per report."""
        self._beats[(session.user_id, session.device_id)] = True

    async def _report(self) -> None:
        if self.presence is None or not self._beats:
            self._beats.clear()
            return
        beats, self._beats = self._beats, {}
        foreground = {
            dv
            for (_, dv), c in beats.items()
            if c and (s := self.by_device.get(dv)) is not None and s.foreground
        }
        try:
            await self.presence.report(
                self.node_id, [(u, dv, c) for (u, dv), c in beats.items()], foreground
            )
        except Exception:
            logger.warning("presence report failed", exc_info=True)

    async def _report_forever(self) -> None:
        # Only devices heard from since the last report are reported: a device whose stream
        # is open but silent (half-open TCP, a frozen app) times out at presence_svc.
        # Connects and disconnects go out after a short gathering pause instead of waiting for
        # the interval, so contacts learn of them well within one heartbeat interval.
        interval = self.settings.heartbeat_interval_seconds
        quick = min(PRESENCE_QUICK, interval / 4)
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the task's own
            # cancellation when the event fires at the same moment, and stop() would hang.
            try:
                async with asyncio.timeout(interval):
                    await self._presence_changed.wait()
            except TimeoutError:
                pass
            else:
                await asyncio.sleep(quick)
            self._presence_changed.clear()
            await self._report()

    # -- cluster -------------------------------------------------------------------------

    def catch_up(self) -> None:
        """Every local device looks in the store for pushes that routing changes lost."""
        for s in list(self.by_device.values()):
            s.catch_up()

    def rebalance(self, owner: Callable[[int], Node | None], me: str) -> int:
        """After a ring change, send devices of users this node no longer owns elsewhere."""
        moved = 0
        for uid, sessions in list(self.by_user.items()):
            node = owner(uid)
            if node is None or node.node_id == me:
                continue
            for s in list(sessions):
                s.enqueue(spb.ServerFrame(redirect=spb.Redirect(address=node.public_addr)))
                s.close()
                moved += 1
        return moved

    def hand_back(self, error: NatterError) -> int:
        """Close every session with `error`: its device reconnects through the front door."""
        sessions = list(self.by_device.values())
        for s in sessions:
            s.close(error)
        return len(sessions)

    async def resubscribe(self) -> None:
        """Channel nodes changed: tell the (new) owners every group this node has members of."""
        if self.channel is not None and self.members:
            try:
                await self.channel.subscribe(self.node_id, sorted(self.members))
            except Exception:
                logger.warning("resubscribe failed", exc_info=True)
