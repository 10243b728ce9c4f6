"""Registry backed by etcd: nodes hold leased keys; every process watches and keeps rings."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]
from etcd3aio import EtcdError, prefix_range_end

# etcd3aio's Watch generator hides reconnects (resuming from a header revision) and leaks
# a pending request task per stream, so the watch uses the generated stub directly.
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchStub
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from registry.membership import Membership
from registry.node import Node
from registry.ring import DEFAULT_VNODES, HashRing

logger = logging.getLogger(__name__)

# What a call to etcd may raise when etcd is unreachable, slow or restarting. The client
# maps transient gRPC codes to EtcdError subclasses and re-raises the others as-is.
_ETCD_ERRORS: tuple[type[BaseException], ...] = (EtcdError, grpc.RpcError, TimeoutError)

_EVENT_PUT = 0  # mvccpb.Event.EventType
_EVENT_DELETE = 1


def _describe(exc: BaseException) -> str:
    """Return a one-line description of an etcd failure for logs."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


def _channel_target(endpoints: Sequence[str]) -> str:
    """Return the gRPC target for etcd endpoints (`host:port`, or several `ip:port`)."""
    if len(endpoints) == 1:
        return endpoints[0]
    addrs = [ep.replace("localhost", "127.0.0.1") for ep in endpoints]
    for addr in addrs:
        host = addr.rsplit(":", 1)[0]
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"several etcd endpoints must be IPv4 ip:port (got {addr!r}); or give one "
                "DNS name that resolves to every member"
            ) from None
    return "ipv4:" + ",".join(addrs)


class _WatchLostError(Exception):
    """The watch was cancelled by etcd (compaction or otherwise): list again."""


class _Backoff:
    """Exponential backoff with jitter between `initial` and `cap` seconds."""

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self._next = initial

    def reset(self) -> None:
        self._next = self._initial

    async def sleep(self) -> None:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._next * 2, self._cap)
        await asyncio.sleep(delay)


class EtcdRegistry:
    """Cluster membership in etcd under `{prefix}/nodes/{role}/{node_id}`.

    A registered node's key is attached to a lease of `ttl` seconds, refreshed every
    ttl/3 s; a clean `deregister()` revokes the lease so every watcher sees the node go
    at once, and a crashed process's key expires after about `ttl`. Every instance lists
    the prefix, then watches it from the listed revision + 1 and keeps the members and
    one `HashRing` per role in memory, so reads never wait on etcd.

    Recovery: when a call to etcd fails (connection lost, etcd restarting), the watch is
    compacted or cancelled, or etcd's revision goes backwards (it lost its data), the
    instance retries with backoff, rebuilds its view from a fresh listing and watches
    from there; if this process's key is gone (lease expired, etcd wiped) it registers
    again under a new lease.

    A lease that could not be kept alive for `ttl` seconds has expired in etcd: the other
    processes no longer see this node, and give its share of the ring to others. So the
    instance takes its own node out of its view at that moment too (subscribers hear of
    it like of any change), rather than go on believing it owns what others now own; it
    is back in its view once etcd takes its keepalive again or it has registered anew.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/natter",
        ttl: int = 5,
        *,
        vnodes: int = DEFAULT_VNODES,
        call_timeout: float | None = None,
        max_backoff: float = 2.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if ttl < 2:
            raise ValueError("ttl must be >= 2 seconds (etcd's minimum lease TTL)")
        self._endpoints = list(endpoints)
        self._root = prefix.rstrip("/") + "/nodes/"
        self._ttl = ttl
        self._call_timeout = call_timeout if call_timeout is not None else max(1.0, ttl / 2)
        self._max_backoff = max_backoff
        self._members = Membership(vnodes)
        # Revision of the last change applied per key, live keys and deleted ones, so that
        # a watch event older than a change we applied ourselves (our put, our revoke) is
        # ignored. Deleted keys are dropped once the watch has passed their revision.
        self._key_rev: dict[str, int] = {}
        self._deleted_rev: dict[str, int] = {}
        self._list_revision = 0
        self._channel: Any = None  # grpc.aio.Channel
        self._kv: KVService | None = None
        self._lease: LeaseService | None = None
        self._node: Node | None = None
        self._lease_id: int | None = None
        self._reg_lock = asyncio.Lock()
        self._resync_needed = asyncio.Event()
        self._nudge = asyncio.Event()
        self._verify_key = False
        self._lease_ok_at = 0.0  # when etcd last confirmed our lease (monotonic)
        self._lapsed = False  # our lease is past its TTL unconfirmed: we left our own view
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- public API -------------------------------------------------------------------

    @property
    def node(self) -> Node | None:
        """Return this process's registered node, if any."""
        return self._node

    async def start(self) -> None:
        """Connect, list the current members and start watching; raises if etcd is down."""
        if self._closed:
            raise RuntimeError("registry is closed")
        if self._channel is not None:
            return
        self._channel = grpc.aio.insecure_channel(
            _channel_target(self._endpoints), options=self._channel_options()
        )
        self._kv = KVService(self._channel)
        self._lease = LeaseService(self._channel)
        try:
            revision = await self._resync()
        except BaseException:
            await self._close_channel()
            raise
        self._tasks = [
            asyncio.create_task(self._watch_loop(revision), name="registry-watch"),
            asyncio.create_task(self._lease_loop(), name="registry-lease"),
        ]
        logger.info(
            "registry: watching %s on %s at revision %s", self._root, self._endpoints, revision
        )

    async def register(self, node: Node) -> None:
        """Put this process's node under a new lease and keep it alive until deregistered.

        One node per instance; registering the same node again is a no-op. Raises if etcd
        cannot be reached, leaving nothing registered.
        """
        self._require_started()
        async with self._reg_lock:
            if self._node is not None:
                if self._node == node:
                    return
                raise RuntimeError(f"already registered as {self._node.node_id!r}")
            try:
                await self._put_node(node)
            except BaseException:
                lease_id, self._lease_id = self._lease_id, None
                if lease_id is not None:
                    await self._revoke_quietly(lease_id)
                raise
            self._node = node
        logger.info(
            "registry: registered %s %s (lease %x, ttl %s s)",
            node.role,
            node.node_id,
            self._lease_id or 0,
            self._ttl,
        )

    async def deregister(self) -> None:
        """Revoke the lease, removing the node at once; a no-op if not registered.

        Raises if etcd cannot be reached; the key then expires after the TTL by itself.
        """
        async with self._reg_lock:
            if self._node is None:
                return
            _, lease = self._services()
            node, self._node = self._node, None
            lease_id, self._lease_id = self._lease_id, None
            if lease_id is None:
                return
            logger.info("registry: deregistering %s %s", node.role, node.node_id)
            resp = await lease.revoke(lease_id, timeout=self._call_timeout)
            self._apply_delete(self._key(node), resp.header.revision)

    def nodes(self, role: str) -> list[Node]:
        return self._members.nodes(role)

    def ring(self, role: str) -> HashRing:
        return self._members.ring(role)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._members.subscribe(callback)

    async def close(self, *, revoke: bool = True) -> None:
        """Deregister (unless `revoke` is False), stop watching and disconnect.

        `revoke=False` leaves the lease to expire after the TTL, as a crashed process
        would; tests use it to simulate a process that died.
        """
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if revoke and self._channel is not None:
            try:
                await self.deregister()
            except _ETCD_ERRORS as exc:
                logger.warning(
                    "registry: could not revoke lease on close (%s); the key expires after %s s",
                    _describe(exc),
                    self._ttl,
                )
        await self._close_channel()

    def _channel_options(self) -> list[tuple[str, int | str]]:
        backoff_ms = int(self._max_backoff * 1000)
        return [
            ("grpc.lb_policy_name", "round_robin"),
            # Reconnect soon after etcd is back (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
            # Our own connection, not one shared with other channels in the process that
            # may sit in a long reconnect backoff.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        self._kv = self._lease = None
        if channel is not None:
            await channel.close()

    # -- keys and local state ---------------------------------------------------------

    def _key(self, node: Node) -> str:
        return f"{self._root}{node.role}/{node.node_id}"

    def _parse(self, key: str, value: bytes) -> Node | None:
        role, sep, node_id = key[len(self._root) :].partition("/")
        try:
            node = Node.from_json(value)
        except ValueError as exc:
            logger.warning("registry: ignoring bad value at %s: %s", key, exc)
            return None
        if not sep or node.role != role or node.node_id != node_id:
            logger.warning(
                "registry: ignoring %s: its value names %s/%s", key, node.role, node.node_id
            )
            return None
        return node

    def _is_stale(self, key: str, revision: int) -> bool:
        return revision <= max(self._key_rev.get(key, 0), self._deleted_rev.get(key, 0))

    def _apply_put(self, key: str, value: bytes, revision: int) -> None:
        if self._is_stale(key, revision):
            return
        self._key_rev[key] = revision
        self._deleted_rev.pop(key, None)
        node = self._parse(key, value)
        if node is not None:
            self._members.put(node)
        else:
            self._remove_member(key)

    def _apply_delete(self, key: str, revision: int) -> None:
        if self._is_stale(key, revision):
            return
        self._key_rev.pop(key, None)
        self._deleted_rev[key] = revision
        self._remove_member(key)
        own = self._node
        if own is not None and key == self._key(own):
            logger.warning("registry: our key %s was deleted; registering again", key)
            self._request_verify()

    def _remove_member(self, key: str) -> None:
        role, _, node_id = key[len(self._root) :].partition("/")
        self._members.remove(role, node_id)

    def _request_verify(self) -> None:
        self._verify_key = True
        self._nudge.set()

    def _require_started(self) -> None:
        self._services()

    def _services(self) -> tuple[KVService, LeaseService]:
        if self._kv is None or self._lease is None:
            raise RuntimeError("registry is not started (or already closed)")
        return self._kv, self._lease

    # -- listing and watching ---------------------------------------------------------

    async def _resync(self) -> int:
        """Replace the in-memory view with a fresh listing; return its revision."""
        kv, _ = self._services()
        resp = await kv.get(self._root, prefix_range_end(self._root), timeout=self._call_timeout)
        key_rev: dict[str, int] = {}
        nodes: list[Node] = []
        for item in resp.kvs:
            key = item.key.decode()
            key_rev[key] = item.mod_revision
            node = self._parse(key, item.value)
            if node is not None:
                nodes.append(node)
        self._key_rev = key_rev
        self._deleted_rev = {}
        self._list_revision = resp.header.revision
        self._members.replace_all(nodes)
        if self._node is not None:
            self._request_verify()
        return int(resp.header.revision)

    async def _watch_loop(self, revision: int) -> None:
        backoff = _Backoff(0.1, self._max_backoff)
        failures = 0
        while True:
            try:
                if revision == 0:
                    self._resync_needed.clear()
                    revision = await self._resync()
                    logger.info("registry: resynced %s at revision %s", self._root, revision)
                    failures = 0
                    backoff.reset()
                await self._watch_until_lost(revision + 1)
            except _WatchLostError as exc:
                logger.warning("registry: watch lost (%s); listing again", exc)
            except _ETCD_ERRORS as exc:
                failures += 1
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "registry: etcd unavailable for the watch (%s); retrying",
                    _describe(exc),
                )
            except Exception:
                logger.exception("registry: unexpected error in the watch; listing again")
            revision = 0
            await backoff.sleep()

    async def _watch_until_lost(self, start_revision: int) -> None:
        """Apply watch events until the watch fails or a resync is requested."""
        consumer = asyncio.create_task(self._consume_watch(start_revision))
        waiter = asyncio.create_task(self._resync_needed.wait())
        try:
            await asyncio.wait((consumer, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consumer, waiter):
                task.cancel()
            for task in (consumer, waiter):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if consumer.done() and not consumer.cancelled():
            exc = consumer.exception()
            if exc is not None:
                raise exc
        if waiter.done() and not waiter.cancelled():
            raise _WatchLostError("resync requested")
        raise _WatchLostError("watch stream ended")

    async def _consume_watch(self, start_revision: int) -> None:
        self._require_started()
        root = self._root.encode()
        call = WatchStub(self._channel).Watch()
        try:
            create = WatchCreateRequest(
                key=root, range_end=prefix_range_end(root), start_revision=start_revision
            )
            await call.write(WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise _WatchLostError("watch stream closed by etcd")
                if resp.compact_revision > 0:
                    raise _WatchLostError(f"compacted at revision {resp.compact_revision}")
                if resp.canceled:
                    raise _WatchLostError(f"cancelled: {resp.cancel_reason or 'no reason'}")
                for event in resp.events:
                    key = event.kv.key.decode()
                    if event.type == _EVENT_PUT:
                        self._apply_put(key, event.kv.value, event.kv.mod_revision)
                    elif event.type == _EVENT_DELETE:
                        self._apply_delete(key, event.kv.mod_revision)
                if resp.events and self._deleted_rev:
                    # Watch events come in revision order: none older than this will follow.
                    passed = resp.events[-1].kv.mod_revision
                    for key, rev in list(self._deleted_rev.items()):
                        if rev <= passed:
                            del self._deleted_rev[key]
        finally:
            call.cancel()

    # -- the lease ----------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Every ttl/3 s: keep our lease alive (or just probe etcd if not registered)."""
        backoff = _Backoff(0.1, self._max_backoff)
        interval = self._ttl / 3
        failures = 0
        while True:
            try:
                async with self._reg_lock:
                    await self._heartbeat()
                if failures:
                    logger.info("registry: etcd reachable again after %s failures", failures)
                failures = 0
                backoff.reset()
            except _ETCD_ERRORS as exc:
                failures += 1
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "registry: heartbeat to etcd failed (%s); retrying",
                    _describe(exc),
                )
                self._resync_needed.set()
                self._check_lapse()
                await backoff.sleep()
                continue
            except Exception:
                logger.exception("registry: unexpected error in the heartbeat; retrying")
                await backoff.sleep()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._nudge.wait()
            self._nudge.clear()

    async def _heartbeat(self) -> None:
        kv, _ = self._services()
        node = self._node
        if node is None:
            resp = await kv.get(self._root, keys_only=True, timeout=self._call_timeout)
            self._check_revision(resp.header.revision)
            return
        if self._lease_id is not None:
            ttl, revision = await self._keepalive_once(self._lease_id)
            self._check_revision(revision)
            if ttl > 0:
                self._confirmed(node)
            else:
                logger.warning(
                    "registry: lease %x of %s expired; registering again",
                    self._lease_id,
                    node.node_id,
                )
                self._lease_id = None
                self._resync_needed.set()
        if self._lease_id is None or self._verify_key:
            self._verify_key = False
            await self._ensure_key(node)

    def _confirmed(self, node: Node) -> None:
        """Our key is in etcd under a live lease now."""
        self._lease_ok_at = time.monotonic()
        if self._lapsed:
            self._lapsed = False
            logger.info("registry: %s is registered again", node.node_id)
            self._members.put(node)

    def _check_lapse(self) -> None:
        """After `ttl` seconds without a confirmed keepalive, our key is gone for the others."""
        node = self._node
        if node is None or self._lapsed or time.monotonic() - self._lease_ok_at < self._ttl:
            return
        self._lapsed = True
        logger.warning(
            "registry: lease of %s not kept alive for %s s: it has expired, and the node "
            "leaves its own view of the ring until it is registered again",
            node.node_id,
            self._ttl,
        )
        self._members.remove(node.role, node.node_id)

    def _check_revision(self, revision: int) -> None:
        if revision < self._list_revision:
            logger.warning(
                "registry: etcd revision went back from %s to %s (data lost?); listing again",
                self._list_revision,
                revision,
            )
            self._list_revision = revision
            self._resync_needed.set()

    async def _keepalive_once(self, lease_id: int) -> tuple[int, int]:
        """Refresh the lease once; return (remaining TTL, etcd revision). TTL 0: gone."""
        _, lease = self._services()
        call = lease.keep_alive(lease_id)
        try:
            async with asyncio.timeout(self._call_timeout):
                async for resp in call:
                    return int(resp.TTL), int(resp.header.revision)
        finally:
            call.cancel()
        raise EtcdError("lease keepalive stream closed without an answer")

    async def _ensure_key(self, node: Node) -> None:
        """Make sure our key exists with our value under our live lease."""
        kv, _ = self._services()
        key = self._key(node)
        if self._lease_id is not None:
            resp = await kv.get(key, timeout=self._call_timeout)
            for item in resp.kvs:
                if item.lease == self._lease_id and item.value == node.to_json():
                    return
        await self._put_node(node)

    async def _put_node(self, node: Node) -> None:
        """Put our key under the current lease, granting a new lease if we have none."""
        kv, lease = self._services()
        if self._lease_id is None:
            grant = await lease.grant(self._ttl, timeout=self._call_timeout)
            self._lease_id = int(grant.ID)
        key = self._key(node)
        value = node.to_json()
        resp = await kv.put(key, value, lease=self._lease_id, timeout=self._call_timeout)
        self._apply_put(key, value, resp.header.revision)
        self._confirmed(node)
        logger.info("registry: put %s under lease %x", key, self._lease_id)

    async def _revoke_quietly(self, lease_id: int) -> None:
        _, lease = self._services()
        try:
            await lease.revoke(lease_id, timeout=self._call_timeout)
        except _ETCD_ERRORS as exc:
            logger.warning("registry: could not revoke lease %x: %s", lease_id, _describe(exc))
